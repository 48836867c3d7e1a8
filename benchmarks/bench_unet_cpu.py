"""One DDPM training step of the NumPy reference UNet vs the same UNet in torch, on the CPU.

    python benchmarks/bench_unet_cpu.py                      # batch 32 of 1x16x16, 2 threads
    python benchmarks/bench_unet_cpu.py --size 28 --batch 16 --threads 1 --reps 15

A step = q_sample (F3), forward, eps-MSE loss (L4), backward, AdamW update: reference.optim.AdamW
on the NumPy side (an in-script AdamW if that module is missing), torch.optim.AdamW on the torch
side, same hyperparameters. float32, the same parameters, batch and thread count on both sides
(numpy's BLAS via OMP/OPENBLAS/MKL_NUM_THREADS set before numpy is imported; torch via
torch.set_num_threads). Each side runs in its own worker process (this script with --worker SIDE),
so neither library's thread pool or allocator state disturbs the other; the parent asks them for
steps in turn, alternating which goes first, so load from other processes hits both alike, and
pauses --gap seconds (default 0.1) before each step: idle OpenBLAS workers spin for a while after a
product, and torch's OpenMP threads after a parallel region, and on a 2-core machine that spinning
would slow whichever side ran next. The medians are compared.

Peak memory: each side runs alone in a subprocess (this script with --memory SIDE) and reports the
growth of its peak resident set (VmHWM) over the baseline after building the model and the batch,
across 3 steps: activations and caches, gradients, Adam moments and temporaries, measured the same
way for both (torch's CPU allocator is invisible to tracemalloc). The NumPy side also reports the
tracemalloc peak of one step (bytes of live numpy arrays above the pre-step level).

--malloc-tune raises glibc's mmap/trim thresholds (mallopt) in both workers: freed temporaries are
then reused instead of being returned to the kernel and page-faulted in again (it made no measurable
difference here). Printed ratios: fastest steps (the least disturbed) and the median step time.
"""
import argparse
import os
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=16, help="image height = width (divisible by 4)")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--malloc-tune", action="store_true")
    p.add_argument("--gap", type=float, default=0.1, help="seconds of pause before every timed step")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help="cProfile the NumPy step and print the top entries")
    return p.parse_args()


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sidebyside import pin_threads, run_interleaved, serve, start_workers  # noqa: E402

ARGS = parse_args()
pin_threads(ARGS.threads)  # before numpy (and its BLAS) is loaded

import statistics  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402

from reference import schedules  # noqa: E402
from reference.unet import UNet  # noqa: E402

LR, BETAS, EPS, WD = 2e-4, (0.9, 0.999), 1e-8, 0.0
MODEL = dict(channel_mults=(1, 2, 2), num_res_blocks=1, attention=(False, False, True), groups=8)


def malloc_tune():
    """glibc only: keep freed blocks in the heap (no munmap / trim) so big temporaries are reused."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))


class InScriptAdamW:
    """Fallback when reference/optim.py is absent: torch.optim.AdamW's update in NumPy."""

    def __init__(self, params, lr, betas, eps, weight_decay):
        self.params, self.lr, (self.b1, self.b2), self.eps, self.wd = params, lr, betas, eps, weight_decay
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.t = 0

    def step(self, grads):
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, np.sqrt(1 - self.b2 ** self.t)
        for k, p in self.params.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            p *= 1 - self.lr * self.wd
            m += (1 - self.b1) * (g - m)
            v *= self.b2
            v += (1 - self.b2) * g * g
            p -= (self.lr / c1) * m / (np.sqrt(v) / c2 + self.eps)


def make_numpy_adamw(params):
    try:
        from reference.optim import AdamW
    except ImportError:
        return InScriptAdamW(params, LR, BETAS, EPS, WD), "in-script AdamW"
    return AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD), "reference.optim.AdamW"


def make_batch():
    rng = np.random.default_rng(0)
    shape = (ARGS.batch, ARGS.channels, ARGS.size, ARGS.size)
    sched = schedules.Schedule(schedules.make_betas("linear", 1000))
    x0 = rng.uniform(-1, 1, shape).astype(np.float32)
    eps = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, 1000, ARGS.batch)
    sa = sched.sqrt_alpha_bar[t].astype(np.float32).reshape(-1, 1, 1, 1)
    s1 = sched.sqrt_one_minus_alpha_bar[t].astype(np.float32).reshape(-1, 1, 1, 1)
    return x0, eps, t, sa, s1


def numpy_side():
    model = UNet(in_channels=ARGS.channels, base_channels=ARGS.base_channels, **MODEL, seed=0)
    x0, eps, t, sa, s1 = make_batch()
    return model, (x0, eps, t, sa, s1)


def numpy_step(model, opt, batch):
    x0, eps, t, sa, s1 = batch
    # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    xt = sa * x0 + s1 * eps
    out, cache = model.forward(xt, t)
    # (L4)  loss = mean (eps_theta - eps)^2;  dloss/dout = 2 (out - eps) / numel
    dout = (out - eps) * np.float32(2.0 / out.size)
    _, grads = model.backward(dout, cache, input_grad=False)  # as torch: x_t needs no gradient
    opt.step(grads)


