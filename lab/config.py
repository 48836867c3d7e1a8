"""The run configuration, shared by both sides (not math): one dataclass, tuned defaults per dataset.

A checkpoint stores this configuration as JSON, so `sample` and `eval` rebuild the exact model
and schedule the run was trained with, on either side.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

from common import objective_table, rules
from common.plans import NORMS, check_resblock_updown
from common.choices import CONTINUOUS_OBJECTIVES, EDM_DEFAULTS, FLOW_DEFAULTS, LOSSES, OBJECTIVES, TRAIN_VARIANCES
from reference.diffusion import PREDICTIONS
from reference.errors import InputError, check_choice
from reference.ladder import num_levels_for
from reference.losses import WEIGHTINGS as LOSS_WEIGHTINGS
from reference.optim import LR_SCHEDULES

from .data import POINT_SETS, info

__all__ = ["TrainConfig", "RECIPES", "SIGMA_DATA", "recipe_for", "recipe_dict", "make_config", "config_from_json",
           "with_classes", "fit_unet", "WEIGHTINGS", "PREDICTIONS", "LOSSES", "TRAIN_VARIANCES", "OBJECTIVES",
           "CONTINUOUS_OBJECTIVES"]

# The L_simple weightings as the CLI names them: "none" is the loss functions' None.
WEIGHTINGS = ("none",) + tuple(w for w in LOSS_WEIGHTINGS if w is not None)


_NCSN = objective_table.row("ncsn").settings   # the ladder's neutral values (TrainConfig's defaults below)


@dataclass
class TrainConfig:
    data: str = "digits"
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 200                # linear LR warmup steps (O4)
    lr_schedule: str = "constant"    # after the warmup: "constant", or "cosine" decay to 0 at the last step (O4)
    weight_decay: float = 0.0
    grad_clip: float = 1.0           # global gradient-norm clip (O3); 0 disables
    ema_decay: float = 0.995         # EMA of the weights (O2); samples use the EMA weights
    T: int = 1000
    schedule: str = "cosine"
    zero_terminal_snr: bool = False
    prediction: str = "eps"
    weighting: str = "none"          # L_simple weighting: none, snr or min_snr (gamma 5)
    variance: str = "fixed"          # "learned": the network also outputs its reverse variances (V1)
    loss: str = "simple"             # "hybrid" (L_simple + hybrid_lambda L_vlb, V4) or "vlb" (the bound)
    hybrid_lambda: float = 0.001     # L_hybrid's weight of L_vlb (V4)
    importance_sampling: bool = False  # loss "vlb": t ~ p_t, sqrt(E L_t^2) from a loss history (I1, I2)
    class_cond: bool = False         # a class-conditional network (model num_classes from the dataset, W1)
    p_uncond: float = 0.1            # class_cond: the probability a label is dropped to the null class (W1)
    # The design space's objectives (common/choices.py, derivations/design_space.md): "ddpm" trains the chain as
    # above; "edm" and "flow" are continuous (a float time input, no chain) and read only their own settings.
    objective: str = "ddpm"
    sigma_data: float = EDM_DEFAULTS["sigma_data"]   # edm: the data's std in the preconditioning
    p_mean: float = EDM_DEFAULTS["p_mean"]           # edm: ln sigma ~ N(p_mean, p_std^2) in training
    p_std: float = EDM_DEFAULTS["p_std"]
    t_sampling: str = FLOW_DEFAULTS["t_sampling"]    # flow: t "uniform" or "logit-normal" (sigmoid(m + s z))
    logit_mean: float = FLOW_DEFAULTS["logit_mean"]
    logit_std: float = FLOW_DEFAULTS["logit_std"]
    shift: float = FLOW_DEFAULTS["shift"]            # flow: SD3's t' = s t / (1 + (s - 1) t), once; 1 is none
    reflow: bool = False             # flow: train on the pairs (z, ODE(z)) a teacher draws (rectified flow's 2nd round)
    teacher: str | None = None       # reflow: the teacher checkpoint
    reflow_pairs: int | None = None  # reflow: how many pairs (None: the dataset's size)
    teacher_steps: int = 50          # reflow: the teacher's ODE steps per pair
    # ncsn: the geometric sigma ladder sigma_max > ... > sigma_min of num_levels levels (derivations/ncsn.md J2, J3);
    # sigma_max None: not measured (every named dataset's recipe sets it, NCSN_SIGMA_MAX)
    sigma_min: float = _NCSN["sigma_min"]
    sigma_max: float | None = _NCSN["sigma_max"]
    num_levels: int = _NCSN["num_levels"]
    classifier: bool = False         # a noise-conditional classifier's run (lab/classifier_run.py): model holds its
                                     # constructor arguments, num_classes the dataset's; no denoiser, no samples
    seed: int = 0
    model: dict = field(default_factory=dict)   # constructor arguments of UNet / MLP
    image_size: int | None = None    # digits only: upsample 8x8 to this size
    data_dir: str | None = None
    n_data: int | None = None        # use only the first n training items (None: all)
    log_every: int = 50
    sample_every: int = 1000         # a sample grid picture every N steps (0: only at the end)
    save_every: int = 1000           # checkpoint every N steps (and always at the end)
    sample_steps: int = 100          # steps of the sampler used for the pictures during training
    final_samples: bool = True       # a sample picture after the last step (--no-final-samples skips it)
    dtype: str = "float32"

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown configuration field(s): {', '.join(unknown)}")
        return cls(**d)

    def validate(self):
        """Every check of the settings, alone and against each other, in the flags' words, so that a bad setting
        fails before any work. A run asks at each of its edges (the CLI, runner.train, runner.run); the checks
        run once per configuration, again only when a field has changed since."""
        try:
            seen = self.to_json()
        except (TypeError, ValueError):  # a value JSON cannot hold: the checks below name it
            seen = None
        if seen is not None and getattr(self, "_validated", None) == seen:
            return self
        _check_fields(self)
        rules.check_objective_values(self)
        rules.check_objective(self.objective, dataclasses.asdict(self))
        rules.check_zero_terminal_snr(self.zero_terminal_snr, self.prediction)
        check_choice(self.variance, TRAIN_VARIANCES, "variance")
        rules.check_loss(self.loss, self.variance, self.hybrid_lambda, self.importance_sampling, words=rules.FLAGS)
        _check_classes(self)
        if "channel_mults" in self.model:
            _check_unet(self.model)
        object.__setattr__(self, "_validated", seen)
        return self


def _check_fields(c):
    """Each field alone: choices, counts and numbers."""
    check_choice(c.prediction, PREDICTIONS, "prediction")
    check_choice(c.weighting, WEIGHTINGS, "weighting")
    check_choice(c.dtype, ("float32", "float64"), "dtype")
    check_choice(c.lr_schedule, LR_SCHEDULES, "lr-schedule")
    for name in ("steps", "batch_size", "T"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    for name in ("log_every", "sample_every", "save_every", "warmup"):
        if getattr(c, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(c, name)}")
    if not c.lr > 0:
        raise InputError(f"--lr must be > 0, got {c.lr}")
    if not 0 <= c.ema_decay < 1:
        raise InputError(f"--ema-decay must lie in [0, 1), got {c.ema_decay}")
    for name in ("lr", "grad_clip", "weight_decay"):
        v = getattr(c, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v!r}")
    # (sample_steps is used only for the pictures after the last step; n_data < 0 would silently drop items)
    for name in ("sample_steps", "n_data", "image_size"):
        v = getattr(c, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    for k, v in (c.model or {}).items():
        values = v if isinstance(v, (tuple, list)) else (v,)
        ints = [x for x in values if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))]
        if any(x < 1 for x in ints):
            raise InputError(f"--{k.replace('_', '-')} must be positive integer(s), got {v!r}")


def _check_classes(c):
    """--class-cond and --p-uncond, in the flags' words."""
    p = c.p_uncond
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise InputError(f"--p-uncond must be a probability in [0, 1) (the share of labels dropped to the null "
                         f"class, so that the same network also learns the unconditional model), got {p!r}")
    k = (c.model or {}).get("num_classes")
    if k is not None and not c.class_cond and not c.classifier:
        raise InputError(f"model num_classes={k} is set but class_cond is off: "
                         "pass --class-cond (a conditional network) or drop num_classes")


