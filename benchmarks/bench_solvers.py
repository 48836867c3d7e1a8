"""Sample quality against network evaluations (NFE): the ODE solvers against DDPM with all T steps.

    python benchmarks/bench_solvers.py                                  # train the digits recipe (port), then sweep
    python benchmarks/bench_solvers.py --ckpt runs/digits/ckpt.npz      # reuse a checkpoint (either side's)
    python benchmarks/bench_solvers.py --ckpt runs/moons/ckpt.npz --side reference --nfe 5,10,20

On one checkpoint, in one process: the judge of `eval` (lab.commands.eval.Quality: the Frechet distance in
the digits classifier's features for images, sliced Wasserstein for 2-D data, each beside its real-vs-real
floor at the same n) scores, at each NFE of --nfe, every --settings entry SAMPLER:GRID (ddim:leading is the
chain's DDIM with eta 0 and leading spacing, = euler on the leading grid; heun's NFE is 2 steps - 1, the
largest within the asked NFE), each the mean of --repeats draws of --n samples (seeds --seed, --seed + 1,
...), then DDPM with all T steps (--baseline-repeats draws from the same seeds; --no-baseline skips it),
read against each row both as a ratio of means and on the seeds both share ("paired": the same x_T; DDPM's
noise after it differs). Prints one row per run with the wall time per sample (sampling only, --threads 1
by default; the load average is printed at the start and the end: the 2-core machine is shared), writes
quality_vs_nfe.png (and quality_vs_nfe_close.png without the settings that diverge) and bench_solvers.json
into --out. Targets (issue 15), checked on the last lines: DPM-Solver++(2M) at NFE 20 within 1.15x of
DDPM-T's distance, at NFE 10 within 1.5x.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _sidebyside import pin_threads  # noqa: E402  (the benchmarks' folder is the script's own)

SETTINGS = "dpm++2m:trailing,dpm++2m:karras,ddim:leading,heun:trailing,heun:karras"


def _load():
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None, help="checkpoint to sweep (default: train the digits recipe first)")
    ap.add_argument("--side", choices=("torch", "reference"), default="torch",
                    help="which side samples (and trains): the port is faster on the CPU")
    ap.add_argument("--nfe", default="5,10,20,50")
    ap.add_argument("--settings", default=SETTINGS, help="comma-separated SAMPLER:GRID (ddpm/ddim: spacing)")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="the first draw's seed (draws r use seed + r)")
    ap.add_argument("--n", type=int, default=None, help="samples per draw (default: eval's, 500 images / 2000 points)")
    ap.add_argument("--no-baseline", action="store_true", help="skip DDPM with all T steps")
    ap.add_argument("--baseline-repeats", type=int, default=None,
                    help="draws of DDPM with all T steps (default --repeats; it costs T network calls per sample). "
                         "Each row is also read against it on the seeds both share (paired)")
    ap.add_argument("--out", default=None, help="folder for the picture, the JSON (and the run); default a temp dir")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / BLAS threads (default 1: on a busy 2-core machine a second thread made the port's "
                         "sampling 2.6x slower, 18 vs 7 ms per sample and step, load average ~10)")
    args = ap.parse_args(argv)
    print("command:", " ".join([sys.executable] + sys.argv), flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, side: {args.side}", flush=True)
    _load()
    pin_threads(args.threads)   # before numpy loads
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_solvers_"))
    out.mkdir(parents=True, exist_ok=True)
    ckpt = args.ckpt
    if ckpt is None:
        pkg = {"torch": "torch_port", "reference": "reference"}[args.side]
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", pkg, "train", "--data", "digits", "--out", str(out / "digits"),
                        "--overwrite", "--quiet"], check=True)
        print(f"trained the digits recipe in {(time.perf_counter() - t0) / 60:.1f} min ({args.side})", flush=True)
        ckpt = str(out / "digits" / "ckpt.npz")

    from lab.backend import Backend
    from lab.commands.eval import Quality, parse_nfe, score_sampler
    from lab.pictures import quality_vs_nfe
    import numpy as np
    from lab.sampling import CHAIN_SAMPLERS, load_trainer
    import lab.commands.eval as ev
    from reference.schedules import PriorMismatchWarning

    if args.quiet:
        ev.bar = lambda *a, **k: None
    warnings.simplefilter("ignore", PriorMismatchWarning)  # ddim:leading at few steps starts late: measured here
    if args.side == "torch":
        import torch
        torch.set_num_threads(args.threads)
    B = Backend(args.side)
    trainer, ck = load_trainer(B, ckpt, device="cpu") if args.side == "torch" else load_trainer(B, ckpt)
    cfg = trainer.cfg
    n = args.n or (2000 if len(trainer.item_shape) == 1 else 500)
    judge = Quality(cfg.data, n, cfg, 0)
    ns = argparse.Namespace(repeats=args.repeats, seed=args.seed)
    print(f"{cfg.data}, step {ck.step}, T={cfg.T}, {cfg.schedule}; {judge.metric} of {n} samples, mean of "
          f"{args.repeats} draws; real-vs-real floor {judge.floor:.4g}", flush=True)
    base, rows = None, []

    def save():
        (out / "bench_solvers.json").write_text(json.dumps({"ckpt": ckpt, "side": args.side, "seed": args.seed,
                                                            "floor": judge.floor,
                                                            "metric": judge.metric, "n": n, "rows": rows,
                                                            "baseline": base}, indent=2) + "\n")
    for setting in args.settings.split(","):
        sampler, where = setting.split(":")
        for k in parse_nfe(args.nfe, sampler):
            steps = B.solvers.steps_for_nfe(sampler, k) if sampler not in CHAIN_SAMPLERS else k
            kw = {"spacing": where} if sampler in CHAIN_SAMPLERS else {"grid": where}
            r = score_sampler(B, trainer, judge, n, ns, sampler, steps, **kw)
            rows.append(dict(r, setting=setting))
            _row(r, judge.floor)
            save()
    if not args.no_baseline:   # last: the most expensive run, T network calls per sample
        ns_base = argparse.Namespace(repeats=args.baseline_repeats or args.repeats, seed=args.seed)
        base = score_sampler(B, trainer, judge, n, ns_base, "ddpm", cfg.T)
        _row(base, judge.floor)
        k = len(base["values"])
        for r in rows:
            r["vs_baseline"] = r["value"] / base["value"]
            r["vs_baseline_paired"] = float(np.mean(r["values"][:k])) / base["value"]   # the same seeds
        save()
        print(f"against ddpm-{cfg.T} (mean of all draws / mean of the {k} draws on the seeds both share):")
        for r in rows:
            print(f"  {r['setting']:18s} NFE {r['nfe']:4d}  x{r['vs_baseline']:5.2f}  "
                  f"paired x{r['vs_baseline_paired']:5.2f}")
    curves = {}
    for r in rows:
        c = curves.setdefault(r["setting"], ([], [], []))
        c[0].append(r["nfe"]), c[1].append(r["value"]), c[2].append(r["spread"] or 0.0)
    title = f"{cfg.data} ({args.side}), step {ck.step}: {n} samples, mean of {args.repeats} draws"
    baseline = (f"ddpm, all {cfg.T} steps", base["value"]) if base else None
    png = quality_vs_nfe(curves, out / "quality_vs_nfe.png", judge.floor, metric=judge.metric, baseline=baseline,
                         title=title)
    near = {k: c for k, c in curves.items() if min(c[1]) <= 3 * judge.floor}   # the settings that work, close up
    if near and len(near) < len(curves):
        quality_vs_nfe(near, out / "quality_vs_nfe_close.png", judge.floor, metric=judge.metric, baseline=baseline,
                       title=title + " (settings within 3x the floor)")
    if base:
        for k, target in ((20, 1.15), (10, 1.5)):
            for r in rows:
                if r["sampler"] == "dpm++2m" and r["nfe"] == k:
                    vs, vp = r["vs_baseline"], r["vs_baseline_paired"]
                    ok = "met" if vs <= target else f"MISSED by {vs / target:.2f}x"
                    print(f"target: {r['setting']} at NFE {k} within {target}x of ddpm-{cfg.T}: {vs:.2f}x "
                          f"(paired {vp:.2f}x) ({ok})")
    print(f"wrote {png} and {out / 'bench_solvers.json'}")
    _load()
    return 0


def _row(r, floor):
    label = f"{r['sampler']}:{r['where']}"
    spread = f" +-{r['spread']:.2g}" if r["spread"] is not None else ""
    print(f"  {label:18s} steps {r['steps']:5d}  NFE {r['nfe']:5d}  value {r['value']:8.4g}{spread:9s} "
          f"x{r['value'] / floor:5.2f} floor  {1e3 * r['seconds_per_sample']:8.3g} ms/sample  draws "
          + " ".join(f"{v:.3g}" for v in r["values"]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
