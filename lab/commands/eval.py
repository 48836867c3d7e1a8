"""``eval``: bits/dim on held-out data and a sample-quality figure beside its floor (both sides); with ``--nfe``,
the quality at each number of network evaluations beside DDPM with all T steps, and quality_vs_nfe.png; with
``--guidance``, the quality and the classifier's accuracy at each guidance scale (lab/guidance_eval.py)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import numpy as np

from common import sampler_table as table
from reference.errors import InputError

from .. import data as datasets
from .. import guidance_eval, likelihood_eval, sde_sampling
from ..cli import OUTPUT_RULE, add_command, check_output
from ..pictures import quality_vs_nfe
from ..progress import bar
from ..quality import Quality
from ..sampling import (DEFAULT_SAMPLER, DEFAULT_STEPS, GRIDS, SAMPLERS, SPACINGS, Settings, check_sampler_flags,
                        draw, is_continuous, load_trainer, objective_of, resolve)

# The sampler and its steps when --sampler and --sample-steps are omitted: lab.sampling.resolve, as `sample`'s.
# --repeats when omitted: one draw's sliced Wasserstein figure of 2-D points moves from seed to seed by more than
# an image FD of 500 samples does, and 2-D draws are cheap, so 2-D data takes the mean of 4 draws.
DEFAULT_REPEATS = {"points": 4, "images": 1}
# --nfe's baseline: the chain's own sampler with all T steps, where the model has a chain (not a continuous one).
BASELINE = "ddpm"


def configure(p):
    p.add_argument("--ckpt", required=True, metavar="FILE", help="a checkpoint written by train (either side)")
    p.add_argument("--data", default=None, metavar="NAME", help="dataset to compare with (default: the run's)")
    p.add_argument("--data-dir", dest="data_dir", default=None, metavar="DIR",
                   help="where MNIST/Fashion-MNIST/CIFAR-10 files are read from (downloaded there when missing; "
                        "default: the run's --data-dir, else $DDPM_DATA_DIR, else ~/.cache/ddpm-executable)")
    p.add_argument("--n", type=int, default=None,
                   help="samples for the quality figure (default: 2000 for 2-D data, 500 for images)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help=f"sampler for the quality figure, as in sample (default {DEFAULT_SAMPLER}, DPM-Solver++(2M): "
                        "one network call a step instead of ddpm's T steps)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help=f"sampler steps (default: all T for ddpm; {DEFAULT_STEPS['images']} for every other sampler "
                        f"on images, {DEFAULT_STEPS['points']} on 2-D points, at most T)")
    sde_sampling.configure(p)   # --eta and the SDE samplers' settings, as sample's
    p.add_argument("--grid", choices=GRIDS, default=None,
                   help="the ODE and SDE samplers: the grid of noise levels (default trailing, leading where a start "
                        "at T-1 is harmful; see sample --help)")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="ddpm/ddim: which steps a shortened chain "
                                                                      "keeps (default leading)")
    p.add_argument("--nfe", default=None, metavar="LIST",
                   help="e.g. 5,10,20,50: the quality at each number of network evaluations per sample (the most "
                        "steps whose NFE fits, with the sampler's settings: heun 2 steps - 1, pc (corrector steps + 1) "
                        "steps, ...), beside ddpm with all T steps; writes quality_vs_nfe.png")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="with --nfe: also score ddpm with all T steps (T network calls per sample, the slow part of "
                        "a sweep); --no-baseline skips it")
    guidance_eval.configure(p)
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="with --nfe: where quality_vs_nfe.png goes; with --guidance: guidance_tradeoff.png "
                        f"(default: beside the checkpoint; {OUTPUT_RULE})")
    likelihood_eval.configure(p)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sampling noise (draw r uses seed + r), of the real sets the samples are judged "
                        "against and of the likelihood's noise: same seed, same figures")
    p.add_argument("--repeats", type=int, default=None,
                   help="draw the samples this many times (seeds seed, seed+1, ...) and report the mean and "
                        f"spread. Default {DEFAULT_REPEATS['points']} for 2-D data (one draw's sliced Wasserstein "
                        f"figure varies a lot from seed to seed), {DEFAULT_REPEATS['images']} for images")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch_port only")
    p.add_argument("--json", metavar="FILE", default=None,
                   help=f"also write the figures as JSON here ({OUTPUT_RULE})")


def parse_nfe(text, sampler, settings=None):
    """--nfe "5,10,20" -> sorted unique ints, refused naming the flag when not a list of NFE the sampler runs (with
    its SDE ``settings``, the defaults where omitted)."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise InputError(f"--nfe must be a comma-separated list of integers such as 5,10,20,50, got {text!r}") \
            from None
    if not values or values[0] < 1:
        raise InputError(f"--nfe needs network-evaluation counts >= 1, got {text!r}")
    r = table.row(sampler)
    least = r.nfe(r.min_steps, **(settings or {}))
    if values[0] < least and r.order > 1:
        raise InputError(f"--nfe {values[0]} is too small for the second-order --sampler {sampler}: it needs "
                         f"NFE >= {least} (one second-order step); use --sampler euler or ddim for fewer")
    if values[0] < least:
        raise InputError(f"--nfe {values[0]} is too small for --sampler {sampler}: one step with its settings takes "
                         f"NFE {least}; ask for more, or fewer calls a step (--corrector-steps, --langevin-steps)")
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
    args.classifier_scales = guidance_eval.check_classifier(args)
    if (scales or args.classifier_scales) and (args.eta is not None or sde_sampling.given(args)):
        flags = ["--eta"] * (args.eta is not None) + [table.flag(k) for k in sde_sampling.given(args)]
        raise InputError(f"{' '.join(flags)} do(es) not apply with --guidance/--classifier-scale: the guidance sweeps "
                         "draw with the sampler's default settings; drop them, or score one setting without the sweep")
    if args.json is not None:
        check_output(args.json, "--json")
    if args.plot is not None:
        check_output(args.plot, "--plot")
    if args.nfe is None:
        for flag, given in (("--plot", args.plot and scales is None and args.classifier_scales is None),
                            ("--no-baseline", not args.baseline)):
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
    return parse_nfe(args.nfe, args.sampler or DEFAULT_SAMPLER, _settings(args)), None


