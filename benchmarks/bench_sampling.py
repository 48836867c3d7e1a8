"""DDIM with 50 steps vs ancestral DDPM with 1000 steps: wall time and sample quality side by side.

    python benchmarks/bench_sampling.py                          # trains a moons model first (~1 min, CPU)
    python benchmarks/bench_sampling.py --ckpt runs/moons/ckpt.npz --n 4000 --seeds 3
    python benchmarks/bench_sampling.py --backend reference      # the NumPy sampler instead of the port's

Quality: the sliced Wasserstein-1 distance (lab/metrics.py) between n samples and a large
held-out data set (--n-ref points), mean +- standard deviation over --seeds sampling seeds, printed
beside its floor: the same distance from n fresh data points (what a perfect model would score; it is
not zero because n is finite, and shrinks like 1/sqrt(n)). Differences smaller than the sd are noise.
Without --ckpt, the port trains the 2-D recipe's MLP on moons on the CPU for --train-steps steps
(`python -m torch_port train --data moons --steps N` with the recipe's other settings) and uses its
EMA weights. Both samplers use the same network and the same checkpoint; only the reverse process
differs (A1 ancestral steps over all T; A2 deterministic DDIM over 50 "leading" kept indices).
Wall times are medians over the seeds, measured in this process, one sampler after the other.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ROWS = (("ddpm", 1000, "ancestral, all T steps (A1)"), ("ddim", 50, "deterministic DDIM, eta 0 (A2)"),
        ("ddpm", 50, "ancestral on 50 respaced steps (A4)"), ("ddim", 10, "deterministic DDIM, eta 0 (A2)"))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="a 2-D checkpoint (either side's train); default: train one on moons first")
    p.add_argument("--data", default="moons", help="2-D dataset for training (without --ckpt)")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--n", type=int, default=5000, help="samples per sampler and seed (and data points per floor draw)")
    p.add_argument("--n-ref", type=int, default=50000, help="held-out data points every sample set is compared with")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--backend", choices=("torch", "reference"), default="torch")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def train_checkpoint(args, out_dir):
    from lab.config import make_config
    from lab.runner import train

    cfg = make_config(args.data, steps=args.train_steps, sample_every=0, save_every=0)
    t0 = time.perf_counter()
    res = train(cfg, out_dir, backend="torch", progress=False, device="cpu")
    print(f"trained {args.data}: {cfg.steps} steps, batch {cfg.batch_size}, MLP {cfg.model} in "
          f"{time.perf_counter() - t0:.0f} s (torch_port, CPU)")
    return res["ckpt"]


def main():
    args = parse_args()
    import torch

    from lab import data, metrics
    from lab.backend import Backend
    from lab.sampling import draw, load_trainer

    torch.set_num_threads(args.threads)
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"device: CPU ({os.cpu_count()} logical cores, {args.threads} thread(s)), load average "
          f"{os.getloadavg()[0]:.1f}; sampler backend: {args.backend}")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or train_checkpoint(args, Path(tmp) / "run")
        B = Backend(args.backend)
        trainer, ck = load_trainer(B, ckpt, **({"device": "cpu"} if args.backend == "torch" else {}))
    name = trainer.cfg.data
    if trainer.item_shape != (2,):
        raise SystemExit(f"{ckpt} is an image model ({name}); this benchmark scores 2-D point sets")
    # one large held-out reference set; the floor: n fresh data points against it, once per seed
    ref = data.load(name, n=args.n_ref, seed=999, split="test")
    floor = [metrics.sliced_wasserstein(data.load(name, n=args.n, seed=1000 + s, split="test"), ref)
             for s in range(args.seeds)]
    print(f"checkpoint {ckpt}: {name}, T={trainer.cfg.T} {trainer.cfg.schedule}, step {ck.step}; "
          f"n={args.n} samples per run against {args.n_ref} held-out points, {args.seeds} seeds")
    print(f"{'sampler':8s} {'steps':>5s}  {'wall s (median)':>15s}  {'SWD mean +- sd':>18s}  {'/ floor':>7s}  what")
    print(f"{'data':8s} {'-':>5s}  {'-':>15s}  {np.mean(floor):9.4f} +- {np.std(floor):6.4f}  {1.0:7.2f}  "
          "floor: n fresh data points")
    for sampler, steps, what in ROWS:
        walls, swd = [], []
        for s in range(args.seeds):
            t0 = time.perf_counter()
            x = draw(B, trainer, args.n, seed=s, sampler=sampler, steps=steps)
            walls.append(time.perf_counter() - t0)
            swd.append(metrics.sliced_wasserstein(x, ref))
        print(f"{sampler:8s} {steps:5d}  {statistics.median(walls):15.2f}  {np.mean(swd):9.4f} +- {np.std(swd):6.4f}"
              f"  {np.mean(swd) / np.mean(floor):7.2f}  {what}")


if __name__ == "__main__":
    main()
