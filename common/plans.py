"""Plans: a network's steps in forward order, built once, walked by each side's unet.py (the reference: forward,
then the tape backward; the port: forward, autograd records the tape).

``unet_plan`` is the UNet (DDPM's layout, in words in unet.UNet's docstring), ``time_plan`` the time MLP,
``mlp_plan`` the 2-D denoiser; ``state_dict_order`` is the order both sides make parameters in.
Not math: written once here; reference/plans.py and torch_port/plans.py re-export it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import InputError, check_choice, check_int, check_number

DOWNSAMPLE_PADDINGS = ("symmetric", "same")  # (B9) pad 1 on every side; (B11) pad bottom and right by 1
NORMS = ("additive", "scale-shift")  # (B8) h + proj(temb) before norm2; (B13) ADM's GN(h) (1 + scale) + shift


class Step(NamedTuple):
    """One step of a plan; ``name`` is the prefix of its parameters ("" when it has none). op: conv
    (k x k, stride, zero padding ``padding`` on every side, None meaning k // 2), linear, norm (GroupNorm),
    silu, up2x (nearest), pad (one zero row below and one zero column to the right, B11), embed (+ a row of
    the table, the class label's, W1; c_in the rows, c_out the width), res_down and res_up (B15: ADM's resample
    inside a residual block, of h and of the newest kept output alike: 2x2 average pool, or nearest 2x), attend
    (attention over [q | k | v] channels, ``heads`` heads, B14), temb (+ Linear(temb) at every position; + temb
    when unnamed), scaleshift (B13: h (1 + scale) + shift, [scale | shift] = Linear(temb), 2 c_out rows),
    and the joins: keep (h is also kept for a later join), concat ([h | the newest kept]) and add
    (skip(x) + h, x the newest kept, of c_in channels; skip a 1x1 conv or none)."""
    op: str
    name: str
    c_in: int
    c_out: int
    k: int = 3
    stride: int = 1
    padding: int | None = None
    heads: int = 1


def check_adm_args(chans, attention, mid_attention, norm="additive", num_heads=1):
    """ADM's options (Dhariwal & Nichol): -> (norm, num_heads); InputError names a bad argument. num_heads must
    divide the channels of every level that has attention (and of the middle's, where it has attention)."""
    check_choice(norm, NORMS, "norm")
    num_heads = check_int(num_heads, "num_heads", lo=1)
    attended = [c for c, a in zip(chans, attention) if a] + ([chans[-1]] if mid_attention else [])
    if any(c % num_heads for c in attended):
        raise InputError(f"num_heads={num_heads} must divide the channels {attended} of every attention layer")
    return norm, num_heads


def check_resblock_updown(resblock_updown, levels, downsample_padding):
    """ADM's resblock_updown (B15) as a bool; InputError where it cannot apply: one level has no transition to make
    residual, and downsample_padding "same" pads a stride-2 conv that the residual block replaces by a pool."""
    if not isinstance(resblock_updown, (bool, np.bool_)):
        raise InputError(f"resblock_updown must be True or False, got {resblock_updown!r}")
    if resblock_updown and levels < 2:
        raise InputError("resblock_updown=True needs two levels or more: with one there is no down or up transition")
    if resblock_updown and downsample_padding != "symmetric":
        raise InputError(f"resblock_updown=True with downsample_padding={downsample_padding!r}: the down transition "
                         "is an average pool, with no stride-2 conv to pad; leave downsample_padding 'symmetric'")
    return bool(resblock_updown)


def check_unet_args(base_channels, channel_mults, num_res_blocks, attention, groups, downsample_padding, norm_eps):
    """-> (channels per level, attention flags, num_res_blocks as int); InputError names a bad argument."""
    channel_mults, attention = tuple(channel_mults), tuple(bool(a) for a in attention)
    if len(attention) != len(channel_mults):
        raise InputError(f"attention {attention} needs one flag per level of channel_mults {channel_mults}")
    chans = [base_channels * m for m in channel_mults]
    if any(c % groups for c in chans):
        raise InputError(f"every level's channels {chans} must be divisible by groups={groups}")
    check_choice(downsample_padding, DOWNSAMPLE_PADDINGS, "downsample_padding")
    check_number(norm_eps, "norm_eps", lo=0.0, hi=1.0, lo_open=True)
    return chans, attention, check_int(num_res_blocks, "num_res_blocks", lo=1)


def unet_plan(in_channels, out_channels, chans, attention, num_res_blocks, mid_attention, downsample_padding,
              norm="additive", num_heads=1, resblock_updown=False):
    """The UNet in forward order, a list of Step (the layout in words: unet.UNet's docstring); ``norm`` and
    ``num_heads`` as checked by check_adm_args, ``resblock_updown`` by check_resblock_updown: True makes every
    level transition a residual block (B15) named down.l.downsample / up.l.upsample, as ADM and diffusers'
    downsample_type / upsample_type "resnet"."""
    plan, kept = [Step("conv", "conv_in", in_channels, chans[0])], []  # kept: channels of the kept outputs

    def step(op, name="", c_out=None, k=3, stride=1, padding=None, heads=1):  # the next step, tracking channels
        c_in = c = plan[-1].c_out
        if op == "keep":
            kept.append(c)
        elif op == "concat":  # (B8) [h | kept]
            c_out = c + kept.pop()
        elif op == "add":  # (B8) skip(x) + h: skip a 1x1 conv where the channels change, else the identity
            c_in, k = kept.pop(), 1
            name = name if c_in != c else ""
        plan.append(Step(op, name, c_in, c if c_out is None else c_out, k, stride, padding, heads))

    # additive: skip(x) + conv3x3(SiLU(GN(conv3x3(SiLU(GN(x))) + proj(SiLU(temb)))))
    # (B13) scale-shift: the same with GN(h) (1 + scale) + shift, [scale | shift] = proj(SiLU(temb)), for norm2
    mid = [("temb", "temb_proj"), ("norm", "norm2")] if norm == "additive" else [("norm", "norm2"),
                                                                                ("scaleshift", "temb_proj")]

    def res(pre, c_out, resample=()):  # (B15) resample: (("res_down", ""),) or (("res_up", ""),) after the first SiLU
        for op, name in [("keep", ""), ("norm", "norm1"), ("silu", ""), *resample, ("conv", "conv1"), *mid,
                         ("silu", ""), ("conv", "conv2"), ("add", "skip")]:
            step(op, name and f"{pre}.{name}", c_out if op == "conv" else None)

    def attn(pre):  # x + proj(attention(q, k, v)), [q | k | v] = qkv(GN(x)); 1x1 convs
        c = plan[-1].c_out
        for op, name, c_out, k in [("keep", "", c, 3), ("norm", "norm", c, 3), ("conv", "qkv", 3 * c, 1),
                                   ("attend", "", c, 3), ("conv", "proj", c, 1), ("add", "", c, 3)]:
            step(op, name and f"{pre}.{name}", c_out, k, heads=num_heads if op == "attend" else 1)  # (B14)

    def block(side, l, r):  # a residual block, then self-attention where the level has it
        res(f"{side}.{l}.res.{r}", chans[l])
        if attention[l]:
            attn(f"{side}.{l}.attn.{r}")

    same = downsample_padding == "same"
    step("keep")
    for l in range(len(chans)):
        for r in range(num_res_blocks):
            block("down", l, r)
            step("keep")
        if l < len(chans) - 1 and resblock_updown:  # (B15) ADM: a residual block whose h and skip input both pool
            res(f"down.{l}.downsample", chans[l], (("res_down", ""),))
            step("keep")
        elif l < len(chans) - 1:
            if same:  # (B11) TensorFlow's "SAME": one zero row and column at the bottom and right, then padding 0
                step("pad")
            step("conv", f"down.{l}.downsample", stride=2, padding=0 if same else None)  # (B9) stride-2 conv3x3
            step("keep")
    res("mid.res1", chans[-1])
    if mid_attention:
        attn("mid.attn")
    res("mid.res2", chans[-1])
    for l in reversed(range(len(chans))):
        for r in range(num_res_blocks + 1):  # DDPM: one block more than down, each taking a skip
            step("concat")  # (B8) skip connection: [h | the newest kept output]
            block("up", l, r)
        if l > 0 and resblock_updown:  # (B15) ADM: a residual block whose h and skip input both upsample
            res(f"up.{l}.upsample", chans[l], (("res_up", ""),))
        elif l > 0:
            step("up2x")  # (B9) nearest 2x, then conv3x3
            step("conv", f"up.{l}.upsample")
    for op, name, c_out in [("norm", "norm_out", None), ("silu", "", None), ("conv", "conv_out", out_channels)]:
        step(op, name, c_out)
    return plan


def time_plan(emb_dim, time_dim, act, num_classes=None):
    """temb = fc2(SiLU(fc1(emb))) from the (B6) embedding emb, plus class_embedding[y] for a conditional model
    (W1; a table of num_classes + 1 rows, the last the null class), then SiLU(temb) where ``act`` (the UNet)."""
    d = time_dim
    plan = [Step("linear", "time_mlp.fc1", emb_dim, d), Step("silu", "", d, d), Step("linear", "time_mlp.fc2", d, d)]
    if num_classes is not None:  # (W1, B12)  temb += E[y], E (K + 1, time_dim)
        plan.append(Step("embed", "class_embedding", num_classes + 1, d))
    return plan + [Step("silu", "", d, d)] * bool(act)


def check_num_classes(num_classes):
    """None (an unconditional model) or the number of classes K >= 1 (the table then has K + 1 rows)."""
    return None if num_classes is None else check_int(num_classes, "num_classes", lo=1)


def mlp_plan(in_dim, hidden, num_layers, out_dim):
    """h = in_proj(x) + temb;  h <- h + layers.i(SiLU(h)) for i < num_layers;  out = out_proj(SiLU(h)), out_dim wide."""
    h = hidden
    plan = [Step("linear", "in_proj", in_dim, h), Step("temb", "", h, h)]
    for i in range(num_layers):
        plan += [Step("keep", "", h, h), Step("silu", "", h, h), Step("linear", f"layers.{i}", h, h),
                 Step("add", "", h, h, 1)]  # (B8) residual: h + layer(SiLU(h))
    return plan + [Step("silu", "", h, h), Step("linear", "out_proj", h, out_dim)]


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


def param_rows(step):
    """The output rows of a named step's weight: 2 c_out for scaleshift's [scale | shift] (B13), else c_out."""
    return 2 * step.c_out if step.op == "scaleshift" else step.c_out


def downsamplings(plan):
    """How many times the plan halves the resolution: its stride-2 convs (B9, B11) and its res_down steps (B15)."""
    return sum(s.stride == 2 or s.op == "res_down" for s in plan)


def conv_padding(step):
    """A conv step's zero padding on every side: ``step.padding``, or k // 2 (the size-keeping padding)."""
    return step.k // 2 if step.padding is None else step.padding
