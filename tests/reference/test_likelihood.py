"""reference/likelihood.py as an API: what ode_nll reports, its progress hook, and every refusal (InputError
naming the argument). The math is tested against independent routes in tests/derivations/test_likelihood.py."""
import math

import numpy as np
import pytest

from reference import likelihood as L
from reference.errors import InputError
from reference.oracle import GaussianMixtureOracle
from reference.schedules import Schedule, make_betas, rescale_zero_terminal_snr
from reference.unet import MLP

W, MEANS, VAR = [0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], [[0.1, 0.2], [0.2, 0.1]]


@pytest.fixture(scope="module")
def setup():
    sched = Schedule(make_betas("linear", 100 * 10))
    mix = GaussianMixtureOracle(W, MEANS, var=VAR)
    return sched, mix, L.mixture_field(mix)


def test_ode_nll_reports_nats_bits_the_latent_and_the_solver_bookkeeping(setup, rng):
    _, mix, field = setup
    x, _ = mix.sample(rng, 5)
    seen = []

    def progress(it):
        for rho in it:
            seen.append(rho)
            yield rho

    r = L.ode_nll(field, x, 0.01, 100.0, progress=progress)
    assert r.nats.shape == r.bpd.shape == r.prior_nats.shape == (5,) and r.x_T.shape == x.shape
    np.testing.assert_allclose(r.bpd, r.nats / (2 * math.log(2)), rtol=1e-14)
    np.testing.assert_allclose(r.prior_nats, 0.5 * np.sum(r.x_T**2, axis=1) + math.log(2 * math.pi), rtol=1e-14)
    assert (r.divergence, r.n_probes, r.rtol, r.atol, r.sigma_min, r.sigma_max) == ("exact", 2, 1e-5, 1e-5, 0.01, 100.0)
    assert len(seen) == r.steps and seen[-1] == pytest.approx(math.log(100.0)) and seen == sorted(seen)
    assert (r.nfe - 2) % 6 == 0 and (r.nfe - 2) // 6 >= r.steps


def test_levels_dequantise_with_the_given_noise_and_add_the_offset(setup, rng):
    _, _, field = setup
    x = 2 * rng.integers(0, 17, size=(4, 2)) / 16 - 1
    u = rng.uniform(size=x.shape)
    r = L.ode_nll(field, x, 0.01, 100.0, levels=17, dequant_noise=u)
    c = L.ode_nll(field, L.dequantize(x, 17, u), 0.01, 100.0)
    np.testing.assert_allclose(r.nats, c.nats, rtol=1e-13)
    np.testing.assert_allclose(r.bpd, c.bpd + 3.0, rtol=1e-13)             # log2((17 - 1) / 2) = 3
    assert L.bpd_offset(256) == pytest.approx(math.log2(127.5)) and L.bpd_offset(3) == 0.0 and L.bpd_offset(2) == -1.0


def test_the_generator_draws_the_probes_then_the_dequantisation_noise(setup):
    _, _, field = setup
    x = np.zeros((3, 2))
    a = L.ode_nll(field, x, 0.01, 100.0, divergence="hutchinson", levels=3, rng=np.random.default_rng(7))
    g = np.random.default_rng(7)
    probes = g.integers(0, 2, size=(1, 3, 2)).astype(np.float64) * 2 - 1
    b = L.ode_nll(field, x, 0.01, 100.0, divergence="hutchinson", levels=3, probes=probes,
                  dequant_noise=g.uniform(0, 1, size=(3, 2)))
    np.testing.assert_array_equal(a.nats, b.nats)


def test_learned_variance_networks_give_the_ode_their_mean_channels(setup, rng):
    sched = setup[0]
    net = MLP(hidden=16, num_layers=1, time_dim=8, out_dim=4, dtype=np.float64, seed=2)
    net.load_params({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in net.params.items()})
    half = MLP(hidden=16, num_layers=1, time_dim=8, dtype=np.float64, seed=2)
    half.load_params({k: (v[:2] if k.startswith("out_proj") else v) for k, v in net.params.items()})
    x, probes = rng.standard_normal((3, 2)), rng.standard_normal((2, 3, 2))
    for sigma in (0.02, 1.3):
        got = L.network_field(sched, net, "eps", variance="learned")(x, sigma, probes)
        want = L.network_field(sched, half, "eps")(x, sigma, probes)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-13)


