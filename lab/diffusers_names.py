"""The weight names of this project's UNet and of diffusers' UNet2DModel, both ways (tooling: written once).

diffusers numbers its up path from the coarsest level (up_blocks.0 is our up.{L-1}) and keeps q, k, v as three
linear layers, stacked here into one 1x1 conv ``qkv``; everything else maps name for name (scale-shift's temb_proj of
2C rows [scale | shift] is time_emb_proj, chunked in that order there; resblock_updown's transition blocks
down.l.downsample.* / up.l.upsample.* are downsamplers.0.* / upsamplers.0.*, B15). Used by lab.convert, with the ADM
options' configuration fields: the norm, the number of heads and the block types.
"""
from __future__ import annotations

import re

import numpy as np

from reference.errors import InputError

_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out",
        "time_mlp.fc1": "time_embedding.linear_1", "time_mlp.fc2": "time_embedding.linear_2",
        "class_embedding": "class_embedding"}
_RES = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
        "skip": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "qkv": ("to_q", "to_k", "to_v"), "proj": "to_out.0"}
_DEPRECATED = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # old AttentionBlock names


# (B15) a level's block types: (attention, resblock_updown) -> UNet2DModel's down and up block type. An attention
# level's resampler follows downsample_type / upsample_type; DownBlock2D's is always a conv, and the Resnet*Block2D
# ones always a residual block (their resnets are DownBlock2D's and UpBlock2D's: skip_time_act False, scale 1)
_DOWN_TYPES = {(False, False): "DownBlock2D", (True, False): "AttnDownBlock2D",
               (False, True): "ResnetDownsampleBlock2D", (True, True): "AttnDownBlock2D"}
_UP_TYPES = {(False, False): "UpBlock2D", (True, False): "AttnUpBlock2D",
             (False, True): "ResnetUpsampleBlock2D", (True, True): "AttnUpBlock2D"}


def block_types_for(attention, resblock_updown):
    """Our attention flags and resblock_updown -> UNet2DModel's down_block_types, up_block_types, downsample_type and
    upsample_type ("resnet" for resblock_updown, B15: diffusers' ResnetBlock2D(down=True / up=True))."""
    kind = "resnet" if resblock_updown else "conv"
    return dict(down_block_types=[_DOWN_TYPES[a, resblock_updown] for a in attention],
                up_block_types=[_UP_TYPES[a, resblock_updown] for a in reversed(attention)],
                downsample_type=kind, upsample_type=kind)


def _resample_kind(t, a, c, key):  # a block type's resampler: "conv" or "resnet"
    return "resnet" if t.startswith("Resnet") else c.get(key, "conv") if a else "conv"


def blocks_from(c):
    """A UNet2DModel config's block types -> (attention flags, resblock_updown); InputError names a block type our
    UNet lacks, up blocks that are not the down blocks' mirror, or transitions of both kinds (one flag holds them)."""
    downs, ups = list(c["down_block_types"]), list(c["up_block_types"])
    ours = {t: a for (a, _), t in _DOWN_TYPES.items()}
    for i, t in enumerate(downs):
        if t not in ours:
            raise InputError(f"config.json has down_block_types[{i}]={t!r}; only {sorted(ours)} convert")
    attention = [ours[t] for t in downs]
    kinds = {_resample_kind(t, a, c, "downsample_type") for t, a in zip(downs[:-1], attention)}  # the last: none
    up_pairs = [(t, a) for t, a in zip(ups, reversed(attention))]
    kinds |= {_resample_kind(t, a, c, "upsample_type") for t, a in up_pairs[:-1]}
    if kinds - {"conv", "resnet"} or len(kinds) > 1:
        raise InputError(f"config.json's level transitions are {sorted(kinds)} (down_block_types={downs}, "
                         f"up_block_types={ups}, downsample_type={c.get('downsample_type')!r}, upsample_type="
                         f"{c.get('upsample_type')!r}); the project's UNet converts all conv or all resnet ones")
    resnet = kinds == {"resnet"}
    want = block_types_for(attention, resnet)["up_block_types"]
    fits = [t == w or {t, w} <= {"UpBlock2D", "ResnetUpsampleBlock2D"} and i == len(ups) - 1
            for i, (t, w) in enumerate(zip(ups, want))]
    if len(ups) != len(want) or not all(fits):
        raise InputError(f"config.json has up_block_types={ups}; with down_block_types={downs} the project's UNet "
                         f"(attention on the same levels up and down) needs {want}")
    return attention, resnet


NORMS_TO_DIFFUSERS = {"additive": "default", "scale-shift": "scale_shift"}  # our norm -> resnet_time_scale_shift


def norm_from(c):
    """A UNet2DModel config's resnet_time_scale_shift -> our UNet's norm (B8 additive, B13 scale-shift); InputError
    otherwise. With "scale_shift" and no attn_norm_num_groups diffusers' middle attention has no GroupNorm (its
    UNetMidBlock2D gives it one only for "default"), which ours always has: refused, naming the field to set."""
    shift, ours = c.get("resnet_time_scale_shift", "default"), {v: k for k, v in NORMS_TO_DIFFUSERS.items()}
    if shift not in ours:
        raise InputError(f"config.json has resnet_time_scale_shift={shift!r}; the project's UNet computes "
                         f"{list(ours)} (its norm additive or scale-shift)")
    if shift != "default" and c.get("add_attention", True) and c.get("attn_norm_num_groups") is None:
        raise InputError(f"config.json has resnet_time_scale_shift={shift!r} and attn_norm_num_groups=None: its "
                         "middle attention has no GroupNorm, which the project's UNet has (attn_norm_num_groups="
                         f"{c['norm_num_groups']} would give it one)")
    return ours[shift]


