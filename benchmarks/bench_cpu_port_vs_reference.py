"""A training step of the PyTorch port vs the NumPy reference on the CPU: same model, batch, dtype, threads.

    python benchmarks/bench_cpu_port_vs_reference.py                      # digits recipe UNet, 1x8x8, batch 64
    python benchmarks/bench_cpu_port_vs_reference.py --model unet28 --batch 16
    python benchmarks/bench_cpu_port_vs_reference.py --model mlp --batch 256 --threads 2
    python benchmarks/bench_cpu_port_vs_reference.py --amp          # the port under bf16 autocast

A step is each side's ``Trainer.step`` (what `train` runs): draw t and eps, q_sample (F3), forward,
L_simple (L4), backward (hand-written / autograd), global-norm clipping (O3), AdamW (O1), EMA (O2).
Both Trainers are built from one TrainConfig in float32 and hold the same parameters (the
reference's, loaded into the port). The port runs as `train --device cpu` does: eager (no compile),
no autocast, the batch gathered from its DeviceData. --amp runs it as `train --device cpu --amp`
does (bf16 autocast, float32 master weights and loss: the port's mixed precision, fast on CPUs
with native bf16 such as AVX512-BF16 or AMX; the reference stays float32), --compile as
`train --device cpu --compile` (torch.compile of the network; its compile time is in the warmup).

Threads: numpy's BLAS via OMP/OPENBLAS/MKL_NUM_THREADS set before numpy is imported (plus
threadpoolctl when installed), torch via torch.set_num_threads, both to --threads.
Each side runs in its own worker process (benchmarks/_sidebyside.py: neither library's spinning
idle threads or allocator state disturbs the other); the parent asks them for steps in turn,
alternating which side goes first so background load hits both alike, with a --gap pause before
each step, and compares the medians. The load average is printed.
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
    p.add_argument("--amp", action="store_true", help="the port under bf16 autocast (train --amp)")
    p.add_argument("--compile", action="store_true", help="the port's network under torch.compile (train --compile)")
    p.add_argument("--gap", type=float, default=0.1, help="seconds of pause before every timed step")
    p.add_argument("--worker", choices=("reference", "port"), help=argparse.SUPPRESS)
    return p.parse_args()


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sidebyside import pin_threads, run_interleaved, serve, start_workers  # noqa: E402

ARGS = parse_args()
pin_threads(ARGS.threads)  # before numpy (and its BLAS) is loaded

import platform  # noqa: E402
import statistics  # noqa: E402

import numpy as np  # noqa: E402

from reference import train as RT  # noqa: E402
from lab.config import make_config  # noqa: E402

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


def config():
    """The recipe's TrainConfig for --model in float32, and the item shape."""
    data, shape, model, default_batch = SETUPS[ARGS.model]
    return make_config(data, batch_size=ARGS.batch or default_batch, model=model, dtype="float32"), shape


def build(side):
    """(the reference Trainer holding the starting parameters, a function running one step of `side`, a label)."""
    cfg, shape = config()
    ref = RT.Trainer(cfg, shape)  # the parameters both sides start from
    x = np.random.default_rng(0).uniform(-1, 1, (1024,) + shape).astype(np.float32)
    rng = np.random.default_rng(1)
    counter = [0]
    if side == "reference":
        def step():
            ref.step(x[rng.integers(0, len(x), cfg.batch_size)], counter[0])
            counter[0] += 1
        return ref, step, f"numpy {np.__version__} (float32)"

    import torch
    from torch_port import train as PT

    torch.set_num_threads(ARGS.threads)
    port = PT.Trainer(cfg, shape, device="cpu", compile=ARGS.compile, amp=ARGS.amp, channels_last=False)
    port.load_state_dict(ref.state_dict())
    port_data = port.prepare_data(x)

    def step():
        loss, _ = port.step(port_data[rng.integers(0, len(x), cfg.batch_size)], counter[0])
        float(loss)  # the reference returns a float: read the port's too (a no-op wait on the CPU)
        counter[0] += 1
    mode = ("compiled" if ARGS.compile else "eager") + (", bf16 autocast" if ARGS.amp else ", float32")
    return ref, step, f"torch {torch.__version__} ({mode}, foreach AdamW)"


def worker(side):
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(ARGS.threads)
    except ImportError:
        pass
    ref, step, desc = build(side)
    for _ in range(ARGS.warmup):
        step()
    serve(step, ref.model.num_params(), desc)


def main():
    if ARGS.worker:
        return worker(ARGS.worker)
    cfg, shape = config()
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"device: CPU {cpu_name()} ({os.cpu_count()} logical cores), load average at start "
          f"{os.getloadavg()[0]:.1f}")
    procs, n_params, desc = start_workers(__file__, ("reference", "port"), sys.argv[1:])
    print(f"model: {ARGS.model} {cfg.model}, {n_params:,} parameters")
    print(f"batch {cfg.batch_size} x {shape}, {ARGS.threads} thread(s) per side; "
          f"{desc['reference']}, {desc['port']}; each side in its own process, "
          f"{ARGS.gap:g} s pause before each step")
    times, _ = run_interleaved(procs, ARGS.reps, ARGS.gap)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in ("reference", "port"):
        print(f"{k:9s} step: median {med[k] * 1e3:8.2f} ms  min {min(times[k]) * 1e3:8.2f} ms  "
              f"({ARGS.reps} interleaved reps; {cfg.batch_size / med[k]:,.0f} items/s)")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(f"ratio reference/port (median step time): {med['reference'] / med['port']:.2f}x")


if __name__ == "__main__":
    main()
