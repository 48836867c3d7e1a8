"""Quality targets of the tuned digits recipe, measured end to end through the CLI.

    python benchmarks/bench_quality.py                  # the port, then the reference
    python benchmarks/bench_quality.py --sides torch    # the port only

For each side: `train --data digits --out DIR` with nothing else (the tuned defaults), timed; then
`eval` with the 1000-step ancestral sampler and with DDIM at 50 steps, each averaged over
--repeats draws of 500 samples. Prints the Frechet distance in classifier features beside its
real-vs-real floor, and DDIM-50's figure relative to DDPM-1000's.
Targets: FD within 1.5x of the floor after <= 5 min (port) / <= 15 min (reference) of training on
a 2-core CPU; DDIM-50 within 10% of DDPM-1000.
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


def sh(args, **kw):
    return subprocess.run([sys.executable, "-m", *args], check=True, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", default="torch,reference")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reference-ddpm", action="store_true",
                    help="also evaluate the reference with DDPM-1000 (slow: ~T x 500 NumPy forwards per draw); "
                         "by default the DDIM/DDPM comparison is made on the port")
    ap.add_argument("--out", default=None, help="run folders go here (default: a temp dir)")
    args = ap.parse_args()
    print("command:", " ".join([sys.executable] + sys.argv))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_quality_"))
    env = dict(os.environ, DDPM_CACHE_DIR=str(root / "cache"))
    for side in args.sides.split(","):
        pkg = {"torch": "torch_port", "reference": "reference"}[side]
        run = root / side
        t0 = time.perf_counter()
        sh([pkg, "train", "--data", "digits", "--out", str(run), "--overwrite", "--quiet"], env=env)
        train_s = time.perf_counter() - t0
        figs = {}
        evals = (("ddpm1000", []), ("ddim50", ["--sampler", "ddim", "--sample-steps", "50"]))
        if side == "reference" and not args.reference_ddpm:
            evals = evals[1:]
        for name, flags in evals:
            js = run / f"eval_{name}.json"
            sh([pkg, "eval", "--ckpt", str(run / "ckpt.npz"), "--repeats", str(args.repeats), "--bpd-n", "0",
                "--json", str(js)] + flags, env=env, stdout=subprocess.DEVNULL)
            figs[name] = json.loads(js.read_text())
        floor = figs["ddim50"]["floor"]
        line = f"{side:9s} train {train_s / 60:5.1f} min | floor {floor:.3f}"
        for name, f in figs.items():
            line += f" | FD {name} {f['value']:.3f} (x{f['value'] / floor:.2f} floor, {f['sampling_seconds']:.1f}s/500)"
        if "ddpm1000" in figs:
            line += f" | ddim50/ddpm1000 {figs['ddim50']['value'] / figs['ddpm1000']['value']:.2f}"
        print(line, flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}; runs in {root}")


if __name__ == "__main__":
    main()
