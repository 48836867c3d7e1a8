"""The reference's networks (reference/unet.py) as torch modules: same constructor arguments, the same
plans (plans.py, the reference's code) built the same way, ``state_dict()`` keys identical to the
reference's ``params`` names.

``forward(x, t, y=None) -> out`` with x (N, C, H, W) (any memory format; channels_last works) or
(N, in_dim), t an int tensor (N,) of 0-based time indices (a float (N,), the noise-level input of a
continuous objective, for a model built with ``continuous_time=True``: not a parameter), and, for a model with
num_classes=K, y the class labels (N,): 0..K-1, or K or None for the null class (W1); an unconditional model takes no y.
forward walks the plan, step by step, and autograd records the tape. The plan is fixed at construction
(no data-dependent Python control flow), so the models compile with torch.compile.

Initialisation follows the reference's rule (conv/linear U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
GroupNorm 1/0, final layer zero) with a torch.Generator seeded from ``seed``; the values differ
from the reference's numpy draws — load the reference's params to get identical models.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from reference.errors import InputError, check_finite, check_labels

from common.plans import check_adm_args, check_resblock_updown, param_rows

from . import updown
from .layers import (GN_EPS, Conv2d, Embedding, GroupNorm, Linear, attention, pad, scale_shift, silu,
                     timestep_embedding, torch_dtype, upsample_nearest2x)
from .plans import (Step, check_num_classes, check_unet_args, conv_padding, mlp_plan, state_dict_order, time_plan,
                    unet_plan)

# the plans are re-exported: reference.unet.unet_plan and the like keep working
__all__ = ["MLP", "STEPS", "Step", "UNet", "mlp_plan", "state_dict_order", "time_plan", "unet_plan"]

# ----------------------------------------------------------------------------------------------
# The steps' forwards: step(h, module, run) -> out, module the step's layer (None if it has no
# parameters); run: what one pass's steps share (temb, the stack of kept outputs). Autograd does
# the backward. Activations NCHW or (N, C).


class _Pass:
    """What the steps of one forward share (the reference's ``run``; a class, since dynamo does not
    trace types.SimpleNamespace)."""

    def __init__(self, temb, y=None):
        self.temb, self.kept, self.y = temb, [], y


def _attend(qkv, heads, run):  # (B5, B14) qkv (N, 3C, H, W), channels [q | k | v] -> a (N, C, H, W); heads an int
    N, C3, H, W = qkv.shape
    q, k, v = qkv.reshape(N, C3, H * W).transpose(1, 2).split(C3 // 3, dim=2)  # (N, L, C) each
    return attention(q, k, v, heads).transpose(1, 2).reshape(N, C3 // 3, H, W)


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
    "pad": lambda h, m, run: pad(h, 0, 1, 0, 1),  # (B11)
    "attend": _attend,
    "temb": _temb,
    "scaleshift": lambda h, m, run: scale_shift(h, m(run.temb)),  # (B13) GN(h) (1 + scale) + shift
    "embed": lambda h, m, run: h + m(run.y),  # (W1, B12)  temb += E[y]
    "keep": _keep,
    "concat": _concat,
    "add": _add,
    **updown.STEPS,  # (B15) res_down, res_up: ADM's resample of h and of the block's skip input
}


def _layer(s, time_dim, groups, eps, dtype):
    """The torch layer of a step that has parameters."""
    if s.op in ("conv", "add"):  # "add": its skip's 1x1 conv
        return Conv2d(s.c_in, s.c_out, s.k, s.stride, conv_padding(s), dtype)
    if s.op == "norm":
        return GroupNorm(groups, s.c_in, dtype, eps)
    if s.op == "embed":  # (W1) zero, as the reference's: no draw from the generator
        return Embedding(s.c_in, s.c_out, dtype)
    # linear, or temb's projection (scaleshift's: 2 c_out rows, [scale | shift], B13)
    return Linear(time_dim if s.op in ("temb", "scaleshift") else s.c_in, param_rows(s), dtype)


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

    def _make_layers(self, plan, groups, dtype, seed, eps=GN_EPS):
        """Every named step's layer under its name, in state_dict order; the seeded init of the reference's
        rule (conv/linear weight and bias U(-1/sqrt(fan_in), +), GroupNorm 1 and 0) and the last layer zero."""
        for s in state_dict_order(plan):
            _register(self, s.name, _layer(s, getattr(self, "time_dim", None), groups, eps, dtype))
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
        """The plan as (op, its layer or None): what forward walks (attend's: its number of heads, B14)."""
        return [(s.op, s.heads if s.op == "attend" else self.get_submodule(s.name) if s.name else None) for s in plan]

    def _run(self, steps, h, temb=None, y=None):
        """Every step in order on h; autograd records the tape."""
        run = _Pass(temb, y)
        for op, module in steps:
            h = STEPS[op](h, module, run)
        return h

    def _time(self, t, y, n):
        """What the time MLP gives the steps: temb (the MLP) or SiLU(temb) (the UNet), from the (B6) embedding,
        plus the class's row (W1) for a conditional model."""
        if self.continuous_time:
            t = self._continuous(t, n)
        emb = timestep_embedding(t, self.emb_dim).to(self.time_mlp.fc1.weight.dtype)  # (N, emb_dim)
        return self._run(self._time_steps, emb, y=self._labels(y, n, emb.device))

    def _continuous(self, t, n):
        """A continuous objective's noise-level input as a float64 tensor (n,), checked as the reference checks it:
        dtype and shape always (no sync), finiteness where the values are on the host and not under compile."""
        device = self.time_mlp.fc1.weight.device
        if not torch.is_tensor(t):
            ta = np.asarray(t)
            if ta.dtype == bool or ta.dtype.kind not in "fiu":
                raise InputError(f"t must be a real noise-level input (continuous time), got dtype {ta.dtype}")
            t = torch.from_numpy(np.array(ta, dtype=np.float64))
        elif t.dtype == torch.bool or t.is_complex():
            raise InputError("t must be a real noise-level input (continuous time), got dtype "
                             f"{str(t.dtype).replace('torch.', '')}")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n):
            raise InputError(f"t must be a number or an array of shape ({n},), got shape {tuple(t.shape)}")
        if t.device.type == "cpu" and not torch.compiler.is_compiling():
            check_finite(t.detach().numpy(), "t")
        # EDM's 250 ln sigma is negative below sigma = 1: no sign check; the sinusoid takes any real (B6)
        return t.to(device=device, dtype=torch.float64).expand(n)

    def _labels(self, y, n, device):
        """(W1) The labels as a long tensor (n,): None -> the null class K. Values are checked where they are on
        the host (CPU tensors, arrays, ints) and not under torch.compile; a device tensor is taken as it is."""
        if self.num_classes is None:
            if y is not None:
                check_labels(y, None)  # InputError: an unconditional model takes no labels
            return None
        if y is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        if not torch.is_tensor(y):
            y = torch.from_numpy(check_labels(y, self.num_classes, n))
        elif y.device.type == "cpu" and not torch.compiler.is_compiling():
            check_labels(y.numpy(), self.num_classes, n)
        elif y.is_floating_point() or y.dtype == torch.bool or tuple(y.shape) != (n,):
            raise InputError(f"class labels must be an int tensor of shape ({n},), got {tuple(y.shape)} {y.dtype}")
        return y.to(device=device, dtype=torch.long).expand(n)