def with_classes(cfg):
    """cfg with model num_classes = the dataset's class count when cfg.class_cond (else cfg itself); --class-cond
    on a dataset without labels is refused, as is a num_classes the dataset does not have."""
    if not cfg.class_cond:
        return cfg
    from .data import FOLDER_PREFIX, info
    k = info(cfg.data, image_size=cfg.image_size).num_classes
    if k == 0:
        hint = (" (a folder has labels when every image sits in a sub-folder named after its class)"
                if cfg.data.startswith(FOLDER_PREFIX) else "")
        raise InputError(f"--class-cond needs a dataset with labels, and {cfg.data!r} has none{hint}")
    if cfg.model.get("num_classes", k) != k:
        raise InputError(f"model num_classes={cfg.model['num_classes']} but {cfg.data!r} has {k} classes")
    return dataclasses.replace(cfg, model={**cfg.model, "num_classes": k})


def _flags(v):
    return ",".join(str(int(bool(a))) for a in v)


def _check_unet(m):
    """The UNet settings against each other, in the flags' words (before any model is built)."""
    mults, attn = tuple(m["channel_mults"]), tuple(m.get("attention", ()))
    if len(attn) != len(mults):
        raise InputError(f"--attention {_flags(attn)} gives {len(attn)} flag(s) but --channel-mults "
                         f"{','.join(map(str, mults))} has {len(mults)} levels: give one 0/1 per level")
    chans = [m["base_channels"] * k for k in mults]
    groups = m.get("groups", 1)
    if any(c % groups for c in chans):
        raise InputError(f"--groups {groups} must divide every level's channels {chans} "
                         f"(--base-channels {m['base_channels']} times --channel-mults)")
    check_choice(m.get("norm", "additive"), NORMS, "norm")  # ADM's options (common/plans.py)
    check_resblock_updown(m.get("resblock_updown", False), len(mults), m.get("downsample_padding", "symmetric"))
    heads, attended = m.get("num_heads", 1), [c for c, a in zip(chans, attn) if a] + [chans[-1]] * m.get(
        "mid_attention", True)
    if any(c % heads for c in attended):
        raise InputError(f"--num-heads {heads} must divide the channels {attended} of every attention layer")


