"""Layers with hand-written backward passes — derivations/backprop.md (B1..B13).

API (CS231n pairs, each backward right under its forward)::

    out, cache = conv2d_forward(x, w, b, stride, padding)
    dx, dw, db = conv2d_backward(dout, cache)

Layout: activations are channels-last, NHWC ``(N, H, W, C)``. A convolution is then one GEMM
whose inner dimension ``(kh, kw, C)`` is contiguous, and a 1x1 convolution is a plain matrix
product with no copy. Weights keep PyTorch's layout — conv ``(O, C, kh, kw)`` (OIHW), linear
``(out, in)`` — so one parameter dict loads by name on both sides. The networks in unet.py
transpose NCHW <-> NHWC once, at their input and output.

Rules: backward never writes into ``dout`` or into the cache (in-place updates touch only arrays
the function itself just allocated); a cache holds only what backward needs; the dtype follows
the inputs (float32 by default, float64 for gradient checks). Time indices are 0-based
(paper step t+1).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .errors import InputError

GN_EPS = 1e-5  # GroupNorm's default epsilon, as torch.nn.GroupNorm (a UNet's norm_eps may differ)


# ----------------------------------------------------------------------------------------------
# Convolution (B1, B2) and the stride-2 downsampling it provides (B9)


def _conv_out_size(n, k, stride, padding):
    return (n + 2 * padding - k) // stride + 1


def _pad(x, padding):
    """Zero-pad the two spatial axes of NHWC x: (N, H, W, C) -> (N, H + 2p, W + 2p, C)."""
    if not padding:
        return np.ascontiguousarray(x)
    N, H, W, C = x.shape
    xp = np.zeros((N, H + 2 * padding, W + 2 * padding, C), dtype=x.dtype)
    xp[:, padding:padding + H, padding:padding + W] = x
    return xp


def _im2col(xp, kh, kw, stride):
    """Windows of the padded xp as GEMM rows: (N, Hp, Wp, C) -> (N Ho Wo, kh kw C), a copy.

    Row (n, y, x) holds xp[n, s y + i, s x + j, c] in (i, j, c) order.
    """
    N, Hp, Wp, C = xp.shape
    Ho, Wo = _conv_out_size(Hp, kh, stride, 0), _conv_out_size(Wp, kw, stride, 0)
    sN, sH, sW, sC = xp.strides
    # a read-only strided view: window (n, y, x) starts at pixel (s y, s x); no data is copied here.
    # Its row i is kw C consecutive numbers of xp (pixels s x .. s x + kw - 1 of row s y + i), so
    # (j, c) is one axis: the copy below then moves runs of kw C numbers, not of C (about 2x faster)
    win = as_strided(xp, (N, Ho, Wo, kh, kw * C), (sN, stride * sH, stride * sW, sH, sC), writeable=False)
    return win.reshape(N * Ho * Wo, kh * kw * C)  # the one copy: (M, K)


def _col2im(dcols, x_shape, kh, kw, stride, padding):
    """Adjoint of _im2col: every window adds its gradient back onto the pixels it read.

    dcols (kh, kw, N, Ho, Wo, C) -> dx (N, H, W, C). One vectorised add per kernel offset (i, j):
    dxpad[:, s y + i, s x + j] += dcols[i, j, :, y, x] — no scatter-add (np.add.at) needed.
    """
    N, H, W, C = x_shape
    Ho, Wo = dcols.shape[3], dcols.shape[4]
    dxp = np.zeros((N, H + 2 * padding, W + 2 * padding, C), dtype=dcols.dtype)  # (N, Hp, Wp, C)
    for i in range(kh):
        for j in range(kw):
            # (B2)  dxpad[n, s y + i, s x + j, c] += dcols[i, j, n, y, x, c]
            dxp[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += dcols[i, j]
    return dxp[:, padding:padding + H, padding:padding + W]


def conv2d_forward(x, w, b, stride=1, padding=0):
    """(B1) 2-D convolution (cross-correlation, as torch's F.conv2d) computed as one GEMM.

    x (N, H, W, C) NHWC; w (O, C, kh, kw) OIHW; b (O,) or None.
    Returns out (N, Ho, Wo, O), Ho = (H + 2 padding - kh) // stride + 1, and the cache.
    """
    O, C, kh, kw = w.shape
    if x.ndim != 4 or x.shape[-1] != C:
        raise InputError(f"conv2d: x must be NHWC with C={C} channels (from w {w.shape}), got shape {x.shape}")
    N, H, W, _ = x.shape
    # (B1)  the kernel as a (kh kw C, O) matrix: Wmat[(i, j, c), o] = w[o, c, i, j]
    w_mat = w.transpose(2, 3, 1, 0).reshape(kh * kw * C, O)
    Ho, Wo = _conv_out_size(H, kh, stride, padding), _conv_out_size(W, kw, stride, padding)
    if kh == kw == 1 and stride == 1 and padding == 0:
        xp, cols = x, x.reshape(N * H * W, C)  # (M, C): a 1x1 conv reads each pixel once, no im2col
    else:
        xp = _pad(x, padding)  # (N, Hp, Wp, C)
        cols = _im2col(xp, kh, kw, stride)  # (M, kh kw C)
    # (B1)  out[n, y, x, o] = sum_{i, j, c} xpad[n, s y + i, s x + j, c] w[o, c, i, j] + b[o]
    out = cols @ w_mat  # (M, O)
    if b is not None:
        out += b
    # the cache keeps an input, never cols (9x larger): x itself where backward reads only dout's
    # windows (B10), else the padded x, from which backward rebuilds cols
    keep = x if _flipped_backward(kh, kw, stride, padding) else xp
    return out.reshape(N, Ho, Wo, O), (keep, w_mat, x.shape, (kh, kw, stride, padding), b is not None)


def _flipped_backward(kh, kw, stride, padding):
    """Whether backward takes the stride-1 route (B10): windows of the padded dout give dx and dw."""
    return stride == 1 and kh == kw > 1 and padding <= kh - 1


def conv2d_backward(dout, cache, input_grad=True):
    """(B2) Gradients of conv2d_forward. dout (N, Ho, Wo, O) -> dx (N, H, W, C), dw (O, C, kh, kw), db (O,).

    db is None when the forward had no bias; dx is None with input_grad=False (a network's first
    layer: nothing upstream learns), and dw then comes from x's windows, which are smaller than
    dout's when C < O.
    """
    xin, w_mat, x_shape, (kh, kw, stride, padding), has_bias = cache  # xin: x or padded x, see forward
    N, H, W, C = x_shape
    O = w_mat.shape[1]
    Ho, Wo = dout.shape[1], dout.shape[2]
    dout_mat = dout.reshape(-1, O)  # (M, O)
    # (B2)  db[o] = sum_{n, y, x} dout[n, y, x, o]   (as 1^T dout: a BLAS product beats a strided sum)
    db = np.ones(dout_mat.shape[0], dtype=dout_mat.dtype) @ dout_mat if has_bias else None
    flipped, pointwise = _flipped_backward(kh, kw, stride, padding), kh == kw == 1 and stride == 1 and padding == 0
    if input_grad and flipped:
        # (B10) stride 1: D = windows of dout zero-padded by k-1-p, one row per input pixel u:
        #       D[(n, u), (i', j', o)] = dout[n, u + p - (k-1-i', k-1-j'), o]  (0 off the grid)
        k = kh
        dcols = _im2col(_pad(dout, k - 1 - padding), k, k, 1)  # (N H W, k k O)
        # (B10) dx = D Wrot: dout correlated with the kernel turned by 180 degrees, in/out channels swapped
        w_rot = w_mat.reshape(k, k, C, O)[::-1, ::-1].transpose(0, 1, 3, 2).reshape(k * k * O, C)
        dx = (dcols @ w_rot).reshape(x_shape)
        # (B10) dw[o, c, i, j] = (X^T D)[c, (k-1-i, k-1-j, o)]: the same windows, so no im2col of x
        dw_rot = (xin.reshape(-1, C).T @ dcols).reshape(C, k, k, O)
        return dx, dw_rot[:, ::-1, ::-1].transpose(3, 0, 1, 2).copy(), db
    # (B2)  dWmat = cols^T dout, back to OIHW
    xp = _pad(xin, padding) if flipped else xin  # the forward kept x unpadded for the route above
    cols = xp.reshape(-1, C) if pointwise else _im2col(xp, kh, kw, stride)
    dw = (cols.T @ dout_mat).reshape(kh, kw, C, O).transpose(3, 2, 0, 1).copy()
    if not input_grad:
        return None, dw, db
    if pointwise:
        # (B2)  dx = dout Wmat^T
        return (dout_mat @ w_mat.T).reshape(x_shape), dw, db
    # (B2)  general stride: dcols[i, j] = dout Wmat[i, j]^T, one (M, O) x (O, C) product per kernel offset,
    #       then col2im adds every window's gradient back onto the pixels it read
    w_off = w_mat.reshape(kh * kw, C, O).transpose(0, 2, 1)  # (kh kw, O, C)
    dcols = np.matmul(dout_mat, w_off).reshape(kh, kw, N, Ho, Wo, C)
    return _col2im(dcols, x_shape, kh, kw, stride, padding), dw, db


# ----------------------------------------------------------------------------------------------
# Zero padding by given amounts per side (B11): TensorFlow's "SAME" before a stride-2 conv


def pad_forward(x, top, bottom, left, right):
    """(B11) Zero-pad NHWC x (N, H, W, C) -> (N, top + H + bottom, left + W + right, C).

    pad_forward(x, 0, 1, 0, 1) and then a stride-2 3x3 conv with padding 0 is TensorFlow's "SAME" on even
    H, W: DDPM's downsampling (diffusers' downsample_padding=0), which reads rows 2y..2y+2, not 2y-1..2y+1.
    """
    N, H, W, C = x.shape
    out = np.zeros((N, top + H + bottom, left + W + right, C), dtype=x.dtype)
    # (B11)  xpad[n, top + h, left + w, c] = x[n, h, w, c], zero elsewhere
    out[:, top:top + H, left:left + W] = x
    return out, (top, left, H, W)


def pad_backward(dout, cache):
    """(B11) The adjoint of zero padding is cropping: dx = dout[:, top:top + H, left:left + W] (a fresh array)."""
    top, left, H, W = cache
    # (B11)  dx[n, h, w, c] = dout[n, top + h, left + w, c]; the padded zeros depend on no input
    return dout[:, top:top + H, left:left + W].copy()


# ----------------------------------------------------------------------------------------------
# GroupNorm (B3)


def _sum_positions(a):
    """(N, L, C) -> (N, C): sum over positions as a batched product with a ones row (BLAS, fast)."""
    return np.matmul(np.ones((1, a.shape[1]), dtype=a.dtype), a)[:, 0, :]


def group_norm_forward(x, gamma, beta, groups, eps=GN_EPS):
    """(B3) GroupNorm over channels-last x (N, ..., C) with G = groups groups of C/G channels.

    y = (x - mu_{n,g}) / sqrt(var_{n,g} + eps) * gamma_c + beta_c, where mu and var (biased) run
    over all positions and the C/G channels of group g. gamma, beta (C,). Returns y like x.
    """
    N, C = x.shape[0], x.shape[-1]
    if C % groups:
        raise InputError(f"group_norm: channels C={C} must be divisible by groups={groups}")
    G, Cg = groups, C // groups
    x3 = x.reshape(N, -1, C)  # (N, L, C)
    n = x3.shape[1] * Cg  # elements per group
    # (B3)  mu_{n,g} = (1/n) sum_{l, c in g} x[n, l, c]
    mu = _sum_positions(x3).reshape(N, G, Cg).sum(axis=-1) / n  # (N, G)
    # (B3)  var_{n,g} = (1/n) sum_{l, c in g} (x - mu)^2   (biased, as torch; two passes for accuracy)
    y = x3 - np.repeat(mu, Cg, axis=1)[:, None, :]  # (N, L, C): x - mu
    var = np.einsum("nlc,nlc->nc", y, y).reshape(N, G, Cg).sum(axis=-1) / n  # (N, G)
    rstd = 1.0 / np.sqrt(var + eps)  # (N, G)
    # (B3)  y = gamma (x - mu) rstd + beta
    y *= (np.repeat(rstd, Cg, axis=1) * gamma)[:, None, :]
    y += beta
    return y.reshape(x.shape), (x3, mu, rstd, gamma)


def group_norm_backward(dout, cache):
    """(B3) Gradients of group_norm_forward: dout like x -> dx, dgamma (C,), dbeta (C,).

    With xhat = (x - mu) rstd, dxhat = gamma dout and means over a group's n elements:
    dx = rstd (dxhat - mean_g(dxhat) - xhat mean_g(dxhat xhat)).
    """
    x3, mu, rstd, gamma = cache  # x3 (N, L, C), mu and rstd (N, G)
    N, L, C = x3.shape
    G = mu.shape[1]
    Cg, n = C // G, L * (C // G)
    d = dout.reshape(N, L, C)
    rep = lambda a: np.repeat(a, Cg, axis=1)  # (N, G) -> (N, C), one value per channel of the group
    xc = x3 - rep(mu)[:, None, :]  # (N, L, C): x - mu, recentred (x xhat-sized terms would cancel)
    # per sample and channel: A = sum_l dout,  B = sum_l dout xhat = rstd sum_l dout (x - mu)
    A = _sum_positions(d)  # (N, C)
    B = rep(rstd) * np.einsum("nlc,nlc->nc", d, xc)  # (N, C)
    # (B3)  dbeta = sum_{n,l} dout,  dgamma = sum_{n,l} dout xhat
    dbeta, dgamma = A.sum(axis=0), B.sum(axis=0)
    # (B3)  mean_g(dxhat) = sum_{c in g} gamma_c A_c / n;  mean_g(dxhat xhat) = sum_{c in g} gamma_c B_c / n
    m1 = (gamma * A).reshape(N, G, Cg).sum(axis=-1) / n  # (N, G)
    m2 = (gamma * B).reshape(N, G, Cg).sum(axis=-1) / n  # (N, G)
    # (B3)  dx = rstd gamma dout - rstd m1 - rstd^2 m2 (x - mu), coefficients per (n, c)
    dx = xc
    dx *= rep(-rstd * rstd * m2)[:, None, :]
    dx -= rep(rstd * m1)[:, None, :]
    dx += d * (rep(rstd) * gamma)[:, None, :]
    return dx.reshape(dout.shape), dgamma, dbeta


# ----------------------------------------------------------------------------------------------
# Scale-shift norm (B13), ADM's adaptive GroupNorm: GN's output modulated per sample by the embedding


def scale_shift_forward(h, scale, shift):
    """(B13) out = h (1 + scale) + shift, per sample and channel: h (N, ..., C) (GroupNorm's output), scale and
    shift (N, C) (the halves of Linear(SiLU(temb))) -> out like h."""
    h3 = h.reshape(h.shape[0], -1, h.shape[-1])  # (N, L, C)
    # (B13)  out[n, l, c] = h[n, l, c] (1 + scale[n, c]) + shift[n, c]
    out = h3 * (1.0 + scale)[:, None, :]
    out += shift[:, None, :]
    return out.reshape(h.shape), (h3, scale)


def scale_shift_backward(dout, cache):
    """(B13) dh = dout (1 + scale);  dscale = sum_l dout h;  dshift = sum_l dout (sums over positions, (N, C))."""
    h3, scale = cache
    d = dout.reshape(h3.shape)
    # (B13)  dh = dout (1 + scale);  dscale[n, c] = sum_l dout h;  dshift[n, c] = sum_l dout
    dh = d * (1.0 + scale)[:, None, :]
    return dh.reshape(dout.shape), np.einsum("nlc,nlc->nc", d, h3), _sum_positions(d)


# ----------------------------------------------------------------------------------------------
# SiLU (B4)


def silu_forward(x):
    """(B4) SiLU y = x sigmoid(x), elementwise. sigmoid(x) = (1 + tanh(x/2)) / 2 never overflows."""
    # (B4)  s = sigmoid(x) = (1 + tanh(x / 2)) / 2;  y = x s
    s = np.tanh(x * 0.5)
    s += 1.0
    s *= 0.5
    return x * s, (x, s)


def silu_backward(dout, cache):
    """(B4) dx = dout (s + x s (1 - s)) = dout s (1 + x (1 - s)), s = sigmoid(x)."""
    x, s = cache
    # (B4)  dy/dx = s (1 + x (1 - s))
    g = 1.0 - s
    g *= x
    g += 1.0
    g *= s
    return np.multiply(g, dout, out=g)


# ----------------------------------------------------------------------------------------------
# Linear (B7)


def linear_forward(x, w, b):
    """(B7) y = x W^T + b. x (N, in), w (out, in), b (out,) -> y (N, out)."""
    out = x @ w.T  # (B7)
    out += b
    return out, (x, w)


def linear_backward(dout, cache):
    """(B7) dx = dout W, dW = dout^T x, db = sum_n dout. dout (N, out)."""
    x, w = cache
    # (B7)  dx = dout W;  dW = dout^T x;  db = 1^T dout
    return dout @ w, dout.T @ x, dout.sum(axis=0)


# ----------------------------------------------------------------------------------------------
# Embedding table (B12): a row lookup, for the class labels (W1)


def embedding_forward(y, w):
    """(B12) out[n] = w[y_n]: row y_n of the table w (K, D); y int (N,) -> out (N, D), a copy."""
    return w[y], (y, w.shape)  # (B12)  out = w[y]


def embedding_backward(dout, cache):
    """(B12) dw[k] = sum_{n: y_n = k} dout[n]: a scatter-add, rows repeated in y adding up. dout (N, D)."""
    y, shape = cache
    dw = np.zeros(shape, dtype=dout.dtype)
    # (B12)  dw = onehot(y)^T dout; np.add.at accumulates repeated indices (dw[y] += dout would keep one)
    np.add.at(dw, y, dout)
    return dw


# ----------------------------------------------------------------------------------------------
# Sinusoidal time embedding (B6): no parameters, and t is an integer (no gradient)


def timestep_embedding(t, dim):
    """(B6) Sinusoidal embedding of the 0-based time index t, as Ho et al.'s TF code.

    Ho et al., diffusion_tf/nn.py ``get_timestep_embedding`` (DDPM), with half = dim / 2:
        freq_i = exp(-log(10000) i / (half - 1)),   i = 0, ..., half - 1
        emb    = [sin(t freq_0), ..., sin(t freq_{half-1}), cos(t freq_0), ..., cos(t freq_{half-1})]
    so freq_0 = 1 and freq_{half-1} = 1/10000. (improved-diffusion instead divides by half and
    puts cos first; the two are not interchangeable.) t: int or int array (N,), fed as given
    (0-based, as the DDPM code also does). dim even and >= 4. Returns float64 (N, dim).
    """
    if dim % 2 or dim < 4:
        raise InputError(f"timestep_embedding: dim must be even and >= 4, got {dim}")
    half = dim // 2
    # (B6)  freq_i = exp(-log(10000) i / (half - 1))
    freqs = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / (half - 1))  # (half,)
    args = np.asarray(t, dtype=np.float64).reshape(-1, 1) * freqs  # (N, half)
    # (B6)  emb = [sin(t freq), cos(t freq)]
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)  # (N, dim)


# ----------------------------------------------------------------------------------------------
# Nearest 2x upsampling (B9)


def upsample_nearest2x_forward(x):
    """(B9) Nearest 2x upsampling, x (N, H, W, C) -> out (N, 2H, 2W, C): out[n, 2y + a, 2x + b, c] = x[n, y, x, c]."""
    N, H, W, C = x.shape  # (B9) every pixel copied into a 2x2 block
    out = np.broadcast_to(x[:, :, None, :, None, :], (N, H, 2, W, 2, C)).reshape(N, 2 * H, 2 * W, C)
    return out, x.shape


def upsample_nearest2x_backward(dout, cache):
    """(B9) Each input pixel was copied to a 2x2 block, so its gradient is the block's sum."""
    N, H, W, C = cache
    # (B9)  dx[n, y, x, c] = sum_{a, b} dout[n, 2y + a, 2x + b, c]
    return dout.reshape(N, H, 2, W, 2, C).sum(axis=(2, 4))


# ----------------------------------------------------------------------------------------------
# Softmax attention (B5); the full block (GroupNorm, 1x1 qkv, attention, 1x1 proj, residual) is in unet.py


def attention_forward(q, k, v):
    """(B5) Single-head softmax attention a = softmax(q k^T / sqrt(C)) v over L positions: q, k, v (N, L, C) -> a."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    # (B5)  S = q k^T / sqrt(C)
    s = np.matmul(q, k.transpose(0, 2, 1))  # (N, L, L)
    s *= scale
    # (B5)  P = softmax(S) row-wise; subtracting the row max changes nothing and keeps exp <= 1
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s, out=s)
    p /= p.sum(axis=-1, keepdims=True)
    # (B5)  a = P v
    return np.matmul(p, v), (q, k, v, p)


def attention_backward(dout, cache):
    """(B5) dout (N, L, C) -> dq, dk, dv (N, L, C).

    dV = P^T dout;  dP = dout V^T;  dS = P * (dP - rowsum(dP * P));  dq = dS k / sqrt(C);  dk = dS^T q / sqrt(C).
    """
    q, k, v, p = cache
    scale = 1.0 / math.sqrt(q.shape[-1])
    # (B5)  dV = P^T dout
    dv = np.matmul(p.transpose(0, 2, 1), dout)
    # (B5)  dP = dout V^T
    dp = np.matmul(dout, v.transpose(0, 2, 1))  # (N, L, L)
    # (B5)  softmax backward: dS = P * (dP - sum_j dP_j P_j)
    dp -= np.einsum("nij,nij->ni", dp, p)[:, :, None]
    dp *= p
    dp *= scale
    # (B5)  dq = dS k / sqrt(C);  dk = dS^T q / sqrt(C)
    return np.matmul(dp, k), np.matmul(dp.transpose(0, 2, 1), q), dv
