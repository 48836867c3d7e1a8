"""Conversion between this project's checkpoints and diffusers' ``UNet2DModel`` (tooling: written once).

    ck = from_diffusers(folder)               # a save_pretrained UNet2DModel (+ scheduler_config.json)
    checkpoint.save(path, ck.params, config=ck.config, extra=ck.extra)
    to_diffusers(ckpt_path, folder)            # config.json + safetensors + scheduler_config.json

DDPM's layout (ResNet blocks, one-head attention at chosen levels, the positional embedding [sin | cos] with
freq_shift 1) maps weight for weight: diffusers numbers its up path from the coarsest level (up_blocks.0 is
our up.{L-1}) and keeps q, k, v as three linear layers, stacked here into one 1x1 conv ``qkv``. Our UNet's
``downsample_padding="same"`` is diffusers' downsample_padding=0; ``norm_eps`` its norm_eps. Any other
configuration, and any missing or unexpected weight, is refused naming it. diffusers is imported lazily.
"""
from __future__ import annotations

import inspect
import json
import math
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from reference.errors import InputError
from reference.unet import UNet

from . import checkpoint
from . import data as datasets
from .config import config_from_json

INSTALL_HINT = ('diffusers is an optional extra of this project: pip install -e ".[interop]" in the clone '
                '(or pip install "diffusers>=0.30")')
SIDE_FILE = "ddpm_executable.json"  # what to_diffusers keeps of our run beside diffusers' files
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_RANGE = {"beta_start": 1e-4, "beta_end": 0.02}  # the only range TrainConfig's named schedules have
# UNet2DModel arguments that must have these values: each is part of the function our UNet computes
REQUIRED = {"center_input_sample": False, "time_embedding_type": "positional", "freq_shift": 1,
            "flip_sin_to_cos": False, "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1,
            "downsample_type": "conv", "upsample_type": "conv", "act_fn": "silu", "resnet_time_scale_shift": "default",
            "class_embed_type": None, "num_class_embeds": None}
IMPLIED = {"add_attention": True, "attn_norm_num_groups": None, "dropout": 0.0}  # what no such argument means
_DOWN, _UP = {"DownBlock2D": False, "AttnDownBlock2D": True}, {False: "UpBlock2D", True: "AttnUpBlock2D"}


def require_diffusers():
    """The diffusers module, or InputError saying how to install it."""
    try:
        import diffusers
    except ImportError as e:
        raise InputError(f"{INSTALL_HINT} ({e})") from None
    return diffusers


class Converted(NamedTuple):
    """A converted model: ``params`` keyed by our state_dict names, ``config`` a TrainConfig dict, ``extra``
    (item_shape, the sampler settings of the scheduler config, diffusers' own configs), ``step``."""
    params: dict
    config: dict
    extra: dict
    step: int = 0


# ---- the weight names ------------------------------------------------------------------------------

_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out",
        "time_mlp.fc1": "time_embedding.linear_1", "time_mlp.fc2": "time_embedding.linear_2"}
_RES = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
        "skip": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "qkv": ("to_q", "to_k", "to_v"), "proj": "to_out.0"}
_DEPRECATED = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # old AttentionBlock names


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
        if p[2] in ("downsample", "upsample"):
            return f"{block}.{p[2]}rs.0.conv", "same"
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


# ---- the configurations ----------------------------------------------------------------------------

def _defaults(cls):
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


UNET_DEFAULTS = _defaults(UNet)


