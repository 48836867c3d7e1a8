"""The reference's networks (reference/unet.py) as torch modules: same constructor arguments,
``state_dict()`` keys identical to the reference's ``params`` names, same math.

``forward(x, t) -> out`` with x (N, C, H, W) (any memory format; channels_last works) or
(N, in_dim), and t an int tensor (N,) of 0-based time indices. No data-dependent Python
control flow in forward, so the models compile with torch.compile.

Initialisation follows the reference's rule (conv/linear U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
GroupNorm 1/0, final layer zero) with a torch.Generator seeded from ``seed``; the values differ
from the reference's numpy draws — load the reference's params to get identical models.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .layers import Conv2d, GroupNorm, Linear, attention, silu, timestep_embedding, torch_dtype, upsample_nearest2x


def _init_params(model, seed, zero):
    """Reference rule: conv/linear weight and bias U(-1/sqrt(fan_in), +), GroupNorm 1 and 0; ``zero`` module zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (Conv2d, Linear)):
                bound = 1.0 / math.sqrt(m.weight[0].numel())  # fan_in = in * kh * kw
                for p in (m.weight, m.bias):
                    p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * (2 * bound) - bound)
        for p in zero.parameters():
            p.zero_()


class TimeMLP(nn.Module):
    """temb = fc2(SiLU(fc1(emb(t)))), emb the (B6) sinusoidal embedding of dim emb_dim."""

    def __init__(self, emb_dim, time_dim, dtype):
        super().__init__()
        self.emb_dim = emb_dim
        self.fc1 = Linear(emb_dim, time_dim, dtype)
        self.fc2 = Linear(time_dim, time_dim, dtype)

    def forward(self, t):
        emb = timestep_embedding(t, self.emb_dim).to(self.fc1.weight.dtype)  # (N, emb_dim)
        return self.fc2(silu(self.fc1(emb)))  # (N, time_dim)


class ResBlock(nn.Module):
    """GN, SiLU, conv3x3, + temb_proj(SiLU(temb)), GN, SiLU, conv3x3, + skip(x) (1x1 when channels change)."""

    def __init__(self, c_in, c_out, time_dim, groups, dtype):
        super().__init__()
        self.norm1 = GroupNorm(groups, c_in, dtype)
        self.conv1 = Conv2d(c_in, c_out, 3, padding=1, dtype=dtype)
        self.temb_proj = Linear(time_dim, c_out, dtype)
        self.norm2 = GroupNorm(groups, c_out, dtype)
        self.conv2 = Conv2d(c_out, c_out, 3, padding=1, dtype=dtype)
        self.skip = Conv2d(c_in, c_out, 1, dtype=dtype) if c_in != c_out else None

    def forward(self, x, temb_act):
        h = self.conv1(silu(self.norm1(x)))
        # (B8)  + proj(SiLU(temb)) at every position
        h = h + self.temb_proj(temb_act)[:, :, None, None]
        h = self.conv2(silu(self.norm2(h)))
        # (B8)  residual join
        return (x if self.skip is None else self.skip(x)) + h


class AttnBlock(nn.Module):
    """out = x + proj(attention(q, k, v)), [q | k | v] = qkv(GN(x)) (1x1 convs), single head."""

    def __init__(self, channels, groups, dtype):
        super().__init__()
        self.norm = GroupNorm(groups, channels, dtype)
        self.qkv = Conv2d(channels, 3 * channels, 1, dtype=dtype)
        self.proj = Conv2d(channels, channels, 1, dtype=dtype)

    def forward(self, x):
        N, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(N, 3 * C, H * W).transpose(1, 2)  # (N, L, 3C)
        q, k, v = qkv.split(C, dim=2)
        a = attention(q, k, v).transpose(1, 2).reshape(N, C, H, W)
        # (B8)  residual join
        return x + self.proj(a)


class Level(nn.Module):
    """One resolution on one side: res blocks (each followed by attention if flagged) and a resampling conv.

    c_ins: each res block's input channels (on the up side they include the skip it concatenates).
    """

    def __init__(self, c_ins, ch, attn, time_dim, groups, dtype, resample=None):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c_in, ch, time_dim, groups, dtype) for c_in in c_ins)
        self.attn = nn.ModuleList(AttnBlock(ch, groups, dtype) for _ in c_ins if attn)
        # (B9)  "down": stride-2 conv3x3 after the blocks; "up": conv3x3 after nearest 2x upsampling
        self.downsample = Conv2d(ch, ch, 3, stride=2, padding=1, dtype=dtype) if resample == "down" else None
        self.upsample = Conv2d(ch, ch, 3, padding=1, dtype=dtype) if resample == "up" else None

    def block(self, r, h, temb_act):
        """Res block r, then its attention block if any."""
        h = self.res[r](h, temb_act)
        return self.attn[r](h) if len(self.attn) else h


