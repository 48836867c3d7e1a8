"""``eval``: bits/dim on held-out data and a sample-quality figure beside its floor (both sides); with ``--nfe``,
the quality at each number of network evaluations beside DDPM with all T steps, and quality_vs_nfe.png; with
``--guidance``, the quality and the classifier's accuracy at each guidance scale (lab/guidance_eval.py)."""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from reference.errors import InputError

from .. import data as datasets
from .. import guidance_eval, likelihood_eval
from ..cli import add_command
from ..pictures import quality_vs_nfe
from ..progress import bar
from ..quality import Quality
from ..sampling import (GRIDS, ODE_DEFAULT_STEPS, ODE_SAMPLERS, SAMPLERS, SPACINGS, check_sampler_flags, draw,
                        load_trainer, plan)

# The default sampler (issue 19 §1): DPM-Solver++(2M) with 20 steps, 20 network calls per sample, on the default
# grid (trailing; leading for 2-D data on the cosine schedule). Measured (benchmarks/bench_solvers.py, mean of 4
# draws; benchmarks/README.md): digits FD 1.87 = 0.94x its floor, DDPM with all 1000 steps 0.97x: 50x fewer calls.
# 2-D points (below: 50 steps): moons SWD 0.98x its floor, DDPM-1000 1.03x (the 12000-step cosine-decay recipe).
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpm++2m", ODE_DEFAULT_STEPS
# 2-D points: 50 steps. At 20, gaussians8's modes (std 0.14 in model space) come out as wedges pointing at the
# centre, which the sliced Wasserstein distance barely sees (1.10x its floor; 50 steps 0.98x, round modes; DDPM
# all 1000 steps 1.21x); an MLP's 50 calls cost milliseconds.
POINTS_ODE_STEPS = 50
# --repeats when omitted: a 2-D sliced-Wasserstein figure of one draw of 2000 points moves by +-25-35% from seed to
# seed, so 2-D data takes the mean of 4 draws; an image FD of 500 samples moves by ~+-20% and costs more per draw
DEFAULT_REPEATS = {"points": 4, "images": 1}


def configure(p):
    p.add_argument("--ckpt", required=True, metavar="FILE", help="a checkpoint written by train (either side)")
    p.add_argument("--data", default=None, metavar="NAME", help="dataset to compare with (default: the run's)")
    p.add_argument("--n", type=int, default=None,
                   help="samples for the quality figure (default: 2000 for 2-D data, 500 for images)")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                   help=f"sampler for the quality figure. Default {DEFAULT_SAMPLER} (DPM-Solver++(2M)) with "
                        f"{DEFAULT_STEPS} steps on the trailing grid for images ({POINTS_ODE_STEPS} on the leading "
                        "grid for 2-D data on the cosine schedule): "
                        "20 network calls per sample instead of ddpm's 1000 (~15 min for 500 digits in NumPy here), "
                        "with the quality kept (digits FD 0.94x the floor, ddpm-1000 0.97x; moons at 50 steps "
                        "0.98x, ddpm-1000 1.03x; "
                        "benchmarks/bench_solvers.py and eval on bench_recipes.py's run, mean of 4 draws)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help=f"sampler steps (default: {DEFAULT_STEPS} for the ODE samplers euler/heun/dpm++2m on "
                        f"images, {POINTS_ODE_STEPS} on 2-D points, all T "
                        "for ddpm/ddim)")
    p.add_argument("--grid", choices=GRIDS, default=None,
                   help="euler/heun/dpm++2m: the grid of noise levels (default trailing, leading for 2-D data on the "
                        "cosine schedule; see sample --help)")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="ddpm/ddim: which steps a shortened chain "
                                                                      "keeps (default leading)")
    p.add_argument("--nfe", default=None, metavar="LIST",
                   help="e.g. 5,10,20,50: the quality at each number of network evaluations per sample (heun: the "
                        "largest 2 steps - 1 within it), beside ddpm with all T steps; writes quality_vs_nfe.png")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="with --nfe: also score ddpm with all T steps (T network calls per sample: ~15 min per "
                        "draw of 500 digits in NumPy on 2 cores, ~3 min in the port); --no-baseline skips it")
    guidance_eval.configure(p)
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="with --nfe: where quality_vs_nfe.png goes; with --guidance: guidance_tradeoff.png "
                        "(default: beside the checkpoint)")
    likelihood_eval.configure(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=None,
                   help="draw the samples this many times (seeds seed, seed+1, ...) and report the mean and "
                        f"spread. Default {DEFAULT_REPEATS['points']} for 2-D data (one draw's sliced Wasserstein "
                        f"figure varies by +-25-35%%), {DEFAULT_REPEATS['images']} for images (one draw's FD of "
                        "500 samples varies by ~+-20%%)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch_port only")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures as JSON here")