def unet_kwargs(dcfg, defaults):
    """diffusers' UNet2DModel config (``defaults``: its constructor's) -> our UNet's full keyword arguments
    (in_channels included); InputError names the first field our UNet cannot express."""
    c = {**defaults, **{k: v for k, v in dcfg.items() if not k.startswith("_")}}
    if dcfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise InputError(f"config.json describes a {dcfg['_class_name']}; only UNet2DModel converts")
    unknown = sorted(set(c) - set(defaults) - {"in_channels", "out_channels"})
    if unknown:
        warnings.warn(f"config.json fields {unknown} are not UNet2DModel arguments here; diffusers ignores them too")
    for k, want in REQUIRED.items():  # a field this diffusers lacks behaves as the value it later defaulted to
        if c.get(k, want) != want:
            raise InputError(f"config.json has {k}={c[k]!r}; the project's UNet computes only {k}={want!r}")
    boc, downs, ups = list(c["block_out_channels"]), list(c["down_block_types"]), list(c["up_block_types"])
    base = boc[0]
    if any(b % base for b in boc):
        raise InputError(f"config.json has block_out_channels={boc}: every level must be a multiple of the first")
    for i, t in enumerate(downs):
        if t not in _DOWN:
            raise InputError(f"config.json has down_block_types[{i}]={t!r}; only {list(_DOWN)} convert")
    attention = [_DOWN[t] for t in downs]
    want_up = [_UP[a] for a in reversed(attention)]
    if ups != want_up:
        raise InputError(f"config.json has up_block_types={ups}; with down_block_types={downs} the project's UNet "
                         f"(attention on the same levels up and down) needs {want_up}")
    mid_attention = bool(c.get("add_attention", True))
    heads = [b for b, a in zip(boc, attention) if a] + ([boc[-1]] if mid_attention else [])
    if c.get("attention_head_dim") is not None and any(c["attention_head_dim"] != b for b in heads):
        raise InputError(f"config.json has attention_head_dim={c['attention_head_dim']}: several heads at channels "
                         f"{heads}; the project's attention has one head (attention_head_dim null)")
    if c.get("attn_norm_num_groups") not in (None, c["norm_num_groups"]):
        raise InputError(f"config.json has attn_norm_num_groups={c['attn_norm_num_groups']}; the project's "
                         f"attention normalises with the UNet's groups ({c['norm_num_groups']})")
    if c["downsample_padding"] not in (0, 1):
        raise InputError(f"config.json has downsample_padding={c['downsample_padding']}; 1 (symmetric) or 0 "
                         "(pad bottom and right, as DDPM's checkpoints) convert")
    return dict(UNET_DEFAULTS, in_channels=c["in_channels"], out_channels=c["out_channels"], base_channels=base,
                channel_mults=tuple(b // base for b in boc), num_res_blocks=c["layers_per_block"],
                attention=tuple(attention), groups=c["norm_num_groups"], mid_attention=mid_attention,
                time_dim=c.get("time_embedding_dim") or 4 * base, norm_eps=float(c["norm_eps"]),
                downsample_padding="symmetric" if c["downsample_padding"] == 1 else "same")


def full_kwargs(model, in_channels):
    """Our UNet's complete keyword arguments from a TrainConfig.model dict (defaults and derived values filled)."""
    kw = dict(UNET_DEFAULTS, **model, in_channels=in_channels)
    kw.update(channel_mults=tuple(kw["channel_mults"]), attention=tuple(bool(a) for a in kw["attention"]),
              out_channels=kw["out_channels"] or in_channels, time_dim=kw["time_dim"] or 4 * kw["base_channels"],
              norm_eps=float(kw["norm_eps"]))
    return {k: v for k, v in kw.items() if k not in ("dtype", "seed")}


def model_dict(kw):
    """The TrainConfig.model dict of full keyword arguments: what differs from our UNet's defaults (and not
    in_channels, which the data gives)."""
    derived = dict(UNET_DEFAULTS, out_channels=kw["in_channels"], time_dim=4 * kw["base_channels"])
    keep = {"base_channels", "channel_mults", "num_res_blocks", "attention", "groups"}
    return {k: v for k, v in kw.items() if k not in ("in_channels", "dtype", "seed") and (k in keep or v != derived[k])}


def diffusers_unet_config(kw, sample_size):
    """Our full keyword arguments -> UNet2DModel's constructor arguments (every one that matters, stated)."""
    boc = [kw["base_channels"] * m for m in kw["channel_mults"]]
    return dict(REQUIRED, sample_size=sample_size, in_channels=kw["in_channels"], out_channels=kw["out_channels"],
                time_embedding_dim=None if kw["time_dim"] == 4 * boc[0] else kw["time_dim"], block_out_channels=boc,
                layers_per_block=kw["num_res_blocks"],
                down_block_types=[next(t for t, a in _DOWN.items() if a == x) for x in kw["attention"]],
                up_block_types=[_UP[x] for x in reversed(kw["attention"])], add_attention=kw["mid_attention"],
                downsample_padding=1 if kw["downsample_padding"] == "symmetric" else 0, attention_head_dim=None,
                norm_num_groups=kw["groups"], attn_norm_num_groups=None, norm_eps=kw["norm_eps"], dropout=0.0)


def schedule_from_diffusers(sc, defaults):
    """A scheduler config (``defaults``: its class's constructor's) -> (TrainConfig fields, sampler settings);
    InputError names a field the project's configuration cannot express."""
    c = {**defaults, **{k: v for k, v in sc.items() if not k.startswith("_")}}
    if c.get("trained_betas") is not None:
        raise InputError("scheduler_config.json has trained_betas (custom betas); the project's configuration "
                         f"names a schedule: one of {list(SCHEDULES)}")
    name = c.get("beta_schedule", "linear")
    if name not in SCHEDULES:
        raise InputError(f"scheduler_config.json has beta_schedule={name!r}; convertible: {list(SCHEDULES)}")
    if name != "squaredcos_cap_v2":  # the cosine schedule has no beta range
        for k, v in BETA_RANGE.items():
            if not math.isclose(float(c.get(k, v)), v, rel_tol=1e-9):
                raise InputError(f"scheduler_config.json has {k}={c[k]}; the project's {SCHEDULES[name]} schedule "
                                 f"runs from beta_start=1e-4 to beta_end=0.02 only")
    pred = c.get("prediction_type", "epsilon")
    if pred not in PREDICTIONS:
        raise InputError(f"scheduler_config.json has prediction_type={pred!r}; convertible: {list(PREDICTIONS)}")
    variance = c.get("variance_type") or "fixed_small"  # DDIM's config has none
    if variance not in ("fixed_small", "fixed_large"):
        raise InputError(f"scheduler_config.json has variance_type={variance!r}; the project samples with "
                         "fixed_small or fixed_large")
    if c.get("thresholding"):
        raise InputError("scheduler_config.json has thresholding=true; the project clips x0_hat to [-1, 1] only")
    if c.get("clip_sample", True) and float(c.get("clip_sample_range", 1.0)) != 1.0:
        raise InputError(f"scheduler_config.json has clip_sample_range={c['clip_sample_range']}; the project "
                         "clips x0_hat to [-1, 1]")
    fields = dict(T=int(c.get("num_train_timesteps", 1000)), schedule=SCHEDULES[name], prediction=PREDICTIONS[pred],
                  zero_terminal_snr=bool(c.get("rescale_betas_zero_snr", False)))
    return fields, dict(variance=variance, clip_x0=bool(c.get("clip_sample", True)),
                        spacing=c.get("timestep_spacing", "leading"))


def train_config(model, sched_fields, item_shape, data=None, base=None):
    """The TrainConfig dict of a converted model: ``base`` (a config kept beside diffusers' files) or the
    defaults, with the ``model`` dict, schedule and data set; ``data`` default: base's, or the dataset of
    that item shape."""
    hits = [n for n, (ch, s, _, _) in datasets.NATIVE.items() if (ch, s, s) == tuple(item_shape)]
    data = data or (base or {}).get("data") or (hits[0] if len(hits) == 1 else None)
    if data is None:
        raise InputError(f"no dataset has items of shape {tuple(item_shape)} natively: give --data NAME (the data "
                         "the model was trained on, e.g. folder:PATH) so that sample and eval know it")
    native = datasets.info(data).shape
    size = None if native[1:] == tuple(item_shape[1:]) else int(item_shape[1])
    if datasets.info(data, image_size=size).shape != tuple(item_shape):
        raise InputError(f"--data {data!r} has items of shape {native}, the model takes {tuple(item_shape)}")
    cfg = {"dtype": "float32", **(base or {}), "data": data, "image_size": size, "model": model, **sched_fields}
    return json.loads(config_from_json(json.dumps(cfg)).validate().to_json())


# ---- files -----------------------------------------------------------------------------------------

def _read_json(path, what):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {what} {path}: {e}") from None


def unet_folder(folder):
    """The folder holding config.json: ``folder`` itself, or its unet/ (a pipeline's layout)."""
    folder = Path(folder)
    for f in (folder, folder / "unet"):
        if (f / "config.json").is_file() and \
                _read_json(f / "config.json", "config").get("_class_name", "UNet2DModel") == "UNet2DModel":
            return f
    if not folder.is_dir():
        raise InputError(f"--from-diffusers {folder}: no such folder")
    raise InputError(f"{folder} holds no UNet2DModel config.json (nor does {folder / 'unet'}): give the folder "
                     "that UNet2DModel.save_pretrained wrote")


def _to_numpy(t):
    import torch
    t = t.detach().cpu()
    return (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy()


def read_weights(folder):
    """The state dict in ``folder`` as NumPy arrays: diffusion_pytorch_model.safetensors or .bin, or their
    sharded index (read from disk, no network); fp16/bf16 weights become float32 exactly."""
    import torch
    from safetensors.torch import load_file

    def load(path):
        return load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, "cpu", weights_only=True)

    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return {k: _to_numpy(v) for k, v in load(folder / name).items()}
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index, "weight index")["weight_map"].values()))
            return {k: _to_numpy(v) for shard in shards for k, v in load(folder / shard).items()}
    raise InputError(f"{folder} has no {' or '.join(WEIGHT_FILES)} (nor a sharded index of one); found: "
                     f"{sorted(p.name for p in folder.iterdir())}")


