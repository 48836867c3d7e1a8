"""Classifier guidance against classifier-free guidance, and scale-shift norm against the additive embedding, on
digits (issue 28, "Measured").

    python benchmarks/bench_classifier_guidance.py --out runs/cg              # train the four, then measure
    python benchmarks/bench_classifier_guidance.py --out runs/cg --reuse      # measure the checkpoints already there
    python benchmarks/bench_classifier_guidance.py --out /tmp/cg_smoke --train-steps 30 --n 64 --repeats 2 \\
        --cg-scales 0,2 --cfg-scales 0,2 --step-reps 5                        # a smoke run (figures meaningless)

Trains on the port (unless --reuse finds the checkpoint), each with its recipe and nothing else: the digits
recipe (`train --data digits`, "uncond"), the class-conditional one (`--class-cond`, "cond"), the noise-conditional
classifier (`train --data digits --classifier`: its own recipe, on the digits recipe's schedule and T, so it pairs
with "uncond" by default) and the recipe with `--norm scale-shift` ("scale_shift"); each training's minutes are
recorded. Then, in this process, with eval's default sampler and --n samples of balanced requested classes, the
mean of --repeats draws (seeds --seed, --seed + 1, ...; standard errors = standard deviation / sqrt(repeats)):
the classifier-guidance sweep of `eval --classifier` on "uncond" over --cg-scales and the classifier-free sweep of
`eval --guidance` on "cond" over --cfg-scales (both lab/guidance_eval.compute), scored by the eval judge (the
Frechet distance in the digits feature classifier's features over its real-vs-real floor) and by that held-out
classifier's accuracy against the requested classes, with the wall time per sample at each scale. "At equal
accuracy": each curve's FD/floor interpolated linearly in accuracy (between the neighbouring measured points, in
order of accuracy) at the accuracies the other curve reaches. Then "uncond" against "scale_shift" as plain
`eval` scores them (lab.commands.eval.score_sampler, the same seeds), and their training step times measured side
by side here: --step-reps alternating steps of each on one batch after a warm-up. Timings are only meaningful on
quiet cores (one thread each, nothing else running). Writes guidance_kinds.png, the two sweeps' own pictures and
bench_classifier_guidance.json into --out; the targets' lines come last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _sidebyside import pin_threads  # noqa: E402  (the benchmarks' folder is the script's own)

ROOT = Path(__file__).resolve().parents[1]
TARGET_ACCURACY, TARGET_RATIO = 0.90, 2.0     # issue 28: classifier guidance >= 90% with FD within 2x the floor
# run name -> train flags (each the recipe's run with one change)
RUNS = {"uncond": [], "cond": ["--class-cond"], "classifier": ["--classifier"],
        "scale_shift": ["--norm", "scale-shift"]}


def _train(name, out, reuse, steps, threads):
    """One `python -m torch_port train` run (unless --reuse finds its checkpoint) -> (checkpoint, minutes or None)."""
    ckpt = out / name / "ckpt.npz"
    if reuse and ckpt.exists():
        return ckpt, None
    flags = RUNS[name] + ([] if name == "classifier" else ["--no-final-samples"])   # a classifier draws none
    cmd = [sys.executable, "-m", "torch_port", "train", "--data", "digits", "--out", str(out / name), "--overwrite",
           "--quiet", "--device", "cpu", *flags, *(["--steps", str(steps)] if steps else [])]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(out / f"{name}.train.log", "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return ckpt, (time.perf_counter() - t0) / 60


def _se(values):
    return float(math.sqrt(sum((v - sum(values) / len(values)) ** 2 for v in values) / (len(values) - 1))
                 / math.sqrt(len(values))) if len(values) > 1 else None


def _curve(rows, floor):
    """A sweep's rows -> per scale: scale, ratio, its SE, accuracy, its SE, ms per sample."""
    return [{"scale": r["scale"], "ratio": r["ratio_to_floor"],
             "ratio_se": None if _se(r["values"]) is None else _se(r["values"]) / floor,
             "accuracy": r["accuracy"], "accuracy_se": _se(r["accuracies"]),
             "ms_per_sample": 1e3 * r["seconds_per_sample"], "nfe": r["nfe"]} for r in rows]


