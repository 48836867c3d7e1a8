"""``train``: fit a denoiser on a dataset (both sides; the loop is lab.runner's)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from common import rules
from common.plans import NORMS
from common.choices import CONTINUOUS_OBJECTIVES, EDM_DEFAULTS, FLOW_DEFAULTS, OBJECTIVES, T_SAMPLINGS
from reference.errors import InputError
from reference.optim import LR_SCHEDULES
from reference.schedules import SCHEDULES

from .. import checkpoint, classifier_run, data, runner
from ..cli import OUTPUT_RULE, add_command, check_output
from ..sampling import check_steps
from ..config import (LOSSES, PREDICTIONS, TRAIN_VARIANCES, WEIGHTINGS, TrainConfig, config_from_json, recipe_dict,
                      recipe_for)

def _positive_int(text):
    """argparse type: an integer >= 1 (the error names the flag and the value)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _norm(text):
    """argparse type: one of common.plans.NORMS (additive: DDPM's; scale-shift: ADM's adaptive GroupNorm)."""
    if text not in NORMS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(NORMS)}, got {text!r}")
    return text


def _flag_list(text):
    """argparse type: comma-separated 0/1 flags, one per level, e.g. "0,1,0" -> (False, True, False)."""
    parts = [q.strip() for q in text.split(",")]
    if not parts or any(q not in ("0", "1") for q in parts):
        raise argparse.ArgumentTypeError(f"expected one 0 or 1 per level, comma-separated like 0,1,0, got {text!r}")
    return tuple(q == "1" for q in parts)


def _int_list(text):
    """argparse type: comma-separated positive integers, e.g. "1,2,2" -> (1, 2, 2)."""
    try:
        v = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,2,2, "
                                         f"got {text!r}") from None
    if any(p < 1 for p in v):
        raise argparse.ArgumentTypeError(f"every multiplier must be a positive integer, got {text!r}")
    return v


