"""Every run can be repeated: the same seed gives the same checkpoint (bit for bit) and the same
samples, on the reference and on the torch port (CPU); another seed gives other weights and samples.

The runs set the global RNGs (random, numpy, torch) to different values first: a result that
depended on global random state would differ. Seeds flow only through TrainConfig.seed and --seed.
"""
import json
import random

import numpy as np
import pytest

from lab import cli, runner
from lab.config import make_config
from reliability_runs import assert_same_checkpoint

torch = pytest.importorskip("torch")

SMALL = dict(steps=40, save_every=20, log_every=10, sample_every=0, sample_steps=3, batch_size=32, T=50,
             model=dict(hidden=16, num_layers=1))


def _train(backend, out, seed, global_seed):
    random.seed(global_seed)
    np.random.seed(global_seed)
    torch.manual_seed(global_seed)
    cfg = make_config("moons", seed=seed, **SMALL)
    runner.train(cfg, out, backend=backend, progress=False, **({"device": "cpu"} if backend == "torch" else {}))
    return out / "ckpt.npz"


def _sample(backend, ckpt, out, seed, sampler="ddpm"):
    argv = ["sample", "--ckpt", str(ckpt), "--n", "300", "--out", str(out), "--sampler", sampler, "--seed", str(seed)]
    assert cli.main(argv + (["--device", "cpu"] if backend == "torch" else []), backend=backend) == 0
    return np.load(out)


def _log(run_dir):
    return [{k: v for k, v in json.loads(ln).items() if k != "items_per_s"}
            for ln in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_same_seed_same_checkpoint_log_and_samples_other_seed_other_results(tmp_path, backend, capsys):
    a = _train(backend, tmp_path / "a", seed=3, global_seed=1)
    b = _train(backend, tmp_path / "b", seed=3, global_seed=2)
    c = _train(backend, tmp_path / "c", seed=4, global_seed=1)
    assert_same_checkpoint(a, b)
    assert _log(a.parent) == _log(b.parent)
    assert (a.parent / "samples_final.png").read_bytes() == (b.parent / "samples_final.png").read_bytes()

    sa = _sample(backend, a, tmp_path / "sa.npy", seed=7)
    sb = _sample(backend, b, tmp_path / "sb.npy", seed=7)
    assert sa.dtype == np.float32 and sa.tobytes() == sb.tobytes()        # ancestral sampling: noise every step
    da = _sample(backend, a, tmp_path / "da.npy", seed=7, sampler="ddim")
    assert da.tobytes() == _sample(backend, b, tmp_path / "db.npy", seed=7, sampler="ddim").tobytes()

    assert not np.array_equal(_sample(backend, a, tmp_path / "s8.npy", seed=8), sa)       # another sampling seed
    assert not np.array_equal(_sample(backend, c, tmp_path / "sc.npy", seed=7), sa)       # another training seed
    from lab import checkpoint
    pa, pc = checkpoint.load(a).params, checkpoint.load(c).params
    assert all(not np.array_equal(pa[k], pc[k]) for k in pa if np.any(pa[k]))            # every non-zero init differs
    capsys.readouterr()


def test_a_sampling_run_does_not_disturb_the_training_streams(tmp_path):
    """Pictures during training (sample_every) draw from their own generator: the weights do not change."""
    train = runner.train

    base = dict(SMALL, steps=30)
    train(make_config("moons", seed=5, **{**base, "sample_every": 0}), tmp_path / "quiet", progress=False)
    train(make_config("moons", seed=5, **{**base, "sample_every": 10}), tmp_path / "pictures", progress=False)
    assert sorted(p.name for p in (tmp_path / "pictures").glob("samples_step*.png")) == [
        "samples_step000010.png", "samples_step000020.png"]
    from lab import checkpoint
    qa, qb = checkpoint.load(tmp_path / "quiet" / "ckpt.npz"), checkpoint.load(tmp_path / "pictures" / "ckpt.npz")
    assert qa.config != qb.config                                                # sample_every differs ...
    for k in qa.params:                                                          # ... the training does not
        assert qa.params[k].tobytes() == qb.params[k].tobytes()
        assert qa.ema[k].tobytes() == qb.ema[k].tobytes()