def _settings(args):
    """The SDE settings the flags give the sampler (eta among them where it takes it; the defaults elsewhere)."""
    return sde_sampling.settings_for(args.sampler or DEFAULT_SAMPLER, args.eta, sde_sampling.given(args))


def score_sampler(B, trainer, judge, n, args, sampler, steps=None, spacing=None, grid=None, tag="", extra=None):
    """The judge's figure of one sampler setting over --repeats draws (seeds seed, seed+1, ...) -> a dict: value
    (mean), values, ratio_to_floor, steps, nfe, where (spacing or grid), seconds_per_sample (the sampling alone,
    per draw and sample). ``sampler``: a lab.sampling.Settings, or a sampler name resolved with ``steps``,
    ``spacing``, ``grid`` and the checkpoint's ``extra`` as `sample` would (lab.sampling.resolve)."""
    st = sampler if isinstance(sampler, Settings) else resolve(B, trainer, extra, sampler, steps, spacing, grid)
    p, sampler = st.plan, st.plan.sampler
    values, seconds = [], 0.0
    for r in range(args.repeats):
        t0 = time.perf_counter()
        samples = draw(B, trainer, n, args.seed + r, sampler, p.steps, st.spacing, st.eta or 0.0, st.variance,
                       grid=p.where if p.ode else None, clip_x0=st.clip_x0,
                       progress=bar(f"sampling {tag}{r + 1}/{args.repeats}"), warn=r == 0, sde=st.sde)
        seconds += time.perf_counter() - t0
        values.append(judge.score(samples))
    value = float(np.mean(values))
    return {"sampler": sampler, "steps": p.steps, "nfe": p.nfe, "where": p.where, "value": value,
            "values": values, "spread": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "ratio_to_floor": value / judge.floor, "sampling_seconds": seconds / args.repeats,
            "seconds_per_sample": seconds / args.repeats / n}


def _check_nfe(B, T, args, nfes, images=True, objective="ddpm"):
    """The steps of each --nfe entry (the samplers' table's steps_for_nfe), refused naming --nfe where the
    checkpoint's T cannot give them (T None: a continuous objective's model, no cap)."""
    steps = [table.steps_for_nfe(args.sampler, k, **_settings(args)) for k in nfes]
    for k, n in zip(nfes, steps):
        if T is not None and n > T:
            raise InputError(f"--nfe {k} needs {n} steps of --sampler {args.sampler}, more than the checkpoint's T={T}")
        check_sampler_flags(T, args.sampler, n, args.eta, spacing=args.spacing, grid=args.grid, images=images,
                            objective=objective, sde=sde_sampling.given(args))
    return steps


