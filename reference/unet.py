"""The denoising networks: a small conv UNet for 8x8 to 32x32 images and an MLP for 2-D data.

Built from the layers in layers.py, backward written by hand — derivations/backprop.md (B1..B10).
API (both models)::

    out, cache = model.forward(x, t)       # x (N, C, H, W) or (N, in_dim); t int array (N,), 0-based
    dx, grads = model.backward(dout, cache) # grads keyed like model.params
    _, grads = model.backward(dout, cache, input_grad=False)  # dx is None; training needs no more

``model.params`` maps names to arrays; the names are exactly the keys of the torch port's
``state_dict()`` (conv weights OIHW, linear weights (out, in)), e.g.::

    time_mlp.fc1.weight   conv_in.weight   down.0.res.0.norm1.weight   down.0.res.0.conv1.weight
    down.0.res.0.temb_proj.weight   down.0.downsample.weight   down.2.attn.0.qkv.weight
    mid.res1.conv2.weight   mid.attn.proj.weight   up.1.res.0.skip.weight   up.1.upsample.weight
    norm_out.weight   conv_out.weight

Inside, activations are NHWC (layers.py explains why); forward/backward transpose at the edges.
Initialisation (seeded numpy Generator, no global state): conv and linear weights and biases
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as PyTorch's default, GroupNorm weight 1 and bias 0, and the
final layer (UNet conv_out, MLP out_proj) zero so that the untrained model outputs 0.
"""
from __future__ import annotations

import numpy as np

from . import layers as L
from .errors import InputError, check_finite


# ----------------------------------------------------------------------------------------------
# Parameters: initialisation and loading (shared by UNet and MLP)


