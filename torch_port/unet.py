"""The reference's networks (reference/unet.py) as torch modules: same constructor arguments, the same
plans built the same way, ``state_dict()`` keys identical to the reference's ``params`` names.

``forward(x, t) -> out`` with x (N, C, H, W) (any memory format; channels_last works) or
(N, in_dim), and t an int tensor (N,) of 0-based time indices. forward walks the plan, step by
step, and autograd records the tape. The plan is fixed at construction (no data-dependent Python
control flow), so the models compile with torch.compile.

Initialisation follows the reference's rule (conv/linear U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
GroupNorm 1/0, final layer zero) with a torch.Generator seeded from ``seed``; the values differ
from the reference's numpy draws — load the reference's params to get identical models.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from reference.errors import InputError, check_int

from .layers import Conv2d, GroupNorm, Linear, attention, silu, timestep_embedding, torch_dtype, upsample_nearest2x

# ----------------------------------------------------------------------------------------------
# Plans: a network's steps in forward order, as reference/unet.py builds them (the same code).


class Step(NamedTuple):
    """One step of a plan; ``name`` is the prefix of its parameters ("" when it has none). op: conv
    (k x k, padding k // 2, stride), linear, norm (GroupNorm), silu, up2x (nearest), attend (attention
    over [q | k | v] channels), temb (+ Linear(temb) at every position; + temb when unnamed), and the
    joins: keep (h is also kept for a later join), concat ([h | the newest kept]) and add (skip(x) + h,
    x the newest kept, of c_in channels; skip a 1x1 conv or none)."""
    op: str
    name: str
    c_in: int
    c_out: int
    k: int = 3
    stride: int = 1


def _check_unet_args(base_channels, channel_mults, num_res_blocks, attention, groups):
    """-> (channels per level, attention flags, num_res_blocks as int); InputError names a bad argument."""
    channel_mults, attention = tuple(channel_mults), tuple(bool(a) for a in attention)
    if len(attention) != len(channel_mults):
        raise InputError(f"attention {attention} needs one flag per level of channel_mults {channel_mults}")
    chans = [base_channels * m for m in channel_mults]
    if any(c % groups for c in chans):
        raise InputError(f"every level's channels {chans} must be divisible by groups={groups}")
    return chans, attention, check_int(num_res_blocks, "num_res_blocks", lo=1)


def unet_plan(in_channels, out_channels, chans, attention, num_res_blocks, mid_attention):
    """The UNet in forward order, a list of Step (the layout in words: UNet's docstring)."""
    plan, kept = [Step("conv", "conv_in", in_channels, chans[0])], []  # kept: channels of the kept outputs

    def step(op, name="", c_out=None, k=3, stride=1):  # append the next step, tracking channels as forward
        c_in = c = plan[-1].c_out
        if op == "keep":
            kept.append(c)
        elif op == "concat":  # (B8) [h | kept]
            c_out = c + kept.pop()
        elif op == "add":  # (B8) skip(x) + h: skip a 1x1 conv where the channels change, else the identity
            c_in, k = kept.pop(), 1
            name = name if c_in != c else ""
        plan.append(Step(op, name, c_in, c if c_out is None else c_out, k, stride))

    def res(pre, c_out):  # skip(x) + conv3x3(SiLU(GN(conv3x3(SiLU(GN(x))) + proj(SiLU(temb)))))
        for op, name in [("keep", ""), ("norm", "norm1"), ("silu", ""), ("conv", "conv1"), ("temb", "temb_proj"),
                         ("norm", "norm2"), ("silu", ""), ("conv", "conv2"), ("add", "skip")]:
            step(op, name and f"{pre}.{name}", c_out if op == "conv" else None)

    def attn(pre):  # x + proj(attention(q, k, v)), [q | k | v] = qkv(GN(x)); 1x1 convs
        c = plan[-1].c_out
        for op, name, c_out, k in [("keep", "", c, 3), ("norm", "norm", c, 3), ("conv", "qkv", 3 * c, 1),
                                   ("attend", "", c, 3), ("conv", "proj", c, 1), ("add", "", c, 3)]:
            step(op, name and f"{pre}.{name}", c_out, k)

    def block(side, l, r):  # a residual block, then self-attention where the level has it
        res(f"{side}.{l}.res.{r}", chans[l])
        if attention[l]:
            attn(f"{side}.{l}.attn.{r}")

    step("keep")
    for l in range(len(chans)):
        for r in range(num_res_blocks):
            block("down", l, r)
            step("keep")
        if l < len(chans) - 1:
            step("conv", f"down.{l}.downsample", stride=2)  # (B9) stride-2 conv3x3
            step("keep")
    res("mid.res1", chans[-1])
    if mid_attention:
        attn("mid.attn")
    res("mid.res2", chans[-1])
    for l in reversed(range(len(chans))):
        for r in range(num_res_blocks + 1):  # DDPM: one block more than down, each taking a skip
            step("concat")  # (B8) skip connection: [h | the newest kept output]
            block("up", l, r)
        if l > 0:
            step("up2x")  # (B9) nearest 2x, then conv3x3
            step("conv", f"up.{l}.upsample")
    for op, name, c_out in [("norm", "norm_out", None), ("silu", "", None), ("conv", "conv_out", out_channels)]:
        step(op, name, c_out)
    return plan


def time_plan(emb_dim, time_dim, act):
    """temb = fc2(SiLU(fc1(emb))) from the (B6) embedding emb, then SiLU(temb) where ``act`` (the UNet)."""
    d = time_dim
    return [Step("linear", "time_mlp.fc1", emb_dim, d), Step("silu", "", d, d),
            Step("linear", "time_mlp.fc2", d, d)] + [Step("silu", "", d, d)] * bool(act)


def mlp_plan(in_dim, hidden, num_layers):
    """h = in_proj(x) + temb;  h <- h + layers.i(SiLU(h)) for i < num_layers;  out = out_proj(SiLU(h))."""
    h = hidden
    plan = [Step("linear", "in_proj", in_dim, h), Step("temb", "", h, h)]
    for i in range(num_layers):
        plan += [Step("keep", "", h, h), Step("silu", "", h, h), Step("linear", f"layers.{i}", h, h),
                 Step("add", "", h, h, 1)]  # (B8) residual: h + layer(SiLU(h))
    return plan + [Step("silu", "", h, h), Step("linear", "out_proj", h, in_dim)]


def state_dict_order(plan):
    """The steps with parameters in torch's state_dict order: a container's children in the order of first
    use, numbered ones by number (a level's attention after all its res blocks; up levels 0, 1, 2, run
    2, 1, 0). Both sides make parameters in this order: names and seeded draws follow the state_dict."""
    named = [s for s in plan if s.name]
    paths, first = [tuple(s.name.split(".")) for s in named], {}
    for i, path in enumerate(paths):
        for k in range(1, len(path) + 1):
            first.setdefault(path[:k], i)  # each prefix: its first use
    key = lambda i: [int(p) if p.isdigit() else first[paths[i][:k + 1]] for k, p in enumerate(paths[i])]  # noqa: E731
    return [named[i] for i in sorted(range(len(named)), key=key)]


# ----------------------------------------------------------------------------------------------
# The steps' forwards: step(h, module, run) -> out, module the step's layer (None if it has no
# parameters); run: what one pass's steps share (temb, the stack of kept outputs). Autograd does
# the backward. Activations NCHW or (N, C).


class _Pass:
    """What the steps of one forward share (the reference's ``run``; a class, since dynamo does not
    trace types.SimpleNamespace)."""

    def __init__(self, temb):
        self.temb, self.kept = temb, []


def _attend(qkv, module, run):  # (B5) qkv (N, 3C, H, W), channels [q | k | v] -> a (N, C, H, W)
    N, C3, H, W = qkv.shape
    q, k, v = qkv.reshape(N, C3, H * W).transpose(1, 2).split(C3 // 3, dim=2)  # (N, L, C) each
    return attention(q, k, v).transpose(1, 2).reshape(N, C3 // 3, H, W)


def _temb(h, module, run):
    if module is None:  # the MLP: h + temb
        return h + run.temb
    # (B8)  h += proj(SiLU(temb)), the same vector at every position
    return h + module(run.temb)[:, :, None, None]


def _keep(h, module, run):
    run.kept.append(h)  # (B8) h feeds the next step and, later, a join
    return h


def _concat(h, module, run):
    # (B8)  skip connection: [h | the newest kept output] along channels
    return torch.cat([h, run.kept.pop()], dim=1)


def _add(h, module, run):
    x = run.kept.pop()
    # (B8)  residual join: out = skip(x) + h, skip a 1x1 conv or the identity
    return (x if module is None else module(x)) + h


STEPS = {  # op -> forward
    "conv": lambda h, m, run: m(h),  # (B1); (B9) stride 2
    "linear": lambda h, m, run: m(h),  # (B7)
    "norm": lambda h, m, run: m(h),  # (B3)
    "silu": lambda h, m, run: silu(h),  # (B4)
    "up2x": lambda h, m, run: upsample_nearest2x(h),  # (B9)
    "attend": _attend,
    "temb": _temb,
    "keep": _keep,
    "concat": _concat,
    "add": _add,
}


def _layer(s, time_dim, groups, dtype):
    """The torch layer of a step that has parameters."""
    if s.op in ("conv", "add"):  # "add": its skip's 1x1 conv
        return Conv2d(s.c_in, s.c_out, s.k, s.stride, s.k // 2, dtype)
    if s.op == "norm":
        return GroupNorm(groups, s.c_in, dtype)
    return Linear(time_dim if s.op == "temb" else s.c_in, s.c_out, dtype)  # linear, or temb's projection


def _register(root, name, module):
    """root.a.b.c = module for name "a.b.c", through nn.ModuleDict containers made on first use."""
    *path, last = name.split(".")
    for part in path:
        if part not in dict(root.named_children()):
            root.add_module(part, nn.ModuleDict())
        root = getattr(root, part)
    root.add_module(last, module)


# ----------------------------------------------------------------------------------------------
# What the two networks share: layers made from plans, and running a plan


class _Model(nn.Module):
    """Layers from plans (registered in state_dict order, initialised by the reference's rule); _run."""

    def _make_layers(self, plan, groups, dtype, seed):
        """Every named step's layer under its name, in state_dict order; the seeded init of the reference's
        rule (conv/linear weight and bias U(-1/sqrt(fan_in), +), GroupNorm 1 and 0) and the last layer zero."""
        for s in state_dict_order(plan):
            _register(self, s.name, _layer(s, getattr(self, "time_dim", None), groups, dtype))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (Conv2d, Linear)):
                    bound = 1.0 / math.sqrt(m.weight[0].numel())  # fan_in = in * kh * kw
                    for p in (m.weight, m.bias):
                        p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * (2 * bound) - bound)
            for p in self.get_submodule(plan[-1].name).parameters():
                p.zero_()

    def _steps(self, plan):
        """The plan as (op, its layer or None): what forward walks."""
        return [(s.op, self.get_submodule(s.name) if s.name else None) for s in plan]

    def _run(self, steps, h, temb=None):
        """Every step in order on h; autograd records the tape."""
        run = _Pass(temb)
        for op, module in steps:
            h = STEPS[op](h, module, run)
        return h

    def _time(self, t):
        """What the time MLP gives the steps: temb (the MLP) or SiLU(temb) (the UNet), from the (B6) embedding."""
        emb = timestep_embedding(t, self.emb_dim).to(self.time_mlp.fc1.weight.dtype)  # (N, emb_dim)
        return self._run(self._time_steps, emb)


# ----------------------------------------------------------------------------------------------
# The networks


class UNet(_Model):
    """Conv UNet for (N, in_channels, H, W) images; see reference.unet.UNet for the architecture."""

    def __init__(self, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                 attention=(False, False, True), groups=8, out_channels=None, time_dim=None,
                 mid_attention=True, dtype=torch.float32, seed=0):
        super().__init__()
        chans, attention, nrb = _check_unet_args(base_channels, channel_mults, num_res_blocks, attention, groups)
        self.emb_dim, self.time_dim = base_channels, time_dim or 4 * base_channels  # sinusoid and MLP widths
        self.time_plan = time_plan(self.emb_dim, self.time_dim, act=True)
        self.plan = unet_plan(in_channels, out_channels or in_channels, chans, attention, nrb, bool(mid_attention))
        self._make_layers(self.time_plan + self.plan, groups, torch_dtype(dtype), seed)
        self._time_steps, self._plan_steps = self._steps(self.time_plan), self._steps(self.plan)

    def forward(self, x, t):
        return self._run(self._plan_steps, x, self._time(t))  # temb: SiLU(temb), read by every residual block


class MLP(_Model):
    """Residual MLP denoiser for (N, in_dim) points; see reference.unet.MLP."""

    def __init__(self, in_dim=2, hidden=128, num_layers=3, time_dim=64, dtype=torch.float32, seed=0):
        super().__init__()
        self.emb_dim = time_dim
        self.time_plan, self.plan = time_plan(time_dim, hidden, act=False), mlp_plan(in_dim, hidden, num_layers)
        self._make_layers(self.time_plan + self.plan, None, torch_dtype(dtype), seed)
        self._time_steps, self._plan_steps = self._steps(self.time_plan), self._steps(self.plan)

    def forward(self, x, t):
        return self._run(self._plan_steps, x, self._time(t))
