"""Classifier-free guidance (Ho & Salimans 2022), in torch — derivations/guidance.md (W1-W6).

Mirror of reference/guidance.py: same names, signatures and meaning (see its docstring). The conditional and
unconditional passes run as ONE batched forward [x | x] with labels [y | null] (s = 1 and s = 0 take one
pass). The classes are checked on the host once, when the denoiser is made; inside a sampling loop the
labels live on x's device (made there once per batch size and device), so a step never syncs.
"""
from __future__ import annotations

import numpy as np
import torch

from reference.errors import InputError, check_labels, check_number

__all__ = ["check_scale", "check_classes", "combine", "guided"]


def check_scale(scale):
    """The guidance scale s as a float: finite and >= 0 (0: unconditional, 1: conditional, > 1: guided)."""
    if isinstance(scale, torch.Tensor):
        scale = float(scale)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not np.isfinite(scale) or scale < 0:
        raise InputError(f"the guidance scale must be a finite number >= 0 (diffusers' guidance_scale s: 0 samples "
                         f"unconditionally, 1 the class-conditional model, s > 1 guides; Ho & Salimans' w = s - 1), "
                         f"got {scale!r}")
    return check_number(scale, "guidance scale")


def check_classes(y, num_classes):
    """The requested classes (an int or (N,) in 0..K-1) as an int64 NumPy array; as the reference's."""
    if num_classes is None:
        raise InputError("guidance and class labels need a class-conditional model (trained with --class-cond); "
                         "this model is unconditional")
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return check_labels(y, num_classes, allow_null=False)


def combine(out_cond, out_uncond, scale, channels=None):
    """(W2) out_null + s (out_c - out_null) on the first ``channels`` channels (dim 1; None: all); the rest
    are the conditional pass's."""
    c = out_cond.shape[1] if channels is None else channels
    # (W2)  eps_s = eps(x, null) + s (eps(x, c) - eps(x, null))
    mixed = out_uncond[:, :c] + scale * (out_cond[:, :c] - out_uncond[:, :c])
    return mixed if c == out_cond.shape[1] else torch.cat([mixed, out_cond[:, c:]], dim=1)


def guided(model, y, scale, num_classes, channels=None):
    """(W2, W4) den(x, level) from the conditional ``model(x, level, y)``; as the reference's. ``level``: a
    LongTensor (N,) of steps (repeated for the doubled batch) or a Python number (passed as it is)."""
    labels, s = check_classes(y, num_classes), check_scale(scale)
    cache = {}

    def _labels(n, device):
        """[y | null] (2N,) as a long tensor on ``device``, made once per (n, device)."""
        key = (n, str(device))
        if key not in cache:
            yc = check_labels(labels, num_classes, n, allow_null=False)
            both = np.concatenate([yc, np.full(n, num_classes, dtype=np.int64)])
            cache[key] = torch.from_numpy(both).to(device)
        return cache[key]

    def den(x, level):
        n = x.shape[0]
        both = _labels(n, x.device)
        if s == 1.0:
            return model(x, level, both[:n])                            # (W2)  s = 1: the conditional model
        if s == 0.0:
            return model(x, level, both[n:])                            # (W2)  s = 0: the unconditional model
        lv = torch.cat([level, level]) if isinstance(level, torch.Tensor) and level.ndim else level
        out = model(torch.cat([x, x]), lv, both)                        # one batch [x | x], [y | null]
        return combine(out[:n], out[n:], s, channels)

    return den
