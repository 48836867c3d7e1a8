"""The side-by-side CPU benchmarks run end to end on a tiny problem and print their ratio line.

They are not timed here (timings belong to the benchmarks themselves): this only guards the
worker protocol (benchmarks/_sidebyside.py: each side in its own process, READY / step / TIME lines)
and the parameter-count agreement check, which a refactor could break without any other test noticing.
Each run starts two worker processes that import torch (a few seconds).
"""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _run(script, *args):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_bench_cpu_port_vs_reference_runs_both_workers_and_prints_the_ratio():
    out = _run("bench_cpu_port_vs_reference.py", "--model", "mlp", "--batch", "32", "--reps", "2", "--warmup", "1",
               "--gap", "0")
    assert re.search(r"^model: mlp .*, [\d,]+ parameters$", out, re.M), out
    assert re.search(r"^ratio reference/port \(median step time\): \d+\.\d\dx$", out, re.M), out


def test_bench_unet_cpu_runs_both_workers_and_prints_the_ratio():
    out = _run("bench_unet_cpu.py", "--size", "8", "--batch", "2", "--base-channels", "8", "--threads", "1",
               "--reps", "2", "--warmup", "1", "--gap", "0", "--no-memory")
    assert re.search(r"^numpy  step: median +\d", out, re.M) and re.search(r"^torch  step: median +\d", out, re.M), out
    assert re.search(r"^ratio numpy/torch \(median step time\): \d+\.\d\d$", out, re.M), out
