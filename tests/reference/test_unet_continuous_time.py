"""The networks' float time input (continuous_time=True, for the continuous objectives edm and flow), reference side.

The flag changes only what the sinusoidal embedding (B6) accepts: any finite real instead of a 0-based integer
index. Routes: the float path at integral t gives exactly the integer path's output (the same parameters, so the
flag adds none); its backward against directional finite differences in float64 at non-integral, negative and
large time inputs (EDM's 250 ln sigma spans about -1550..1100); the time input changes the output.
"""
import numpy as np
import pytest
from gradcheck import directional_derivative, rel_error
from tolerances import TOL

from reference.errors import InputError
from reference.unet import MLP, UNet

SMALL_UNET = dict(in_channels=2, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4)
NETS = {"unet": (UNet, SMALL_UNET, (2, 2, 8, 8)), "mlp": (MLP, dict(hidden=16, num_layers=2, time_dim=8), (4, 2))}
TIMES = {"unet": np.array([-1553.7, 812.25]), "mlp": np.array([-1553.7, -0.3, 41.5, 1095.1])}


def _random(model, rng):
    model.load_params({k: rng.uniform(-0.5, 0.5, v.shape) + (1.0 if k.endswith("norm1.weight") else 0.0)
                       for k, v in model.params.items()})
    return model


@pytest.mark.parametrize("net", sorted(NETS))
def test_B6_float_time_at_integral_values_is_the_integer_path_with_the_same_parameters(net, rng):
    cls, kw, shape = NETS[net]
    discrete = _random(cls(**kw, dtype=np.float64), rng)
    continuous = cls(**kw, continuous_time=True, dtype=np.float64)
    assert continuous.params.keys() == discrete.params.keys()          # not a parameter
    continuous.load_params(discrete.params)
    x, t = rng.standard_normal(shape), np.arange(shape[0]) * 97
    assert np.array_equal(continuous.forward(x, t.astype(np.float64))[0], discrete.forward(x, t)[0])
    moved = continuous.forward(x, t + 0.5)[0]
    assert not np.allclose(moved, discrete.forward(x, t)[0])            # the time input is read


@pytest.mark.parametrize("net", sorted(NETS))
def test_B1_to_B9_float_time_gradients_match_directional_finite_differences(net, rng):
    cls, kw, shape = NETS[net]
    model = _random(cls(**kw, continuous_time=True, dtype=np.float64, seed=2), rng)
    x, t = rng.standard_normal(shape), TIMES[net][: shape[0]]
    out, cache = model.forward(x, t)
    R = rng.standard_normal(out.shape)
    dx, grads = model.backward(R, cache)
    f = lambda: float(np.sum(model.forward(x, t)[0] * R))  # noqa: E731
    worst = {}
    for name, arr, g in [("x", x, dx)] + [(k, model.params[k], grads[k]) for k in model.params]:
        d = rng.standard_normal(arr.shape)
        worst[name] = rel_error(directional_derivative(f, [arr], [d]), np.sum(g * d))
    name = max(worst, key=worst.get)
    assert worst[name] <= TOL["fd64_dir"], f"worst gradient: {name} ({worst[name]:.2e})"


@pytest.mark.parametrize("net", sorted(NETS))
def test_the_integer_check_stays_by_default_and_the_float_path_refuses_what_is_not_a_finite_real(net, rng):
    cls, kw, shape = NETS[net]
    x = rng.standard_normal(shape).astype(np.float32)
    n = shape[0]
    with pytest.raises(InputError, match="integer time index"):
        cls(**kw).forward(x, np.full(n, 0.5))
    model = cls(**kw, continuous_time=True)
    for t, words in [(np.full(n, np.nan), "non-finite"), (np.full(n, True), "real noise-level input"),
                     (np.zeros(n + 1), r"shape \(%d,\)" % n), (np.full(n, "a"), "real noise-level input")]:
        with pytest.raises(InputError, match=words):
            model.forward(x, t)
    assert model.forward(x, -3.25)[0].shape == x.shape                  # a number: every example's