class _Model:
    """Parameter bookkeeping shared by the two networks: init, load_params, time embedding, t checks."""

    def _init_start(self, dtype, seed):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise InputError(f"dtype must be float32 or float64, got {self.dtype}")
        self.params = {}
        self._rng = np.random.default_rng(seed)

    def _uniform(self, shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return self._rng.uniform(-bound, bound, size=shape).astype(self.dtype)

    def _add_conv(self, name, c_in, c_out, k, zero=False):
        shape = (c_out, c_in, k, k)
        self.params[f"{name}.weight"] = np.zeros(shape, self.dtype) if zero else self._uniform(shape, c_in * k * k)
        self.params[f"{name}.bias"] = np.zeros(c_out, self.dtype) if zero else self._uniform(c_out, c_in * k * k)

    def _add_linear(self, name, d_in, d_out, zero=False):
        shape = (d_out, d_in)
        self.params[f"{name}.weight"] = np.zeros(shape, self.dtype) if zero else self._uniform(shape, d_in)
        self.params[f"{name}.bias"] = np.zeros(d_out, self.dtype) if zero else self._uniform(d_out, d_in)

    def _add_norm(self, name, channels):
        self.params[f"{name}.weight"] = np.ones(channels, self.dtype)
        self.params[f"{name}.bias"] = np.zeros(channels, self.dtype)

    def load_params(self, params):
        """Replace the parameters by ``params`` (name -> array-like), cast to the model dtype.

        Raises InputError naming the missing or unexpected keys, or the key whose shape differs.
        """
        missing = sorted(set(self.params) - set(params))
        unexpected = sorted(set(params) - set(self.params))
        if missing or unexpected:
            raise InputError(f"load_params: missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for name, old in self.params.items():
            value = np.asarray(params[name])
            if value.shape != old.shape:
                raise InputError(f"load_params: {name!r} has shape {value.shape}, the model expects {old.shape}")
            new[name] = check_finite(np.array(value, dtype=self.dtype), name)
        self.params = new

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def _time_embedding(self, t, n):
        """0-based integer t (int or (N,)) -> float64 sinusoidal embedding (N, emb_dim) in model dtype."""
        ta = np.asarray(t)
        if ta.dtype == bool or not np.issubdtype(ta.dtype, np.integer):
            raise InputError(f"t must be an integer time index (0-based), got dtype {ta.dtype}")
        if ta.ndim > 1 or (ta.ndim == 1 and ta.shape[0] != n):
            raise InputError(f"t must be an int or an int array of shape ({n},), got shape {ta.shape}")
        if ta.size and ta.min() < 0:
            raise InputError(f"t must be >= 0 (0-based time index), got {int(ta.min())}")
        t_n = np.broadcast_to(ta, (n,))
        return L.timestep_embedding(t_n, self.emb_dim).astype(self.dtype)  # (B6)  (N, emb_dim)

    def _time_mlp_forward(self, t, n):
        p = self.params
        emb = self._time_embedding(t, n)  # (N, emb_dim)
        h, c1 = L.linear_forward(emb, p["time_mlp.fc1.weight"], p["time_mlp.fc1.bias"])
        h, c2 = L.silu_forward(h)
        temb, c3 = L.linear_forward(h, p["time_mlp.fc2.weight"], p["time_mlp.fc2.bias"])  # (N, time_dim)
        return temb, (c1, c2, c3)

    def _time_mlp_backward(self, dtemb, cache, grads):
        c1, c2, c3 = cache
        dh, grads["time_mlp.fc2.weight"], grads["time_mlp.fc2.bias"] = L.linear_backward(dtemb, c3)
        dh = L.silu_backward(dh, c2)
        _, grads["time_mlp.fc1.weight"], grads["time_mlp.fc1.bias"] = L.linear_backward(dh, c1)

    def _input(self, x, ndim, what):
        x = np.asarray(x)
        if x.ndim != ndim or x.dtype.kind not in "fiu":
            raise InputError(f"x must be a numeric array {what}, got shape {x.shape} dtype {x.dtype}")
        return check_finite(x.astype(self.dtype, copy=False), "x")


# ----------------------------------------------------------------------------------------------
# UNet blocks: forward and backward side by side. p = params, pre = the block's name prefix.


def _conv(p, name, x, stride=1, padding=1):
    return L.conv2d_forward(x, p[f"{name}.weight"], p[f"{name}.bias"], stride, padding)


def _gn(p, name, x, groups):
    return L.group_norm_forward(x, p[f"{name}.weight"], p[f"{name}.bias"], groups)


def _res_forward(p, pre, x, temb_act, groups):
    """Residual block: GN, SiLU, conv3x3, + proj(SiLU(temb)), GN, SiLU, conv3x3, + skip(x). x (N, H, W, Cin)."""
    h, c_n1 = _gn(p, f"{pre}.norm1", x, groups)
    h, c_a1 = L.silu_forward(h)
    h, c_c1 = _conv(p, f"{pre}.conv1", h)  # (N, H, W, Cout)
    tp, c_t = L.linear_forward(temb_act, p[f"{pre}.temb_proj.weight"], p[f"{pre}.temb_proj.bias"])  # (N, Cout)
    # (B8)  h += proj(temb), the same vector at every position
    h += tp[:, None, None, :]
    h, c_n2 = _gn(p, f"{pre}.norm2", h, groups)
    h, c_a2 = L.silu_forward(h)
    h, c_c2 = _conv(p, f"{pre}.conv2", h)
    has_skip = f"{pre}.skip.weight" in p
    skip, c_s = _conv(p, f"{pre}.skip", x, padding=0) if has_skip else (x, None)
    # (B8)  residual join: out = skip(x) + h
    h += skip
    return h, (c_n1, c_a1, c_c1, c_t, c_n2, c_a2, c_c2, c_s)


def _res_backward(pre, dout, cache, grads):
    """-> dx (N, H, W, Cin) and d(SiLU(temb)) (N, time_dim); parameter gradients written into grads."""
    c_n1, c_a1, c_c1, c_t, c_n2, c_a2, c_c2, c_s = cache
    g = grads
    # (B8)  the residual join passes dout unchanged to both branches
    dh, g[f"{pre}.conv2.weight"], g[f"{pre}.conv2.bias"] = L.conv2d_backward(dout, c_c2)
    dh = L.silu_backward(dh, c_a2)
    dh, g[f"{pre}.norm2.weight"], g[f"{pre}.norm2.bias"] = L.group_norm_backward(dh, c_n2)
    # (B8)  proj(temb) was added at every position: its gradient is the sum over positions
    dtp = dh.sum(axis=(1, 2))  # (N, Cout)
    dtemb_act, g[f"{pre}.temb_proj.weight"], g[f"{pre}.temb_proj.bias"] = L.linear_backward(dtp, c_t)
    dh, g[f"{pre}.conv1.weight"], g[f"{pre}.conv1.bias"] = L.conv2d_backward(dh, c_c1)
    dh = L.silu_backward(dh, c_a1)
    dx, g[f"{pre}.norm1.weight"], g[f"{pre}.norm1.bias"] = L.group_norm_backward(dh, c_n1)
    if c_s is not None:
        dskip, g[f"{pre}.skip.weight"], g[f"{pre}.skip.bias"] = L.conv2d_backward(dout, c_s)
    else:
        dskip = dout
    # (B8)  x feeds both branches: gradients add
    dx += dskip
    return dx, dtemb_act


def _attn_forward(p, pre, x, groups):
    """Self-attention block: out = x + proj(attention(q, k, v)), [q, k, v] = qkv(GN(x)). x (N, H, W, C)."""
    N, H, W, C = x.shape
    h, c_n = _gn(p, f"{pre}.norm", x, groups)
    qkv, c_qkv = _conv(p, f"{pre}.qkv", h, padding=0)  # (N, H, W, 3C): channels [q | k | v]
    qkv = qkv.reshape(N, H * W, 3 * C)
    a, c_att = L.attention_forward(qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:])  # (N, L, C)
    o, c_p = _conv(p, f"{pre}.proj", a.reshape(N, H, W, C), padding=0)
    # (B8)  residual join
    o += x
    return o, (c_n, c_qkv, c_att, c_p)


def _attn_backward(pre, dout, cache, grads):
    c_n, c_qkv, c_att, c_p = cache
    g = grads
    N, H, W, C = dout.shape
    da, g[f"{pre}.proj.weight"], g[f"{pre}.proj.bias"] = L.conv2d_backward(dout, c_p)
    dq, dk, dv = L.attention_backward(da.reshape(N, H * W, C), c_att)
    dqkv = np.concatenate([dq, dk, dv], axis=-1).reshape(N, H, W, 3 * C)
    dh, g[f"{pre}.qkv.weight"], g[f"{pre}.qkv.bias"] = L.conv2d_backward(dqkv, c_qkv)
    dx, g[f"{pre}.norm.weight"], g[f"{pre}.norm.bias"] = L.group_norm_backward(dh, c_n)
    # (B8)  residual join: gradients add
    dx += dout
    return dx


# ----------------------------------------------------------------------------------------------
# UNet


class UNet(_Model):
    """Conv UNet for (N, in_channels, H, W) images, H and W divisible by 2^(levels - 1); DDPM's layout.

    Level l has base_channels * channel_mults[l] channels. Down: conv_in, then per level
    num_res_blocks residual blocks (each followed by self-attention where attention[l]) and, between
    levels, a stride-2 conv3x3. Every one of these outputs (conv_in's, each block's, each
    downsample's) is kept as a skip. Middle: res, attention (unless mid_attention=False), res. Up: per level,
    from the lowest, num_res_blocks + 1 residual blocks (+ attention where attention[l]), each
    taking [h | the most recent unused skip] concatenated on channels, then nearest 2x + conv3x3
    between levels — the layout of Ho et al.'s diffusion_tf/models/unet.py (and diffusers'
    UNet2DModel), so DDPM's CIFAR-10 arguments give its 35.7M parameters.
    Time: sinusoidal embedding of dim base_channels (B6) -> Linear, SiLU, Linear to time_dim
    (default 4 base_channels); each residual block adds Linear(SiLU(temb)).
    """

    def __init__(self, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                 attention=(False, False, True), groups=8, out_channels=None, time_dim=None,
                 mid_attention=True, dtype=np.float32, seed=0):
        channel_mults, attention = tuple(channel_mults), tuple(bool(a) for a in attention)
        if len(attention) != len(channel_mults):
            raise InputError(f"attention {attention} needs one flag per level of channel_mults {channel_mults}")
        chans = [base_channels * m for m in channel_mults]
        if any(c % groups for c in chans):
            raise InputError(f"every level's channels {chans} must be divisible by groups={groups}")
        if int(num_res_blocks) != num_res_blocks or num_res_blocks < 1:
            raise InputError(f"num_res_blocks must be an integer >= 1, got {num_res_blocks}")
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.chans, self.attention, self.groups, self.num_res_blocks = chans, attention, groups, int(num_res_blocks)
        self.mid_attention = bool(mid_attention)
        self.emb_dim, self.time_dim = base_channels, time_dim or 4 * base_channels  # sinusoid and MLP widths
        self.config = dict(in_channels=in_channels, base_channels=base_channels, channel_mults=channel_mults,
                           num_res_blocks=num_res_blocks, attention=attention, groups=groups,
                           out_channels=self.out_channels, time_dim=self.time_dim, mid_attention=self.mid_attention,
                           dtype=np.dtype(dtype).name)
        self._init_start(dtype, seed)
        self._build()

    def _skip_channels(self):
        """Channels of the kept skips, in the order the down path makes them (conv_in's output first)."""
        skips = [self.chans[0]]
        for l, ch in enumerate(self.chans):
            skips += [ch] * (self.num_res_blocks + (l < len(self.chans) - 1))  # each block's, then the downsample's
        return skips

    def _up_in_channels(self):
        """Input channels of every up residual block, [level][r]: the h arriving plus the skip it takes."""
        chans, nrb, skips = self.chans, self.num_res_blocks, self._skip_channels()
        c, ins = chans[-1], [None] * len(chans)
        for l in reversed(range(len(chans))):
            ins[l] = []
            for _ in range(nrb + 1):
                ins[l].append(c + skips.pop())  # (B8) [h | skip]
                c = chans[l]
        return ins

    def _build(self):
        td, chans, nrb = self.time_dim, self.chans, self.num_res_blocks
        self._add_linear("time_mlp.fc1", self.emb_dim, td)
        self._add_linear("time_mlp.fc2", td, td)
        self._add_conv("conv_in", self.in_channels, chans[0], 3)
        c = chans[0]
        for l, ch in enumerate(chans):  # (names in the torch port's state_dict order)
            self._add_level("down", l, [c] + [ch] * (nrb - 1), ch, "downsample" if l < len(chans) - 1 else None)
            c = ch
        self._add_res("mid.res1", c, c)
        if self.mid_attention:
            self._add_attn("mid.attn", c)
        self._add_res("mid.res2", c, c)
        for l, c_ins in enumerate(self._up_in_channels()):
            self._add_level("up", l, c_ins, chans[l], "upsample" if l > 0 else None)
        c = chans[0]
        self._add_norm("norm_out", c)
        self._add_conv("conv_out", c, self.out_channels, 3, zero=True)

    def _add_level(self, side, l, c_ins, ch, resample):
        for r, c_in in enumerate(c_ins):
            self._add_res(f"{side}.{l}.res.{r}", c_in, ch)
        for r in range(len(c_ins) if self.attention[l] else 0):
            self._add_attn(f"{side}.{l}.attn.{r}", ch)
        if resample:
            self._add_conv(f"{side}.{l}.{resample}", ch, ch, 3)

    def _add_res(self, pre, c_in, c_out):
        self._add_norm(f"{pre}.norm1", c_in)
        self._add_conv(f"{pre}.conv1", c_in, c_out, 3)
        self._add_linear(f"{pre}.temb_proj", self.time_dim, c_out)
        self._add_norm(f"{pre}.norm2", c_out)
        self._add_conv(f"{pre}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            self._add_conv(f"{pre}.skip", c_in, c_out, 1)

    def _add_attn(self, pre, ch):
        self._add_norm(f"{pre}.norm", ch)
        self._add_conv(f"{pre}.qkv", ch, 3 * ch, 1)
        self._add_conv(f"{pre}.proj", ch, ch, 1)

    def _level_blocks(self, side, l):
        """Level l's blocks on side 'down' or 'up' in forward order: [(res name, attention name or None)]."""
        n = self.num_res_blocks + (side == "up")
        return [(f"{side}.{l}.res.{r}", f"{side}.{l}.attn.{r}" if self.attention[l] else None) for r in range(n)]

    def _mid_blocks(self):
        """The middle: (res1, attention or None), then (res2, None)."""
        return [("mid.res1", "mid.attn" if self.mid_attention else None), ("mid.res2", None)]

    def _block_forward(self, res, attn, h, temb_act, caches):
        """A residual block, then its attention block if any."""
        h, caches[res] = _res_forward(self.params, res, h, temb_act, self.groups)
        if attn:
            h, caches[attn] = _attn_forward(self.params, attn, h, self.groups)
        return h

    def forward(self, x, t):
        """x (N, in_channels, H, W), t int (N,) 0-based -> out (N, out_channels, H, W), cache."""
        x = self._input(x, 4, "(N, C, H, W)")
        n_levels, (N, C, H, W) = len(self.chans), x.shape
        f = 2 ** (n_levels - 1)
        if C != self.in_channels or H % f or W % f:
            raise InputError(f"UNet expects (N, {self.in_channels}, H, W) with H, W divisible by {f}, got {x.shape}")
        p, caches = self.params, {}
        temb, caches["time_mlp"] = self._time_mlp_forward(t, N)
        temb_act, caches["temb_act"] = L.silu_forward(temb)  # SiLU(temb), shared by every residual block
        h, caches["conv_in"] = _conv(p, "conv_in", np.ascontiguousarray(x.transpose(0, 2, 3, 1)))  # (N, H, W, C0)
        skips = [h]  # every down-path output, consumed last-in first-out by the up path
        for l in range(n_levels):
            for res, attn in self._level_blocks("down", l):
                h = self._block_forward(res, attn, h, temb_act, caches)
                skips.append(h)
            if l < n_levels - 1:
                # (B9)  downsample: stride-2 conv3x3
                h, caches[f"down.{l}.downsample"] = _conv(p, f"down.{l}.downsample", h, stride=2)
                skips.append(h)
        for res, attn in self._mid_blocks():
            h = self._block_forward(res, attn, h, temb_act, caches)
        for l in reversed(range(n_levels)):
            for res, attn in self._level_blocks("up", l):
                # (B8)  skip connection: concatenate along channels [h | skip]
                h = np.concatenate([h, skips.pop()], axis=-1)
                h = self._block_forward(res, attn, h, temb_act, caches)
            if l > 0:
                # (B9)  upsample: nearest 2x, then conv3x3
                h, caches[f"up.{l}.nearest"] = L.upsample_nearest2x_forward(h)
                h, caches[f"up.{l}.upsample"] = _conv(p, f"up.{l}.upsample", h)
        h, caches["norm_out"] = _gn(p, "norm_out", h, self.groups)
        h, caches["act_out"] = L.silu_forward(h)
        out, caches["conv_out"] = _conv(p, "conv_out", h)  # (N, H, W, Cout)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)), caches

    def backward(self, dout, cache, input_grad=True):
        """dout (N, out_channels, H, W) -> dx (N, in_channels, H, W), grads {name: array like params[name]}.

        input_grad=False skips dx (returned as None): conv_in's weight gradient then reads the windows
        of the few-channel input rather than those of its many-channel output gradient.

        Every d below is an array this method (or a layer backward) just allocated, or a channel
        slice of one, so the in-place additions never touch dout or the cache.
        """
        caches, g, n_levels = cache, {}, len(self.chans)
        d = np.ascontiguousarray(np.asarray(dout, dtype=self.dtype).transpose(0, 2, 3, 1))  # (N, H, W, Cout)
        d, g["conv_out.weight"], g["conv_out.bias"] = L.conv2d_backward(d, caches["conv_out"])
        d = L.silu_backward(d, caches["act_out"])
        d, g["norm_out.weight"], g["norm_out.bias"] = L.group_norm_backward(d, caches["norm_out"])
        dtemb_act = np.zeros_like(caches["temb_act"][0])  # (B8) temb feeds every block: gradients add
        dskips, skip_chans = [], self._skip_channels()  # skip gradients, oldest first (the up path took them newest first)
        for l in range(n_levels):
            if l > 0:
                d, g[f"up.{l}.upsample.weight"], g[f"up.{l}.upsample.bias"] = L.conv2d_backward(
                    d, caches[f"up.{l}.upsample"])
                d = L.upsample_nearest2x_backward(d, caches[f"up.{l}.nearest"])
            for res, attn in reversed(self._level_blocks("up", l)):
                d = self._block_backward(res, attn, d, caches, g, dtemb_act)
                # (B8)  the concatenation splits its gradient: [dh | dskip]
                c_h = d.shape[-1] - skip_chans[len(dskips)]
                dskips.append(d[..., c_h:])
                d = d[..., :c_h]
        for res, attn in reversed(self._mid_blocks()):
            d = self._block_backward(res, attn, d, caches, g, dtemb_act)
        for l in reversed(range(n_levels)):  # the down path takes the skip gradients back newest first
            if l < n_levels - 1:
                # (B8)  this output fed the path down and a skip: gradients add
                d += dskips.pop()
                d, g[f"down.{l}.downsample.weight"], g[f"down.{l}.downsample.bias"] = L.conv2d_backward(
                    d, caches[f"down.{l}.downsample"])
            for res, attn in reversed(self._level_blocks("down", l)):
                d += dskips.pop()  # (B8)
                d = self._block_backward(res, attn, d, caches, g, dtemb_act)
        d += dskips.pop()  # (B8)  conv_in's output was the first skip
        d, g["conv_in.weight"], g["conv_in.bias"] = L.conv2d_backward(d, caches["conv_in"], input_grad)
        dtemb = L.silu_backward(dtemb_act, caches["temb_act"])
        self._time_mlp_backward(dtemb, caches["time_mlp"], g)
        dx = np.ascontiguousarray(d.transpose(0, 3, 1, 2)) if input_grad else None
        return dx, {k: g[k] for k in self.params}

    def _block_backward(self, res, attn, d, caches, grads, dtemb_act):
        """Backward through an attention block (if any), then its residual block."""
        if attn:
            d = _attn_backward(attn, d, caches[attn], grads)
        d, dta = _res_backward(res, d, caches[res], grads)
        dtemb_act += dta  # (B8)
        return d


# ----------------------------------------------------------------------------------------------
# MLP for 2-D data


class MLP(_Model):
    """Residual MLP denoiser for (N, in_dim) points.

    temb = fc2(SiLU(fc1(emb(t)))) with emb the sinusoidal embedding of dim time_dim (B6);
    h = in_proj(x) + temb;  h <- h + layers.i(SiLU(h)) for i < num_layers;  out = out_proj(SiLU(h)).
    """

    def __init__(self, in_dim=2, hidden=128, num_layers=3, time_dim=64, dtype=np.float32, seed=0):
        self.config = dict(in_dim=in_dim, hidden=hidden, num_layers=num_layers, time_dim=time_dim,
                           dtype=np.dtype(dtype).name)
        self.in_dim, self.hidden, self.num_layers, self.emb_dim = in_dim, hidden, num_layers, time_dim
        self._init_start(dtype, seed)
        self._add_linear("time_mlp.fc1", time_dim, hidden)
        self._add_linear("time_mlp.fc2", hidden, hidden)
        self._add_linear("in_proj", in_dim, hidden)
        for i in range(num_layers):
            self._add_linear(f"layers.{i}", hidden, hidden)
        self._add_linear("out_proj", hidden, in_dim, zero=True)

    def forward(self, x, t):
        """x (N, in_dim), t int (N,) 0-based -> out (N, in_dim), cache."""
        x = self._input(x, 2, "(N, in_dim)")
        if x.shape[1] != self.in_dim:
            raise InputError(f"MLP expects x of shape (N, {self.in_dim}), got {x.shape}")
        p, caches = self.params, {}
        temb, caches["time_mlp"] = self._time_mlp_forward(t, x.shape[0])  # (N, hidden)
        h, caches["in_proj"] = L.linear_forward(x, p["in_proj.weight"], p["in_proj.bias"])
        # (B8)  h = in_proj(x) + temb
        h += temb
        for i in range(self.num_layers):
            a, c_a = L.silu_forward(h)
            u, c_l = L.linear_forward(a, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"])
            caches[f"layers.{i}"] = (c_a, c_l)
            # (B8)  residual: h <- h + layer(SiLU(h))
            h = h + u
        a, caches["act_out"] = L.silu_forward(h)
        out, caches["out_proj"] = L.linear_forward(a, p["out_proj.weight"], p["out_proj.bias"])
        return out, caches

    def backward(self, dout, cache, input_grad=True):
        """dout (N, in_dim) -> dx (N, in_dim) (None with input_grad=False), grads {name: array like params[name]}."""
        c, g = cache, {}
        d = np.asarray(dout, dtype=self.dtype)
        d, g["out_proj.weight"], g["out_proj.bias"] = L.linear_backward(d, c["out_proj"])
        d = L.silu_backward(d, c["act_out"])
        for i in reversed(range(self.num_layers)):
            c_a, c_l = c[f"layers.{i}"]
            du, g[f"layers.{i}.weight"], g[f"layers.{i}.bias"] = L.linear_backward(d, c_l)
            # (B8)  residual: dh = dout + d(layer branch)
            d = d + L.silu_backward(du, c_a)
        # (B8)  h = in_proj(x) + temb: both receive dh
        dx, g["in_proj.weight"], g["in_proj.bias"] = L.linear_backward(d, c["in_proj"])
        self._time_mlp_backward(d, c["time_mlp"], g)
        return (dx if input_grad else None), {k: g[k] for k in self.params}