def _sweep(B, trainer, judge, n, args, nfes, steps, res, extra=None):
    """res gains "sweep": one row per NFE, the baseline (ddpm with all T steps) unless --no-baseline, the plot."""
    T = trainer.cfg.T
    rows = []
    for k, steps_k in zip(nfes, steps):
        st = resolve(B, trainer, extra, args.sampler, steps_k, args.spacing, args.grid, eta=args.eta,
                     sde=sde_sampling.given(args))
        rows.append(dict(score_sampler(B, trainer, judge, n, args, st, tag=f"NFE {k}, "), nfe_asked=k))
    has_base = args.baseline and table.serves(BASELINE, objective_of(trainer.cfg))   # a continuous model: none
    base = (score_sampler(B, trainer, judge, n, args, resolve(B, trainer, extra, BASELINE, T),
                          tag=f"{BASELINE}-{T}, ") if has_base else None)
    for row in rows:
        row["ratio_to_baseline"] = row["value"] / base["value"] if base else None
    where = rows[0]["where"]
    plot = Path(args.plot) if args.plot else Path(args.ckpt).parent / "quality_vs_nfe.png"
    curves = {f"{args.sampler} ({where})": ([r["nfe"] for r in rows], [r["value"] for r in rows],
                                            [r["spread"] for r in rows] if args.repeats > 1 else None)}
    quality_vs_nfe(curves, plot, judge.floor, metric=judge.metric,
                   baseline=(f"{BASELINE}, all {T} steps", base["value"]) if base else None,
                   title=f"{trainer.cfg.data}, step {res['step']}: {n} samples, mean of {args.repeats} draw(s)")
    res["sweep"] = {"sampler": args.sampler, "where": where, "rows": rows, "baseline": base, "plot": str(plot)}


def _print_sweep(res):
    sw, floor = res["sweep"], res["floor"]
    base = sw["baseline"]
    print(f"  {res['metric']} of {res['n']} samples (mean of {res['repeats']} draw(s)); "
          f"real-vs-real floor {floor:.4g}")
    print(f"    {'sampler':22s} {'NFE':>5s} {'value':>8s} {'/floor':>7s} {'/' + BASELINE:>6s} {'ms/sample':>10s}")
    for r in sw["rows"] + ([base] if base else []):
        label = f"{r['sampler']} ({r['where']})" if r is not base else f"{BASELINE}, all {r['steps']} steps"
        vs = f"{r['ratio_to_baseline']:6.2f}" if r.get("ratio_to_baseline") else "     -"
        print(f"    {label:22s} {r['nfe']:5d} {r['value']:8.4g} {r['ratio_to_floor']:7.2f} {vs} "
              f"{1e3 * r['seconds_per_sample']:10.3g}")
    print(f"  picture: {sw['plot']}")


def _judged_name(args, cfg, trainer):
    name = args.data or cfg.data
    if name is None:  # a converted model whose items no dataset has: the judge needs real data
        raise InputError(f"{args.ckpt} records no dataset (converted from diffusers without --data): give --data "
                         f"NAME, the data with items of shape {tuple(trainer.item_shape)} to judge its samples against")
    datasets.check_name(name)
    if name != cfg.data:
        if datasets.info(name, image_size=cfg.image_size).shape != tuple(trainer.item_shape):
            raise InputError(f"--data {name!r} items do not have the shape the model was trained on "
                             f"{trainer.item_shape}")
        if cfg.data is not None:
            warnings.warn(f"the checkpoint was trained on {cfg.data!r}: its samples are judged against {name!r} "
                          f"(--data), not against the data it learned; drop --data to judge it against {cfg.data!r}")
    return name


def _classifier(B, trainer, args, name):
    """--classifier: (its chain gradient, K), the pair checked (lab.classifier_sampling.check_pair) and its classes
    judged on the model's own data."""
    from .. import classifier_run
    from ..classifier_sampling import check_pair, grad_fn_of
    clf_trainer, clf, _ = classifier_run.load(B, args.classifier, device=args.device)
    k = check_pair(trainer, clf_trainer, args.ckpt, args.classifier)
    if name != trainer.cfg.data or clf_trainer.cfg.data != name:
        raise InputError(f"--classifier asks for the classes of {clf_trainer.cfg.data!r}: judge them on that data, "
                         f"the model's ({trainer.cfg.data!r}); drop --data")
    return grad_fn_of(B, clf), k