def fit_unet(model, given):
    """Attention levels and GroupNorm groups follow the channel multipliers unless given: when
    ``channel_mults`` (or ``base_channels``) changes, attention stays on the recipe's levels if the count
    of levels is the same, else goes to the coarsest level only; groups stay the recipe's if they divide
    every level's channels, else become the largest divisor of them all below the recipe's. ``given``: the
    model keys the user set. Returns a new dict."""
    m = dict(model)
    levels = len(m["channel_mults"])
    if "attention" not in given and len(m["attention"]) != levels:
        m["attention"] = tuple(i == levels - 1 for i in range(levels))
    chans = [m["base_channels"] * k for k in m["channel_mults"]]
    if "groups" not in given and any(c % m["groups"] for c in chans):
        g = math.gcd(*chans)
        m["groups"] = max(d for d in range(1, m["groups"] + 1) if g % d == 0)
    return m


# Tuned recipes. `train --data NAME --out DIR` with no other flag uses these; the README quotes
# what they reach and in how long. Image models are UNets, 2-D data use the MLP.
RECIPES = {
    "digits": dict(steps=2800, batch_size=64, lr=2e-3, warmup=200, ema_decay=0.995, T=1000, schedule="cosine",
                   model=dict(base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                              attention=(False, True), groups=8)),
    # 2-D: 12000 steps with a cosine decay of the learning rate. checkerboard's sharp square corners set the
    # length, and a wider or deeper MLP did not help (the README's recipes table and benchmarks/README.md).
    "2d": dict(steps=12000, batch_size=256, lr=2e-3, warmup=200, lr_schedule="cosine", ema_decay=0.995, T=1000,
               schedule="cosine",
               sample_every=2000, save_every=2000, model=dict(hidden=128, num_layers=3)),
    "image": dict(steps=20000, batch_size=128, lr=2e-4, warmup=1000, ema_decay=0.9999, T=1000, schedule="linear",
                  sample_every=5000, save_every=5000,
                  model=dict(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2,
                             attention=(False, True, False), groups=32)),
}


# sigma_data of EDM's preconditioning: the std of the data in model space (all coordinates or pixels together).
# The 2-D sets are standardised (lab.data: unit variance per coordinate), so the paper's 0.5 does not fit them;
# digits' is the std of lab.data.load("digits"); mnist, fashion-mnist and cifar10 take twice their published
# pixel std in [0, 1] (0.3081, 0.3530, about 0.25); a folder of images, whose std no recipe knows, the paper's.
# tests/lab/test_train_objectives.py measures the ones it can load.
SIGMA_DATA = {**{name: 1.0 for name in POINT_SETS}, "digits": 0.75, "mnist": 0.62, "fashion-mnist": 0.71,
              "cifar10": 0.5}