def _scheduler_config(folder, unet_dir):
    for f in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json",
              unet_dir / "scheduler_config.json"):
        if f.is_file():
            return _read_json(f, "scheduler config")
    return None


def from_diffusers(folder, data=None):
    """Read a saved UNet2DModel (``folder`` or ``folder/unet``) and its scheduler config (beside it, or in
    ``folder/scheduler``; DDPMScheduler's defaults when there is none) -> Converted. ``data``: the dataset
    the model was trained on (default: a kept config's, or the dataset whose items have the model's shape)."""
    diffusers = require_diffusers()
    folder = Path(folder)
    unet_dir = unet_folder(folder)
    dcfg = _read_json(unet_dir / "config.json", "config")
    kw = unet_kwargs(dcfg, _defaults(diffusers.UNet2DModel))
    sc = _scheduler_config(folder, unet_dir)
    if sc is None:
        warnings.warn(f"{folder} has no scheduler_config.json: using DDPMScheduler's defaults (T=1000, linear "
                      "1e-4..0.02, epsilon, fixed_small, clip_sample)")
    cls = getattr(diffusers, (sc or {}).get("_class_name", "DDPMScheduler"), diffusers.DDPMScheduler)
    fields, sampling = schedule_from_diffusers(sc or {}, _defaults(cls))
    size = dcfg.get("sample_size") or 32
    item_shape = [kw["in_channels"]] + ([size, size] if isinstance(size, int) else list(size))
    side = _read_json(unet_dir / SIDE_FILE, "kept configuration") if (unet_dir / SIDE_FILE).is_file() else {}
    base, model = side.get("config"), model_dict(kw)
    if base and full_kwargs(base.get("model") or {}, kw["in_channels"]) != full_kwargs(model, kw["in_channels"]):
        warnings.warn(f"{SIDE_FILE} describes another network than config.json (edited since?): not used")
        base, side = None, {}
    model = base["model"] if base else model  # the run's own words for the same network
    template = UNet(**{k: v for k, v in kw.items() if k not in ("dtype", "seed")}).params
    params = params_from_diffusers(read_weights(unet_dir), template, len(kw["channel_mults"]))
    params = {k: v if v.dtype == np.float64 else v.astype(np.float32) for k, v in params.items()}
    extra = dict(side.get("extra") or {}, item_shape=item_shape, sampling=sampling,
                 diffusers={"unet": dcfg, "scheduler": sc})
    return Converted(params, train_config(model, fields, item_shape, data, base), extra, int(side.get("step", 0)))


