"""``sample``: draw samples from a checkpoint into a .npy file and a picture (both sides); ``--invert`` encodes
data to latents with the probability-flow ODE run forwards (DDIM inversion, N6) and decodes them again.

The noise is drawn from ``np.random.default_rng(seed)`` in the same order on both sides (lab/sampling.py),
so one checkpoint and one seed give the same samples from either side, for every sampler.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from common import sampler_table as table
from common.choices import CONTINUOUS_OBJECTIVES
from reference.diffusion import LEARNED, VARIANCES
from reference.errors import InputError

from .. import classifier_run, sde_sampling
from ..classifier_sampling import check_pair, grad_fn_of, guided_draw
from ..cli import OUTPUT_RULE, add_command, check_output
from ..inversion import INVERT_DEFAULT_GRID, INVERT_DEFAULT_STEPS, INVERT_SAMPLER, encode_decode, load_items
from ..pictures import class_rows_picture, inversion_pictures, sampler_label, samples_picture, trajectory_pictures
from ..progress import bar
from ..sampling import (DEFAULT_GRID, DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, GRIDS, SAMPLERS, SPACINGS,
                        check_sampler_flags, draw, is_continuous, load_trainer, objective_of, resolve)

PER_CLASS = {"images": 8, "points": 256}   # --class all: samples per class (one row each) when --n is omitted


def configure(p):
    p.add_argument("--ckpt", required=True, metavar="FILE", help="a checkpoint written by train (either side)")
    p.add_argument("--n", type=int, default=None, help="number of samples (default 64)")
    p.add_argument("--out", required=True, metavar="FILE.npy",
                   help="float32 samples: (N, C, H, W) images in [-1, 1], or (N, 2) points in the data's own units; "
                        f"a PNG picture is written beside it ({OUTPUT_RULE}). With --invert: the latents x_T, with "
                        "FILE_reconstruction.npy and FILE.png beside it")
    invertible = " or ".join(r.name for r in table.ROWS if r.invertible)
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help=f"the discrete chain: {table.help_lines('chain')}. The probability-flow ODE "
                        f"(derivations/solvers.md): {table.help_lines('ode')}. The stochastic samplers "
                        f"(derivations/sde_samplers.md), on the ODE's grids and noise drawn from --seed: "
                        f"{table.help_lines('sde')}. Default {DEFAULT_SAMPLER}, as eval's. A model of a continuous "
                        f"objective has no chain: the ODE and SDE samplers only. With --invert: {invertible} "
                        f"({INVERT_SAMPLER} by default)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help=f"number of sampling steps (default: all T for ddpm; {DEFAULT_STEPS['images']} for every "
                        f"other sampler on images, {DEFAULT_STEPS['points']} on 2-D points, at most T; "
                        f"{INVERT_DEFAULT_STEPS} with --invert); fewer than T respaces the schedule. NFE (network "
                        "calls per sample) = steps, heun and edm-sde 2 steps - 1, pc (corrector steps + 1) steps, "
                        "langevin langevin steps x steps (+ 1)")
    p.add_argument("--spacing", choices=SPACINGS, default=None,
                   help="ddpm/ddim: which timesteps a shortened sampler keeps. leading (default, or the "
                        "timestep_spacing a converted checkpoint records) skips the noisiest steps and warns if its "
                        "first step still holds signal; trailing/linspace start at T-1, where the cosine schedule's "
                        "clipped last step amplifies an eps-model's error in x0_hat unless x0_hat is clipped (images)")
    p.add_argument("--grid", choices=GRIDS, default=None,
                   help=f"the ODE and SDE samplers: the noise levels they run on, all of them trained steps. "
                        "leading/trailing/linspace: the --spacing rules (--sampler euler --grid S equals --sampler "
                        "ddim --spacing S); karras: Karras et al.'s rho = 7 spacing in sigma from sigma_{T-1} down. "
                        f"Default {DEFAULT_GRID}, but leading where a start at T-1 is harmful: for an unclipped "
                        "eps-model (2-D data) on a schedule whose last step amplifies its error (the cosine's clipped "
                        "step), for heun on such a schedule whatever the model, and at zero terminal SNR. A model of "
                        "a continuous objective takes "
                        + "; ".join(f"{o}: {'/'.join(table.OBJECTIVE_GRIDS[o])} (default {table.DEFAULT_GRIDS[o]})"
                                    for o in CONTINUOUS_OBJECTIVES))
    sde_sampling.configure(p)   # --eta and the SDE samplers' settings, as eval's
    p.add_argument("--variance", choices=VARIANCES + (LEARNED,), default=None,
                   help="DDPM only: the reverse variance, posterior beta~_t (fixed_small, the default) or beta_t "
                        "(fixed_large), or the network's own (learned, the default for a checkpoint trained with "
                        "--variance learned: V1, respaced by V5 with --sample-steps; the other samplers read only "
                        "its mean channels). A converted checkpoint's default is the variance_type it records")
    p.add_argument("--clip-x0", dest="clip_x0", action=argparse.BooleanOptionalAction, default=None,
                   help="clip x0_hat to [-1, 1] at every step (default: on for images, or the clip_sample a "
                        "converted checkpoint records; 2-D points are never clipped)")
    p.add_argument("--class", dest="klass", metavar="K|all", default=None,
                   help="a class-conditional checkpoint (train --class-cond): draw every sample of class K "
                        "(0..K-1), or 'all': one row of --n samples per class (default --n "
                        f"{PER_CLASS['images']} per class for images, {PER_CLASS['points']} for 2-D points), the "
                        "picture's rows labelled. FILE_labels.npy holds each sample's class. Without --class a "
                        "conditional checkpoint samples its null class (the unconditional model)")
    p.add_argument("--guidance", type=float, default=None, metavar="S",
                   help="classifier-free guidance scale s with --class (diffusers' guidance_scale; Ho & Salimans' "
                        "w = s - 1): eps_null + s (eps_class - eps_null), derivations/guidance.md W2. 0 samples "
                        "unconditionally, 1 the class-conditional model (one network call a step), s > 1 sharpens "
                        "towards the class at the cost of diversity (two calls a step, batched). Default "
                        f"{DEFAULT_GUIDANCE:g}: the conditional model itself, the one scale at which guidance "
                        "targets the class's own distribution (W3). Needs --class")
    p.add_argument("--classifier", metavar="CKPT", default=None,
                   help="classifier guidance (Dhariwal & Nichol 2021) with a classifier of x_t trained by train "
                        "--classifier on the model's schedule and T; needs --class. The model samples unconditionally "
                        "(a class-conditional one its null class) and the classifier's gradient steers every "
                        "sampler: ddpm by Algorithm 1's shifted mean, ddim by Algorithm 2's guided eps, the ODE "
                        "samplers by D + s sigma^2 grad log p(y | x~) (derivations/classifier_guidance.md H1-H4). "
                        "Not combined with --guidance (classifier-free): one guidance at a time. Models of --objective "
                        "edm/flow are refused (the classifier knows the chain's steps only)")
    p.add_argument("--classifier-scale", dest="classifier_scale", type=float, default=None, metavar="S",
                   help="--classifier: the scale s of the gradient (guided-diffusion's classifier_scale; default "
                        f"{DEFAULT_GUIDANCE:g}, the exact conditional for an exact classifier; 0: unguided)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling noise (default 0; same seed, same "
                                                           "samples)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--trajectory", action="store_true",
                   help="also write the denoising trajectory: FILE_trajectory.png (x_t above the network's x0_hat "
                        "at ~10 steps) and FILE_trajectory.gif (x_t at every step); images show the first 8/16")
    p.add_argument("--invert", metavar="DATA.npy", default=None,
                   help="encode the items of DATA.npy (model space: (N, C, H, W) images in [-1, 1] or (N, 2) "
                        "points) to latents x_T with Euler steps of the ODE up the grid (DDIM inversion), decode them "
                        "back down the same grid, and print the reconstruction error")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch_port only")


def _check(args, B):
    out = Path(args.out)
    if out.suffix != ".npy":
        raise InputError(f"--out must name a .npy file, got {args.out!r}")
    check_output(out, "--out")
    if args.n is not None and args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    if args.sample_steps is not None and args.sample_steps < 1:
        raise InputError(f"--sample-steps must be >= 1 (or omitted for all T steps), got {args.sample_steps}")
    if B.name == "reference" and args.device == "cuda":
        raise InputError("--device cuda is a torch_port option: run `python -m torch_port sample ...`")
    if args.eta is not None and not (math.isfinite(args.eta) and 0 <= args.eta <= 1):
        raise InputError(f"--eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {args.eta!r}")
    _check_class_flags(args)
    if args.invert is not None:
        for flag, value in (("--n", args.n), ("--seed", args.seed), ("--eta", args.eta),
                            ("--variance", args.variance), ("--class", args.klass), ("--guidance", args.guidance),
                            ("--classifier", args.classifier), ("--classifier-scale", args.classifier_scale),
                            ("--clip-x0" if args.clip_x0 else "--no-clip-x0", args.clip_x0),
                            *((table.flag(k), v) for k, v in sde_sampling.given(args).items())):
            if value is not None:
                raise InputError(f"{flag} does not apply with --invert: the inversion is deterministic and encodes "
                                 "every item of the file")
        if args.trajectory:
            raise InputError("--trajectory draws a sampling run; with --invert the picture FILE.png shows the data "
                             "beside its reconstruction")
        if args.sampler is not None and not table.row(args.sampler).invertible:
            raise InputError(f"--invert runs the Euler step of the ODE forwards (DDIM inversion): --sampler "
                             f"{args.sampler} cannot be run backwards this way; use --sampler euler (or ddim)")
    return out


def _check_class_flags(args):
    """--class and --guidance on their own (before the checkpoint is read): K an int >= 0 or 'all', s finite
    and >= 0. --guidance without --class is refused once the checkpoint is read (_classes), so that an
    unconditional checkpoint is named as such first."""
    if args.klass is not None and args.klass != "all":
        try:
            args.klass = int(args.klass)
        except ValueError:
            raise InputError(f"--class must be a class index (0..K-1) or 'all', got {args.klass!r}") from None
        if args.klass < 0:
            raise InputError(f"--class must be a class index >= 0 (0..K-1) or 'all', got {args.klass}")
    if args.classifier_scale is not None and args.classifier is None:
        raise InputError("--classifier-scale needs --classifier CKPT, the classifier whose gradient it scales")
    if args.classifier is not None:
        if args.classifier_scale is not None and not (math.isfinite(args.classifier_scale)
                                                      and args.classifier_scale >= 0):
            raise InputError(f"--classifier-scale must be a finite scale >= 0 (0: unguided, 1: the exact conditional "
                             f"for an exact classifier, > 1: sharper), got {args.classifier_scale!r}")
        if args.guidance is not None:
            raise InputError("--guidance (classifier-free) and --classifier (classifier guidance) are two guidances: "
                             "use one at a time")
        if args.klass is None:
            raise InputError("--classifier needs --class K (or all): the classes the classifier's gradient pushes "
                             "the samples towards")
        if getattr(args, "trajectory", False):
            raise InputError("--trajectory does not apply with --classifier: the guided samplers record no "
                             "trajectory; drop one of them")
    if args.guidance is not None:
        if not math.isfinite(args.guidance) or args.guidance < 0:
            raise InputError(f"--guidance must be a finite scale >= 0 (0: unconditional, 1: the class-conditional "
                             f"model, > 1: guided), got {args.guidance!r}")


def _classes(args, trainer, ckpt, clf_classes=None):
    """The classes to draw, checked against the checkpoint -> (labels (n,) int64 or None, n, K or None). The
    guidance flags are refused here, an unconditional checkpoint first: guidance mixes a class's prediction with
    the null class's, and such a checkpoint has neither; --guidance needs --class because the classes it guides
    towards are not chosen at random behind the user's back."""
    k = getattr(trainer, "num_classes", None) if clf_classes is None else clf_classes
    if k is None and (args.klass is not None or args.guidance is not None):
        flag = " / ".join(f for f, v in (("--class", args.klass), ("--guidance", args.guidance)) if v is not None)
        raise InputError(f"{flag} needs a class-conditional checkpoint (trained with train --class-cond); {ckpt} is "
                         "unconditional")
    if args.klass is None and args.guidance is not None:
        raise InputError("--guidance needs --class K (or all): guidance pushes each sample towards its class; "
                         "without --class a class-conditional checkpoint samples its null class (the "
                         "unconditional model, what --class K --guidance 0 gives)")
    if args.klass is None:
        return None, args.n or 64, None
    if args.klass == "all":
        per = args.n or PER_CLASS["images" if len(trainer.item_shape) == 3 else "points"]
        return np.repeat(np.arange(k, dtype=np.int64), per), per * k, k
    if args.klass >= k:
        raise InputError(f"--class {args.klass} is out of range: this checkpoint's model has {k} classes, "
                         f"0..{k - 1} (or --class all)")
    n = args.n or 64
    return np.full(n, args.klass, dtype=np.int64), n, k


