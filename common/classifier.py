"""The classifier's vocabulary (derivations/classifier_guidance.md, H1, H7, H8): its plans, a network's steps in
forward order walked by each side's classifier.py as common/plans.py's are by unet.py, and the checks both sides'
classifier.py and classifier_guidance.py share (the classifier's arguments, the classifier scale).

``encoder_plan`` is the UNet's encoder half (Dhariwal & Nichol's classifier, ADM's EncoderUNetModel in the
project's layers): conv_in; per level ``num_res_blocks`` residual blocks with the time embedding (each followed
by self-attention where ``attention[l]``) and a stride-2 conv between levels; a middle block (res, attention where
``mid_attention``, res); GroupNorm and SiLU; a pool to one vector per example; a linear head to K logits. Its
parameter names are the UNet's (``conv_in``, ``down.0.res.0.norm1``, ``mid.attn.qkv``, ...) plus ``norm_out``,
``pool.*`` and ``head``. The 2-D points' classifier is common.plans.mlp_plan with K outputs.

Pools (POOLS): "avg", the mean over positions (H8); "attention", ADM's attention pooling (CLIP's): the positions
and their mean as L + 1 tokens, plus a learned positional embedding, one softmax attention (one head), the mean
token's output read out (H8). The head is the plan's last step, zero at initialisation as the UNet's conv_out.
Not math: written once here for both sides.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import InputError, check_choice, check_int
from .plans import Step, check_unet_args

POOLS = ("avg", "attention")


def check_classifier_scale(scale):
    """The classifier scale s as a float: finite and >= 0 (0: unguided, 1: the conditional model, > 1: sharper)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not math.isfinite(scale) or scale < 0:
        raise InputError(f"the classifier scale must be a finite number >= 0 (guided-diffusion's classifier_scale s:"
                         f" 0 samples unguided, 1 the exact conditional for an exact classifier), got {scale!r}")
    return float(scale)


def check_classifier_args(num_classes, base_channels, channel_mults, num_res_blocks, attention, groups, pool,
                          image_size, norm_eps):
    """-> (K, channels per level, attention flags, num_res_blocks, positions at the lowest level or None).

    InputError names the argument: K >= 2 classes; the UNet's own checks; ``pool`` one of POOLS; attention
    pooling needs ``image_size`` (an int, or (H, W)) divisible by 2^(levels - 1), its positional embedding's size."""
    k = check_int(num_classes, "num_classes (the classifier's classes)", lo=2)
    chans, attention, nrb = check_unet_args(base_channels, channel_mults, num_res_blocks, attention, groups,
                                            "symmetric", norm_eps)
    check_choice(pool, POOLS, "classifier pool")
    if pool != "attention":
        return k, chans, attention, nrb, None
    hw = (image_size, image_size) if isinstance(image_size, int) and not isinstance(image_size, bool) else image_size
    f = 2 ** (len(chans) - 1)
    if not (isinstance(hw, (tuple, list)) and len(hw) == 2 and all(isinstance(v, int) and v > 0 and v % f == 0
                                                                     for v in hw)):
        raise InputError(f"attention pooling needs image_size, an int or (H, W) divisible by {f} (its positional "
                         f"embedding has one row per position of the lowest level), got {image_size!r}")
    return k, chans, attention, nrb, (hw[0] // f) * (hw[1] // f)


def encoder_plan(in_channels, chans, attention, num_res_blocks, mid_attention, num_classes, pool, positions=None):
    """The classifier in forward order, a list of Step (the layout in words: the module docstring)."""
    plan = [Step("conv", "conv_in", in_channels, chans[0])]

    def step(op, name="", c_out=None, k=3, stride=1, c_in=None):
        c = plan[-1].c_out
        plan.append(Step(op, name, c if c_in is None else c_in, c if c_out is None else c_out, k, stride))

    def res(pre, c_out):  # skip(x) + conv3x3(SiLU(GN(conv3x3(SiLU(GN(x))) + proj(SiLU(temb))))), as the UNet's
        c_x = plan[-1].c_out
        for op, name in [("keep", ""), ("norm", "norm1"), ("silu", ""), ("conv", "conv1"), ("temb", "temb_proj"),
                         ("norm", "norm2"), ("silu", ""), ("conv", "conv2")]:
            step(op, name and f"{pre}.{name}", c_out if op == "conv" else None)
        # (B8) the residual join: a 1x1 conv where the channels change, else the identity
        step("add", f"{pre}.skip" if c_x != c_out else "", c_out, 1, c_in=c_x)

    def attn(pre):  # x + proj(attention(q, k, v)), [q | k | v] = qkv(GN(x)); 1x1 convs
        c = plan[-1].c_out
        for op, name, c_out, k in [("keep", "", c, 3), ("norm", "norm", c, 3), ("conv", "qkv", 3 * c, 1),
                                   ("attend", "", c, 3), ("conv", "proj", c, 1)]:
            step(op, name and f"{pre}.{name}", c_out, k)
        step("add", "", c, 1, c_in=c)

    for l in range(len(chans)):
        for r in range(num_res_blocks):
            res(f"down.{l}.res.{r}", chans[l])
            if attention[l]:
                attn(f"down.{l}.attn.{r}")
        if l < len(chans) - 1:
            step("conv", f"down.{l}.downsample", stride=2)  # (B9) stride-2 conv3x3, padding 1
    res("mid.res1", chans[-1])
    if mid_attention:
        attn("mid.attn")
    res("mid.res2", chans[-1])
    step("norm", "norm_out")
    step("silu")
    c = chans[-1]
    if pool == "avg":
        step("avgpool")  # (H8) (N, H, W, C) -> (N, C)
    else:  # (H8) tokens [mean | positions] + positional embedding, attention, the mean token's output
        step("tokens")
        step("posemb", "pool.pos_emb", c, c_in=positions + 1)
        step("conv", "pool.qkv", 3 * c, 1)
        step("attend", "", c)
        step("first")
    step("linear", "head", num_classes, c_in=c)
    return plan