def interpolate(curve, accuracy):
    """The curve's ratio at ``accuracy``, linear between the neighbouring points in order of accuracy; None
    outside the accuracies it reaches."""
    pts = sorted((c["accuracy"], c["ratio"]) for c in curve)
    if not pts[0][0] <= accuracy <= pts[-1][0]:
        return None
    for (a0, r0), (a1, r1) in zip(pts, pts[1:]):
        if a0 <= accuracy <= a1:
            return r0 if a1 == a0 else r0 + (r1 - r0) * (accuracy - a0) / (a1 - a0)
    return pts[0][1]   # a single point


def matched(cg, cfg):
    """Pairs at equal accuracy: each measured point of one curve against the other interpolated there."""
    rows = [{"accuracy": c["accuracy"], "measured": "cg", "scale": c["scale"], "cg": c["ratio"],
             "cfg": interpolate(cfg, c["accuracy"])} for c in cg]
    rows += [{"accuracy": c["accuracy"], "measured": "cfg", "scale": c["scale"], "cg": interpolate(cg, c["accuracy"]),
              "cfg": c["ratio"]} for c in cfg]
    return sorted(rows, key=lambda r: r["accuracy"])


def step_times(B, ckpts, reps, warmup=5):
    """ms per training step of each checkpoint's recipe, alternating which goes first, on one batch of digits."""
    import numpy as np

    from lab import data
    from lab.sampling import load_trainer
    trainers = {k: load_trainer(B, p, device="cpu")[0] for k, p in ckpts.items()}
    bs = next(iter(trainers.values())).cfg.batch_size
    x = data.load("digits", seed=0)[:bs].astype(np.float32)
    times = {k: [] for k in trainers}
    for r in range(warmup + reps):
        for k in (list(trainers) if r % 2 == 0 else list(trainers)[::-1]):
            t0 = time.perf_counter()
            trainers[k].step(x, r)
            if r >= warmup:
                times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: {"median_ms": float(np.median(v)), "mean_ms": float(np.mean(v)), "se_ms": _se(v)}
            for k, v in times.items()}


def _print_curve(name, curve):
    print(f"  {name}:  s  FD/floor (SE)   accuracy (SE)   NFE  ms/sample")
    for c in curve:
        se = f"{c['ratio_se']:.2g}" if c["ratio_se"] is not None else "-"
        ase = f"{100 * c['accuracy_se']:.1f}" if c["accuracy_se"] is not None else "-"
        print(f"    {c['scale']:5g}  {c['ratio']:6.2f} ({se:>5s})  {100 * c['accuracy']:5.1f}% ({ase:>4s})  "
              f"{c['nfe']:4d}  {c['ms_per_sample']:8.3g}", flush=True)


