"""The reference's layers (reference/layers.py) as torch modules — derivations/backprop.md (B1..B14).

Same math, written in torch (F.conv2d, F.group_norm, ...); autograd provides the backward.
Parameters are named ``weight`` / ``bias`` with conv weights OIHW and linear weights (out, in),
so a module's state_dict keys equal the reference's parameter names. Activations are NCHW
tensors in any memory format (channels_last works); forward has no data-dependent Python
control flow, so the modules compile with torch.compile.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

GN_EPS = 1e-5  # the default epsilon, as reference.layers.GN_EPS and torch.nn.GroupNorm (a UNet's norm_eps may differ)


def torch_dtype(dtype):
    """torch dtype from a torch dtype, a numpy dtype or its name (float32 / float64)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]


class Conv2d(nn.Module):
    """(B1) out = conv(x, weight) + bias; weight (O, C, k, k). Initialised by the owning network."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dtype=torch.float32):
        super().__init__()
        self.stride, self.padding = stride, padding
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, k, k, dtype=torch_dtype(dtype)))
        self.bias = nn.Parameter(torch.empty(out_channels, dtype=torch_dtype(dtype)))

    def forward(self, x):
        # (B1)  out[n, o, y, x] = sum_{c, i, j} xpad[n, c, s y + i, s x + j] w[o, c, i, j] + b[o]
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class Linear(nn.Module):
    """(B7) y = x W^T + b; weight (out, in)."""

    def __init__(self, in_features, out_features, dtype=torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch_dtype(dtype)))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=torch_dtype(dtype)))

    def forward(self, x):
        # (B7)  y = x W^T + b
        return F.linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    """(B12) out = weight[y], a row lookup; weight (num, dim), zero until trained or loaded (W1). Autograd's
    backward scatter-adds dout into the rows (repeated labels add up)."""

    def __init__(self, num, dim, dtype=torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num, dim, dtype=torch_dtype(dtype)))

    def forward(self, y):
        # (B12)  out = w[y]
        return F.embedding(y, self.weight)


class GroupNorm(nn.Module):
    """(B3) y = (x - mu_{n,g}) / sqrt(var_{n,g} + eps) gamma + beta; weight = gamma, bias = beta (C,)."""

    def __init__(self, groups, channels, dtype=torch.float32, eps=GN_EPS):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels, dtype=torch_dtype(dtype)))
        self.bias = nn.Parameter(torch.zeros(channels, dtype=torch_dtype(dtype)))

    def forward(self, x):
        # (B3)
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


def silu(x):
    """(B4) y = x sigmoid(x)."""
    return F.silu(x)


def timestep_embedding(t, dim):
    """(B6) Sinusoidal embedding of the 0-based time index t, as Ho et al.'s TF code (and the reference).

    half = dim / 2, freq_i = exp(-log(10000) i / (half - 1)), emb = [sin(t freq), cos(t freq)].
    Computed in float64 (t up to ~1000 times a float32 frequency would lose ~1e-4); t (N,) int tensor.
    Returns float64 (N, dim).
    """
    half = dim // 2
    # (B6)  freq_i = exp(-log(10000) i / (half - 1))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / (half - 1))
    args = t.to(torch.float64)[:, None] * freqs[None, :]  # (N, half)
    # (B6)  emb = [sin(t freq), cos(t freq)]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def pad(x, top, bottom, left, right):
    """(B11) Zero-pad the two spatial axes of NCHW x: (N, C, top + H + bottom, left + W + right)."""
    return F.pad(x, (left, right, top, bottom))


def upsample_nearest2x(x):
    """(B9) Nearest-neighbour 2x upsampling of (N, C, H, W)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def attention(q, k, v, heads=1):
    """(B5) a = softmax(q k^T / sqrt(C)) v; q, k, v (N, L, C) -> (N, L, C). (B14) ``heads`` > 1: head j attends
    with channels j d .. (j + 1) d - 1 of q, k and v (d = C / heads) and writes the same channels of a."""
    N, L, C = q.shape
    d = C // heads
    q, k, v = (a.reshape(N, L, heads, d).transpose(1, 2) for a in (q, k, v))  # (N, heads, L, d)
    # (B5)  S = q k^T / sqrt(d);  P = softmax(S);  a = P v, per head
    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
    return torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2).reshape(N, L, C)


def scale_shift(h, ss):
    """(B13) ADM's adaptive GroupNorm's modulation: h (N, C, H, W) (GroupNorm's output), ss (N, 2C) = [scale | shift]
    -> h (1 + scale) + shift, per sample and channel."""
    scale, shift = ss[:, :, None, None].chunk(2, dim=1)
    return h * (1 + scale) + shift
