"""ADM's residual resampling (Dhariwal & Nichol 2021, ``resblock_updown``) — derivations/backprop.md (B15).

A level transition becomes a residual block whose h and skip input x are resampled at the same point, after
the block's first GroupNorm and SiLU: ``h = conv1(resample(SiLU(GN(x))))`` and the join ``resample(x) + h``;
resample is a 2x2 average pool (stride 2) going down and nearest 2x (B9) going up. This file holds the pool's
forward and backward and the two plan steps (``res_down``, ``res_up``) that reference/unet.py's table runs::

    out, cache = avg_pool2x_forward(x)     # x (N, H, W, C), H and W even -> out (N, H/2, W/2, C)
    dx = avg_pool2x_backward(dout, cache)  # dout (N, H/2, W/2, C) -> dx (N, H, W, C)

Activations are NHWC, as everywhere in the reference's networks (layers.py says why).
"""
from __future__ import annotations

import numpy as np

from . import layers as L


def avg_pool2x_forward(x):
    """(B15) 2x2 average pooling, stride 2: out[n, y, x, c] = 1/4 sum_{a, b in {0, 1}} x[n, 2y + a, 2x + b, c]."""
    N, H, W, C = x.shape
    # (B15)  each output pixel is the mean of its own 2x2 block; blocks do not overlap
    out = x.reshape(N, H // 2, 2, W // 2, 2, C).mean(axis=(2, 4))
    return out, x.shape


def avg_pool2x_backward(dout, cache):
    """(B15) Each input pixel feeds one output pixel with weight 1/4: dx is dout / 4 copied over its 2x2 block."""
    N, H, W, C = cache
    # (B15)  dx[n, 2y + a, 2x + b, c] = dout[n, y, x, c] / 4  (a fresh array: a later backward may add into it)
    d = np.broadcast_to(dout[:, :, None, :, None, :] * 0.25, (N, H // 2, 2, W // 2, 2, C))
    return np.ascontiguousarray(d).reshape(N, H, W, C)


# ----------------------------------------------------------------------------------------------
# The plan steps: forward(h, step, run) -> out, cache; backward(dout, cache, name, grads, run) -> dh, as in unet.py.
# The block's keep pushed its input x just before; the join (add) pops it after conv2. Resampling it here, in
# the stack, is ADM's x = x_upd(x): the join then adds skip(resample(x)). Backward: the join's backward pushed
# d resample(x) on the stack of kept gradients, and nothing between pops it, so this step maps it back to dx.


def _resample_step(forward, backward):
    def step_forward(h, step, run):
        run.kept[-1], cache_x = forward(run.kept[-1])  # (B15) x = resample(x), the skip path's input
        out, cache_h = forward(h)  # (B15) h = resample(SiLU(GN(x)))
        return out, (cache_h, cache_x)

    def step_backward(dout, cache, name, grads, run):
        cache_h, cache_x = cache
        run.dkept[-1] = backward(run.dkept[-1], cache_x)  # (B15) the join's gradient back through x's resample
        return backward(dout, cache_h)

    return step_forward, step_backward


STEPS = {  # op -> (forward, backward), merged into unet.STEPS
    "res_down": _resample_step(avg_pool2x_forward, avg_pool2x_backward),  # (B15)
    "res_up": _resample_step(L.upsample_nearest2x_forward, L.upsample_nearest2x_backward),  # (B9, B15)
}