def _fmt(v):
    return f"{v:6.2f}" if v is not None else "     -"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the runs, the pictures and the JSON")
    ap.add_argument("--reuse", action="store_true", help="use the checkpoints already in --out instead of training")
    ap.add_argument("--train-steps", type=int, default=None, help="steps of every run (default: each recipe's)")
    ap.add_argument("--cg-scales", default="0,1,2,4,8,16", help="classifier guidance's scales (its gradient's)")
    ap.add_argument("--cfg-scales", default="0,1,2,4", help="classifier-free guidance's scales")
    ap.add_argument("--n", type=int, default=500, help="samples per draw, balanced over the classes")
    ap.add_argument("--repeats", type=int, default=4, help="draws per setting (seeds --seed, --seed + 1, ...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--step-reps", type=int, default=200, help="timed training steps of each norm")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (default 1: the cores are shared)")
    args = ap.parse_args(argv)
    print("command:", " ".join([sys.executable] + sys.argv), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores", flush=True)
    pin_threads(args.threads)   # before numpy loads
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpts, minutes = {}, {}
    for name in RUNS:
        ckpts[name], minutes[name] = _train(name, out, args.reuse, args.train_steps, args.threads)
        print(f"  {name}: {ckpts[name]}" + (f" trained in {minutes[name]:.1f} min" if minutes[name] else " (reused)"),
              flush=True)
    log = out / "classifier.train.log"   # train --classifier's own held-out accuracy line, when it trained here
    held = [ln.strip() for ln in log.read_text().splitlines() if "held-out accuracy" in ln] if log.exists() else []
    if held:
        print("  classifier:", held[-1], flush=True)

    import torch

    import lab.guidance_eval as ge
    from lab import classifier_run
    from lab.backend import Backend
    from lab.classifier_sampling import check_pair, grad_fn_of
    import lab.commands.eval as ev
    from lab.plots.guidance_kinds import guidance_kinds
    from lab.quality import Quality
    from lab.sampling import DEFAULT_SAMPLER, load_trainer
    torch.set_num_threads(args.threads)
    if args.quiet:   # both sweeps' bars and plain eval's
        ge.bar = ev.bar = lambda *a, **k: None
    B = Backend("torch")
    ns = argparse.Namespace(sampler=DEFAULT_SAMPLER, sample_steps=None, spacing=None, grid=None,
                            repeats=args.repeats, seed=args.seed)
    loaded = {k: load_trainer(B, str(ckpts[k]), device="cpu") for k in ("uncond", "cond", "scale_shift")}
    trainer, ck = loaded["uncond"]
    judge = Quality("digits", args.n, trainer.cfg, args.seed)
    print(f"digits, {judge.metric} of {args.n} samples, {DEFAULT_SAMPLER}, mean of {args.repeats} draws; "
          f"real-vs-real floor {judge.floor:.4g}", flush=True)
    res = {"n": args.n, "repeats": args.repeats, "seed": args.seed, "sampler": DEFAULT_SAMPLER, "metric": judge.metric,
           "floor": judge.floor, "train_minutes": minutes, "ckpts": {k: str(v) for k, v in ckpts.items()},
           "steps": {k: loaded[k][1].step for k in loaded}, "step": ck.step,
           "classifier_held_out": held[-1] if held else None}

    clf_trainer, clf, _ = classifier_run.load(B, str(ckpts["classifier"]), device="cpu")
    k = check_pair(trainer, clf_trainer, str(ckpts["uncond"]), str(ckpts["classifier"]))
    ns.ckpt = str(ckpts["uncond"])
    ge.compute(B, trainer, judge, args.n, ns, "digits", ge.parse_scales(args.cg_scales, "--cg-scales"), k, res,
               plot=out / "classifier_tradeoff.png", grad_fn=grad_fn_of(B, clf))
    cond, cond_ck = loaded["cond"]
    ns.ckpt = str(ckpts["cond"])
    res["step"] = cond_ck.step
    ge.compute(B, cond, judge, args.n, ns, "digits", ge.parse_scales(args.cfg_scales, "--cfg-scales"),
               ge.check_model(cond, ns, "digits"), res, plot=out / "guidance_tradeoff.png")
    cg, cfg = _curve(res["classifier_guidance"]["rows"], judge.floor), _curve(res["guidance"]["rows"], judge.floor)
    res["cg"], res["cfg"], res["matched"] = cg, cfg, matched(cg, cfg)
    _print_curve("classifier guidance on the unconditional model", cg)
    _print_curve("classifier-free guidance on the class-conditional model", cfg)
    print("  at equal accuracy (the measured point, the other curve interpolated linearly in accuracy):")
    print("    accuracy  measured  s      CG FD/floor  CFG FD/floor")
    for m in res["matched"]:
        print(f"    {100 * m['accuracy']:6.1f}%  {m['measured']:>8s}  {m['scale']:5g}  {_fmt(m['cg'])}       "
              f"{_fmt(m['cfg'])}")
    ceiling = res["guidance"]["ceiling"]
    plot = guidance_kinds([{"label": "classifier guidance (unconditional model)", "scales": [c["scale"] for c in cg],
                            "ratios": [c["ratio"] for c in cg], "accuracies": [c["accuracy"] for c in cg],
                            "ratio_se": _bars(cg, "ratio_se"), "accuracy_se": _bars(cg, "accuracy_se")},
                           {"label": "classifier-free guidance (class-conditional model)",
                            "scales": [c["scale"] for c in cfg], "ratios": [c["ratio"] for c in cfg],
                            "accuracies": [c["accuracy"] for c in cfg], "ratio_se": _bars(cfg, "ratio_se"),
                            "accuracy_se": _bars(cfg, "accuracy_se")}],
                          out / "guidance_kinds.png", metric="Frechet distance", ceiling=ceiling,
                          target_accuracy=TARGET_ACCURACY,
                          title=f"digits: {args.n} samples of balanced classes, {DEFAULT_SAMPLER}, mean of "
                                f"{args.repeats} draws (error bars: standard errors)")
    res["plot"] = str(plot)

    norms = {}
    for name in ("uncond", "scale_shift"):
        t, c = loaded[name]
        one = ev.score_sampler(B, t, judge, args.n, ns, DEFAULT_SAMPLER, extra=c.extra, tag=f"{name} ")
        se = _se(one["values"])
        norms[name] = {"ratio": one["ratio_to_floor"], "ratio_se": None if se is None else se / judge.floor,
                       "values": one["values"], "ms_per_sample": 1e3 * one["seconds_per_sample"]}
    norms["step_times"] = step_times(B, {k: str(ckpts[k]) for k in ("uncond", "scale_shift")}, args.step_reps)
    res["norms"] = norms
    (out / "bench_classifier_guidance.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {plot}, {res['classifier_guidance']['plot']}, {res['guidance']['plot']} and "
          f"{out / 'bench_classifier_guidance.json'}")
    _targets(cg, norms)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    return 0


def _bars(curve, key):
    return None if any(c[key] is None for c in curve) else [c[key] for c in curve]


def _targets(cg, norms):
    ok = [c for c in cg if c["accuracy"] >= TARGET_ACCURACY]
    if not ok:
        top = max(cg, key=lambda c: c["accuracy"])
        print(f"target: classifier guidance reaches {100 * TARGET_ACCURACY:.0f}% accuracy: MISSED, best "
              f"{100 * top['accuracy']:.1f}% at s={top['scale']:g} (FD/floor {top['ratio']:.2f}), short by "
              f"{100 * (TARGET_ACCURACY - top['accuracy']):.1f} points")
    else:
        best = min(ok, key=lambda c: c["ratio"])
        verdict = "met" if best["ratio"] <= TARGET_RATIO else f"MISSED by {best['ratio'] / TARGET_RATIO:.2f}x"
        print(f"target: classifier guidance at >= {100 * TARGET_ACCURACY:.0f}% accuracy with FD within "
              f"{TARGET_RATIO:g}x the floor: best {best['ratio']:.2f}x at s={best['scale']:g} "
              f"({100 * best['accuracy']:.1f}%) ({verdict})")
    a, s = norms["uncond"], norms["scale_shift"]
    se = math.hypot(a["ratio_se"] or 0.0, s["ratio_se"] or 0.0)
    diff = s["ratio"] - a["ratio"]
    verdict = f"met (a tie: the difference {diff:+.2f} is within two standard errors, {2 * se:.2g})" \
        if abs(diff) <= 2 * se else f"met (better by {-diff:.2f}, beyond two standard errors)" if diff < 0 else \
        f"MISSED: worse by {diff:.2f} (more than two standard errors, {2 * se:.2g})"
    fmt = lambda d: f"{d['ratio']:.2f}" + (f" +- {d['ratio_se']:.2g}" if d["ratio_se"] is not None else "")  # noqa: E731
    print(f"target: scale-shift norm no worse than the additive embedding: FD/floor {fmt(s)} against {fmt(a)} "
          f"({verdict})")
    st = norms["step_times"]
    print(f"  training step (median, side by side): additive {st['uncond']['median_ms']:.1f} ms, scale-shift "
          f"{st['scale_shift']['median_ms']:.1f} ms ({st['scale_shift']['median_ms'] / st['uncond']['median_ms']:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