# Flags that map one-to-one onto TrainConfig fields. Defaults are None: the dataset's tuned
# recipe (lab/config.py) fills what the user did not say; on --resume the checkpoint does.
_FIELDS = {
    "steps": (int, "number of optimisation steps"),
    "batch_size": (int, "images (or points) per step; with torchrun, the global batch over all processes"),
    "lr": (float, "peak AdamW learning rate (after the linear warmup)"),
    "warmup": (int, "linear learning-rate warmup steps"),
    "weight_decay": (float, "AdamW decoupled weight decay"),
    "grad_clip": (float, "clip the global gradient norm to this value (0: no clipping)"),
    "ema_decay": (float, "decay of the exponential moving average of the weights used for sampling"),
    "T": (int, "number of diffusion steps (t is 0-based: 0..T-1, paper step t+1)"),
    "seed": (int, "seed of the initial weights, the data order and the noise"),
    "image_size": (_positive_int, "digits/folder: resize images to this size (digits are 8x8 natively)"),
    "data_dir": (str, "where MNIST/Fashion-MNIST/CIFAR-10 files live (downloaded there when missing)"),
    "n_data": (_positive_int, "train on the first N items only"),
    "log_every": (int, "write a line to log.jsonl every N steps (the loss is read from the device only then)"),
    "sample_every": (int, "write a sample picture every N steps (0: only at the end)"),
    "save_every": (int, "checkpoint DIR/ckpt.npz every N steps (and always at the end)"),
    "sample_steps": (_positive_int, "sampler steps for the pictures written during training (DDIM's 1..T for "
                                    "--objective ddpm, DPM-Solver++(2M)'s for edm and flow)"),
}
# The continuous objectives' own settings (common/rules.py says which objective reads which).
_OBJECTIVE_FIELDS = {
    "sigma_data": (float, f"edm: the data's standard deviation in the preconditioning c_skip, c_out, c_in (the "
                          f"paper's {EDM_DEFAULTS['sigma_data']}; default: the dataset's recipe, its own std)"),
    "p_mean": (float, f"edm: the mean of ln sigma in training, ln sigma ~ N(P_mean, P_std^2) (default "
                      f"{EDM_DEFAULTS['p_mean']})"),
    "p_std": (float, f"edm: the std of ln sigma in training (default {EDM_DEFAULTS['p_std']})"),
    "logit_mean": (float, f"flow, --t-sampling logit-normal: t = sigmoid(m + s z), the m (default "
                          f"{FLOW_DEFAULTS['logit_mean']})"),
    "logit_std": (float, f"flow, --t-sampling logit-normal: the s (default {FLOW_DEFAULTS['logit_std']})"),
    "shift": (float, f"flow: SD3's shift of the training t, t' = s t / (1 + (s - 1) t), applied once (default "
                     f"{FLOW_DEFAULTS['shift']}: none; s > 1 trains more at high noise)"),
    "teacher": (str, "--reflow: the checkpoint that draws the pairs (z, x0 = ODE(z)) once at the start"),
    "reflow_pairs": (_positive_int, "--reflow: how many pairs the teacher draws (default: the dataset's size)"),
    "teacher_steps": (_positive_int, "--reflow: the teacher's sampler steps per pair (default 50)"),
    "sigma_max": (float, "ncsn: the ladder's largest sigma, sigma_1 (default: the dataset's recipe, the data's largest "
                         "pairwise distance; a folder of images needs it)"),
    "sigma_min": (float, "ncsn: the ladder's smallest sigma, sigma_L (default: the dataset's recipe)"),
    "num_levels": (int, "ncsn: the ladder's number of levels L >= 2, geometric from --sigma-max to --sigma-min "
                        "(default: the dataset's recipe, Song & Ermon's overlap rule)"),
}
RECIPE_DEFAULT = " (default: the dataset's recipe; --show-recipe lists it)"
_ADM = ("norm", "num_heads", "resblock_updown")  # UNet options no recipe sets (their defaults are DDPM's network)
_MODEL = {
    "base_channels": (_positive_int, "UNet: channels at the first level"),
    "channel_mults": (_int_list, "UNet: channel multiplier per level, e.g. 1,2,2"),
    "num_res_blocks": (_positive_int, "UNet: residual blocks per level"),
    "attention": (_flag_list, "UNet: self-attention per level, one 0/1 per level, e.g. 0,1,0 (default: the "
                              "recipe's; when --channel-mults changes the number of levels, the coarsest level)"),
    "groups": (_positive_int, "UNet: GroupNorm groups; must divide every level's channels (default: the recipe's, "
                              "or the largest divisor of the channels below it)"),
    "norm": (_norm, "UNet: how a residual block takes the time (+ class) embedding: additive (default, DDPM's h + "
                    "proj(temb) before its second GroupNorm) or scale-shift (ADM's GN(h) (1 + scale) + shift)"),
    "num_heads": (_positive_int, "UNet: attention heads of every attention layer; must divide their channels "
                                 "(default 1)"),
    "resblock_updown": (bool, "UNet: ADM's level transitions, residual blocks that average-pool (down) or upsample "
                              "(up) their input and skip together, in place of the stride-2 conv and up2x + conv "
                              "(default: off)"),
    "hidden": (_positive_int, "MLP (2-D data): hidden width"),
    "num_layers": (_positive_int, "MLP (2-D data): hidden layers"),
}