# NCSN's sigma_1 (technique 1 of Song & Ermon 2020): the largest pairwise distance of the training split in model
# space, measured by reference.ladder.max_pairwise_distance and rounded up (tests/lab/test_ncsn_recipes.py
# re-measures the sets it can load). mnist and fashion-mnist, whose files a recipe cannot assume, take 2 sqrt(D),
# the largest distance in [-1, 1]^D (an upper bound: a larger sigma_1 costs only levels); cifar10 Song & Ermon's
# sigma_1 = 50 on [0, 1] pixels (their technique 1), doubled for [-1, 1]. A folder of images: --sigma-max (no
# recipe knows its data).
NCSN_SIGMA_MAX = {"moons": 4.0, "swissroll": 3.9, "gaussians8": 3.9, "checkerboard": 4.9, "digits": 9.7,
                  "mnist": 56.0, "fashion-mnist": 56.0, "cifar10": 100.0}
# sigma_L: Song & Ermon's 0.01 for the 2-D sets (continuous data, unit variance), their 0.01 on [0, 1] pixels doubled
# for the 8-bit image sets in [-1, 1]; digits (17 levels, 0.125 apart) from a sweep of 0.01 .. 0.3: levels far below
# the spacing of its values change no sample but take their share of a ladder drawn uniformly over its indices.
NCSN_SIGMA_MIN = {"points": 0.01, "image": 0.02, "digits": 0.1}
# The overlap rule (J3) does not bind in 2-D: 50 levels keep neighbours within 13%, so that an ODE grid, which
# need not sit on the ladder, runs between trained levels that are close.
NCSN_LEVELS_2D = 50


def _ncsn_recipe(data):
    top = NCSN_SIGMA_MAX.get(data)
    dim = 2 if data in POINT_SETS or top is None else int(np.prod(info(data).shape))
    low = NCSN_SIGMA_MIN.get(data, NCSN_SIGMA_MIN["points" if data in POINT_SETS else "image"])
    levels = num_levels_for(top, low, dim, fallback=NCSN_LEVELS_2D) if top else NCSN_LEVELS_2D
    return dict(sigma_min=low, sigma_max=top, num_levels=levels)


# A continuous objective's own settings in a recipe, from the dataset's name, keyed by objective (one without an
# entry takes its table row's defaults): edm's sigma_data follows the data, ncsn's ladder its spread (J2, J3).
OBJECTIVE_RECIPES = {
    "edm": lambda data: dict(sigma_data=SIGMA_DATA.get(data, EDM_DEFAULTS["sigma_data"]),
                             p_mean=EDM_DEFAULTS["p_mean"], p_std=EDM_DEFAULTS["p_std"]),
    "ncsn": _ncsn_recipe,
}


def recipe_for(data, objective="ddpm"):
    """The tuned recipe of ``data`` for ``objective``: the chain's (RECIPES), and for a continuous objective the
    same network, optimiser and training length (so that the objectives compare at equal steps) with its own
    settings: edm the data's sigma_data, flow the defaults (uniform t, no shift), ncsn the data's ladder."""
    check_choice(objective, OBJECTIVES, "objective")
    base = RECIPES["digits"] if data == "digits" else RECIPES["2d"] if data in POINT_SETS else RECIPES["image"]
    if objective not in CONTINUOUS_OBJECTIVES:
        return base
    own = OBJECTIVE_RECIPES.get(objective)
    return {**base, "objective": objective, **(own(data) if own else {})}


def recipe_dict(data, **overrides):
    """The tuned recipe for ``data`` (and ``objective``, if given) with ``overrides`` (None values are ignored) on
    top, as a dict of TrainConfig's fields (not yet checked)."""
    base = dict(recipe_for(data, overrides.get("objective") or "ddpm"))
    base["model"] = dict(base["model"])
    model_over = overrides.pop("model", None) or {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["model"].update(model_over)
    if "channel_mults" in base["model"]:
        base["model"] = fit_unet(base["model"], given=set(model_over))
    base["data"] = data
    return base


def make_config(data, **overrides):
    """The tuned recipe for ``data`` (and ``objective``, if given) with ``overrides`` on top, validated."""
    return TrainConfig.from_dict(recipe_dict(data, **overrides)).validate()


def config_from_json(text):
    try:
        d = json.loads(text)
    except (TypeError, ValueError) as e:
        raise InputError(f"checkpoint configuration is not valid JSON: {e}") from None
    if "model" in d:
        d["model"] = {k: tuple(v) if isinstance(v, list) else v for k, v in d["model"].items()}
    return TrainConfig.from_dict(d)