class Mid(nn.Module):
    def __init__(self, ch, attn, time_dim, groups, dtype):
        super().__init__()
        self.res1 = ResBlock(ch, ch, time_dim, groups, dtype)
        self.attn = AttnBlock(ch, groups, dtype) if attn else None
        self.res2 = ResBlock(ch, ch, time_dim, groups, dtype)

    def forward(self, h, temb_act):
        h = self.res1(h, temb_act)
        if self.attn is not None:
            h = self.attn(h)
        return self.res2(h, temb_act)


class UNet(nn.Module):
    """Conv UNet for (N, in_channels, H, W) images; see reference.unet.UNet for the architecture."""

    def __init__(self, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                 attention=(False, False, True), groups=8, out_channels=None, time_dim=None,
                 mid_attention=True, dtype=torch.float32, seed=0):
        super().__init__()
        dt = torch_dtype(dtype)
        td = time_dim or 4 * base_channels
        chans = [base_channels * m for m in channel_mults]
        attention = tuple(bool(a) for a in attention)
        if len(attention) != len(chans):
            raise ValueError(f"attention {attention} needs one flag per level of channel_mults {channel_mults}")
        if int(num_res_blocks) != num_res_blocks or num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be an integer >= 1, got {num_res_blocks}")
        nrb = int(num_res_blocks)
        self.time_mlp = TimeMLP(base_channels, td, dt)
        self.conv_in = Conv2d(in_channels, chans[0], 3, padding=1, dtype=dt)
        self.down, c, skips = nn.ModuleList(), chans[0], [chans[0]]  # skips: channels of every kept output
        for l, ch in enumerate(chans):
            last = l == len(chans) - 1
            self.down.append(Level([c] + [ch] * (nrb - 1), ch, attention[l], td, groups, dt, None if last else "down"))
            skips += [ch] * (nrb + (not last))
            c = ch
        self.mid = Mid(c, mid_attention, td, groups, dt)
        up = [None] * len(chans)
        for l in reversed(range(len(chans))):
            c_ins = []
            for _ in range(nrb + 1):  # DDPM: one more block up than down, each taking a skip
                c_ins.append(c + skips.pop())
                c = chans[l]
            up[l] = Level(c_ins, chans[l], attention[l], td, groups, dt, "up" if l > 0 else None)
        self.up = nn.ModuleList(up)
        self.norm_out = GroupNorm(groups, c, dt)
        self.conv_out = Conv2d(c, out_channels or in_channels, 3, padding=1, dtype=dt)
        _init_params(self, seed, zero=self.conv_out)

    def forward(self, x, t):
        temb_act = silu(self.time_mlp(t))  # SiLU(temb), shared by every residual block
        h = self.conv_in(x)
        skips = [h]  # every down-path output, consumed last-in first-out by the up path
        for level in self.down:
            for r in range(len(level.res)):
                h = level.block(r, h, temb_act)
                skips.append(h)
            if level.downsample is not None:
                h = level.downsample(h)  # (B9) stride-2 conv3x3
                skips.append(h)
        h = self.mid(h, temb_act)
        for l in reversed(range(len(self.up))):
            level = self.up[l]
            for r in range(len(level.res)):
                # (B8)  skip connection: concatenate [h | skip] along channels
                h = level.block(r, torch.cat([h, skips.pop()], dim=1), temb_act)
            if level.upsample is not None:
                h = level.upsample(upsample_nearest2x(h))  # (B9) nearest 2x, conv3x3
        return self.conv_out(silu(self.norm_out(h)))


class MLP(nn.Module):
    """Residual MLP denoiser for (N, in_dim) points; see reference.unet.MLP."""

    def __init__(self, in_dim=2, hidden=128, num_layers=3, time_dim=64, dtype=torch.float32, seed=0):
        super().__init__()
        dt = torch_dtype(dtype)
        self.time_mlp = TimeMLP(time_dim, hidden, dt)
        self.in_proj = Linear(in_dim, hidden, dt)
        self.layers = nn.ModuleList(Linear(hidden, hidden, dt) for _ in range(num_layers))
        self.out_proj = Linear(hidden, in_dim, dt)
        _init_params(self, seed, zero=self.out_proj)

    def forward(self, x, t):
        # (B8)  h = in_proj(x) + temb
        h = self.in_proj(x) + self.time_mlp(t)
        for layer in self.layers:
            # (B8)  residual: h <- h + layer(SiLU(h))
            h = h + layer(silu(h))
        return self.out_proj(silu(h))