def torch_side(params):
    import torch
    from torch_port.unet import UNet as TorchUNet
    torch.set_num_threads(ARGS.threads)
    model = TorchUNet(in_channels=ARGS.channels, base_channels=ARGS.base_channels, **MODEL, seed=0)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()})
    x0, eps, t, sa, s1 = (torch.from_numpy(a) for a in make_batch())
    return model, (x0, eps, t, sa, s1)


def make_torch_adamw(model):
    import torch
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)


def torch_step(model, opt, batch):
    x0, eps, t, sa, s1 = batch
    xt = sa * x0 + s1 * eps
    loss = ((model(xt, t) - eps) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def rss_now_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak_bytes():
    """VmHWM, the peak RSS of this process image. (ru_maxrss would not do: Linux carries it across
    exec, so a child forked from the big timing process would report the parent's size.)"""
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def memory_child(side):
    """Peak RSS growth over the model+batch baseline across 3 steps (and numpy's tracemalloc peak)."""
    import tracemalloc
    if hasattr(np._core.multiarray, "_set_madvise_hugepage"):
        # numpy backs arrays >= 4 MiB with transparent huge pages: a partly used 2 MiB page would
        # count in full in the RSS. Off here, so that both sides' RSS counts the pages they touch.
        np._core.multiarray._set_madvise_hugepage(False)
    if side == "numpy":
        model, batch = numpy_side()
        base = rss_now_bytes()
        opt = make_numpy_adamw(model.params)[0]
        numpy_step(model, opt, batch)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        numpy_step(model, opt, batch)
        traced = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
        numpy_step(model, opt, batch)
    else:
        model, batch = torch_side(numpy_side()[0].params)
        base = rss_now_bytes()
        opt = make_torch_adamw(model)
        for _ in range(3):
            torch_step(model, opt, batch)
        traced = -1
    peak = rss_peak_bytes()
    print(f"MEMORY {peak - base} {traced}")


def measure_memory(side):
    cmd = [sys.executable, os.path.abspath(__file__), "--memory", side, "--batch", str(ARGS.batch),
           "--size", str(ARGS.size), "--channels", str(ARGS.channels), "--base-channels", str(ARGS.base_channels),
           "--threads", str(ARGS.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("MEMORY")][-1]
    rss, traced = (int(v) for v in line.split()[1:])
    return rss, traced


def worker(side):
    """One side in its own process: build, warm up, then time one step per "step" line on stdin."""
    if ARGS.malloc_tune:
        malloc_tune()
    if side == "numpy":
        model, batch = numpy_side()
        opt, name = make_numpy_adamw(model.params)
        run = lambda: numpy_step(model, opt, batch)  # noqa: E731
        desc = f"numpy {np.__version__} + {name}"
        n_params = model.num_params()
    else:
        import torch
        model, batch = torch_side(numpy_side()[0].params)
        opt = make_torch_adamw(model)
        run = lambda: torch_step(model, opt, batch)  # noqa: E731
        desc = f"torch {torch.__version__} + torch.optim.AdamW"
        n_params = sum(p.numel() for p in model.parameters())
    for _ in range(ARGS.warmup):
        run()
    serve(run, n_params, desc)


def main():
    if ARGS.memory:
        return memory_child(ARGS.memory)
    if ARGS.worker:
        return worker(ARGS.worker)
    procs, n_params, desc = start_workers(__file__, ("numpy", "torch"), sys.argv[1:])
    print(f"UNet base_channels={ARGS.base_channels} {MODEL}, {n_params:,} parameters")
    print(f"batch {ARGS.batch} x {ARGS.channels}x{ARGS.size}x{ARGS.size} float32, {ARGS.threads} thread(s), "
          f"{desc['numpy']}, {desc['torch']}, each in its own process; "
          f"malloc tuned: {ARGS.malloc_tune}, {ARGS.gap:g} s pause before each step")
    times, cpu = run_interleaved(procs, ARGS.reps, ARGS.gap)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in ("numpy", "torch"):
        print(f"{k:6s} step: median {med[k] * 1e3:8.1f} ms   min {min(times[k]) * 1e3:8.1f} ms   "
              f"CPU time median {statistics.median(cpu[k]) * 1e3:8.1f} ms   ({ARGS.reps} interleaved reps)")
    if not ARGS.no_memory:
        for side in ("numpy", "torch"):
            rss, traced = measure_memory(side)
            extra = f", tracemalloc peak of one step {traced / 2**20:.1f} MiB" if traced >= 0 else ""
            print(f"{side:6s} peak RSS growth over model+batch, 3 steps: {rss / 2**20:.1f} MiB{extra}")
    if ARGS.profile:
        import cProfile
        import pstats
        model, batch = numpy_side()
        opt = make_numpy_adamw(model.params)[0]
        prof = cProfile.Profile()
        prof.runcall(lambda: [numpy_step(model, opt, batch) for _ in range(3)])
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    print(f"ratio numpy/torch of the fastest steps: {min(times['numpy']) / min(times['torch']):.2f}")
    print(f"ratio numpy/torch (median step time): {med['numpy'] / med['torch']:.2f}")


if __name__ == "__main__":
    main()
