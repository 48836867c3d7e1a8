"""--lr-schedule (O4 after the warmup): the learning rate each update of a run receives on both sides, the 2-D
recipe's cosine decay, and a run shorter than its warmup."""
import math

import numpy as np
import pytest

from lab.backend import Backend
from lab.config import make_config, recipe_for


def _lrs_of_a_run(backend, monkeypatch, **over):
    """The lr passed to train_step at each of the run's updates (the step itself is skipped)."""
    B = Backend(backend)
    seen = []
    monkeypatch.setattr(B.train, "train_step", lambda *a, **k: seen.append(a[8]) or (0.0, 0.0))
    over = {"steps": 10, "warmup": 2, **over}
    cfg = make_config("moons", model=dict(hidden=8, num_layers=1), **over).validate()
    trainer = B.train.Trainer(cfg, (2,), **({"device": "cpu"} if backend == "torch" else {}))
    x0 = np.zeros((4, 2), np.float32)
    for step in range(cfg.steps):
        trainer.step(B.from_numpy(x0) if backend == "torch" else x0, step)
    return np.array(seen, dtype=np.float64)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_cosine_decays_from_the_peak_after_the_warmup_to_near_zero_at_the_last_step(backend, monkeypatch):
    lr = 1e-3
    got = _lrs_of_a_run(backend, monkeypatch, lr=lr, lr_schedule="cosine")
    # warmup: lr (s + 1) / 2 at s = 0, 1; then half a cosine period over the 8 remaining updates, p = (s - 2) / 8
    want = [lr / 2, lr] + [lr * math.cos(math.pi * k / 16) ** 2 for k in range(8)]   # (1 + cos 2a) / 2 = cos^2 a
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[-1] < 0.04 * lr and np.all(np.diff(got[2:]) < 0)
    const = _lrs_of_a_run(backend, monkeypatch, lr=lr, lr_schedule="constant")
    np.testing.assert_allclose(const, [lr / 2] + [lr] * 9, rtol=1e-12)


def test_recipes_decay_for_2d_points_and_keep_images_constant():
    assert recipe_for("moons")["lr_schedule"] == "cosine" and make_config("checkerboard").lr_schedule == "cosine"
    assert make_config("digits").lr_schedule == "constant" and make_config("cifar10").lr_schedule == "constant"


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_a_cosine_run_that_ends_within_its_warmup_keeps_the_warmup_rates(backend, monkeypatch):
    """train --data moons --steps 3 (the 2-D recipe: cosine, warmup 200) trains, with the warmup's rates."""
    got = _lrs_of_a_run(backend, monkeypatch, lr=1e-3, lr_schedule="cosine", warmup=20)
    np.testing.assert_allclose(got, [1e-3 * (s + 1) / 20 for s in range(10)], rtol=1e-12)
