"""A checkpoint written by the previous release (commit 4930ead, before the tooling moved to lab/ and the
UNet/MLP became plans) still loads on both sides and samples what that release sampled.

tests/data/moons_v0.1.0_4930ead.npz: `python -m reference train --data moons --steps 30 --T 50 --hidden 16
--num-layers 1 --sample-every 0 --sample-steps 2 --save-every 0` run at 4930ead; the two .npy files beside
it are that release's `sample --n 4 --seed 0` output with `--sampler ddim --sample-steps 5` and with
`--sample-steps 10` (ancestral)."""
from pathlib import Path

import numpy as np
import pytest

from lab import cli
from tolerances import TOL

DATA = Path(__file__).resolve().parents[1] / "data"
CKPT = DATA / "moons_v0.1.0_4930ead.npz"
# ddpm named: it was the previous release's default sampler, which is now dpm++2m
CASES = {"ddim5": ["--sampler", "ddim", "--sample-steps", "5"], "ddpm10": ["--sampler", "ddpm", "--sample-steps", "10"]}


@pytest.mark.filterwarnings("ignore::reference.schedules.PriorMismatchWarning")  # few leading steps
@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_previous_release_checkpoint_samples_what_it_sampled(tmp_path, backend, case):
    if backend == "torch":
        pytest.importorskip("torch")
    out = tmp_path / "s.npy"
    argv = ["sample", "--ckpt", str(CKPT), "--n", "4", "--seed", "0", "--out", str(out), *CASES[case]]
    assert cli.main(argv + (["--device", "cpu"] if backend == "torch" else []), backend=backend) == 0
    want = np.load(DATA / f"moons_v0.1.0_{case}_seed0.npy")
    got = np.load(out)
    # The reference runs the release's NumPy operations in the same order, but the matrix products go to
    # whichever BLAS this NumPy build ships (and on how many threads): seen here, one float32 element of eight
    # 1 ulp (3e-8) off under another NumPy build. So: a few float32 ulps (op32), far below any change of the
    # algorithm (a changed step moves samples by 1e-2 or more). torch's float32 kernels round differently.
    tol = TOL["op32"] if backend == "reference" else TOL["net32"]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_the_previous_release_checkpoint_resumes(tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(CKPT, run / "ckpt.npz")
    argv = ["train", "--data", "moons", "--out", str(run), "--resume", "--steps", "40", "--quiet"]
    assert cli.main(argv) == 0 and (run / "ckpt.npz").stat().st_size > 0
