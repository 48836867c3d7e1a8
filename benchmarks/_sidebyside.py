"""Timing two sides of a comparison, each in its own worker process (used by the CPU benchmarks).

Why separate processes: numpy's OpenBLAS workers spin for a while after a product, and torch's
OpenMP threads after a parallel region. In one process (or with no pause between steps) that
spinning, and each library's allocator state, slow whichever side runs next; on a 2-core machine
it moved torch's median step by 30%. So each side is built and warmed up in its own process
(the calling script re-run with ``--worker SIDE``); the parent asks the workers for one step at a
time, alternating which side goes first (load from other processes then hits both alike), and
pauses ``gap`` seconds before every step.

Protocol: a worker prints ``READY <int> <text>`` once it is warm (the int is something both sides
must agree on, e.g. the parameter count), then for every ``step`` line on its stdin runs one step
and prints ``TIME <wall seconds> <process CPU seconds>``.
"""
import os
import subprocess
import sys
import time


def pin_threads(n):
    """Every BLAS/OpenMP pool to n threads. Call it before numpy (and its BLAS) is first imported: the
    pools read these variables once, when they load (this module imports neither)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def serve(run, check_value, description):
    """Worker side: announce readiness, then time one call of run() per "step" line on stdin."""
    print(f"READY {int(check_value)} {description}", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        print(f"TIME {time.perf_counter() - t0} {time.process_time() - c0}", flush=True)


def start_worker(script, side, argv):
    """Start `python script --worker side *argv` and wait for its READY line: (process, int, text)."""
    cmd = [sys.executable, os.path.abspath(script), "--worker", side] + list(argv)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        raise SystemExit(f"the {side} worker failed to start (exit {proc.wait()}); its error is above")
    _, value, desc = (line.strip().split(" ", 2) + [""])[:3]
    return proc, int(value), desc


def start_workers(script, sides, argv):
    """Start one worker per side (start_worker) and check that their READY ints agree.

    Returns ({side: process}, the agreed int, {side: description})."""
    workers = {side: start_worker(script, side, argv) for side in sides}
    values = {side: w[1] for side, w in workers.items()}
    if len(set(values.values())) != 1:
        raise SystemExit(f"the two sides built different networks: {values} parameters")
    return ({side: w[0] for side, w in workers.items()}, next(iter(values.values())),
            {side: w[2] for side, w in workers.items()})


def _timed_step(proc):
    proc.stdin.write("step\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line.startswith("TIME"):
        raise SystemExit(f"a worker died during a step (exit {proc.wait()}); its error is above")
    _, wall, cpu = line.split()
    return float(wall), float(cpu)


def run_interleaved(procs, reps, gap):
    """procs {name: process} (two of them). Returns ({name: [wall s]}, {name: [CPU s]}) over reps rounds,
    alternating which side goes first, gap seconds of pause before each step; closes the workers."""
    names = list(procs)
    walls, cpus = {k: [] for k in names}, {k: [] for k in names}
    try:
        for r in range(reps):
            for name in (names if r % 2 == 0 else names[::-1]):
                time.sleep(gap)
                wall, cpu = _timed_step(procs[name])
                walls[name].append(wall)
                cpus[name].append(cpu)
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    return walls, cpus
