"""A training step of the PyTorch port vs the NumPy reference on the CPU: same model, batch, dtype, threads.

    python benchmarks/bench_cpu_port_vs_reference.py                      # digits recipe UNet, 1x8x8, batch 64
    python benchmarks/bench_cpu_port_vs_reference.py --model unet28 --batch 16
    python benchmarks/bench_cpu_port_vs_reference.py --model mlp --batch 256 --threads 2

A step is each side's ``Trainer.step`` (what `train` runs): draw t and eps, q_sample (F3), forward,
L_simple (L4), backward (hand-written / autograd), global-norm clipping (O3), AdamW (O1), EMA (O2).
Both Trainers are built from one TrainConfig in float32 and hold the same parameters (the
reference's, loaded into the port). The port runs as `train --device cpu` does: eager (no compile),
no autocast, the batch gathered from its DeviceData.

Threads: numpy's BLAS via OMP/OPENBLAS/MKL_NUM_THREADS set before numpy is imported (plus
threadpoolctl when installed), torch via torch.set_num_threads, both to --threads.
The machine may be shared: repetitions are interleaved (alternating which side goes first) so
background load hits both sides alike, and the medians are compared. The load average is printed.
The last line is the ratio reference/port of the median step times (> 1: the port is faster).
"""
import argparse
import os
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("digits", "unet28", "mlp"), default="digits",
                   help="digits: the digits recipe UNet on 1x8x8; unet28: the image recipe UNet on 1x28x28; "
                        "mlp: the 2-D recipe MLP")
    p.add_argument("--batch", type=int, default=None,
                   help="default: the recipe's batch (digits 64, mlp 256), 16 for unet28")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--warmup", type=int, default=3)
    return p.parse_args()


ARGS = parse_args()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)  # before numpy (and its BLAS) is loaded

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reference import train as RT  # noqa: E402
from reference.config import make_config  # noqa: E402

SETUPS = {  # data name (for the recipe), item shape, model overrides, default batch
    "digits": ("digits", (1, 8, 8), {}, 64),
    "unet28": ("mnist", (1, 28, 28), {}, 16),
    "mlp": ("moons", (2,), {}, 256),
}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build():
    import torch
    from torch_port import train as PT

    data, shape, model, default_batch = SETUPS[ARGS.model]
    cfg = make_config(data, batch_size=ARGS.batch or default_batch, model=model, dtype="float32")
    ref = RT.Trainer(cfg, shape)
    port = PT.Trainer(cfg, shape, device="cpu", compile=False, amp=False, channels_last=False)
    port.load_state_dict(ref.state_dict())
    x = np.random.default_rng(0).uniform(-1, 1, (1024,) + shape).astype(np.float32)
    port_data = port.prepare_data(x)
    rng = np.random.default_rng(1)
    counter = {"reference": 0, "port": 0}

    def ref_step():
        ref.step(x[rng.integers(0, len(x), cfg.batch_size)], counter["reference"])
        counter["reference"] += 1

    def port_step():
        loss, _ = port.step(port_data[rng.integers(0, len(x), cfg.batch_size)], counter["port"])
        float(loss)  # the reference returns a float: read the port's too (a no-op wait on the CPU)
        counter["port"] += 1

    return cfg, shape, ref, {"reference": ref_step, "port": port_step}, torch


def main():
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(ARGS.threads)
    except ImportError:
        pass
    cfg, shape, ref, sides, torch = build()
    torch.set_num_threads(ARGS.threads)
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"device: CPU {cpu_name()} ({os.cpu_count()} logical cores), load average at start "
          f"{os.getloadavg()[0]:.1f}")
    print(f"model: {ARGS.model} {type(ref.model).__name__} {cfg.model}, {ref.model.num_params():,} parameters")
    print(f"batch {cfg.batch_size} x {shape} float32, {ARGS.threads} thread(s) per side; numpy {np.__version__}, "
          f"torch {torch.__version__} (eager, foreach AdamW)")
    for _ in range(ARGS.warmup):
        for f in sides.values():
            f()
    times = {k: [] for k in sides}
    for r in range(ARGS.reps):
        for name in (("reference", "port") if r % 2 == 0 else ("port", "reference")):
            t0 = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in ("reference", "port"):
        print(f"{k:9s} step: median {med[k] * 1e3:8.2f} ms  min {min(times[k]) * 1e3:8.2f} ms  "
              f"({ARGS.reps} interleaved reps; {cfg.batch_size / med[k]:,.0f} items/s)")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(f"ratio reference/port (median step time): {med['reference'] / med['port']:.2f}x")


if __name__ == "__main__":
    main()