def configure(p):
    p.add_argument("--data", required=True, metavar="NAME",
                   help="moons, swissroll, gaussians8, checkerboard (2-D points); digits, mnist, fashion-mnist, "
                        "cifar10, or folder:PATH (images)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help=f"run folder: ckpt.npz, log.jsonl, loss.png, samples_*.png ({OUTPUT_RULE}); required "
                        "unless --show-recipe")
    p.add_argument("--show-recipe", dest="show_recipe", action="store_true",
                   help="print the configuration this command would train with (the dataset's recipe, every field "
                        "and its value, with the flags given on top) and exit; reads no data")
    for name, (typ, hlp) in {**_FIELDS, **_MODEL}.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                       help=hlp if "default" in hlp else hlp + RECIPE_DEFAULT,
                       **({"action": "store_true"} if typ is bool else {"type": typ}))  # bool: a switch
    p.add_argument("--lr-schedule", dest="lr_schedule", choices=LR_SCHEDULES, default=None,
                   help="the learning rate after the warmup: constant, or cosine (decays to 0 at the last of "
                        "--steps; a --resume with more --steps stretches the decay). Default: the recipe's "
                        "(cosine for 2-D data, constant for images)")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="noise schedule (recipe default: cosine)")
    p.add_argument("--zero-terminal-snr", action="store_true", default=None,
                   help="rescale the schedule so alpha_bar_T = 0 exactly (needs --prediction v or x0)")
    p.add_argument("--prediction", choices=PREDICTIONS, default=None,
                   help="what the network predicts: eps (the noise, Ho et al.), x0 (the clean image) or v")
    p.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                   help="L_simple weighting over t: none (Ho et al.), snr (every parameterisation's loss becomes "
                        "the eps-MSE), min_snr (min-SNR-gamma, gamma 5)")
    p.add_argument("--variance", choices=TRAIN_VARIANCES, default=None,
                   help="fixed (default): the network predicts the mean only; learned: it also outputs an "
                        "interpolation between log beta~_t and log beta_t per pixel (Improved DDPM), trained by "
                        "the bound (recorded in the checkpoint's configuration)")
    p.add_argument("--loss", choices=LOSSES, default=None,
                   help="simple (L_simple, the default), hybrid (L_simple + lambda L_vlb with the mean frozen in "
                        "L_vlb; the default with --variance learned) or vlb (the bound itself)")
    p.add_argument("--hybrid-lambda", dest="hybrid_lambda", type=float, default=None,
                   help="--loss hybrid: the weight lambda of L_vlb (default 0.001; each draw's term is weighted "
                        "lambda T, 1 at T = 1000)")
    p.add_argument("--importance-sampling", dest="importance_sampling", action="store_true", default=None,
                   help="--loss vlb: draw t with p_t proportional to sqrt(E[L_t^2]) over the last 10 losses per t "
                        "(uniform until every t has them), each term weighted 1/(T p_t)")
    p.add_argument("--class-cond", dest="class_cond", action="store_true", default=None,
                   help="a class-conditional network: the dataset's labels (digits, mnist, fashion-mnist, cifar10, "
                        "moons, gaussians8, checkerboard, folder:PATH with one sub-folder per class) are added to "
                        "the time embedding, and dropped to a null class with probability --p-uncond, so the same "
                        "network is also the unconditional one that classifier-free guidance needs")
    p.add_argument("--p-uncond", dest="p_uncond", type=float, default=None,
                   help="--class-cond: the probability each label is replaced by the null class (default 0.1)")
    p.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="ddpm (default): the discrete chain, integer t (--prediction, --loss, --weighting apply); edm: "
                        "Karras et al.'s preconditioned denoiser, ln sigma lognormal; flow: flow matching, the "
                        "velocity on x_t = (1 - t) x0 + t eps; ncsn: Song & Ermon's score network over a geometric "
                        "sigma ladder. edm, flow and ncsn take a float time input and sample with the ODE solvers")
    p.add_argument("--t-sampling", dest="t_sampling", choices=T_SAMPLINGS, default=None,
                   help="flow: how t is drawn: uniform (default) or logit-normal (SD3)")
    p.add_argument("--reflow", action="store_true", default=None,
                   help="flow: rectified flow's second round: train on the pairs (z, x0 = ODE(z)) that --teacher "
                        "draws once at the start, x_t = (1 - t) x0 + t z with the target z - x0")
    for name, (typ, hlp) in _OBJECTIVE_FIELDS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None, help=hlp)
    p.add_argument("--classifier", action="store_true", default=None,
                   help="train a noise-conditional classifier p(y | x_t, t) for classifier guidance (sample/eval "
                        "--classifier) instead of a denoiser: cross-entropy on the dataset's labels at x_t of the "
                        "chain (t uniform, the recipe's --schedule and --T: give the model's if they differ), AdamW "
                        "and EMA as a denoiser's run; the UNet's encoder half for images, an MLP for 2-D points. "
                        "Prints its held-out accuracy at a few noise levels at the end")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None, help="parameter dtype")
    p.add_argument("--final-samples", dest="final_samples", action=argparse.BooleanOptionalAction, default=None,
                   help="write samples_final.png after the last step (default: yes; --no-final-samples skips "
                        "the sampling pass, which a large model in NumPy pays for)")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR from DIR/ckpt.npz")
    p.add_argument("--overwrite", action="store_true", help="start again even if DIR/ckpt.npz exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("torch_port only")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to train")
    g.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile the model (default: on for CUDA)")
    g.add_argument("--no-compile", dest="compile", action="store_false")
    g.add_argument("--amp", dest="amp", action="store_true", default=None,
                   help="bf16 autocast with fp32 master weights (default: on for CUDA; on a CPU it pays only where "
                        "bf16 is native, e.g. AVX512-BF16 or AMX)")
    g.add_argument("--no-amp", dest="amp", action="store_false")
    g.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="NHWC memory format (default: on for CUDA)")
    g.add_argument("--cuda-graphs", action="store_true", help="compile with mode='reduce-overhead' (CUDA graphs)")


