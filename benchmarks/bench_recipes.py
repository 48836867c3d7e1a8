"""The quality table: one row per dataset name the CLI accepts, each trained with its default recipe.

    python benchmarks/bench_recipes.py                               # every name, both sides where practical
    python benchmarks/bench_recipes.py --data moons,gaussians8 --sides reference
    python benchmarks/bench_recipes.py --out runs/recipes            # keep the runs and the picture

For each name and side: `python -m <side> train --data NAME --out DIR` with nothing else (the recipe),
timed from outside (the whole process: data, training, the final picture); then `eval --ckpt DIR/ckpt.npz`
with its defaults (`--repeats` draws), which prints the quality figure beside its real-vs-real floor at the
same sample count (2-D: the sliced Wasserstein-2 distance; images: the Frechet distance in the features of
a classifier trained on the dataset). Writes recipes.png: real data beside the samples of every trained row.

Names whose data this machine cannot get (MNIST, Fashion-MNIST, CIFAR-10 download from the internet; no
network here) and recipes too large for NumPy get a row that says so, with the user's command and the
recipe's cost (its FLOPs per step, counted by torch's FlopCounterMode, times its steps).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POINTS = ("moons", "swissroll", "gaussians8", "checkerboard")
IMAGES = ("digits", "mnist", "fashion-mnist", "cifar10", "folder:PATH")
PKG = {"torch": "torch_port", "reference": "reference"}


def sh(args, env, quiet=True):
    return subprocess.run([sys.executable, "-m", *args], check=True, env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE, text=True)


def train_and_eval(name, side, run, env, repeats):
    t0 = time.perf_counter()
    sh([PKG[side], "train", "--data", name, "--out", str(run), "--overwrite", "--quiet"], env)
    train_s = time.perf_counter() - t0
    js = run / "eval.json"
    sh([PKG[side], "eval", "--ckpt", str(run / "ckpt.npz"), "--bpd-n", "0", "--repeats", str(repeats),
        "--json", str(js)], env)
    res = json.loads(js.read_text())
    n = "2000" if name in POINTS else "36"
    flags = ["--sampler", res["sampler"]] + (["--sample-steps", str(res["sample_steps"])] if res.get("sample_steps") else [])
    sh([PKG[side], "sample", "--ckpt", str(run / "ckpt.npz"), "--n", n, "--out", str(run / "samples.npy")] + flags, env)
    return train_s, res


def recipe_cost(name):
    """(GFLOP per training step, steps) of the default recipe, counted on the CPU with FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lab import data
    from lab.config import make_config
    from torch_port.train import build_model

    cfg = make_config("cifar10" if name == "folder:PATH" else name)
    shape = (3, 32, 32) if name == "folder:PATH" else data.info(name).shape
    model = build_model(cfg, shape)
    x, t = torch.randn(cfg.batch_size, *shape), torch.zeros(cfg.batch_size, dtype=torch.long)
    with FlopCounterMode(display=False) as fc:
        model(x, t).square().mean().backward()
    return fc.get_total_flops() / 1e9, cfg.steps


def unavailable_row(name, why):
    gflop, steps = recipe_cost(name)
    total = gflop * steps / 1e6
    return (f"| `{name}` | not run here: {why} | {gflop:.0f} GFLOP/step x {steps} steps = {total:.0f} PFLOP: "
            f"{total * 1e3 / 300 / 60:.1f} min of compute at 300 TFLOP/s (30% of an H100's bf16 peak) | "
            f"`python -m torch_port train --data {name} --out runs/{name.split(':')[0]} --device cuda` |")


def picture(rows, path):
    import numpy as np

    from lab import data, plots

    panels = [(name, side, np.load(run / "samples.npy")) for name, side, run in rows
              if (run / "samples.npy").exists()]
    if not panels:
        return None
    cols = []
    for name, side, x in panels:
        real = data.load(name, n=len(x), split="test") if x.ndim == 2 else data.load(name, split="test")[:len(x)]
        cols.append((f"{name}: real", f"{name}: {side}", real, x))
    plots.recipes_figure(cols, path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=",".join(POINTS + IMAGES))
    ap.add_argument("--sides", default="torch,reference")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--out", default=None, help="run folders and recipes.png go here (default: a temp dir)")
    args = ap.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_recipes_"))
    env = dict(os.environ, DDPM_CACHE_DIR=str(root / "cache"))
    print("| data | side | default recipe's training time here | quality (eval defaults) | floor | ratio |")
    print("|---|---|---|---|---|---|")
    trained = []
    for name in args.data.split(","):
        if name in ("mnist", "fashion-mnist", "cifar10"):
            print(unavailable_row(name, "the data downloads from the internet, which this machine cannot reach"))
            continue
        if name == "folder:PATH":
            print(unavailable_row(name, "any folder of images; its recipe is the 32x32 GPU recipe (cost shown "
                                        "for 32x32 RGB)"))
            continue
        for side in args.sides.split(","):
            run = root / f"{name}_{side}"
            train_s, res = train_and_eval(name, side, run, env, args.repeats)
            trained.append((name, side, run))
            print(f"| `{name}` | {side} | {train_s / 60:.1f} min | {res['metric']} {res['value']:.4g} "
                  f"({res['sampler']}, {res['sample_steps']} steps, {res['n']} samples x {args.repeats}) | "
                  f"{res['floor']:.4g} | "
                  f"**{res['ratio_to_floor']:.2f}x** |", flush=True)
    pic = picture(trained, root / "recipes.png")
    print(f"load average at the end {os.getloadavg()[0]:.2f}; runs in {root}; picture {pic}")


if __name__ == "__main__":
    main()
