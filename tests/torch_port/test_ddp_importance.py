"""Importance sampling under `torchrun` (I1): every rank records every rank's (t, L_t), so the history the
checkpoint keeps holds the whole global batch, not rank 0's half. Two CPU processes (gloo), one step of a
global batch of 64 on T = 20: 64 recorded losses (32 if the ranks did not all-gather), none lost to the
10-per-step cap at this size. Slow (two processes importing torch: 10-20 s).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")


@pytest.mark.slow
def test_I1_torchrun_ranks_record_the_global_batch_in_the_history(tmp_path):
    from lab import checkpoint

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "torch_port",
           "train", "--data", "moons", "--out", str(out), "--steps", "1", "--batch-size", "64", "--T", "20",
           "--variance", "learned", "--loss", "vlb", "--importance-sampling", "--no-final-samples", "--device", "cpu",
           "--quiet", "--hidden", "16", "--num-layers", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout + res.stderr
    ck = checkpoint.load(out / "ckpt.npz")
    counts, history = ck.rng_state["loss_counts"], ck.rng_state["loss_history"]
    assert counts.max() < 10 and int(counts.sum()) == 64
    assert np.all(history[np.arange(10)[None, :] < counts[:, None]] != 0)     # recorded values are the losses