def config_from_args(args):
    """The run's TrainConfig: recipe defaults, or the checkpoint's config on --resume, plus the flags given."""
    given = {k: getattr(args, k) for k in list(_FIELDS) + list(_OBJECTIVE_FIELDS) + [
        "schedule", "zero_terminal_snr", "prediction", "weighting", "dtype", "final_samples", "variance", "loss",
        "hybrid_lambda", "importance_sampling", "class_cond", "p_uncond", "lr_schedule", "objective", "t_sampling",
        "reflow"] if getattr(args, k) is not None}
    if given.get("variance") == "learned" and "loss" not in given:
        given["loss"] = "hybrid"  # learned variances train on L_hybrid unless --loss says otherwise
    model = {k: getattr(args, k) for k in _MODEL if getattr(args, k) is not None}
    ckpt = Path(args.out) / "ckpt.npz" if args.out else None
    if args.classifier and not (args.resume and ckpt is not None and ckpt.exists()):
        return TrainConfig.from_dict(classifier_run.recipe(args.data, given, model)).validate()
    if args.resume and ckpt is not None and ckpt.exists():
        cfg = config_from_json(json.dumps(checkpoint.load(ckpt).config))
        if bool(args.classifier) != cfg.classifier:
            kind, fix = ("classifier", "add") if cfg.classifier else ("denoiser", "drop")
            raise InputError(f"--resume: the checkpoint in {args.out} is a {kind}'s run: {fix} --classifier")
        if cfg.data != args.data:
            raise InputError(f"--resume: the checkpoint in {args.out} was trained on {cfg.data!r}, not {args.data!r}")
        rules.check_objective(given.get("objective", cfg.objective), _without_objective(given), given=True)
        d = dataclasses.asdict(cfg)
        d.update(given)
        d["model"] = {**d["model"], **model}
    else:
        rules.check_objective(given.get("objective", "ddpm"), _without_objective(given), given=True)
        base_model = recipe_for(args.data)["model"]
        unknown = [k for k in model if k not in base_model and not ("channel_mults" in base_model and k in _ADM)]
        if unknown:
            kind = "MLP (2-D data)" if "hidden" in base_model else "UNet (images)"
            raise InputError(f"--{unknown[0].replace('_', '-')} does not apply to the {kind} used for {args.data!r}")
        d = recipe_dict(args.data, model=model, **given)
    continuous = d.get("objective", "ddpm") in CONTINUOUS_OBJECTIVES   # no chain: T does not bound the ODE's steps
    T, picture_steps = d.get("T", TrainConfig.T), d.get("sample_steps", TrainConfig.sample_steps)
    if not continuous and "sample_steps" not in given and isinstance(T, int) and 1 <= T < picture_steps:
        d["sample_steps"] = T   # the recipe's picture steps on a run with a small --T: all of them
    cfg = TrainConfig.from_dict(d).validate()   # the run's one validation (runner.train and run find it done)
    if "p_uncond" in given and not cfg.class_cond:
        raise InputError("--p-uncond applies to a class-conditional run: add --class-cond (it would be ignored)")
    if "sample_steps" in given and not continuous:   # the rule sample applies to the same flag, in the same words
        check_steps(cfg.T, cfg.sample_steps, whose="the run's --T")
    return cfg


def _without_objective(given):
    return {k: v for k, v in given.items() if k != "objective"}


def show_recipe(cfg):
    """The configuration, every field and its value, one a line (model fields as model.NAME)."""
    d = json.loads(cfg.to_json())
    rows = [(k, v) for k, v in d.items() if k != "model"] + [(f"model.{k}", v) for k, v in sorted(d["model"].items())]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:{width}s}  {json.dumps(v)}" for k, v in rows)