def _data(trainer):
    """The run's dataset, for titles; a converted model that records none (convert: no dataset has its item
    shape) is named by its item shape."""
    return trainer.cfg.data or "x".join(map(str, trainer.item_shape)) + " (no dataset)"


def _sample(args, B, out):
    trainer, ck = load_trainer(B, args.ckpt, device=args.device, use_ema=not args.no_ema)
    cfg = trainer.cfg
    if args.clip_x0 and len(trainer.item_shape) != 3:
        raise InputError("--clip-x0 applies to images: 2-D points are in the data's own units, not in [-1, 1]")
    clf = None
    if args.classifier is not None:
        clf_trainer, clf, _ = classifier_run.load(B, args.classifier, device=args.device)
        y, n, k = _classes(args, trainer, args.ckpt, check_pair(trainer, clf_trainer, args.ckpt, args.classifier))
    else:
        y, n, k = _classes(args, trainer, args.ckpt)
    st = resolve(B, trainer, ck.extra, args.sampler, args.sample_steps, args.spacing, args.grid, args.variance,
                 args.clip_x0, args.eta, sde_sampling.given(args))
    p, sampler, spacing = st.plan, st.plan.sampler, st.spacing
    guidance = None if y is None else (DEFAULT_GUIDANCE if args.guidance is None else args.guidance)
    seed = args.seed or 0
    if clf is not None:   # classifier guidance: the model unconditional, the classifier's gradient steers
        guidance = DEFAULT_GUIDANCE if args.classifier_scale is None else args.classifier_scale
        res = guided_draw(B, trainer, n, grad_fn_of(B, clf), y, guidance, seed, sampler, p.steps, spacing,
                          args.eta or 0.0, st.variance, p.where if p.ode else None, st.clip_x0, bar("sampling"),
                          sde=st.sde)
    else:
        res = draw(B, trainer, n, seed, sampler, p.steps, spacing, args.eta or 0.0, st.variance,
                   record=args.trajectory, progress=bar("sampling"), grid=p.where if p.ode else None, y=y,
                   guidance=guidance, clip_x0=st.clip_x0, sde=st.sde)
    x, traj = res if args.trajectory else (res, None)
    x = np.asarray(x, dtype=np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, x)
    # classifier-free guided: two passes a step (one batch of 2N); classifier guidance: one, and a classifier pass
    nfe = p.nfe * (1 if clf is not None or guidance in (None, 0, 1) else 2)
    kind = "classifier guidance" if clf is not None else "guidance"
    how = sampler_label(sampler, p.steps, p.T, step=ck.step, spacing=None if p.ode else spacing,
                        grid=p.where if p.ode else None, nfe=nfe)
    weights = "raw" if args.no_ema else "EMA"
    written = [str(out)]
    if y is None:
        png = samples_picture(x, out.with_suffix(".png"), cfg,
                              f"{_data(trainer)}, {n} samples ({weights} weights), {how}")
    else:
        labels = out.with_name(out.stem + "_labels.npy")
        np.save(labels, y)
        written.append(str(labels))
        rows = "one colour" if x.ndim == 2 else "one row"
        what = f"{rows} per class (0..{k - 1}), {n // k} each" if args.klass == "all" else f"class {args.klass}"
        title = f"{_data(trainer)}, {what}, {kind} s={guidance:g} ({weights} weights), {how}"
        png = (class_rows_picture(x, y, out.with_suffix(".png"), cfg, title) if args.klass == "all"
               else samples_picture(x, out.with_suffix(".png"), cfg, title))
    written.append(str(png))
    if traj is not None:
        sigmas = None if p.continuous else B.to_numpy(B.score.trained_sigmas(trainer.sched))
        written += map(str, trajectory_pictures(traj, x, out.with_suffix(""), cfg, f"{_data(trainer)}: {how}",
                                                labels=y, guidance=guidance, sigmas=sigmas, by_sigma=p.continuous))
    which = "" if y is None else f" of class {args.klass}" if args.klass != "all" else f" of {k} classes"
    guided = "" if y is None else f", {kind} s={guidance:g}"
    steps = f"{p.steps} steps of a {p.objective} model" if p.continuous else f"{p.steps} of T={cfg.T} steps"
    print(f"{n} samples{which} from step {ck.step} of a {_data(trainer)} run ({sampler}, {steps}, "
          f"{st.describe()}{guided}; NFE {nfe} per sample): " + ", ".join(written))
    return 0


