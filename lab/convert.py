"""Conversion between this project's checkpoints and diffusers' ``UNet2DModel`` (tooling: written once).

    ck = from_diffusers(folder)               # a pipeline folder, or a save_pretrained UNet2DModel (+ scheduler)
    checkpoint.save(path, ck.params, config=ck.config, extra=ck.extra)
    to_diffusers(ckpt_path, folder)            # DDPMPipeline.save_pretrained: model_index.json, unet/, scheduler/

Our UNet maps weight for weight (lab/diffusers_names.py). ``downsample_padding="same"`` is diffusers'
downsample_padding=0; ``norm_eps`` its norm_eps; ``norm="scale-shift"`` (B13) its resnet_time_scale_shift=
"scale_shift"; ``num_heads`` its attention_head_dim = channels / num_heads where that width is one for every
attention layer; ``resblock_updown`` (B15) its downsample_type / upsample_type "resnet", with
ResnetDownsampleBlock2D / ResnetUpsampleBlock2D at the levels without attention. A class-conditional UNet's table of K + 1 rows (W1: the last the null class) is class_embedding
with num_class_embeds = K + 1; learned variances (V1: 2C outputs, the mean's C then the interpolation's C) are
out_channels = 2C with the scheduler's variance_type "learned_range" (V1's interpolation for t > 0). A model
whose item shape no dataset has converts with ``config["data"]`` None (the shape in ``extra["item_shape"]``).
Any other configuration, and any missing or unexpected weight, is refused naming it. diffusers is imported lazily.
"""
from __future__ import annotations

import inspect
import json
import math
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.choices import CONTINUOUS_OBJECTIVES
from reference.errors import InputError
from reference.unet import UNet

from . import checkpoint
from . import data as datasets
from .config import config_from_json
from .diffusers_names import (NORMS_TO_DIFFUSERS, attn_norm_groups, block_types_for, blocks_from,  # noqa: F401
                              head_dim_for, norm_from, num_heads_from, params_from_diffusers,  # lab.convert's names
                              params_to_diffusers)

INSTALL_HINT = ('diffusers is an optional extra of this project: pip install -e ".[interop]" in the clone '
                '(or pip install "diffusers>=0.30")')
SIDE_FILE = "ddpm_executable.json"  # what to_diffusers keeps of our run beside diffusers' files
PIPELINE_INDEX = "model_index.json"  # DiffusionPipeline.save_pretrained's: its components sit in unet/, scheduler/
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_RANGE = {"beta_start": 1e-4, "beta_end": 0.02}  # the only range TrainConfig's named schedules have
# UNet2DModel arguments that must have these values: each is part of the function our UNet computes
REQUIRED = {"center_input_sample": False, "time_embedding_type": "positional", "freq_shift": 1,
            "flip_sin_to_cos": False, "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1,
            "act_fn": "silu", "class_embed_type": None}  # downsample_type, upsample_type: blocks_from (B15)
# what no such argument means (an older diffusers lacks some)
IMPLIED = {"add_attention": True, "attn_norm_num_groups": None, "dropout": 0.0, "num_class_embeds": None,
           "resnet_time_scale_shift": "default", "downsample_type": "conv", "upsample_type": "conv"}