def attn_norm_groups(kw):
    """UNet2DModel's attn_norm_num_groups for our keyword arguments: None (the resnets' groups) where diffusers
    then normalises the middle attention, our groups where it would not (scale-shift, see norm_from)."""
    return None if kw["norm"] == "additive" else kw["groups"]


def _attended(channels, attention, mid_attention):  # the channels of every attention layer
    return [c for c, a in zip(channels, attention) if a] + ([channels[-1]] if mid_attention else [])


def num_heads_from(head_dim, channels, attention, mid_attention):
    """diffusers' attention_head_dim (None: one head of all channels) -> our num_heads (B14), one count for every
    attention layer of ``channels`` (block_out_channels); InputError where the layers' counts C / d differ."""
    attended = _attended(channels, attention, mid_attention)
    heads = {1} if head_dim is None else {c // head_dim if c % head_dim == 0 else None for c in attended} or {1}
    if len(heads) != 1 or None in heads:
        raise InputError(f"config.json has attention_head_dim={head_dim}: attention at channels {attended} would "
                         "have different numbers of heads; the project's UNet has one num_heads for every layer")
    return heads.pop()


def head_dim_for(num_heads, channels, attention, mid_attention):
    """Our num_heads -> diffusers' attention_head_dim (None for one head); InputError where the heads' widths differ
    between attention layers, since UNet2DModel has one attention_head_dim for all of them."""
    widths = {c // num_heads for c in _attended(channels, attention, mid_attention)}
    if num_heads == 1 or not widths:
        return None
    if len(widths) > 1:
        raise InputError(f"num_heads={num_heads} gives heads of widths {sorted(widths)} at the attention layers; "
                         "diffusers' UNet2DModel has one attention_head_dim for all of them: it cannot hold this UNet")
    return widths.pop()


def _diffusers_module(module, levels):
    """Our module path -> (diffusers path or paths, how): "same" copies, "conv1x1" is a linear layer there
    (weight (O, C) for our (O, C, 1, 1)), "qkv" our one conv stacked from to_q, to_k, to_v."""
    if module in _TOP:
        return _TOP[module], "same"
    p = module.split(".")
    if p[0] == "mid":
        block, rest = "mid_block." + {"res1": "resnets.0", "res2": "resnets.1", "attn": "attentions.0"}[p[1]], p[2:]
        kind = "attn" if p[1] == "attn" else "res"
    else:  # down.l..., up.l...: diffusers' up_blocks.i is our up level L-1-i
        block = f"down_blocks.{p[1]}" if p[0] == "down" else f"up_blocks.{levels - 1 - int(p[1])}"
        if p[2] in ("downsample", "upsample") and len(p) == 3:  # (B9) the stride-2 conv, or up2x's conv
            return f"{block}.{p[2]}rs.0.conv", "same"
        if p[2] in ("downsample", "upsample"):  # (B15) resblock_updown: a ResnetBlock2D(down / up=True) there
            return f"{block}.{p[2]}rs.0.{_RES[p[3]]}", "same"
        block, kind, rest = f"{block}.{'resnets' if p[2] == 'res' else 'attentions'}.{p[3]}", p[2], p[4:]
    leaf = (_RES if kind == "res" else _ATTN)[rest[0]]
    if rest[0] == "qkv":
        return tuple(f"{block}.{x}" for x in leaf), "qkv"
    return f"{block}.{leaf}", "conv1x1" if (kind == "attn" and rest[0] == "proj") else "same"


def _pairs(params, levels):
    """[(our name, diffusers keys, how)] for every parameter, in our order."""
    out = []
    for name in params:
        module, part = name.rsplit(".", 1)
        path, how = _diffusers_module(module, levels)
        out.append((name, [f"{m}.{part}" for m in ((path,) if isinstance(path, str) else path)], how))
    return out


def params_to_diffusers(params, levels):
    """Our parameters -> diffusers' state dict (NumPy arrays): exact (reshapes and splits only)."""
    sd = {}
    for name, keys, how in _pairs(params, levels):
        v = np.asarray(params[name])
        parts = np.split(v, 3, axis=0) if how == "qkv" else [v]
        for key, a in zip(keys, parts):
            sd[key] = np.ascontiguousarray(a[:, :, 0, 0] if how != "same" and a.ndim == 4 else a)
    return sd


def params_from_diffusers(sd, template, levels):
    """diffusers' state dict -> our parameters shaped like ``template``; InputError names the missing and the
    unexpected keys, or a key whose shape differs."""
    sd = {re.sub(r"(attentions\.\d+)\.(query|key|value|proj_attn)\.",
                 lambda m: f"{m[1]}.{_DEPRECATED[m[2]]}.", k): v for k, v in sd.items()}
    pairs = _pairs(template, levels)
    expected = {k: a.shape for k, a in params_to_diffusers(template, levels).items()}
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise InputError(f"the weights do not fit the configuration: missing {_few(missing)}, unexpected "
                         f"{_few(unexpected)} (nothing is skipped: every weight must be used once)")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise InputError(f"weight {k!r} has shape {tuple(sd[k].shape)}, the configuration gives {shape}")
    out = {}
    for name, keys, how in pairs:
        a = np.concatenate([sd[k] for k in keys], axis=0) if how == "qkv" else sd[keys[0]]
        out[name] = a.reshape(template[name].shape)
    return out


def _few(names, n=6):
    more = f", ... {len(names) - n} more" if len(names) > n else ""
    return "[" + ", ".join(names[:n]) + more + "]"