def run(args, B):
    data.check_name(args.data)
    if args.show_recipe:
        cfg = config_from_args(args)
        print(f"train --data {args.data}: the dataset's recipe (lab/config.py) with the flags given on top:")
        print(show_recipe(cfg))
        return 0
    if args.out is None:
        raise InputError("train needs --out DIR, the run folder to write (or --show-recipe to print the recipe)")
    check_output(args.out, "--out", folder=True)
    cfg = config_from_args(args)
    kw = {}
    if B.name == "torch":
        kw = dict(device=args.device, compile=args.compile, amp=args.amp, channels_last=args.channels_last,
                  cuda_graphs=args.cuda_graphs)
    elif args.device == "cuda" or args.compile or args.amp or args.channels_last or args.cuda_graphs:
        raise InputError("--device cuda, --compile, --amp, --channels-last and --cuda-graphs are torch_port "
                         "options: run `python -m torch_port train ...`")
    try:
        res = runner.train(cfg, args.out, backend=B.name, resume=args.resume, progress=not args.quiet,
                           overwrite=args.overwrite, **kw)
    except runner.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if res.get("done"):
        print(f"nothing to train: the checkpoint {res['ckpt']} is already at step {res['step']} "
              f"(--steps {cfg.steps}); pass a larger --steps to continue")
    elif "ckpt" in res:
        samples = f", samples {res['samples']}" if "samples" in res else ""
        print(f"trained {res['step']} steps: checkpoint {res['ckpt']}{samples}, log {res['log']}")
        if cfg.classifier:   # the checkpoint as sample --classifier will read it
            trainer = classifier_run.load(B, res["ckpt"], **({"device": args.device} if B.name == "torch" else {}))[0]
            print(classifier_run.report_accuracy(classifier_run.held_out_accuracy(B, trainer, cfg.seed),
                                                 trainer.num_classes))
    return 0


add_command(
    "train", "train a denoiser on a dataset (tuned defaults per dataset)", configure, run,
    description="""
    Trains a network to predict the noise in x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, for t drawn
    uniformly (Ho et al. 2020, Algorithm 1), with AdamW, gradient clipping, warmup and an EMA of the weights.
    --variance learned adds the reverse variances to the network's outputs (Improved DDPM) and trains them
    with L_hybrid = L_simple + lambda L_vlb (--hybrid-lambda, 0.001), or with the bound itself (--loss vlb,
    optionally --importance-sampling). --class-cond trains a class-conditional network on the dataset's labels
    (each dropped to a null class with probability --p-uncond, so the network also learns the unconditional
    model classifier-free guidance needs). --objective edm | flow trains the design space's continuous objectives
    instead (derivations/design_space.md): EDM's preconditioned denoiser with ln sigma ~ N(--p-mean, --p-std^2)
    and the data's --sigma-data, or flow matching's velocity (--t-sampling, --shift), on the same network with a
    float time input; they sample with the ODE solvers. --objective ncsn trains Song & Ermon's noise-conditional
    score network over a geometric ladder of --num-levels sigmas from --sigma-max down to --sigma-min
    (derivations/ncsn.md). --reflow --teacher CKPT trains rectified flow's second
    round on the pairs the teacher draws. With only --data and --out it uses the dataset's tuned recipe
    (lab/config.py): `--data NAME --show-recipe` prints it, every setting and its value. It writes into DIR
    (created if missing):
    ckpt.npz (parameters, EMA, optimiser and RNG state, the configuration), log.jsonl, loss.png and
    samples_*.png. Ctrl-C or a crash loses at most --save-every steps: `--resume` continues bit for bit.
    """,
    epilog="""
    examples:
      python -m reference train --data digits --out runs/digits
      python -m reference train --data cifar10 --show-recipe
      python -m reference train --data moons --out runs/moons --steps 3000
      python -m reference train --data digits --out runs/digits --resume --steps 8000
      python -m torch_port train --data digits --out runs/digits-cond --class-cond
      python -m torch_port train --data digits --out runs/digits-hybrid --variance learned
      python -m torch_port train --data digits --out runs/digits-vlb --variance learned --loss vlb --importance-sampling
      python -m torch_port train --data digits --out runs/digits-edm --objective edm
      python -m torch_port train --data checkerboard --out runs/cb-flow --objective flow
      python -m torch_port train --data moons --out runs/moons-ncsn --objective ncsn
      python -m torch_port train --data checkerboard --out runs/cb2 --objective flow --reflow --teacher runs/cb-flow/ckpt.npz
      torchrun --nproc_per_node=2 -m torch_port train --data cifar10 --out runs/cifar
    """)