# the scheduler's variance_type -> the project's sampling variance; learned_range is V1's interpolation
VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_large": "fixed_large", "learned_range": "learned"}
# Why a continuous objective's model does not convert: the network is only part of the function it was trained as
_NO_DIFFUSERS = {"edm": "EDM's preconditioning around the network (c_skip, c_out, c_in of sigma_data, the time input "
                        "250 ln sigma) has no field in UNet2DModel",
                 "flow": "the velocity at the time input 1000 t has no prediction type or time scale there",
                 "ncsn": "the score F / sigma at the time input 1000 t of the sigma ladder has no field there (diffusers' "
                         "ScoreSdeVe models embed ln sigma in random Fourier features, not this sinusoidal input)"}


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
    boc = list(c["block_out_channels"])
    base = boc[0]
    if any(b % base for b in boc):
        raise InputError(f"config.json has block_out_channels={boc}: every level must be a multiple of the first")
    attention, resblock_updown = blocks_from(c)  # (B15) resnet transitions: ADM's resblock_updown
    mid_attention = bool(c.get("add_attention", True))
    num_heads = num_heads_from(c.get("attention_head_dim"), boc, attention, mid_attention)
    if c.get("attn_norm_num_groups") not in (None, c["norm_num_groups"]):
        raise InputError(f"config.json has attn_norm_num_groups={c['attn_norm_num_groups']}; the project's "
                         f"attention normalises with the UNet's groups ({c['norm_num_groups']})")
    if c["downsample_padding"] not in (0, 1):
        raise InputError(f"config.json has downsample_padding={c['downsample_padding']}; 1 (symmetric) or 0 "
                         "(pad bottom and right, as DDPM's checkpoints) convert")
    embeds = c.get("num_class_embeds")
    if embeds is not None and (isinstance(embeds, bool) or not isinstance(embeds, int) or embeds < 2):
        raise InputError(f"config.json has num_class_embeds={embeds!r}; a class-conditional model converts with "
                         "K + 1 >= 2 embeddings: K classes and the null class (the last)")
    return dict(UNET_DEFAULTS, in_channels=c["in_channels"], out_channels=c["out_channels"], base_channels=base,
                channel_mults=tuple(b // base for b in boc), num_res_blocks=c["layers_per_block"],
                attention=tuple(attention), groups=c["norm_num_groups"], mid_attention=mid_attention,
                time_dim=c.get("time_embedding_dim") or 4 * base, norm_eps=float(c["norm_eps"]),
                downsample_padding="symmetric" if c["downsample_padding"] == 1 or resblock_updown else "same",
                num_classes=None if embeds is None else embeds - 1, num_heads=num_heads,
                norm=norm_from(c), resblock_updown=resblock_updown)  # (B15) pools: downsample_padding is unused


def _outputs(in_channels, variance):
    """The output channels a run's network has unless its model dict says: 2C with learned variances (V1)."""
    return 2 * in_channels if variance == "learned" else in_channels


def full_kwargs(model, in_channels, variance="fixed"):
    """Our UNet's complete keyword arguments from a TrainConfig.model dict (defaults and derived values filled;
    ``variance``: the TrainConfig's, "learned" giving 2C outputs as train's build_model does)."""
    kw = dict(UNET_DEFAULTS, **model, in_channels=in_channels)
    kw.update(channel_mults=tuple(kw["channel_mults"]), attention=tuple(bool(a) for a in kw["attention"]),
              out_channels=kw["out_channels"] or _outputs(in_channels, variance),
              time_dim=kw["time_dim"] or 4 * kw["base_channels"], norm_eps=float(kw["norm_eps"]))
    return {k: v for k, v in kw.items() if k not in ("dtype", "seed")}


def model_dict(kw, variance="fixed"):
    """The TrainConfig.model dict of full keyword arguments: what differs from our UNet's defaults (and not
    in_channels, which the data gives, nor the 2C outputs that ``variance`` "learned" implies)."""
    derived = dict(UNET_DEFAULTS, out_channels=_outputs(kw["in_channels"], variance), time_dim=4 * kw["base_channels"])
    keep = {"base_channels", "channel_mults", "num_res_blocks", "attention", "groups"}
    return {k: v for k, v in kw.items() if k not in ("in_channels", "dtype", "seed") and (k in keep or v != derived[k])}


def diffusers_unet_config(kw, sample_size):
    """Our full keyword arguments -> UNet2DModel's constructor arguments (every one that matters, stated);
    InputError names what UNet2DModel cannot hold."""
    boc = [kw["base_channels"] * m for m in kw["channel_mults"]]
    return dict(REQUIRED, resnet_time_scale_shift=NORMS_TO_DIFFUSERS[kw["norm"]], sample_size=sample_size,
                in_channels=kw["in_channels"], out_channels=kw["out_channels"],
                time_embedding_dim=None if kw["time_dim"] == 4 * boc[0] else kw["time_dim"], block_out_channels=boc,
                layers_per_block=kw["num_res_blocks"], add_attention=kw["mid_attention"],
                **block_types_for(kw["attention"], kw["resblock_updown"]),  # (B15) "resnet" transitions
                downsample_padding=1 if kw["downsample_padding"] == "symmetric" else 0,
                attention_head_dim=head_dim_for(kw["num_heads"], boc, kw["attention"], kw["mid_attention"]),
                norm_num_groups=kw["groups"], attn_norm_num_groups=attn_norm_groups(kw), norm_eps=kw["norm_eps"],
                dropout=0.0,
                num_class_embeds=None if kw["num_classes"] is None else kw["num_classes"] + 1)


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
    if variance not in VARIANCE_TYPES:
        raise InputError(f"scheduler_config.json has variance_type={variance!r}; the project samples with "
                         f"{', '.join(VARIANCE_TYPES)} (learned_range: the network's own variances, V1)")
    if c.get("thresholding"):
        raise InputError("scheduler_config.json has thresholding=true; the project clips x0_hat to [-1, 1] only")
    if c.get("clip_sample", True) and float(c.get("clip_sample_range", 1.0)) != 1.0:
        raise InputError(f"scheduler_config.json has clip_sample_range={c['clip_sample_range']}; the project "
                         "clips x0_hat to [-1, 1]")
    fields = dict(T=int(c.get("num_train_timesteps", 1000)), schedule=SCHEDULES[name], prediction=PREDICTIONS[pred],
                  zero_terminal_snr=bool(c.get("rescale_betas_zero_snr", False)),
                  variance="learned" if variance == "learned_range" else "fixed")
    return fields, dict(variance=VARIANCE_TYPES[variance], clip_x0=bool(c.get("clip_sample", True)),
                        spacing=c.get("timestep_spacing", "leading"))


def native_datasets(item_shape):
    """The datasets whose items have ``item_shape`` natively (no resizing)."""
    return [n for n, (ch, s, _, _) in datasets.NATIVE.items() if (ch, s, s) == tuple(item_shape)]


def train_config(model, sched_fields, item_shape, data=None, base=None):
    """The TrainConfig dict of a converted model: ``base`` (a config kept beside diffusers' files) or the
    defaults, with the ``model`` dict, schedule and data set; ``data`` default: base's, or the one dataset
    whose items have that shape natively, else None (no dataset: sample needs none, eval asks for --data)."""
    hits = native_datasets(item_shape)
    data = data or (base or {}).get("data") or (hits[0] if len(hits) == 1 else None)
    size = None
    if data is not None:
        native = datasets.info(data).shape
        size = None if native[1:] == tuple(item_shape[1:]) else int(item_shape[1])
        if datasets.info(data, image_size=size).shape != tuple(item_shape):
            raise InputError(f"--data {data!r} has items of shape {native}, the model takes {tuple(item_shape)}")
    cfg = {"dtype": "float32", **(base or {}), "data": data, "image_size": size, "model": model, **sched_fields,
           "class_cond": model.get("num_classes") is not None}
    learned = cfg["variance"] == "learned"
    if learned and cfg.get("loss", "simple") == "simple":  # the bound trains learned variances (V4): Improved
        cfg["loss"] = "hybrid"                               # DDPM's L_hybrid, what learned_range models use
    elif not learned and cfg.get("loss") == "hybrid":
        cfg["loss"] = "simple"
    return json.loads(config_from_json(json.dumps(cfg)).validate().to_json())


# ---- files -----------------------------------------------------------------------------------------

def _read_json(path, what):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {what} {path}: {e}") from None


def _pipeline_first(folder, sub):
    """``folder``'s sub-folder ``sub`` first where a pipeline's model_index.json says that is the layout, else
    ``folder`` itself first (a save_pretrained model, or this project's earlier flat layout)."""
    return (folder / sub, folder) if (folder / PIPELINE_INDEX).is_file() else (folder, folder / sub)


def unet_folder(folder):
    """The folder holding config.json: ``folder``'s unet/ (a pipeline's layout), or ``folder`` itself."""
    folder = Path(folder)
    for f in _pipeline_first(folder, "unet"):
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
    for f in [d / "scheduler_config.json" for d in _pipeline_first(folder, "scheduler") + (unet_dir,)]:
        if f.is_file():
            return _read_json(f, "scheduler config")
    return None


def from_diffusers(folder, data=None):
    """Read a saved UNet2DModel (``folder`` or ``folder/unet``) and its scheduler config (beside it, or in
    ``folder/scheduler``; DDPMScheduler's defaults when there is none) -> Converted. ``data``: the dataset
    the model was trained on (default: a kept config's, or the dataset whose items have the model's shape, else
    none). A num_class_embeds = K + 1 model reads as K classes and the null class (to_diffusers' layout; a
    warning says so when no kept config confirms it); variance_type learned_range as learned variances."""
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
    variance, c = fields["variance"], kw["in_channels"]
    if variance == "learned" and kw["out_channels"] != 2 * c:
        raise InputError(f"scheduler_config.json has variance_type='learned_range', which needs a network with "
                         f"2 x in_channels = {2 * c} outputs (the mean's, then the variances'); config.json has "
                         f"out_channels={kw['out_channels']}")
    size = dcfg.get("sample_size") or 32
    item_shape = [c] + ([size, size] if isinstance(size, int) else list(size))
    side = next((_read_json(f / SIDE_FILE, "kept configuration") for f in (folder, unet_dir)
                 if (f / SIDE_FILE).is_file()), {})
    base, model = side.get("config"), model_dict(kw, variance)
    kept_variance = (base or {}).get("variance", "fixed")
    if base and (kept_variance != variance
                 or full_kwargs(base.get("model") or {}, c, kept_variance) != full_kwargs(model, c, variance)):
        warnings.warn(f"{SIDE_FILE} describes another network or variance than config.json and "
                      "scheduler_config.json (edited since?): not used")
        base, side = None, {}
    if kw["num_classes"] is not None and not base:
        warnings.warn(f"config.json has num_class_embeds={kw['num_classes'] + 1}: read as {kw['num_classes']} "
                      f"classes 0..{kw['num_classes'] - 1} and the null class {kw['num_classes']} (the last "
                      "embedding, what guidance and sampling without --class use), as convert --to-diffusers "
                      "writes them")
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


def _mode_like_open(folder):
    """safetensors writes its files private (0600); give the weights the mode open() gives every other file
    written here (0666 less the umask), so that the folder can be shared as its JSON files are."""
    for f in Path(folder).glob("unet/diffusion_pytorch_model*"):
        f.chmod(0o666 & ~checkpoint._umask())


def to_diffusers(ckpt_path, folder, use_ema=True):
    """Write the checkpoint's UNet (its EMA weights unless ``use_ema`` is False) and a DDPMScheduler of its
    schedule as a DDPMPipeline into ``folder`` (save_pretrained: model_index.json, unet/ with config.json and
    diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json), with SIDE_FILE (our configuration)
    beside model_index.json; DDPMPipeline.from_pretrained(folder) loads it -> the diffusers UNet2DModel. A
    class-conditional UNet needs class_labels (0..K-1, or K the null class), which DDPMPipeline's loop does not
    pass: call the unet in a loop of your own, or sample the checkpoint here."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--to-diffusers {folder} is a file: give a folder to write the pipeline into")
    ck = checkpoint.load(ckpt_path)
    cfg, shape = config_from_json(json.dumps(ck.config)), item_shape(ck)
    if cfg.objective in CONTINUOUS_OBJECTIVES:
        raise InputError(f"{ckpt_path} is a model of --objective {cfg.objective}, which diffusers' UNet2DModel and "
                         f"DDPMScheduler cannot hold: {_NO_DIFFUSERS[cfg.objective]}; sample it here instead")
    diffusers = require_diffusers()
    import torch
    if len(shape) != 3:
        raise InputError(f"{ckpt_path} holds an MLP for points of shape {shape}; only UNets convert to diffusers")
    kw, weights = full_kwargs(cfg.model, shape[0], cfg.variance), (ck.ema or ck.params) if use_ema else ck.params
    UNet(**kw).load_params(weights)  # InputError names a missing, unexpected or misshapen weight
    dc, known = diffusers_unet_config(kw, shape[1] if shape[1] == shape[2] else list(shape[1:])), _defaults(
        diffusers.UNet2DModel)  # an older diffusers lacks some arguments: fine where it behaves as their value
    lost = {k: v for k, v in dc.items() if k not in known and v != {**REQUIRED, **IMPLIED}.get(k)}
    if lost:
        raise InputError(f"diffusers {diffusers.__version__} has no UNet2DModel argument for {lost}: upgrade it")
    model = diffusers.UNet2DModel(**{k: v for k, v in dc.items() if k in known})
    sd = params_to_diffusers(weights, len(kw["channel_mults"]))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    sampling = ck.extra.get("sampling") or {}
    variance = "learned" if cfg.variance == "learned" else sampling.get("variance", "fixed_small")
    zero_snr = {"rescale_betas_zero_snr": True} if cfg.zero_terminal_snr else {}
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=cfg.T, beta_schedule={v: k for k, v in SCHEDULES.items()}[cfg.schedule], **BETA_RANGE,
        prediction_type={v: k for k, v in PREDICTIONS.items()}[cfg.prediction], **zero_snr,
        variance_type={v: k for k, v in VARIANCE_TYPES.items()}[variance], clip_sample=sampling.get("clip_x0", True),
        timestep_spacing=sampling.get("spacing", "leading"))
    diffusers.DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(folder)
    _mode_like_open(folder)
    side = {"config": ck.config, "step": ck.step, "weights": "ema" if use_ema and ck.ema else "params",
            "extra": {k: v for k, v in ck.extra.items()
                      if k not in ("item_shape", "diffusers") and not isinstance(v, np.ndarray)}}
    (folder / SIDE_FILE).write_text(json.dumps(side, indent=2, sort_keys=True))
    return model
