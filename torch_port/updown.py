"""ADM's residual resampling in torch (reference/updown.py's twin) — derivations/backprop.md (B15).

A level transition is a residual block whose h and skip input x are resampled at the same point, after the
block's first GroupNorm and SiLU: 2x2 average pooling (stride 2) going down, nearest 2x (B9) going up.
``avg_pool2x`` is the pool; ``STEPS`` the two plan steps (``res_down``, ``res_up``) torch_port/unet.py runs.
Autograd does the backward. Activations NCHW (any memory format).
"""
from __future__ import annotations

import torch.nn.functional as F

from .layers import upsample_nearest2x


def avg_pool2x(x):
    """(B15) 2x2 average pooling, stride 2, of (N, C, H, W) with H and W even -> (N, C, H/2, W/2)."""
    return F.avg_pool2d(x, kernel_size=2, stride=2)


def _resample_step(resample):
    def step(h, module, run):
        # (B15) ADM's x = x_upd(x): the block's kept input, which its join adds back, is resampled with h
        run.kept[-1] = resample(run.kept[-1])
        return resample(h)
    return step


STEPS = {  # op -> forward, merged into unet.STEPS
    "res_down": _resample_step(avg_pool2x),  # (B15)
    "res_up": _resample_step(upsample_nearest2x),  # (B9, B15)
}
