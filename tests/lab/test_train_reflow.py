"""`train --objective flow --reflow --teacher CKPT` (rectified flow's second round, D11): the teacher draws the pairs
(z, x0 = ODE(z)) once, flow matching trains on that fixed coupling, the checkpoint records the teacher, and the
errors name the flag.

Routes: the pairs' z is the noise the teacher's ODE started from, read off the network's first input (the solvers
start at x~ = z sqrt(1 + sigma_max^2), so that input is z times one constant); every batch the Trainer gets holds
whole pairs (an x0 row with its own z); the recorded hash is hashlib's of the file.
"""
import dataclasses
import hashlib

import numpy as np
import pytest

from lab import checkpoint, cli
from lab import sampling as S
from lab.backend import Backend
from lab.config import make_config
from lab.reflow import teacher_pairs
from lab.runner import train
from reference.errors import InputError

TINY = dict(model=dict(hidden=16, num_layers=1), batch_size=16, save_every=0, sample_every=0, log_every=2,
            final_samples=False)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    return train(make_config("moons", objective="flow", steps=10, **TINY), out, progress=False)["ckpt"]


def _reflow(teacher, **over):
    return make_config("moons", objective="flow", reflow=True, teacher=str(teacher), reflow_pairs=24,
                       teacher_steps=3, steps=4, **{**TINY, **over})


def test_D11_the_pairs_are_the_teachers_ode_from_the_noise_it_started_at(teacher, monkeypatch):
    B, firsts = Backend("reference"), []
    real_load = S.load_trainer

    def load(*a, **kw):
        trainer, ck = real_load(*a, **kw)
        den = trainer.denoiser
        trainer.denoiser = lambda *a2, **k2: (lambda net: (lambda x, t, y=None: firsts.append(np.array(x)) or
                                                            net(x, t, y)))(den(*a2, **k2))
        return trainer, ck

    monkeypatch.setattr(S, "load_trainer", load)
    cfg = _reflow(teacher)
    x0, z, record = teacher_pairs(B, cfg, np.zeros((100, 2), np.float32), progress=False)
    assert x0.shape == z.shape == (24, 2) and record["pairs"] == 24
    ratio = firsts[0] / z                                  # the ODE's first network input, row by row
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    assert np.array_equal(x0, S.draw(B, real_load(B, teacher)[0], 24, seed=cfg.seed, sampler=record["sampler"],
                                     steps=3, warn=False))
    assert abs(float(z.std()) - 1.0) < 0.3 and not np.allclose(x0, z)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_reflow_trains_on_whole_pairs_and_the_checkpoint_records_the_teacher(teacher, backend, tmp_path,
                                                                            monkeypatch):
    B, kw = Backend(backend), ({"device": "cpu"} if backend == "torch" else {})
    x0, z, _ = teacher_pairs(B, _reflow(teacher), np.zeros((100, 2), np.float32), progress=False, **kw)
    partner = {row.tobytes(): x for row, x in zip(z.astype(np.float32), x0.astype(np.float32))}
    seen, real_step = [], B.train.Trainer.step
    monkeypatch.setattr(B.train.Trainer, "step", lambda self, x, step, y=None, z=None:
                        seen.append((B.to_numpy(x), B.to_numpy(z))) or real_step(self, x, step, y=y, z=z))
    res = train(_reflow(teacher), tmp_path, backend=backend, progress=False, **kw)
    assert len(seen) == 4
    for xb, zb in seen:
        assert all(np.array_equal(partner[zr.astype(np.float32).tobytes()], xr) for xr, zr in zip(xb, zb))
    ck = checkpoint.load(res["ckpt"])
    want = hashlib.sha256(open(teacher, "rb").read()).hexdigest()
    assert ck.extra["teacher"]["sha256"] == want and ck.extra["teacher"]["path"] == str(teacher)
    assert ck.extra["teacher"]["pairs"] == 24 and ck.config["reflow"] and ck.extra["process"] == "flow"


def test_the_pairs_count_defaults_to_the_dataset_s_size(teacher, tmp_path):
    cfg = dataclasses.replace(_reflow(teacher), reflow_pairs=None, n_data=40)
    res = train(cfg, tmp_path, progress=False)
    assert checkpoint.load(res["ckpt"]).extra["teacher"]["pairs"] == 40


def test_a_teacher_of_another_data_shape_a_missing_teacher_and_a_changed_one_are_refused(teacher, tmp_path,
                                                                                       capsys):
    digits = train(make_config("digits", steps=1, save_every=0, sample_every=0, final_samples=False,
                               model=dict(base_channels=8, channel_mults=(1,), attention=(False,), groups=4)),
                   tmp_path / "digits", progress=False)["ckpt"]
    with pytest.raises(InputError, match=r"--teacher .* items of shape \(1, 8, 8\).*'moons' has items of shape \(2,\)"):
        train(_reflow(digits), tmp_path / "r1", progress=False)
    with pytest.raises(InputError, match="--teacher .*no-such.npz: no such checkpoint file"):
        train(_reflow(tmp_path / "no-such.npz"), tmp_path / "r2", progress=False)
    assert cli.main(["train", "--data", "moons", "--out", str(tmp_path / "r3"), "--objective", "flow",
                     "--reflow"]) == 2
    assert "--reflow trains on the pairs a teacher draws: add --teacher" in capsys.readouterr().err
    # a resumed reflow run whose teacher file changed since
    mine = tmp_path / "teacher.npz"
    mine.write_bytes(open(teacher, "rb").read())
    cfg = _reflow(mine)
    train(dataclasses.replace(cfg, steps=2), tmp_path / "r4", progress=False)
    train(make_config("moons", objective="flow", steps=3, seed=5, **TINY), tmp_path / "other", progress=False)
    mine.write_bytes((tmp_path / "other" / "ckpt.npz").read_bytes())
    with pytest.raises(InputError, match="--resume: the teacher .* is not the file this run's pairs were drawn from"):
        train(cfg, tmp_path / "r4", resume=True, progress=False)