def test_trainer_model_carries_the_ema_weights():
    from lab.config import TrainConfig
    from reference.train import Trainer
    tr = Trainer(TrainConfig(data="moons", T=50, model={"hidden": 16, "num_layers": 1}), (2,))
    tr.ema.params = {k: v + 1.0 for k, v in tr.ema.params.items()}
    model = L.trainer_model(tr)
    assert all(np.allclose(model.params[k], tr.ema.params[k]) for k in model.params)
    assert all(np.allclose(L.trainer_model(tr, use_ema=False).params[k], tr.model.params[k]) for k in model.params)


# ---- refusals -----------------------------------------------------------------------------------

def _refused(match, fn, *a, **kw):
    with pytest.raises(InputError, match=match):
        fn(*a, **kw)


def test_bad_tolerances_sigmas_and_divergences_are_refused(setup):
    _, _, field = setup
    x = np.zeros((2, 2))
    for rtol in (0.0, -1e-5, 1e-20, float("nan")):
        _refused("rtol", L.ode_nll, field, x, 0.01, 100.0, rtol=rtol)
    for atol in (0.0, -1.0, float("inf")):
        _refused("atol", L.ode_nll, field, x, 0.01, 100.0, atol=atol)
    _refused("sigma_min", L.ode_nll, field, x, 0.0, 100.0)
    _refused("sigma_max", L.ode_nll, field, x, 1.0, 1.0)
    _refused("did you mean 'hutchinson'", L.ode_nll, field, x, 0.01, 100.0, divergence="hutchinsn")
    _refused("needs probes .* or a generator", L.ode_nll, field, x, 0.01, 100.0, divergence="hutchinson")
    _refused("probes are for divergence='hutchinson'", L.ode_nll, field, x, 0.01, 100.0, probes=np.ones((1, 2, 2)))
    _refused("probes must be finite, of shape", L.ode_nll, field, x, 0.01, 100.0, divergence="hutchinson",
             probes=np.ones((1, 3, 2)))
    _refused("n_probes", L.ode_nll, field, x, 0.01, 100.0, divergence="hutchinson", n_probes=0,
             rng=np.random.default_rng(0))
    _refused("progress must be None or a callable", L.ode_nll, field, x, 0.01, 100.0, progress=3)


def test_bad_data_is_refused(setup):
    sched, _, field = setup
    _refused("x0 must be a numeric array", L.ode_nll, field, np.array([["a", "b"]]), 0.01, 100.0)
    _refused("non-finite", L.ode_nll, field, np.array([[np.nan, 0.0]]), 0.01, 100.0)
    _refused(r"x must have shape \(N, \*\(2,\)\)", L.ode_nll, field, np.zeros((2, 3)), 0.01, 100.0)
    net = MLP(hidden=16, num_layers=1, time_dim=8)
    _refused(r"MLP expects x of shape \(N, 2\)", L.model_nll, sched, net, np.zeros((2, 3)))
    _refused("out of range", L.ode_nll, field, np.full((2, 2), 1.5), 0.01, 100.0, levels=17, dequant_noise=np.zeros((2, 2)))
    _refused("not on the grid of 17 levels", L.ode_nll, field, np.full((2, 2), 0.03), 0.01, 100.0, levels=17,
             dequant_noise=np.zeros((2, 2)))
    _refused("dequantised: pass dequant_noise or a generator", L.ode_nll, field, np.zeros((2, 2)), 0.01, 100.0,
             levels=17)
    _refused("dequant_noise must be uniform draws in", L.ode_nll, field, np.zeros((2, 2)), 0.01, 100.0, levels=17,
             dequant_noise=np.ones((2, 2)))
    _refused("levels", L.ode_nll, field, np.zeros((2, 2)), 0.01, 100.0, levels=1, dequant_noise=np.zeros((2, 2)))


def test_a_network_is_asked_only_for_its_trained_range(setup):
    sched = setup[0]
    net = MLP(hidden=16, num_layers=1, time_dim=8)
    lo, hi = L.sigma_range(sched)
    _refused("outside the trained levels", L.ode_nll, L.network_field(sched, net), np.zeros((2, 2)), lo / 2, hi)
    _refused("outside the trained levels", L.ode_nll, L.network_field(sched, net), np.zeros((2, 2)), lo, hi * 2)
    zsnr = Schedule(rescale_zero_terminal_snr(make_betas("linear", 100)))
    _refused("zero terminal SNR", L.network_field, zsnr, net)
    _refused("zero terminal SNR", L.model_nll, zsnr, net, np.zeros((2, 2)))
    _refused("unknown prediction", L.network_field, sched, net, "epsilon")
    _refused("unknown variance", L.network_field, sched, net, "eps", "learnt")
