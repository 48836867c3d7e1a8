"""The two backends the tooling runs: "reference" (NumPy, reference/) and "torch" (torch_port/).

``Backend(name)`` gives the math modules of one side as attributes, imported on first use
(``B.schedules``, ``B.diffusion``, ``B.samplers``, ``B.train``, ...), and moves arrays across the edge:
``from_numpy`` / ``to_numpy`` are the identity for the reference and torch.from_numpy / .cpu().numpy()
for the port, so the commands work in NumPy and call either side.
"""
from __future__ import annotations

import importlib

import numpy as np

from reference.errors import InputError, check_choice

BACKENDS = {"reference": "reference", "torch": "torch_port"}
MATH_MODULES = ("schedules", "diffusion", "losses", "samplers", "layers", "unet", "optim", "train", "oracle",
                "score", "solvers", "guidance", "vlb", "resample", "likelihood", "plans", "objectives", "processes", "sde")


class Backend:
    """The math modules of one side, imported on first use: ``B.schedules``, ``B.diffusion``, ..."""

    def __init__(self, name):
        self.name = check_choice(name, tuple(BACKENDS), "backend")
        self.package = BACKENDS[name]
        self._torch = None
        if name == "torch":
            try:
                import torch
            except ImportError as e:
                raise InputError("the torch backend needs PyTorch: pip install .[torch]") from e
            self._torch = torch

    def __getattr__(self, mod):
        if mod not in MATH_MODULES:
            raise AttributeError(mod)
        m = importlib.import_module(f"{self.package}.{mod}")
        setattr(self, mod, m)  # cache: __getattr__ is not called again
        return m

    def from_numpy(self, a):
        a = np.ascontiguousarray(a)
        return a if self._torch is None else self._torch.from_numpy(a)

    def to_numpy(self, x):
        if self._torch is not None and isinstance(x, self._torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)
