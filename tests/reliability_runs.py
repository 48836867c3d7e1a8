"""Helpers shared by the reliability tests: real `train` processes, checkpoint and log comparisons.

Not a test module (no test_ prefix). Every process runs with one BLAS/OpenMP thread so that two
processes do the same floating-point operations in the same order: bit-for-bit comparisons hold.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lab import checkpoint

MODULES = {"reference": "reference", "torch": "torch_port"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 120   # seconds for one training process (a hang must fail the test, not the suite)


def train_argv(backend, out, steps, save_every, *extra):
    """`python -m <backend> train` on moons with a tiny MLP: fast, and still every part of a real run."""
    argv = [sys.executable, "-m", MODULES[backend], "train", "--data", "moons", "--out", str(out),
            "--steps", str(steps), "--save-every", str(save_every), "--log-every", "10",
            "--sample-every", "0", "--sample-steps", "5", "--quiet", "--hidden", "32", "--num-layers", "2",
            "--batch-size", "32", *map(str, extra)]
    return argv + (["--device", "cpu"] if backend == "torch" else [])


def start(argv, nice=5):
    """Start a process at lower priority than the test, so the test's polling reacts in time."""
    return subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.nice(nice))


def finish(proc, timeout=TIMEOUT):
    """Wait for ``proc``; return (returncode, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"process did not finish in {timeout} s: {proc.args}\n{err}") from None
    return proc.returncode, out, err


def run(argv, timeout=TIMEOUT):
    return finish(start(argv, nice=0), timeout)


def ckpt_step(path):
    """The step of the checkpoint at ``path``, or None while there is none."""
    try:
        return checkpoint.load(path).step
    except Exception:   # not there yet (a partial file is never visible: the write is atomic)
        return None


def signal_after_checkpoint(proc, ckpt_path, min_step, sig, timeout=TIMEOUT):
    """Send ``sig`` to ``proc`` as soon as its checkpoint holds a step > ``min_step``; return that step.

    Fails if the process ends first (the run was too short to catch).
    """
    deadline, last_ino = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before a checkpoint beyond step "
                                 f"{min_step} was seen:\n{proc.stderr.read()}")
        try:
            ino = os.stat(ckpt_path).st_ino          # a new checkpoint is a new file (os.replace)
        except FileNotFoundError:
            ino = None
        if ino is not None and ino != last_ino:
            last_ino, step = ino, ckpt_step(ckpt_path)
            if step is not None and step > min_step:
                proc.send_signal(sig)
                return step
        time.sleep(0.002)
    proc.kill()
    raise AssertionError(f"no checkpoint beyond step {min_step} within {timeout} s")


def assert_same_checkpoint(path_a, path_b):
    """Params, EMA, optimiser state, RNG state, step and config of two checkpoints are equal bit for bit."""
    a, b = checkpoint.load(path_a), checkpoint.load(path_b)
    assert a.step == b.step, (a.step, b.step)
    assert a.config == b.config
    for group in ("params", "ema", "opt_state"):
        ga, gb = getattr(a, group), getattr(b, group)
        assert set(ga) == set(gb), group
        for k in ga:
            assert ga[k].dtype == gb[k].dtype and ga[k].shape == gb[k].shape, (group, k)
            assert ga[k].tobytes() == gb[k].tobytes(), f"{group}/{k} differs"
    assert _plain(a.rng_state) == _plain(b.rng_state), "RNG state differs"


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def read_log(run_dir):
    """log.jsonl as a list of dicts (every line must be complete JSON)."""
    return [json.loads(ln) for ln in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def temp_files(run_dir):
    return sorted(p.name for p in Path(run_dir).iterdir() if p.name.endswith(".tmp"))


SIGKILL, SIGINT, SIGTERM = signal.SIGKILL, signal.SIGINT, signal.SIGTERM