def _invert(args, B, out):
    trainer, ck = load_trainer(B, args.ckpt, device=args.device, use_ema=not args.no_ema)
    cfg = trainer.cfg
    sampler, continuous = args.sampler or INVERT_SAMPLER, is_continuous(cfg)
    on_chain = table.row(sampler).family == "chain"   # ddim: the Euler step on the chain's kept steps (K7)
    if on_chain and args.grid is not None:
        raise InputError("--grid applies to --sampler euler; with --sampler ddim the steps follow --spacing")
    if not on_chain and args.spacing is not None:
        raise InputError(f"--spacing applies to --sampler ddim; with --sampler euler use --grid {args.spacing}")
    steps = args.sample_steps or (INVERT_DEFAULT_STEPS if continuous else min(cfg.T, INVERT_DEFAULT_STEPS))
    check_sampler_flags(None if continuous else cfg.T, sampler, steps, objective=objective_of(cfg))
    grid = (args.spacing or "leading") if on_chain else args.grid
    x0 = load_items(args.invert, trainer.item_shape)
    r = encode_decode(B, trainer, x0, steps, grid, progress=bar("encoding"), decode_progress=bar("decoding"))
    out.parent.mkdir(parents=True, exist_ok=True)
    rec_path = out.with_name(out.stem + "_reconstruction.npy")
    np.save(out, r.latents.astype(np.float32))
    np.save(rec_path, r.reconstruction.astype(np.float32))
    how = sampler_label(sampler, r.steps, None if continuous else cfg.T, step=ck.step, grid=r.grid)
    png = inversion_pictures(x0, r.latents, r.reconstruction, out.with_suffix(".png"),
                             f"{_data(trainer)}: inversion and decoding, {how} each way; RMSE {r.rmse:.3g}")
    print(f"inverted {len(x0)} items of {args.invert} with {how} each way (NFE {r.nfe_encode} to encode, "
          f"{r.nfe} to decode): {out}, {rec_path}, {png}")
    print(f"  reconstruction error: RMSE {r.rmse:.4g}, max |x - x_rec| {r.max_abs:.4g}"
          + (f" ({r.max_abs * 127.5:.3g} of 255 gray levels)" if len(trainer.item_shape) == 3 else "")
          + f"; latents: mean {r.latents.mean():.3g}, std {r.latents.std():.3g} (N(0, I): 0, 1)")
    return 0