def run(args, B):
    nfes, scales = _check(args, B)
    trainer, ck = load_trainer(B, args.ckpt, device=args.device)
    if args.data_dir is not None:   # where the real data is read from: the judge, the held-out items, the classifier
        trainer.cfg = dataclasses.replace(trainer.cfg, data_dir=args.data_dir)
    cfg, images = trainer.cfg, len(trainer.item_shape) == 3
    args.sampler = args.sampler or DEFAULT_SAMPLER
    if nfes is None:   # what sample runs for the same flags
        st = resolve(B, trainer, ck.extra, args.sampler, args.sample_steps, args.spacing, args.grid, eta=args.eta,
                     sde=sde_sampling.given(args))
        args.sample_steps = st.plan.steps     # the guidance sweep draws with them too
    else:
        sweep_steps = _check_nfe(B, None if is_continuous(cfg) else cfg.T, args, nfes, images, objective_of(cfg))
    likelihood_eval.check_model(trainer, args)
    name = _judged_name(args, cfg, trainer)
    classes = guidance_eval.check_model(trainer, args, name) if scales else None
    guide = _classifier(B, trainer, args, name) if args.classifier_scales else None
    points = name in datasets.POINT_SETS
    args.repeats = args.repeats or DEFAULT_REPEATS["points" if points else "images"]
    n = args.n or (2000 if points else 500)
    res = {"ckpt": str(args.ckpt), "data": name, "trained_on": cfg.data, "step": ck.step, "n": n,
           "repeats": args.repeats, "sampler": args.sampler}
    likelihood_eval.compute(B, trainer, name, args, res)
    judge = Quality(name, n, cfg, args.seed)
    res.update({"metric": judge.metric, "floor": judge.floor})
    if nfes is not None:
        _sweep(B, trainer, judge, n, args, nfes, sweep_steps, res, ck.extra)
    elif scales or guide:
        if scales:
            guidance_eval.compute(B, trainer, judge, n, args, name, scales, classes, res, plot=args.plot)
        if guide:
            guidance_eval.compute(B, trainer, judge, n, args, name, args.classifier_scales, guide[1], res,
                                  plot=None if scales else args.plot, grad_fn=guide[0])
    else:
        one = score_sampler(B, trainer, judge, n, args, st)
        res.update({k: one[k] for k in ("value", "values", "ratio_to_floor", "sampling_seconds", "nfe",
                                        "seconds_per_sample")}, sample_steps=one["steps"], where=one["where"])
    print(f"eval of {args.ckpt} (step {ck.step}, {name}, {B.name}):")
    likelihood_eval.report(res, args)
    if nfes is not None:
        _print_sweep(res)
    elif scales or guide:
        for key in ("guidance", "classifier_guidance"):
            if key in res:
                guidance_eval.report(res, key)
    else:
        values, value, floor = res["values"], res["value"], res["floor"]
        spread = f" (+-{np.std(values, ddof=1):.2g} over {args.repeats} draws)" if args.repeats > 1 else ""
        print(f"  {res['metric']} of {n} samples ({args.sampler}, {res['sample_steps']} steps, {res['where']}; "
              f"NFE {res['nfe']}): {value:.4g}{spread}")
        print(f"  real-vs-real floor at the same n: {floor:.4g}   (ratio {value / floor:.2f})")
        print(f"  sampling: {1e3 * res['seconds_per_sample']:.3g} ms per sample ({res['sampling_seconds']:.3g} s "
              "per draw)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
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
    The samples come from the sampler `sample` runs by default: --sampler {DEFAULT_SAMPLER}
    (DPM-Solver++(2M)) with {DEFAULT_STEPS['images']} steps for images and {DEFAULT_STEPS['points']} for 2-D points,
    one network call a step instead of ddpm's T. The real data is read from --data-dir (or the run's).
    --nfe 5,10,20,50 sweeps the network calls per sample and compares each with ddpm's all T
    steps (quality_vs_nfe.png). --guidance 0,1,2,4 (a class-conditional checkpoint) scores samples of balanced
    requested classes at each classifier-free guidance scale: the quality beside its floor and the share the
    dataset's classifier names as the requested class, beside its accuracy on real test items
    (guidance_tradeoff.png). --repeats defaults to 4 draws for 2-D data, 1 for images.
    A model of a continuous objective (train --objective edm|flow) has no trained chain: it is scored with the
    ODE samplers on its own grid of noise levels, --nfe has no ddpm baseline, and its likelihood is the ODE's
    (the default --nll for it: its denoiser is exact at every noise level); the bound needs the chain.
    """,
    epilog="""
    examples:
      python -m reference eval --ckpt runs/moons/ckpt.npz
      python -m torch_port eval --ckpt runs/digits/ckpt.npz --sampler ddim --sample-steps 50
      python -m torch_port eval --ckpt runs/digits/ckpt.npz --nfe 5,10,20,50 --repeats 4 --bpd-n 0
      python -m reference eval --ckpt runs/digits/ckpt.npz --sampler heun --nfe 9,19 --no-baseline
      python -m torch_port eval --ckpt runs/digits_cond/ckpt.npz --guidance 0,1,2,4 --bpd-n 0
      python -m torch_port eval --ckpt runs/digits/ckpt.npz --classifier runs/digits-clf/ckpt.npz --classifier-scale 0,1,2,4 --bpd-n 0
    """)
