"""reference/guidance.py's contract beyond the derivations (tests/derivations/test_guidance.py): learned-variance
channels, label shapes, the refusals, and a guided learned-variance chain (W2, V1)."""
import warnings

import numpy as np
import pytest
from tolerances import TOL

from reference import guidance, samplers
from reference.errors import InputError
from reference.schedules import PriorMismatchWarning, Schedule, make_betas
from reference.unet import MLP


def test_W2_only_the_mean_channels_are_combined_and_the_variance_channels_are_the_conditional_passs(rng):
    cond, uncond = rng.standard_normal((3, 4, 2, 2)), rng.standard_normal((3, 4, 2, 2))
    out = guidance.combine(cond, uncond, 3.0, channels=2)
    assert np.abs(out[:, :2] - (uncond[:, :2] + 3.0 * (cond[:, :2] - uncond[:, :2]))).max() <= TOL["exact64"]
    assert np.array_equal(out[:, 2:], cond[:, 2:])
    assert np.abs(guidance.combine(cond, uncond, 3.0) - (3 * cond - 2 * uncond)).max() <= TOL["exact64"]


def test_W2_a_guided_learned_variance_chain_runs_on_the_conditional_variance(rng):
    """A 2C-output conditional network (V1) sampled by DDPM with variance "learned": the guided wrapper mixes the
    C mean channels and keeps the conditional pass's C variance channels."""
    net = MLP(hidden=16, num_layers=1, time_dim=8, out_dim=4, num_classes=2, dtype=np.float64)
    net.load_params({k: rng.uniform(-0.3, 0.3, v.shape) for k, v in net.params.items()})
    model = lambda x, t, y: net.forward(x, t, y)[0]  # noqa: E731
    sched, x_T = Schedule(make_betas("cosine", 100)), rng.standard_normal((6, 2))
    den = guidance.guided(model, np.array([0, 1, 0, 1, 0, 1]), 2.0, 2, channels=2)
    out = den(x_T, np.full(6, 50))
    assert np.array_equal(out[:, 2:], model(x_T, np.full(6, 50), np.array([0, 1, 0, 1, 0, 1]))[:, 2:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PriorMismatchWarning)
        x = samplers.sample_loop(sched, den, x_T, rng, "ddpm", steps=10, variance="learned").x
    assert x.shape == (6, 2) and np.all(np.isfinite(x))


def test_classes_are_an_int_or_one_per_example_and_the_scale_a_number(rng):
    model = lambda x, t, y: np.broadcast_to(y[:, None].astype(float), x.shape)  # noqa: E731  out = the label
    x, t = rng.standard_normal((4, 2)), np.zeros(4, int)
    assert np.array_equal(guidance.guided(model, 2, np.float32(1.0), 3)(x, t)[:, 0], [2, 2, 2, 2])
    assert np.array_equal(guidance.guided(model, np.array([0, 1, 2, 0]), 1, 3)(x, t)[:, 0], [0, 1, 2, 0])
    assert np.array_equal(guidance.guided(model, 1, 0, 3)(x, t)[:, 0], [3, 3, 3, 3])   # s = 0: the null class
    with pytest.raises(InputError, match="shape \\(4,\\)"):
        guidance.guided(model, np.array([0, 1]), 2.0, 3)(x, t)
    for bad, match in [(3, "class 3 is out of range: the model has 3 classes, 0..2$"), (np.array([[0]]), "shape"),
                       ("1", "int")]:
        with pytest.raises(InputError, match=match):
            guidance.guided(model, bad, 2.0, 3)
    for s in (-1, float("inf"), None, "2", True):
        with pytest.raises(InputError, match="guidance scale must be a finite number >= 0"):
            guidance.guided(model, 0, s, 3)
    with pytest.raises(InputError, match="need a class-conditional model"):
        guidance.guided(model, 0, 2.0, None)