def run(args, B):
    out = _check(args, B)
    return _invert(args, B, out) if args.invert is not None else _sample(args, B, out)


add_command(
    "sample", "draw samples from a checkpoint into a .npy file and a picture", configure, run,
    description=f"""
    Starts from x_T ~ N(0, I) and runs the reverse process with the trained network (EMA weights).
    By default, as eval: --sampler {DEFAULT_SAMPLER} (DPM-Solver++(2M)) with {DEFAULT_STEPS['images']} steps
    for images and {DEFAULT_STEPS['points']} for 2-D points. ddpm is the ancestral sampler (noise at every step
    but the last, all T steps by default); ddim with --eta 0 is deterministic. euler, heun and dpm++2m solve
    the probability-flow ODE on a --grid of trained noise levels (default {DEFAULT_GRID}; leading for 2-D data on
    the cosine schedule, and for heun on it whatever the data). The stochastic samplers
    ({', '.join(table.names('sde'))}) run on the same grids, their settings flags
    from the table, their noise drawn from --seed after x_T. A model of a continuous objective
    (train --objective edm|flow) has no chain: the ODE samplers run on its own noise levels, by default
    on the {table.DEFAULT_GRIDS['edm']} grid for edm and the {table.DEFAULT_GRIDS['flow']} grid for flow; ddpm and
    ddim are refused (euler is DDIM with eta 0). A checkpoint converted from diffusers samples
    with the variance, clipping and spacing its scheduler config records unless a flag says otherwise.
    Prints the sampler, its steps, grid or spacing, variance and clipping, and the NFE (network calls per
    sample) it used. Writes FILE.npy (float32: images in [-1, 1], 2-D points in data units) and FILE.png;
    --trajectory adds FILE_trajectory.png and .gif. Missing folders of --out are created.
    --invert DATA.npy encodes data to latents (the ODE run forwards, {INVERT_DEFAULT_STEPS} steps on the
    {INVERT_DEFAULT_GRID} grid by default) and decodes them again.
    A checkpoint from either side works on either side: same seed, same samples.
    """,
    epilog="""
    examples:
      python -m reference sample --ckpt runs/digits/ckpt.npz --n 64 --out runs/digits/samples.npy
      python -m reference sample --ckpt runs/digits/ckpt.npz --n 64 --out s.npy --sampler ddim --sample-steps 50
      python -m reference sample --ckpt runs/digits/ckpt.npz --n 64 --out s.npy --sampler dpm++2m --sample-steps 20
      python -m reference sample --ckpt runs/digits/ckpt.npz --out z.npy --invert data.npy
      python -m torch_port sample --ckpt runs/digits_cond/ckpt.npz --class all --guidance 2 --out rows.npy \
          --sampler dpm++2m
      python -m reference sample --ckpt runs/digits_cond/ckpt.npz --class 3 --n 16 --out threes.npy
      python -m torch_port sample --ckpt runs/digits/ckpt.npz --n 64 --out s_torch.npy
      python -m torch_port sample --ckpt runs/digits/ckpt.npz --classifier runs/digits-clf/ckpt.npz --class all \
          --classifier-scale 2 --out guided.npy
    """)
