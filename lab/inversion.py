"""Encoding data to latents and back with the probability-flow ODE (DDIM inversion, derivations/solvers.md N6):
what ``sample --invert`` runs. The data file is checked in the CLI's words before any network call."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference.errors import InputError

from .sampling import _no_grad, continuous_plan, is_continuous, ode_denoiser, plan

# The round trip's defaults: its error falls at about first order in the steps (N6), and the leading grid, which
# starts below the cosine schedule's clipped last step, gave the smaller error on both digits and moons. A model
# of a continuous objective runs on its objective's default grid (common/sampler_table.py's DEFAULT_GRIDS).
INVERT_DEFAULT_STEPS = 100
INVERT_DEFAULT_GRID = "leading"
INVERT_SAMPLER = "euler"   # the step run forwards (N6); ddim with eta 0 is the same step on the chain (K7)


def load_items(path, item_shape):
    """The items of a .npy file in model space, float64 (N, *item_shape): refused with a message naming
    --invert for a missing or unreadable file, another shape, non-finite values, or images outside [-1, 1]."""
    p = Path(path)
    if p.suffix != ".npy":
        raise InputError(f"--invert must name a .npy file (e.g. written by sample), got {str(path)!r}")
    if not p.is_file():
        raise InputError(f"--invert {path}: file not found")
    try:
        x = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"--invert {path}: not a readable .npy array ({e})") from None
    shape = tuple(item_shape)
    want = f"(N, {', '.join(map(str, shape))})"
    if x.dtype.kind not in "fiu":
        raise InputError(f"--invert {path}: holds {x.dtype} values, not numbers")
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape or x.shape[0] < 1:
        hint = " (one item: add a leading axis of 1)" if tuple(x.shape) == shape else ""
        raise InputError(f"--invert {path}: shape {tuple(x.shape)}, but this model's items need {want}{hint}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise InputError(f"--invert {path}: holds {int(np.size(x) - np.isfinite(x).sum())} non-finite value(s)")
    if len(shape) == 3 and (x.min() < -1 or x.max() > 1):
        hint = " (8-bit pixels? convert with x / 127.5 - 1)" if x.min() >= 0 and x.max() <= 255 else ""
        raise InputError(f"--invert {path}: values {x.min():.4g}..{x.max():.4g}, but images in model space lie "
                         f"in [-1, 1]{hint}")
    return x


@dataclass(frozen=True)
class Inversion:
    latents: np.ndarray          # x_T (VP, at the grid's top level), (N, ...)
    reconstruction: np.ndarray   # x_T decoded with Euler down the same grid
    steps: int
    grid: str
    nfe: int                     # network calls to decode (steps)
    nfe_encode: int              # network calls to encode: steps - 1 (the step up from sigma = 0 has slope 0, N6)
    rmse: float                  # sqrt(mean (x - x_rec)^2) over every value
    max_abs: float


def encode_decode(B, trainer, x0, steps, grid=None, progress=None, decode_progress=None):
    """(N6) x0 (NumPy, model space) -> Inversion: Euler up the grid of ``steps`` trained levels (``grid`` default
    INVERT_DEFAULT_GRID; a continuous objective's model: its noise levels, its objective's grid by default), then
    Euler down it again (the decoding ``sample --sampler euler`` would run from those latents).
    ``progress`` wraps the encoding's steps, ``decode_progress`` (default: ``progress``) the decoding's."""
    cfg, images = trainer.cfg, len(trainer.item_shape) == 3
    if is_continuous(cfg):
        p = continuous_plan(B, cfg, INVERT_SAMPLER, steps, grid)
    else:
        p = plan(B, trainer.sched, INVERT_SAMPLER, steps, grid=grid or INVERT_DEFAULT_GRID, clip_x0=images,
                 prediction=cfg.prediction)
    grid, sigmas = p.where, p.sigmas
    D = ode_denoiser(B, trainer)
    x = B.from_numpy(x0.astype(np.float64 if cfg.dtype == "float64" else np.float32))
    if B.name == "torch":
        x = x.to(trainer.device)
    with _no_grad(B):
        z = B.solvers.invert(D, x, sigmas, progress=progress, item_shape=tuple(trainer.item_shape),
                             data_range=(-1.0, 1.0) if images else None).x
        rec = B.solvers.sample(D, z, sigmas, INVERT_SAMPLER, progress=decode_progress or progress).x
    z, rec = np.asarray(B.to_numpy(z), np.float64), np.asarray(B.to_numpy(rec), np.float64)
    err = rec - x0
    nfe = int(B.solvers.nfe(INVERT_SAMPLER, sigmas))
    return Inversion(z, rec, int(steps), grid, nfe, nfe - 1,
                     float(np.sqrt(np.mean(err ** 2))), float(np.abs(err).max()))
