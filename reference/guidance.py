"""Classifier-free guidance (Ho & Salimans 2022) — derivations/guidance.md (W1-W6).

A class-conditional model ``model(x, level, y)`` (unet.UNet / unet.MLP with num_classes=K, W1; the mixture
oracle's ``denoiser``) is turned into the unconditional-signature denoiser every sampler takes::

    den = guided(model, y, scale, num_classes)     # den(x, level) -> model output
    samplers.sample_loop(sched, den, x_T, rng, ...)                        # DDPM / DDIM (A1, A2)
    solvers.sample(solvers.model_denoiser(sched, den, prediction), ...)   # Euler / Heun / DPM-Solver++ (K6)

``level`` is whatever the sampler passes, the 0-based step t (an int array (N,)) or the solvers' sigma (a
float): guided passes it through, repeated for the doubled batch where it is an array. The combination

    out_s = out(x, null) + s (out(x, c) - out(x, null))                                           (W2)

is taken on the raw model output, before any conversion: eps, x0 and v are affine in one another at fixed
x_t with coefficients that do not depend on the output, and the weights 1 - s and s sum to one, so the same
line in any of the three (or in D) gives the same guided step (W4). s is diffusers' ``guidance_scale``;
Ho & Salimans' w is s - 1. s = 1 is the conditional model (one pass), s = 0 the unconditional one (one
pass, the null class); any other s runs the two passes as one batch [x | x] with labels [y | null].
"""
from __future__ import annotations

import numpy as np

from .errors import InputError, check_labels, check_number


def check_scale(scale):
    """The guidance scale s as a float: finite and >= 0 (0: unconditional, 1: conditional, > 1: guided)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not np.isfinite(scale) or scale < 0:
        raise InputError(f"the guidance scale must be a finite number >= 0 (diffusers' guidance_scale s: 0 samples "
                         f"unconditionally, 1 the class-conditional model, s > 1 guides; Ho & Salimans' w = s - 1), "
                         f"got {scale!r}")
    return check_number(scale, "guidance scale")


def check_classes(y, num_classes):
    """The requested classes: an int or an int array (N,), each in 0..K-1 (the null class is not a class to
    ask for: it is what the scale mixes in). num_classes None (an unconditional model) is refused."""
    if num_classes is None:
        raise InputError("guidance and class labels need a class-conditional model (trained with --class-cond); "
                         "this model is unconditional")
    return check_labels(y, num_classes, allow_null=False)


def combine(out_cond, out_uncond, scale, channels=None):
    """(W2) out_null + s (out_c - out_null) on the first ``channels`` channels (axis 1; None: all). The rest
    (a learned variance's channels, V1) are the conditional pass's."""
    c = out_cond.shape[1] if channels is None else channels
    # (W2)  eps_s = eps(x, null) + s (eps(x, c) - eps(x, null))
    mixed = out_uncond[:, :c] + scale * (out_cond[:, :c] - out_uncond[:, :c])
    return mixed if c == out_cond.shape[1] else np.concatenate([mixed, out_cond[:, c:]], axis=1)


def guided(model, y, scale, num_classes, channels=None):
    """(W2, W4) den(x, level) from the conditional ``model(x, level, y)``: guidance scale s, classes y (an int
    or (N,) in 0..K-1), K = num_classes (label K is the null class). ``channels``: combine only the first C
    output channels (``combine``). Raises InputError for an unconditional model, a class out of range or a
    negative scale."""
    labels, s = check_classes(y, num_classes), check_scale(scale)

    def den(x, level):
        n = x.shape[0]
        yc = check_labels(labels, num_classes, n, allow_null=False)     # (N,): an int is every example's
        if s == 1.0:
            return model(x, level, yc)                                  # (W2)  s = 1: the conditional model
        null = np.full(n, num_classes, dtype=np.int64)
        if s == 0.0:
            return model(x, level, null)                                # (W2)  s = 0: the unconditional model
        both = np.concatenate([level, level]) if np.ndim(level) else level
        out = model(np.concatenate([x, x]), both, np.concatenate([yc, null]))   # one batch [x | x], [y | null]
        return combine(out[:n], out[n:], s, channels).astype(out.dtype, copy=False)

    return den