def item_shape(ck):
    """The shape of one item a checkpoint's model takes: its extra's item_shape, else its dataset's."""
    cfg = config_from_json(json.dumps(ck.config))
    return tuple(ck.extra.get("item_shape") or datasets.info(cfg.data, image_size=cfg.image_size).shape)


def to_diffusers(ckpt_path, folder, use_ema=True):
    """Write the checkpoint's UNet (its EMA weights unless ``use_ema`` is False) as a UNet2DModel
    (save_pretrained: config.json, diffusion_pytorch_model.safetensors) with a DDPMScheduler's
    scheduler_config.json and SIDE_FILE (our configuration) into ``folder`` -> the diffusers model."""
    diffusers = require_diffusers()
    import torch
    ck = checkpoint.load(ckpt_path)
    cfg, shape = config_from_json(json.dumps(ck.config)), item_shape(ck)
    if len(shape) != 3:
        raise InputError(f"{ckpt_path} holds an MLP for points of shape {shape}; only UNets convert to diffusers")
    kw, weights = full_kwargs(cfg.model, shape[0]), (ck.ema or ck.params) if use_ema else ck.params
    UNet(**kw).load_params(weights)  # InputError names a missing, unexpected or misshapen weight
    dc, known = diffusers_unet_config(kw, shape[1] if shape[1] == shape[2] else list(shape[1:])), _defaults(
        diffusers.UNet2DModel)  # an older diffusers lacks some arguments: fine where it behaves as their value
    lost = {k: v for k, v in dc.items() if k not in known and v != {**REQUIRED, **IMPLIED}.get(k)}
    if lost:
        raise InputError(f"diffusers {diffusers.__version__} has no UNet2DModel argument for {lost}: upgrade it")
    model = diffusers.UNet2DModel(**{k: v for k, v in dc.items() if k in known})
    sd = params_to_diffusers(weights, len(kw["channel_mults"]))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    model.save_pretrained(folder)
    sampling = ck.extra.get("sampling") or {}
    zero_snr = {"rescale_betas_zero_snr": True} if cfg.zero_terminal_snr else {}
    diffusers.DDPMScheduler(
        num_train_timesteps=cfg.T, beta_schedule={v: k for k, v in SCHEDULES.items()}[cfg.schedule], **BETA_RANGE,
        prediction_type={v: k for k, v in PREDICTIONS.items()}[cfg.prediction], **zero_snr,
        variance_type=sampling.get("variance", "fixed_small"), clip_sample=sampling.get("clip_x0", True),
        timestep_spacing=sampling.get("spacing", "leading")).save_config(folder)
    side = {"config": ck.config, "step": ck.step, "weights": "ema" if use_ema and ck.ema else "params",
            "extra": {k: v for k, v in ck.extra.items()
                      if k not in ("item_shape", "diffusers") and not isinstance(v, np.ndarray)}}
    (Path(folder) / SIDE_FILE).write_text(json.dumps(side, indent=2, sort_keys=True))
    return model