# ----------------------------------------------------------------------------------------------
# The networks


class UNet(_Model):
    """Conv UNet for (N, in_channels, H, W) images; see reference.unet.UNet for the architecture."""

    def __init__(self, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                 attention=(False, False, True), groups=8, out_channels=None, time_dim=None,
                 mid_attention=True, downsample_padding="symmetric", norm_eps=GN_EPS, num_classes=None,
                 continuous_time=False, norm="additive", num_heads=1, resblock_updown=False, dtype=torch.float32,
                 seed=0):
        super().__init__()
        chans, attention, nrb = check_unet_args(base_channels, channel_mults, num_res_blocks, attention, groups,
                                                downsample_padding, norm_eps)
        norm, num_heads = check_adm_args(chans, attention, bool(mid_attention), norm, num_heads)
        resblock_updown = check_resblock_updown(resblock_updown, len(chans), downsample_padding)
        self.num_classes, self.continuous_time = check_num_classes(num_classes), bool(continuous_time)
        self.emb_dim, self.time_dim = base_channels, time_dim or 4 * base_channels  # sinusoid and MLP widths
        self.time_plan = time_plan(self.emb_dim, self.time_dim, act=True, num_classes=self.num_classes)
        self.plan = unet_plan(in_channels, out_channels or in_channels, chans, attention, nrb, bool(mid_attention),
                              downsample_padding, norm, num_heads, resblock_updown)
        self._make_layers(self.time_plan + self.plan, groups, torch_dtype(dtype), seed, float(norm_eps))
        self._time_steps, self._plan_steps = self._steps(self.time_plan), self._steps(self.plan)

    def forward(self, x, t, y=None):
        return self._run(self._plan_steps, x, self._time(t, y, x.shape[0]))  # temb: SiLU(temb), read by every block


class MLP(_Model):
    """Residual MLP denoiser for (N, in_dim) points; see reference.unet.MLP."""

    def __init__(self, in_dim=2, hidden=128, num_layers=3, time_dim=64, out_dim=None, num_classes=None,
                 continuous_time=False, dtype=torch.float32, seed=0):
        super().__init__()
        self.emb_dim, self.num_classes = time_dim, check_num_classes(num_classes)
        self.continuous_time = bool(continuous_time)
        self.time_plan = time_plan(time_dim, hidden, act=False, num_classes=self.num_classes)
        self.plan = mlp_plan(in_dim, hidden, num_layers, out_dim or in_dim)
        self._make_layers(self.time_plan + self.plan, None, torch_dtype(dtype), seed)
        self._time_steps, self._plan_steps = self._steps(self.time_plan), self._steps(self.plan)

    def forward(self, x, t, y=None):
        return self._run(self._plan_steps, x, self._time(t, y, x.shape[0]))
