"""The denoising networks: a small conv UNet for 8x8 to 32x32 images and an MLP for 2-D data, built
from the layers in layers.py, backward written by hand — derivations/backprop.md (B1..B15)::

    out, cache = model.forward(x, t)       # x (N, C, H, W) or (N, in_dim); t int array (N,), 0-based
    out, cache = model.forward(x, t, y)    # num_classes=K: y int (N,) in 0..K-1, or K / None (the null class)
    # continuous_time=True: t is a float (N,), the noise-level input of a continuous objective (edm, flow)
    dx, grads = model.backward(dout, cache) # grads keyed like model.params
    _, grads = model.backward(dout, cache, input_grad=False)  # dx is None; training needs no more

Each network is written once, as a plan (plans.py): its layers and joins in forward order (``unet_plan``,
``mlp_plan``; ``time_plan`` for the time MLP). The constructor makes the parameters from it, forward
runs it and records a tape (each step's backward beside its cache), and backward runs the tape in
reverse: the chain rule as a loop. torch_port builds the same plans the same way.
``model.params`` names (``conv_in.weight``, ``down.0.res.0.norm1.weight``, ``mid.attn.qkv.bias``, ...)
are exactly the torch port's ``state_dict()`` keys; conv weights OIHW, linear weights (out, in).
Activations inside are NHWC (layers.py explains why). Init: _Model._make_params.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from . import layers as L
from . import updown
from .errors import InputError, check_finite, check_labels
from common.plans import check_adm_args, check_resblock_updown, downsamplings, param_rows

from .plans import (Step, check_num_classes, check_unet_args, conv_padding, mlp_plan, state_dict_order, time_plan,
                    unet_plan)

# the plans are re-exported: reference.unet.unet_plan and the like keep working
__all__ = ["MLP", "STEPS", "Step", "UNet", "mlp_plan", "state_dict_order", "time_plan", "unet_plan"]

# ----------------------------------------------------------------------------------------------
# The steps, forward and backward side by side: forward(h, step, run) -> out, cache; backward(dout,
# cache, name, grads, run) -> dh. ``run``: what one pass's steps share (forward: params, groups, temb,
# the stack of kept outputs; backward: the sum d temb, the stack of the kept outputs' gradients).
# In place, as in the plans these functions build: temb and add write into h, the fresh output of the
# conv or linear before them (a cache holds a layer's input, never its output), and keep's backward
# into its dout, the fresh dx of the step after it (norm, silu, conv, pad or keep). Nothing else writes.


def _wb(run, name):
    return run.p[f"{name}.weight"], run.p[f"{name}.bias"]


def _with_grads(layer_backward):  # a layer's (dx, dweight, dbias) backward as a step's: grads by name
    def backward(dout, cache, name, grads, run, *input_grad):
        dx, grads[f"{name}.weight"], grads[f"{name}.bias"] = layer_backward(dout, cache, *input_grad)
        return dx
    return backward


_conv_backward = _with_grads(L.conv2d_backward)  # (B2, B10); input_grad=False for conv_in only


def _temb_forward(h, step, run):
    # (B8)  h += proj(SiLU(temb)), the same vector at every position (the MLP, unnamed: h += temb)
    tp, cache = L.linear_forward(run.temb, *_wb(run, step.name)) if step.name else (run.temb, None)  # (N, C)
    h += tp[:, None, None, :] if step.name else tp
    return h, cache


def _temb_backward(dout, cache, name, grads, run):
    dtemb = dout  # the MLP's h + temb
    if name:  # (B8) the projection was added at every position: its gradient is the sum over positions
        dtemb, grads[f"{name}.weight"], grads[f"{name}.bias"] = L.linear_backward(dout.sum(axis=(1, 2)), cache)
    run.dtemb = run.dtemb + dtemb  # (B8) temb feeds every residual block: gradients add
    return dout


def _attend_forward(qkv, step, run):  # (B5) qkv (N, H, W, 3C), channels [q | k | v] -> a (N, H, W, C)
    N, H, W, C = qkv.shape[:3] + (step.c_out,)
    nh, L_, d = step.heads, H * W, C // step.heads
    # (B14) head j reads channels j d .. (j + 1) d - 1 of q, of k and of v: the heads fold into the batch
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(N, L_, nh, d).transpose(0, 2, 1, 3).reshape(N * nh, L_, d)
               for i in range(3))
    a, cache = L.attention_forward(q, k, v)  # (N nh, L, d), softmax(q k^T / sqrt(d)) v per head (B5)
    # (B14) the heads' outputs side by side along channels, head j at channels j d ..
    return a.reshape(N, nh, L_, d).transpose(0, 2, 1, 3).reshape(N, H, W, C), (cache, nh)


def _attend_backward(dout, cache, name, grads, run):
    (cache, nh), (N, H, W, C) = cache, dout.shape
    d = C // nh
    # (B14) each head's gradient is B5's on its own channels; the fold and the unfold are permutations
    da = dout.reshape(N, H * W, nh, d).transpose(0, 2, 1, 3).reshape(N * nh, H * W, d)
    dqkv = [g.reshape(N, nh, H * W, d).transpose(0, 2, 1, 3).reshape(N, H, W, C)
            for g in L.attention_backward(np.ascontiguousarray(da), cache)]
    return np.concatenate(dqkv, axis=-1)


def _scaleshift_forward(h, step, run):
    # (B13)  [scale | shift] = proj(SiLU(temb)) (N, 2C);  out = h (1 + scale) + shift, h = GN(h) (norm2)
    ss, lin_cache = L.linear_forward(run.temb, *_wb(run, step.name))
    C = step.c_out
    out, cache = L.scale_shift_forward(h, ss[:, :C], ss[:, C:])
    return out, (cache, lin_cache)


def _scaleshift_backward(dout, cache, name, grads, run):
    cache, lin_cache = cache
    dh, dscale, dshift = L.scale_shift_backward(dout, cache)  # (B13)
    dtemb, grads[f"{name}.weight"], grads[f"{name}.bias"] = L.linear_backward(
        np.concatenate([dscale, dshift], axis=-1), lin_cache)  # (B7)
    run.dtemb = run.dtemb + dtemb  # (B8) temb feeds every residual block: gradients add
    return dh


def _embed_forward(h, step, run):
    e, cache = L.embedding_forward(run.y, run.p[f"{step.name}.weight"])  # (B12)  E[y] (N, time_dim)
    # (W1)  temb += E[y], the class's row (the last row: the null class)
    h += e
    return h, cache


def _embed_backward(dout, cache, name, grads, run):
    grads[f"{name}.weight"] = L.embedding_backward(dout, cache)  # (B12) scatter-add into the rows
    return dout  # (W1) the sum passes dout to temb unchanged


def _keep_forward(h, step, run):
    run.kept.append(h)  # (B8) h feeds the next step and, later, a join
    return h, None


def _keep_backward(dout, cache, name, grads, run):
    # (B8)  h fed two consumers: its gradient is the sum of theirs (the join's was stacked, newest on top)
    dout += run.dkept.pop()
    return dout


def _concat_forward(h, step, run):
    # (B8)  skip connection: [h | the newest kept output] along channels
    return np.concatenate([h, run.kept.pop()], axis=-1), h.shape[-1]


def _concat_backward(dout, c_h, name, grads, run):
    # (B8)  the concatenation splits its gradient: [dh | dkept]
    run.dkept.append(dout[..., c_h:])
    return dout[..., :c_h]


def _add_forward(h, step, run):
    x = run.kept.pop()
    skip, cache = L.conv2d_forward(x, *_wb(run, step.name)) if step.name else (x, None)  # 1x1 or identity
    # (B8)  residual join: out = skip(x) + h
    h += skip
    return h, cache


def _add_backward(dout, cache, name, grads, run):
    # (B8)  the residual join passes dout unchanged to both branches
    run.dkept.append(_conv_backward(dout, cache, name, grads, run) if name else dout)
    return dout


STEPS = {  # op -> (forward, backward)
    "conv": (lambda h, s, run: L.conv2d_forward(h, *_wb(run, s.name), s.stride, conv_padding(s)),  # (B1)
             _conv_backward),
    "linear": (lambda h, s, run: L.linear_forward(h, *_wb(run, s.name)),  # (B7)
               _with_grads(lambda dout, cache, *_: L.linear_backward(dout, cache))),
    "norm": (lambda h, s, run: L.group_norm_forward(h, *_wb(run, s.name), run.groups, run.eps),  # (B3)
             _with_grads(L.group_norm_backward)),
    "silu": (lambda h, s, run: L.silu_forward(h), lambda dout, cache, *_: L.silu_backward(dout, cache)),  # (B4)
    "up2x": (lambda h, s, run: L.upsample_nearest2x_forward(h), lambda d, c, *_: L.upsample_nearest2x_backward(d, c)),
    "pad": (lambda h, s, run: L.pad_forward(h, 0, 1, 0, 1), lambda d, c, *_: L.pad_backward(d, c)),  # (B11)
    "attend": (_attend_forward, _attend_backward),
    "temb": (_temb_forward, _temb_backward),
    "scaleshift": (_scaleshift_forward, _scaleshift_backward),
    "embed": (_embed_forward, _embed_backward),
    "keep": (_keep_forward, _keep_backward),
    "concat": (_concat_forward, _concat_backward),
    "add": (_add_forward, _add_backward),
    **updown.STEPS,  # (B15) res_down, res_up: ADM's resample of h and of the block's skip input
}


# ----------------------------------------------------------------------------------------------
# What the two networks share: parameters from a plan, loading, running a plan and its tape


class _Model:
    """Parameters from plans, loading, input checks, the time embedding; _run and _backprop, the loops."""

    def _make_params(self, plan, dtype, seed):
        """Every named step's weight and bias, in state_dict order: GroupNorm 1 and 0; conv (OIHW) and
        linear ((out, in); temb's from time_dim) U(-1/sqrt(fan_in), +) in order, and zero for the last."""
        self.dtype = dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise InputError(f"dtype must be float32 or float64, got {dt}")
        rng, self.params = np.random.default_rng(seed), {}  # seeded: no global random state
        for s in state_dict_order(plan):
            if s.op == "norm":
                self.params.update({f"{s.name}.weight": np.ones(s.c_in, dt), f"{s.name}.bias": np.zeros(s.c_in, dt)})
                continue
            if s.op == "embed":  # (W1) zero: a new conditional model is the unconditional one, and draws nothing
                self.params[f"{s.name}.weight"] = np.zeros((s.c_in, s.c_out), dt)
                continue
            c_in = self.time_dim if s.op in ("temb", "scaleshift") else s.c_in
            shape = (s.c_out, c_in, s.k, s.k) if s.op in ("conv", "add") else (param_rows(s), c_in)  # add: 1x1 skip
            bound = 1.0 / np.sqrt(math.prod(shape[1:]))  # fan_in
            for part, sh in (("weight", shape), ("bias", shape[:1])):
                value = np.zeros(sh, dt) if s is plan[-1] else rng.uniform(-bound, bound, size=sh).astype(dt)
                self.params[f"{s.name}.{part}"] = value

    def load_params(self, params):
        """Replace the parameters by ``params`` (name -> array-like), cast to the model dtype; InputError
        names the missing or unexpected keys, or the key whose shape differs."""
        missing, unexpected = sorted(set(self.params) - set(params)), sorted(set(params) - set(self.params))
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
        """t (int or (N,)) -> float64 sinusoidal embedding (N, emb_dim) in model dtype: the 0-based integer index of
        the chain, or, built with continuous_time=True, any finite real (a continuous objective's noise level)."""
        ta = np.asarray(t)
        if self.continuous_time:
            # EDM's 250 ln sigma is negative below sigma = 1: no sign check; the sinusoid takes any real (B6)
            if ta.dtype == bool or ta.dtype.kind not in "fiu":
                raise InputError(f"t must be a real noise-level input (continuous time), got dtype {ta.dtype}")
        elif ta.dtype == bool or not np.issubdtype(ta.dtype, np.integer):
            raise InputError(f"t must be an integer time index (0-based), got dtype {ta.dtype}")
        if ta.ndim > 1 or (ta.ndim == 1 and ta.shape[0] != n):
            kind = "a number or an array" if self.continuous_time else "an int or an int array"
            raise InputError(f"t must be {kind} of shape ({n},), got shape {ta.shape}")
        if self.continuous_time:
            check_finite(ta, "t")
        elif ta.size and ta.min() < 0:
            raise InputError(f"t must be >= 0 (0-based time index), got {int(ta.min())}")
        return L.timestep_embedding(np.broadcast_to(ta, (n,)), self.emb_dim).astype(self.dtype)  # (B6) (N, emb_dim)

    def _labels(self, y, n):
        """The class labels the time MLP adds (W1): None -> the null class K for all; else check_labels' ints."""
        if self.num_classes is None:
            if y is not None:
                check_labels(y, None)  # InputError: an unconditional model takes no labels
            return None
        return np.full(n, self.num_classes, np.int64) if y is None else check_labels(y, self.num_classes, n)

    def _input(self, x, ndim, what):
        x = np.asarray(x)
        if x.ndim != ndim or x.dtype.kind not in "fiu":
            raise InputError(f"x must be a numeric array {what}, got shape {x.shape} dtype {x.dtype}")
        return check_finite(x.astype(self.dtype, copy=False), "x")

    def _run(self, plan, h, temb=None, y=None):
        """Every step of ``plan`` on h, in order -> out and the tape [(backward, name, cache), ...]."""
        run = SimpleNamespace(p=self.params, groups=getattr(self, "groups", None), eps=getattr(self, "norm_eps", None),
                              temb=temb, kept=[], y=y)
        tape = []
        for step in plan:
            forward, backward = STEPS[step.op]
            h, cache = forward(h, step, run)
            tape.append((backward, step.name, cache))
        return h, tape

    def _backprop(self, tape, dout, grads, input_grad=True):
        """The chain rule as a loop: each step's backward, last first -> (d input, d temb); grads filled. The
        first step gets input_grad (conv_in: False gives no dx). No backward writes its dout or cache."""
        run, d = SimpleNamespace(dtemb=0.0, dkept=[]), dout
        for backward, name, cache in reversed(tape[1:]):
            d = backward(d, cache, name, grads, run)
        backward, name, cache = tape[0]
        return backward(d, cache, name, grads, run, input_grad), run.dtemb


# ----------------------------------------------------------------------------------------------
# The networks


class UNet(_Model):
    """Conv UNet for (N, in_channels, H, W) images, H and W divisible by 2^(levels - 1); DDPM's layout.

    Level l has base_channels * channel_mults[l] channels. Down: conv_in, then per level num_res_blocks
    residual blocks (each followed by self-attention where attention[l]) and, between levels, a stride-2
    conv3x3; every one of these outputs is kept as a skip. Middle: res, attention (unless mid_attention
    is False), res. Up: per level, from the lowest, num_res_blocks + 1 residual blocks (+ attention),
    each taking [h | the newest unused skip], then nearest 2x + conv3x3 between levels: Ho et al.'s
    diffusion_tf/models/unet.py (and diffusers' UNet2DModel), so DDPM's CIFAR-10 arguments give its
    35.7M parameters. Time: sinusoidal embedding of dim base_channels (B6) -> Linear, SiLU, Linear to
    time_dim (default 4 base_channels); each residual block adds Linear(SiLU(temb)). ``self.plan`` is
    this layout step by step (unet_plan), ``self.time_plan`` the time MLP. ``continuous_time=True``: the
    embedding takes a float t (a continuous objective's noise level); the parameters are the same.

    For published checkpoints (lab/convert.py): ``downsample_padding`` "symmetric" (default) pads the
    stride-2 conv by 1 on every side (B9); "same" pads one zero row and column at the bottom and right and
    convolves with padding 0 (B11), TensorFlow's SAME, as DDPM's checkpoints (diffusers' downsample_padding=0).
    ``norm_eps`` is every GroupNorm's epsilon (1e-5 as torch's default; DDPM's checkpoints use 1e-6).

    ADM's options (Dhariwal & Nichol 2021): ``norm="scale-shift"`` makes each residual block's second norm
    GN(h) (1 + scale) + shift with [scale | shift] = temb_proj(SiLU(temb)), 2C outputs (B13), in place of the
    additive h + temb_proj(SiLU(temb)) before it; ``num_heads`` splits every attention layer's channels into
    that many heads (B14); ``resblock_updown=True`` makes every level transition a residual block that resamples
    h and its skip input after its first SiLU, 2x2 average pool down and nearest 2x up (B15; reference/updown.py),
    in place of the stride-2 conv and of up2x + conv. The defaults are DDPM's network."""

    def __init__(self, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                 attention=(False, False, True), groups=8, out_channels=None, time_dim=None,
                 mid_attention=True, downsample_padding="symmetric", norm_eps=L.GN_EPS, num_classes=None,
                 continuous_time=False, norm="additive", num_heads=1, resblock_updown=False, dtype=np.float32, seed=0):
        chans, attention, nrb = check_unet_args(base_channels, channel_mults, num_res_blocks, attention, groups,
                                                downsample_padding, norm_eps)
        norm, num_heads = check_adm_args(chans, attention, bool(mid_attention), norm, num_heads)
        resblock_updown = check_resblock_updown(resblock_updown, len(chans), downsample_padding)
        self.num_classes, self.continuous_time = check_num_classes(num_classes), bool(continuous_time)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels or in_channels, groups
        self.emb_dim, self.time_dim = base_channels, time_dim or 4 * base_channels  # sinusoid and MLP widths
        self.norm_eps = float(norm_eps)
        self.config = dict(in_channels=in_channels, base_channels=base_channels, channel_mults=tuple(channel_mults),
                           num_res_blocks=num_res_blocks, attention=attention, groups=groups,
                           out_channels=self.out_channels, time_dim=self.time_dim, mid_attention=bool(mid_attention),
                           downsample_padding=downsample_padding, norm_eps=self.norm_eps, dtype=np.dtype(dtype).name,
                           **({} if num_classes is None else {"num_classes": self.num_classes}),
                           **({"continuous_time": True} if continuous_time else {}),
                           **({"norm": norm} if norm != "additive" else {}),
                           **({"num_heads": num_heads} if num_heads != 1 else {}),
                           **({"resblock_updown": True} if resblock_updown else {}))
        self.time_plan = time_plan(self.emb_dim, self.time_dim, act=True, num_classes=self.num_classes)
        self.plan = unet_plan(in_channels, self.out_channels, chans, attention, nrb, bool(mid_attention),
                              downsample_padding, norm, num_heads, resblock_updown)
        self._make_params(self.time_plan + self.plan, dtype, seed)

    def forward(self, x, t, y=None):
        """x (N, in_channels, H, W), t int (N,) 0-based (float with continuous_time) -> out (N, out_channels, H, W),
        cache (the tapes).

        y: class labels (N,) of a model with num_classes=K (W1): 0..K-1, or K or None for the null class."""
        x = self._input(x, 4, "(N, C, H, W)")
        (N, C, H, W), f = x.shape, 2 ** downsamplings(self.plan)
        if C != self.in_channels or H % f or W % f:
            raise InputError(f"UNet expects (N, {self.in_channels}, H, W) with H, W divisible by {f}, got {x.shape}")
        temb_act, time_tape = self._run(self.time_plan, self._time_embedding(t, N), y=self._labels(y, N))  # SiLU(temb)
        h, tape = self._run(self.plan, np.ascontiguousarray(x.transpose(0, 2, 3, 1)), temb_act)  # NHWC
        return np.ascontiguousarray(h.transpose(0, 3, 1, 2)), dict(tape=tape, time_tape=time_tape)

    def backward(self, dout, cache, input_grad=True):
        """dout (N, out_channels, H, W) -> dx (N, in_channels, H, W), grads {name: array like params[name]}.

        Both tapes in reverse (_Model._backprop). input_grad=False skips dx (None): conv_in's weight
        gradient then reads the windows of the few-channel input, not those of its many-channel dout."""
        g, d = {}, np.ascontiguousarray(np.asarray(dout, dtype=self.dtype).transpose(0, 2, 3, 1))  # NHWC
        d, dtemb_act = self._backprop(cache["tape"], d, g, input_grad)
        self._backprop(cache["time_tape"], dtemb_act, g, input_grad=False)  # t: an index, or a level no one trains
        return (np.ascontiguousarray(d.transpose(0, 3, 1, 2)) if input_grad else None), {k: g[k] for k in self.params}


class MLP(_Model):
    """Residual MLP denoiser for (N, in_dim) points (mlp_plan); temb = fc2(SiLU(fc1(emb(t)))), emb the
    sinusoidal embedding of dim time_dim (B6). ``out_dim`` outputs (default in_dim), as the UNet's out_channels."""

    def __init__(self, in_dim=2, hidden=128, num_layers=3, time_dim=64, out_dim=None, num_classes=None,
                 continuous_time=False, dtype=np.float32, seed=0):
        self.in_dim, self.hidden, self.num_layers, self.emb_dim = in_dim, hidden, num_layers, time_dim
        self.out_dim, self.num_classes = out_dim or in_dim, check_num_classes(num_classes)
        self.continuous_time = bool(continuous_time)
        self.config = dict(in_dim=in_dim, hidden=hidden, num_layers=num_layers, time_dim=time_dim,
                           out_dim=self.out_dim, dtype=np.dtype(dtype).name,
                           **({} if num_classes is None else {"num_classes": self.num_classes}),
                           **({"continuous_time": True} if continuous_time else {}))
        self.time_plan = time_plan(time_dim, hidden, act=False, num_classes=self.num_classes)
        self.plan = mlp_plan(in_dim, hidden, num_layers, self.out_dim)
        self._make_params(self.time_plan + self.plan, dtype, seed)

    def forward(self, x, t, y=None):
        """x (N, in_dim), t int (N,) 0-based, y labels as UNet.forward's -> out (N, out_dim), cache (the tapes)."""
        x = self._input(x, 2, "(N, in_dim)")
        if x.shape[1] != self.in_dim:
            raise InputError(f"MLP expects x of shape (N, {self.in_dim}), got {x.shape}")
        N = x.shape[0]
        temb, time_tape = self._run(self.time_plan, self._time_embedding(t, N), y=self._labels(y, N))  # (N, hidden)
        out, tape = self._run(self.plan, x, temb)
        return out, dict(tape=tape, time_tape=time_tape)

    def backward(self, dout, cache, input_grad=True):
        """dout (N, out_dim) -> dx (N, in_dim) (None with input_grad=False), grads {name: array like params[name]}."""
        g = {}
        dx, dtemb = self._backprop(cache["tape"], np.asarray(dout, dtype=self.dtype), g, input_grad)
        self._backprop(cache["time_tape"], dtemb, g, input_grad=False)  # (B8) h = in_proj(x) + temb
        return (dx if input_grad else None), {k: g[k] for k in self.params}