def parse_nfe(text, sampler):
    """--nfe "5,10,20" -> sorted unique ints, refused naming the flag when not a list of NFE the sampler runs."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise InputError(f"--nfe must be a comma-separated list of integers such as 5,10,20,50, got {text!r}") \
            from None
    if not values or values[0] < 1:
        raise InputError(f"--nfe needs network-evaluation counts >= 1, got {text!r}")
    if sampler in ("heun", "dpm++2m") and values[0] < 3:
        raise InputError(f"--nfe {values[0]} is too small for the second-order --sampler {sampler}: it needs "
                         "NFE >= 3 (one second-order step); use --sampler euler or ddim for fewer")
    return values


def _check(args, B):
    """Every flag checked before any work (loading, bits/dim or sampling)."""
    if B.name == "reference" and args.device == "cuda":
        raise InputError("--device cuda is a torch_port option: run `python -m torch_port eval ...`")
    if args.n is not None and args.n < 2:
        raise InputError(f"--n must be >= 2 (a figure needs a spread of samples), got {args.n}")
    likelihood_eval.check(args)
    if args.sample_steps is not None and args.sample_steps < 1:
        raise InputError(f"--sample-steps must be >= 1 (or omitted for all T steps), got {args.sample_steps}")
    if args.repeats is not None and args.repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {args.repeats}")
    scales = guidance_eval.check(args)
    if args.nfe is None:
        for flag, given in (("--plot", args.plot and scales is None), ("--no-baseline", not args.baseline)):
            if given:
                raise InputError(f"{flag} applies with --nfe only (the sweep over network evaluations)"
                                 + (" or --guidance" if flag == "--plot" else ""))
        if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
            raise InputError(f"--plot must name a .png file, got {args.plot!r}")
        return None, scales
    if args.sample_steps is not None:
        raise InputError("--nfe sets the steps of each run itself: drop --sample-steps")
    if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
        raise InputError(f"--plot must name a .png file, got {args.plot!r}")
    return parse_nfe(args.nfe, args.sampler), None


def score_sampler(B, trainer, judge, n, args, sampler, steps, spacing=None, grid=None, tag=""):
    """The judge's figure of one sampler setting over --repeats draws (seeds seed, seed+1, ...) -> a dict:
    value (mean), values, ratio_to_floor, steps, nfe, where (spacing or grid), seconds_per_sample (the
    sampling alone, per draw and sample)."""
    p = plan(B, trainer.sched, sampler, steps, spacing or "leading", grid, clip_x0=len(trainer.item_shape) == 3,
             prediction=trainer.cfg.prediction)
    values, seconds = [], 0.0
    for r in range(args.repeats):
        t0 = time.perf_counter()
        samples = draw(B, trainer, n, args.seed + r, sampler, p.steps, spacing or "leading", grid=grid,
                       progress=bar(f"sampling {tag}{r + 1}/{args.repeats}"), warn=r == 0)
        seconds += time.perf_counter() - t0
        values.append(judge.score(samples))
    value = float(np.mean(values))
    return {"sampler": sampler, "steps": p.steps, "nfe": p.nfe, "where": p.where, "value": value,
            "values": values, "spread": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "ratio_to_floor": value / judge.floor, "sampling_seconds": seconds / args.repeats,
            "seconds_per_sample": seconds / args.repeats / n}


def _steps_for(B, sampler, nfe):
    return B.solvers.steps_for_nfe(sampler, nfe) if sampler in ODE_SAMPLERS else nfe


def _check_nfe(B, T, args, nfes):
    """The steps of each --nfe entry, refused naming --nfe where the checkpoint's T cannot give them."""
    steps = [_steps_for(B, args.sampler, k) for k in nfes]
    for k, n in zip(nfes, steps):
        if n > T:
            raise InputError(f"--nfe {k} needs {n} steps of --sampler {args.sampler}, more than the checkpoint's T={T}")
        check_sampler_flags(T, args.sampler, n, spacing=args.spacing, grid=args.grid)
    return steps


