"""Rectified flow's second round on the 2-D sets (issue 26 §4): straightness and few-step quality before and after.

    python benchmarks/bench_reflow.py --out runs/reflow                          # checkerboard and gaussians8
    python benchmarks/bench_reflow.py --out runs/reflow --data moons --reuse

Per dataset, on one side (the port by default): `train --data NAME --objective flow` (the recipe, nothing else),
then `train --data NAME --objective flow --reflow --teacher` that checkpoint (the same recipe's steps on the
teacher's pairs). Both are sampled with Euler on the flow's own linspace grid at 1, 2 and 4 steps (--steps), and
scored by eval's judge: the sliced Wasserstein-2 distance of 2000 points, the mean over --repeats draws with its
standard error, beside the real-vs-real floor. Straightness (Liu et al. 2023, eq. 3) is measured on 100-step
Euler paths from the same x_T: S = mean over the path of ||(x_T - x_0) - u(x_t, t)||^2 / d, where u is the
model's velocity; 0 for a flow whose paths are straight lines. Target: reflow at least halves the 1-step distance.
The picture (--figure, default benchmarks/figures/reflow.png): per dataset, the first draw's samples of the flow at
1 and 4 Euler steps and of the reflowed model at 1 step, over the data.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(cmd, log):
    print("$", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def _mean_se(v):
    m = sum(v) / len(v)
    se = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan")
    return m, se


def straightness(B, trainer, n, seed, steps=100):
    """S of the model's Euler paths from default_rng(seed)'s x_T: the mean over the path's steps of
    ||(x_top - x_0) / t_top - u(x_t, t)||^2 / d in flow variables (x_t = (1 - t) x~, t = s / (1 + s))."""
    from lab.sampling import ode_denoiser
    D = ode_denoiser(B, trainer)
    sig = np.asarray(B.to_numpy(trainer_grid(B, trainer, steps)), dtype=np.float64)
    xT = np.random.default_rng(seed).standard_normal((n,) + tuple(trainer.item_shape))
    xs = xT * math.sqrt(1.0 + sig[0] ** 2)          # x~ at the top level, as the samplers draw it
    t_top = sig[0] / (1.0 + sig[0])
    x_top, us = xs * (1.0 - t_top), []
    for s, s_next in zip(sig[:-1], sig[1:]):
        d = np.asarray(B.to_numpy(D(B.from_numpy(xs.astype(np.float32)), float(s))), dtype=np.float64)
        t = s / (1.0 + s)
        us.append(((1.0 - t) * xs - d) / t)           # the velocity of the flow's D: x_t = x0_hat + t u
        xs = d if s_next == 0 else xs + (s_next - s) * (xs - d) / s   # (K7) Euler in (x~, sigma~)
    line = (x_top - xs) / t_top                       # the straight line's velocity from x_top to the end x_0
    return float(np.mean([np.mean(np.sum((line - u) ** 2, axis=1)) for u in us])) / xT.shape[1]


def trainer_grid(B, trainer, n):
    return B.objectives.sigma_grid(trainer.cfg, n, "linspace")


def figure(panels, path):
    """One row per dataset of (title, samples, data) panels, three a row, on square axes over the data (grey)."""
    from lab.plots.common import limits, save, scatter_figure, scatter_panel
    rows = len(panels)
    fig, axes = scatter_figure(3 * 300, rows * 300 + 10, rows, 3, squeeze=False)
    for i, row in enumerate(panels):
        for j, (title, pts, real) in enumerate(row):
            scatter_panel(axes[i][j], pts, reference=real, lim=limits(real), title=title, title_px=280)
    return save(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="checkerboard,gaussians8")
    ap.add_argument("--side", choices=("torch", "reference"), default="torch")
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--figure", default=str(ROOT / "benchmarks" / "figures" / "reflow.png"))
    args = ap.parse_args(argv)
    pkg = {"torch": "torch_port", "reference": "reference"}[args.side]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from lab.backend import Backend
    from lab.quality import Quality
    from lab.sampling import draw, load_trainer
    B = Backend(args.side)
    report, panels = {}, []
    for name in args.data.split(","):
        flow, rf = out / name / "flow", out / name / "reflow"
        minutes = {}
        for folder, extra in ((flow, []), (rf, ["--reflow", "--teacher", str(flow / "ckpt.npz")])):
            if args.reuse and (folder / "ckpt.npz").exists():
                continue
            t0 = time.perf_counter()
            _run([sys.executable, "-m", pkg, "train", "--data", name, "--objective", "flow", "--out", str(folder),
                  "--overwrite", "--quiet", "--no-final-samples", *extra], out / f"{name}.{folder.name}.log")
            minutes[folder.name] = (time.perf_counter() - t0) / 60
        rows, row_panels = {}, []
        for folder in (flow, rf):
            trainer, _ = load_trainer(B, folder / "ckpt.npz")
            judge = Quality(name, args.n, trainer.cfg, 0)
            r = {"floor": judge.floor, "straightness": straightness(B, trainer, 500, 0)}
            for k in (int(s) for s in args.steps.split(",")):
                xs = [draw(B, trainer, args.n, seed=s, sampler="euler", steps=k, grid="linspace", warn=False)
                      for s in range(args.repeats)]
                r[f"sw_{k}"] = _mean_se([judge.score(x) for x in xs])
                if k == 1 or (folder == flow and k == max(int(s) for s in args.steps.split(","))):
                    row_panels.append((f"{name}, {folder.name}, {k} Euler step{'s' * (k > 1)}: SW "
                                       f"{r[f'sw_{k}'][0] / judge.floor:.2f}x floor",
                                       np.asarray(B.to_numpy(xs[0])), judge.real))
            rows[folder.name] = r
            print(f"{name} {folder.name}: straightness {r['straightness']:.4f}; " + "; ".join(
                f"{k.split('_')[1]} step(s) SW {v[0]:.4f} ± {v[1]:.4f} ({v[0] / judge.floor:.2f}x floor)"
                for k, v in r.items() if k.startswith("sw_")), flush=True)
        halved = rows["reflow"]["sw_1"][0] / rows["flow"]["sw_1"][0]
        print(f"target: {name} reflow's 1-step SW / before = {halved:.2f} (<= 0.5: "
              f"{'met' if halved <= 0.5 else 'MISSED'})", flush=True)
        report[name] = {"rows": rows, "train_minutes": minutes, "one_step_ratio": halved}
        (out / "reflow.json").write_text(json.dumps(report, indent=2) + "\n")
        panels.append(row_panels)
    print("figure:", figure(panels, args.figure), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
