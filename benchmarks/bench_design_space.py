"""One design space, measured (issue 26 §4): DDPM-eps, DDPM-v, EDM and flow matching on digits at equal steps.

    python benchmarks/bench_design_space.py --out runs/design                  # train the four, then sweep
    python benchmarks/bench_design_space.py --out runs/design --reuse          # sweep the checkpoints already there
    python benchmarks/bench_design_space.py --out runs/design --models edm,flow --nfe 5,10

Each model is `train --data digits --objective ...` with its recipe and nothing else (the same 2800 steps for
every objective), on one side (--side, the port by default). Then, per model, benchmarks/bench_solvers.py
sweeps the three ODE samplers, each on the grid `sample` gives it for that model (DDPM: trailing, Heun leading;
EDM: karras; flow: linspace), at each NFE of --nfe: the Frechet distance of 500 samples in the digits judge's features, the mean of --repeats
draws (the same seeds, so the same x_T, in every row), beside the real-vs-real floor. Printed: one table of
FD/floor with its standard error, each model's training time and, with --nll, its ODE bits/dim on held-out
digits (`eval --nll ode`). The target checked on the last line: at NFE 5 the best new objective with its best
sampler within 0.8x of DDPM-eps's best FD/floor.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# model name -> (train flags, its natural sampler, each sampler's grid: the model's default grid for that sampler,
# as `sample` picks it when --grid is omitted; Heun on the trained cosine chain starts on leading, because from
# the clipped sigma_{T-1} its trapezoid diverges: derivations/solvers.md)
MODELS = {
    "ddpm-eps": ([], "dpm++2m", {"dpm++2m": "trailing", "heun": "leading", "euler": "trailing"}),
    "ddpm-v": (["--prediction", "v"], "dpm++2m", {"dpm++2m": "trailing", "heun": "leading", "euler": "trailing"}),
    "edm": (["--objective", "edm"], "heun", {"dpm++2m": "karras", "heun": "karras", "euler": "karras"}),
    "flow": (["--objective", "flow"], "euler", {"dpm++2m": "linspace", "heun": "linspace", "euler": "linspace"}),
}
SAMPLERS = ("dpm++2m", "heun", "euler")


def _run(cmd, log):
    print("$", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def train(pkg, name, out, reuse, steps=None):
    """Train one model (unless --reuse finds its checkpoint) -> (checkpoint path, minutes or None)."""
    ckpt = out / name / "ckpt.npz"
    if reuse and ckpt.exists():
        return ckpt, None
    flags = MODELS[name][0]
    t0 = time.perf_counter()
    _run([sys.executable, "-m", pkg, "train", "--data", "digits", "--out", str(out / name), "--overwrite",
          "--quiet", "--no-final-samples", *flags, *(["--steps", str(steps)] if steps else [])], out / f"{name}.train.log")
    return ckpt, (time.perf_counter() - t0) / 60


def sweep(side, name, ckpt, out, nfe, repeats, reuse):
    """bench_solvers.py on one checkpoint, each sampler on its grid -> {"floor", "rows"}. With --reuse, rows already
    in a sweep folder of this model (any earlier run's bench_solvers.json) are taken instead of measured again."""
    want = [f"{s}:{g}" for s, g in MODELS[name][2].items()]
    have, floor = {}, None
    if reuse:
        for js in sorted(out.glob(f"{name}.*sweep/bench_solvers.json")):
            d = json.loads(js.read_text())
            floor = d["floor"]
            for r in d["rows"]:
                have.setdefault(r["setting"], []).append(r)
    for setting in [w for w in want if w not in have]:
        folder = out / f"{name}.{setting.replace(':', '-')}.sweep"
        _run([sys.executable, str(ROOT / "benchmarks" / "bench_solvers.py"), "--ckpt", str(ckpt), "--side", side,
              "--settings", setting, "--nfe", nfe, "--repeats", str(repeats), "--no-baseline", "--quiet",
              "--out", str(folder)], out / f"{name}.{setting.replace(':', '-')}.sweep.log")
        d = json.loads((folder / "bench_solvers.json").read_text())
        floor, have[setting] = d["floor"], d["rows"]
    return {"floor": floor, "rows": [r for w in want for r in have[w]]}


def nll(pkg, ckpt, out, name, reuse=False):
    """`eval --nll ode` -> the bits/dim line it prints (or why it could not); --reuse takes an earlier run's."""
    log = out / f"{name}.nll.log"
    if reuse and log.exists() and "bits/dim" in log.read_text():
        return [ln for ln in log.read_text().splitlines() if "bits/dim" in ln][-1].strip()
    try:
        _run([sys.executable, "-m", pkg, "eval", "--ckpt", str(ckpt), "--nll", "ode", "--n", "64"], log)
    except subprocess.CalledProcessError:
        return "failed: " + log.read_text().strip().splitlines()[-1]
    lines = [ln for ln in log.read_text().splitlines() if "bits/dim" in ln]
    return lines[-1].strip() if lines else "(no bits/dim line)"


def table(results, nfes):
    """FD/floor (standard error) per model and sampler at each NFE, as markdown."""
    head = "| model | sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |"
    rows = [head, "|" + "---|" * (len(nfes) + 2)]
    best = {}
    for name, res in results.items():
        floor = res["floor"]
        for s in SAMPLERS:
            cells = []
            for k in nfes:
                # a sampler's row for NFE k is the one bench_solvers ran at the most steps within k (Heun: 2n - 1)
                r = sorted((r for r in res["rows"] if r["sampler"] == s and r["nfe"] <= k), key=lambda r: r["nfe"])
                if not r:
                    cells.append("")
                    continue
                v = r[-1]["values"]
                m, se = sum(v) / len(v) / floor, _se(v) / floor
                best[(name, k)] = min(best.get((name, k), math.inf), m)
                natural = "**" if s == MODELS[name][1] else ""
                at = f" (NFE {r[-1]['nfe']})" if r[-1]["nfe"] != k else ""
                cells.append(f"{natural}{m:.2f} ± {se:.2f}{natural}{at}")
            rows.append(f"| {name} | {s}:{MODELS[name][2][s]} | " + " | ".join(cells) + " |")
    return "\n".join(rows), best


def _se(v):
    if len(v) < 2:
        return float("nan")
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the runs, the logs and design_space.json")
    ap.add_argument("--side", choices=("torch", "reference"), default="torch")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--nfe", default="5,10,20,50")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--reuse", action="store_true", help="reuse the checkpoints (and sweeps) already in --out")
    ap.add_argument("--train-steps", type=int, default=None, help="override the recipe's steps (a smoke run)")
    ap.add_argument("--nll", action="store_true", help="also each model's ODE bits/dim (eval --nll ode, 64 digits)")
    args = ap.parse_args(argv)
    pkg = {"torch": "torch_port", "reference": "reference"}[args.side]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown --models {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    nfes = [int(k) for k in args.nfe.split(",")]
    results, minutes, bpd = {}, {}, {}
    for name in names:
        ckpt, minutes[name] = train(pkg, name, out, args.reuse, args.train_steps)
        results[name] = sweep(args.side, name, ckpt, out, args.nfe, args.repeats, args.reuse)
        if args.nll:
            bpd[name] = nll(pkg, ckpt, out, name, args.reuse)
        (out / "design_space.json").write_text(json.dumps(
            {"results": results, "train_minutes": minutes, "nll": bpd}, indent=2) + "\n")
    md, best = table(results, nfes)
    print(md)
    for name in names:
        t = f"{minutes[name]:.1f} min" if minutes[name] else "reused"
        print(f"{name}: training {t}" + (f"; {bpd[name]}" if name in bpd else ""))
    k = nfes[0]
    if "ddpm-eps" in names and any(n in names for n in ("edm", "flow", "ddpm-v")):
        base = best[("ddpm-eps", k)]
        new = min((best[(n, k)], n) for n in names if n != "ddpm-eps")
        ok = "met" if new[0] <= 0.8 * base else f"MISSED: {new[0] / base:.2f}x"
        print(f"target: at NFE {k} the best new objective ({new[1]}, {new[0]:.2f}x the floor) within 0.8x of "
              f"ddpm-eps's best ({base:.2f}x): {new[0] / base:.2f}x ({ok})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