def _sweep(B, trainer, judge, n, args, nfes, steps, res):
    """res gains "sweep": one row per NFE, the baseline (ddpm with all T steps) unless --no-baseline, the plot."""
    T = trainer.cfg.T
    rows = []
    for k, steps_k in zip(nfes, steps):
        row = score_sampler(B, trainer, judge, n, args, args.sampler, steps_k, args.spacing, args.grid,
                            tag=f"NFE {k}, ")
        rows.append(dict(row, nfe_asked=k))
    base = score_sampler(B, trainer, judge, n, args, "ddpm", T, tag=f"ddpm-{T}, ") if args.baseline else None
    for row in rows:
        row["ratio_to_baseline"] = row["value"] / base["value"] if base else None
    where = rows[0]["where"]
    plot = Path(args.plot) if args.plot else Path(args.ckpt).parent / "quality_vs_nfe.png"
    curves = {f"{args.sampler} ({where})": ([r["nfe"] for r in rows], [r["value"] for r in rows],
                                            [r["spread"] for r in rows] if args.repeats > 1 else None)}
    quality_vs_nfe(curves, plot, judge.floor, metric=judge.metric,
                   baseline=(f"ddpm, all {T} steps", base["value"]) if base else None,
                   title=f"{trainer.cfg.data}, step {res['step']}: {n} samples, mean of {args.repeats} draw(s)")
    res["sweep"] = {"sampler": args.sampler, "where": where, "rows": rows, "baseline": base, "plot": str(plot)}


def _print_sweep(res):
    sw, floor = res["sweep"], res["floor"]
    base = sw["baseline"]
    print(f"  {res['metric']} of {res['n']} samples (mean of {res['repeats']} draw(s)); "
          f"real-vs-real floor {floor:.4g}")
    print(f"    {'sampler':22s} {'NFE':>5s} {'value':>8s} {'/floor':>7s} {'/ddpm':>6s} {'ms/sample':>10s}")
    for r in sw["rows"] + ([base] if base else []):
        label = f"{r['sampler']} ({r['where']})" if r is not base else f"ddpm, all {r['steps']} steps"
        vs = f"{r['ratio_to_baseline']:6.2f}" if r.get("ratio_to_baseline") else "     -"
        print(f"    {label:22s} {r['nfe']:5d} {r['value']:8.4g} {r['ratio_to_floor']:7.2f} {vs} "
              f"{1e3 * r['seconds_per_sample']:10.3g}")
    print(f"  picture: {sw['plot']}")


def _judged_name(args, cfg, trainer):
    name = args.data or cfg.data
    datasets.check_name(name)
    if name != cfg.data:
        if datasets.info(name, image_size=cfg.image_size).shape != tuple(trainer.item_shape):
            raise InputError(f"--data {name!r} items do not have the shape the model was trained on "
                             f"{trainer.item_shape}")
        warnings.warn(f"the checkpoint was trained on {cfg.data!r}: its samples are judged against {name!r} "
                      f"(--data), not against the data it learned; drop --data to judge it against {cfg.data!r}")
    return name


def run(args, B):
    nfes, scales = _check(args, B)
    trainer, ck = load_trainer(B, args.ckpt, device=args.device)
    cfg = trainer.cfg
    steps = args.sample_steps        # None: all T for ddpm/ddim, ODE_DEFAULT_STEPS (at most T) for the ODE samplers
    if nfes is None:
        check_sampler_flags(cfg.T, args.sampler, steps, spacing=args.spacing, grid=args.grid)
    else:
        sweep_steps = _check_nfe(B, cfg.T, args, nfes)
    name = _judged_name(args, cfg, trainer)
    classes = guidance_eval.check_model(trainer, args, name) if scales else None
    points = name in datasets.POINT_SETS
    if steps is None and points and nfes is None and args.sampler in ODE_SAMPLERS:
        steps = min(cfg.T, POINTS_ODE_STEPS)
    args.repeats = args.repeats or DEFAULT_REPEATS["points" if points else "images"]
    n = args.n or (2000 if points else 500)
    res = {"ckpt": str(args.ckpt), "data": name, "trained_on": cfg.data, "step": ck.step, "n": n,
           "repeats": args.repeats, "sampler": args.sampler}
    likelihood_eval.compute(B, trainer, name, args, res)
    judge = Quality(name, n, cfg, args.seed)
    res.update({"metric": judge.metric, "floor": judge.floor})
    if nfes is not None:
        _sweep(B, trainer, judge, n, args, nfes, sweep_steps, res)
    elif scales:
        guidance_eval.compute(B, trainer, judge, n, args, name, scales, classes, res, plot=args.plot)
    else:
        one = score_sampler(B, trainer, judge, n, args, args.sampler, steps, args.spacing, args.grid)
        res.update({k: one[k] for k in ("value", "values", "ratio_to_floor", "sampling_seconds", "nfe",
                                        "seconds_per_sample")}, sample_steps=one["steps"], where=one["where"])
    print(f"eval of {args.ckpt} (step {ck.step}, {name}, {B.name}):")
    likelihood_eval.report(res, args)
    if nfes is not None:
        _print_sweep(res)
    elif scales:
        guidance_eval.report(res)
    else:
        values, value, floor = res["values"], res["value"], res["floor"]
        spread = f" (+-{np.std(values, ddof=1):.2g} over {args.repeats} draws)" if args.repeats > 1 else ""
        print(f"  {res['metric']} of {n} samples ({args.sampler}, {res['sample_steps']} steps, {res['where']}; "
              f"NFE {res['nfe']}): {value:.4g}{spread}")
        print(f"  real-vs-real floor at the same n: {floor:.4g}   (ratio {value / floor:.2f})")
        print(f"  sampling: {1e3 * res['seconds_per_sample']:.3g} ms per sample ({res['sampling_seconds']:.3g} s "
              "per draw)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


add_command(
    "eval", "bits/dim on held-out data and sample quality beside its real-vs-real floor", configure, run,
    description=f"""
    bits/dim: the full variational bound L_T + sum_t L_{{t-1}} + L_0 (derivations/elbo.md) on held-out
    images of any level count (256 for 8-bit, 17 for the digits), with the discretised Gaussian decoder and
    x0_hat clipped to [-1, 1] as the sampler clips it (--no-bpd-clip: the unclipped network); T network
    evaluations per image. --nll ode: the probability-flow ODE's exact likelihood instead, or both.
    Sample quality: for 2-D data the sliced Wasserstein distance to real points, for images a Frechet
    distance in the features of a small classifier trained on the dataset (cached). Each is printed
    beside its floor: the same figure between two independent real sets of the same size.
    The samples come from --sampler {DEFAULT_SAMPLER} with {DEFAULT_STEPS} steps by default (DPM-Solver++(2M),
    20 network calls per sample, on the trailing grid; for 2-D data {POINTS_ODE_STEPS} steps, on the leading grid
    with the cosine schedule): it
    keeps the quality of ddpm with all 1000 steps (digits FD 0.94x its floor, ddpm-1000 0.97x; moons at 50
    steps 0.98x, ddpm-1000 1.03x) at 1/50 of the network calls: seconds instead of ~15 minutes for 500 digits
    in NumPy. --nfe 5,10,20,50 sweeps the network calls per sample and compares each with ddpm's all T
    steps (quality_vs_nfe.png). --guidance 0,1,2,4 (a class-conditional checkpoint) scores samples of balanced
    requested classes at each classifier-free guidance scale: the quality beside its floor and the share the
    dataset's classifier names as the requested class, beside its accuracy on real test items
    (guidance_tradeoff.png). --repeats defaults to 4 draws for 2-D data, 1 for images.
    """,
    epilog="""
    examples:
      python -m reference eval --ckpt runs/moons/ckpt.npz
      python -m torch_port eval --ckpt runs/digits/ckpt.npz --sampler ddim --sample-steps 50
      python -m torch_port eval --ckpt runs/digits/ckpt.npz --nfe 5,10,20,50 --repeats 4 --bpd-n 0
      python -m reference eval --ckpt runs/digits/ckpt.npz --sampler heun --nfe 9,19 --no-baseline
      python -m torch_port eval --ckpt runs/digits_cond/ckpt.npz --guidance 0,1,2,4 --bpd-n 0
    """)
