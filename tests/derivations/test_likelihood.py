"""The exact likelihood of the probability-flow ODE (derivations/likelihood.md, E1-E8) against independent routes.

Routes: the oracles' closed-form densities (G2, G3) with the covariances blurred by sigma_min^2 (what the ODE's
density at sigma_min is), the exact linear flow of Gaussian data (K5), (K5)'s own drift in (x, s), central
finite differences, Monte Carlo over Hutchinson probes against the trace from basis vectors, the entropy of a
discrete distribution, and scipy's normal CDF for the mass of a bin. Tolerances: tests/tolerances.py
(ode_tight / ode_default for a solve against a closed form, blend for the label interpolation, mc_z).
"""
import math

import numpy as np
import pytest
from scipy.special import ndtr

from reference import likelihood as L
from reference import losses, score, solvers
from reference.oracle import GaussianMixtureOracle, GaussianOracle
from reference.schedules import Schedule, make_betas
from reference.unet import MLP, UNet
from oracle_net import AffineNet
from tolerances import TOL, mc_close

W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = np.array([[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]])
S_MIN, S_MAX = 1e-3, 1e8   # the oracle is exact at every sigma; 1e8 puts the prior's mismatch below 1e-8 nats


@pytest.fixture(scope="module")
def linear():
    return Schedule(make_betas("linear", 1000))


def blurred(weights, means, covs, s):
    """The mixture whose density at abar = 1 is the ODE's density at sigma = s (E3): covariances + s^2 I."""
    return GaussianMixtureOracle(weights, means, cov=np.asarray(covs) + s**2 * np.eye(len(means[0])))


def test_E1_E2_the_divergence_integral_is_the_log_determinant_of_the_exact_gaussian_flow(rng):
    mean, cov = np.array([0.3, -0.2]), COVS[0]
    field = L.mixture_field(GaussianMixtureOracle([1.0], mean[None], cov=cov[None]))
    x0 = rng.standard_normal((8, 2))
    s_lo, s_hi = 0.01, 157.0
    rhs = L.pf_ode_rhs(field, *L.make_probes("exact", x0.shape), x0.shape)
    a_lo, a_hi = 1 / (1 + s_lo**2), 1 / (1 + s_hi**2)
    y0 = np.concatenate([math.sqrt(a_lo) * x0.reshape(-1), np.zeros(8)])
    y1, _, _ = L.rk45(rhs, math.log(s_lo), y0, math.log(s_hi), rtol=1e-10, atol=1e-10)
    lam, U = np.linalg.eigh(cov)
    d_lo, d_hi = a_lo * lam + 1 - a_lo, a_hi * lam + 1 - a_hi   # VP variances per eigen-direction (K5)
    # (K5)  the exact flow: x_b = sqrt(abar_b) mu + U diag(sqrt(d_b / d_a)) U^T (x_a - sqrt(abar_a) mu)
    x_hi = math.sqrt(a_hi) * mean + ((math.sqrt(a_lo) * x0 - math.sqrt(a_lo) * mean) @ U * np.sqrt(d_hi / d_lo)) @ U.T
    np.testing.assert_allclose(y1[:16].reshape(8, 2), x_hi, atol=TOL["ode_tight"])
    # (E1)  the integral of the divergence is log |det dx_b / dx_a| of that linear map, the same for every point
    np.testing.assert_allclose(y1[16:], 0.5 * np.sum(np.log(d_hi / d_lo)), atol=TOL["ode_tight"])


def test_E2_the_drift_is_the_vp_pf_ode_per_unit_log_sigma_and_its_divergence_the_finite_difference_one(linear, rng):
    mix = GaussianMixtureOracle(W, MEANS, cov=COVS)
    sde, x = score.VPSDE(linear), rng.standard_normal((6, 2))
    rhs = L.pf_ode_rhs(L.mixture_field(mix), *L.make_probes("exact", x.shape), x.shape)
    for s in (0.05, 0.3, 0.62, 0.9):
        a = float(sde.alpha_bar(s))
        rho = 0.5 * math.log((1 - a) / a)
        # (K5)  dx/ds = -1/2 beta(s) (x + score), and d rho / ds = beta / (2 (1 - abar)) since d abar / ds = -beta abar
        drift_s = sde.pf_ode_drift(x, s, mix.score(x, a))
        out = rhs(rho, np.concatenate([x.reshape(-1), np.zeros(6)]))
        np.testing.assert_allclose(out[:12].reshape(6, 2), drift_s * 2 * (1 - a) / float(sde.beta(s)), rtol=1e-12,
                                   atol=1e-12)
        h, div = 1e-6, 0.0
        for i in range(2):   # the examples are independent: perturb coordinate i of every one at once
            e = np.zeros(2)
            e[i] = h
            f = lambda z: rhs(rho, np.concatenate([z.reshape(-1), np.zeros(6)]))[:12].reshape(6, 2)  # noqa: E731
            div = div + (f(x + e) - f(x - e))[:, i] / (2 * h)
        np.testing.assert_allclose(out[12:], div, rtol=TOL["fd64"], atol=TOL["fd64"])


@pytest.mark.parametrize("form", ["full", "diagonal"])
def test_E3_ode_log_density_is_the_exact_mixture_density_to_the_solver_tolerance(form, rng):
    covs = COVS if form == "full" else np.stack([np.diag([0.1, 0.2]), np.diag([0.2, 0.1]), np.diag([0.05, 0.3])])
    mix = GaussianMixtureOracle(W, MEANS, cov=covs) if form == "full" else \
        GaussianMixtureOracle(W, MEANS, var=np.diagonal(covs, axis1=1, axis2=2))
    x, _ = mix.sample(rng, 32)
    exact = -blurred(W, MEANS, covs, S_MIN).log_prob(x, 1.0)   # (G3) at abar = 1: the data's density
    tight = L.ode_nll(L.mixture_field(mix), x, S_MIN, S_MAX, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(tight.nats, exact, atol=TOL["ode_tight"])
    default = L.ode_nll(L.mixture_field(mix), x, S_MIN, S_MAX)
    np.testing.assert_allclose(default.nats, exact, atol=TOL["ode_default"])
    assert (default.nfe - 2) % 6 == 0 and (default.nfe - 2) // 6 >= default.steps   # (E8) 6 per attempt
    np.testing.assert_allclose(default.bpd, exact / (2 * math.log(2)), atol=TOL["ode_default"])


def test_E3_ode_nll_of_gaussian_data_is_the_exact_nll_and_below_the_bound(linear, rng):
    mean, var = np.zeros(2), np.array([0.3, 0.05])
    data = GaussianOracle(mean, var=var)
    x = data.sample(rng, 400)
    field = L.mixture_field(GaussianMixtureOracle([1.0], mean[None], var=var[None]))
    lo, hi = L.sigma_range(linear)
    ode = L.ode_nll(field, x, lo, hi)
    # (G2)  -log N(x; mu, Sigma + sigma_0^2 I): the ODE's density at the schedule's lowest level
    np.testing.assert_allclose(ode.bpd, GaussianOracle(mean, var=var + lo**2).nll_bpd(x), atol=TOL["ode_default"])
    assert mc_close(ode.bpd.mean(), data.entropy_bpd(), ode.bpd.std() / math.sqrt(len(x)))
    # the bound with the oracle as the network, in closed form, lies above the data's entropy, which the ODE attains
    for variance in ("fixed_small", "fixed_large"):
        gap = data.expected_vlb_bpd(linear, variance)["total"] - data.entropy_bpd()
        assert gap > 0.01, (variance, gap)
        np.testing.assert_allclose(gap, data.vlb_gap_bpd(linear, variance), rtol=1e-6)
    # and per point, the Monte Carlo bound (L1) minus the ODE's exact NLL is positive on average
    diff = losses.vlb_terms(linear, data.denoiser(linear), x, rng, decoder="gaussian")["total"] - ode.bpd
    assert diff.mean() > TOL["mc_z"] * diff.std() / math.sqrt(len(x)), (diff.mean(), diff.std())


def test_E4_hutchinson_mean_is_the_exact_trace_and_its_variance_the_rademacher_formula(linear, rng):
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4,
               dtype=np.float64, seed=3)
    net.load_params({k: v + 0.2 * rng.standard_normal(v.shape) for k, v in net.params.items()})
    field, x, sigma = L.network_field(linear, net), rng.standard_normal((1, 1, 4, 4)), 0.8
    # the exact Jacobian: 16 copies of x, the basis vector e_i with copy i (row i = (J^T e_i)^T)
    _, rows = field(np.repeat(x, 16, axis=0), sigma, np.eye(16).reshape(1, 16, 1, 4, 4))
    J = rows[0].reshape(16, 16)
    S = 0.5 * (J + J.T)
    n = 600
    probes, _ = L.make_probes("hutchinson", (n, 1, 4, 4), rng=rng)   # one Rademacher probe per copy of x
    _, vjps = field(np.repeat(x, n, axis=0), sigma, probes)
    est = np.sum((probes[0] * vjps[0]).reshape(n, 16), axis=1)        # v . (J^T v), one per probe
    assert mc_close(est.mean(), np.trace(J), est.std() / math.sqrt(n))
    # (E4)  Var = 2 (|S|_F^2 - sum_i S_ii^2); the sample variance's standard error from its fourth moment
    var = 2 * (np.sum(S**2) - np.sum(np.diag(S) ** 2))
    assert mc_close(est.var(), var, math.sqrt(np.var((est - est.mean()) ** 2) / n))


def test_E4_hutchinson_nll_is_unbiased_around_the_exact_one(rng):
    mix = GaussianMixtureOracle(W, MEANS, cov=COVS)
    x, _ = mix.sample(rng, 64)
    exact = L.ode_nll(L.mixture_field(mix), x, S_MIN, S_MAX)
    hutch = L.ode_nll(L.mixture_field(mix), x, S_MIN, S_MAX, divergence="hutchinson", rng=rng)
    np.testing.assert_allclose(hutch.x_T, exact.x_T, atol=TOL["ode_default"])   # the probes never touch the state
    diff = hutch.nats - exact.nats
    assert mc_close(diff.mean(), 0.0, diff.std() / math.sqrt(len(x))) and diff.std() > 0.01


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_E5_network_field_at_trained_levels_is_the_model_denoiser_and_its_vjp_the_finite_difference_one(
        prediction, linear, rng):
    net = MLP(hidden=32, num_layers=2, time_dim=16, dtype=np.float64, seed=1)
    net.load_params({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in net.params.items()})
    field, x = L.network_field(linear, net, prediction), rng.standard_normal((5, 2))
    D_solvers = solvers.model_denoiser(linear, lambda xt, t: net.forward(xt, t)[0], prediction)
    eye = np.broadcast_to(np.eye(2)[:, None, :], (2, 5, 2))
    for t in (0, 1, 250, 998, 999):
        sigma = float(score.trained_sigmas(linear)[t])
        np.testing.assert_allclose(field(x, sigma, eye[:0])[0], D_solvers(x, sigma), rtol=TOL["net64"], atol=TOL["net64"])
    for sigma in (0.0123, 0.5, 3.7, 100.0, float(score.trained_sigmas(linear)[10])):
        _, vjps = field(x, sigma, eye)
        for i in range(2):
            e = np.zeros(2)
            e[i] = 1e-6
            col = (field(x + e, sigma, eye[:0])[0] - field(x - e, sigma, eye[:0])[0]) / 2e-6   # dD/dx~_i
            np.testing.assert_allclose(vjps[:, :, i].T, col, rtol=TOL["fd64_dir"], atol=TOL["fd64_dir"])


def test_E5_the_discrete_gaussian_oracle_through_the_label_interpolation_gives_the_exact_nll(linear, rng):
    mean, cov = np.array([0.3, -0.2]), COVS[0]
    data = GaussianOracle(mean, cov=cov)
    x = data.sample(rng, 32)
    lo, hi = L.sigma_range(linear)
    for prediction in ("eps", "x0", "v"):
        net = AffineNet(data.denoiser(linear, prediction), linear.T, 2)   # exact only at the trained steps
        got = L.model_nll(linear, net, x, prediction=prediction, rtol=1e-8, atol=1e-8)
        exact = L.ode_nll(L.mixture_field(GaussianMixtureOracle([1.0], mean[None], cov=cov[None])), x, lo, hi,
                          rtol=1e-8, atol=1e-8)                             # the continuous oracle, same ends
        np.testing.assert_allclose(got.nats, exact.nats, atol=TOL["blend"])


@pytest.mark.parametrize("form", ["full", "diagonal", "point masses"])
def test_E6_mixture_jacobian_is_the_finite_difference_jacobian_of_the_oracle_denoiser(form, rng):
    kw = {"full": {"cov": COVS}, "diagonal": {"var": [[0.1, 0.2], [0.2, 0.1], [0.1, 0.1]]},
          "point masses": {"var": [[0.0, 0.0], [0.1, 0.0], [0.0, 0.3]]}}[form]
    mix = GaussianMixtureOracle(W, MEANS, **kw)
    field, x = L.mixture_field(mix), rng.standard_normal((7, 2))
    eye = np.broadcast_to(np.eye(2)[:, None, :], (2, 7, 2))
    for sigma in (0.05, 0.4, 2.0, 30.0):
        D, vjps = field(x, sigma, eye)
        np.testing.assert_allclose(D, mix.denoise_sigma(x, sigma), rtol=TOL["exact64"], atol=TOL["exact64"])
        for i in range(2):
            e = np.zeros(2)
            e[i] = 1e-6
            col = (mix.denoise_sigma(x + e, sigma) - mix.denoise_sigma(x - e, sigma)) / 2e-6
            np.testing.assert_allclose(vjps[:, :, i].T, col, rtol=TOL["fd64"], atol=TOL["fd64"])


@pytest.mark.parametrize("levels", [3, 17, 256])
def test_E7_dequantised_bits_per_dim_of_a_bin_constant_density_is_the_entropy_of_the_discrete_data(levels, rng):
    P = rng.dirichlet(np.ones(levels))
    entropy = -np.sum(P * np.log2(P))
    k = rng.choice(levels, size=(20000, 2), p=P)                    # two independent dimensions
    x = 2 * k / (levels - 1) - 1
    y = L.dequantize(x, levels, rng.uniform(0, 1, size=x.shape))
    # the density flat on each of the L bins that tile [-1 - h, 1 + h], h half a bin: P_k / width
    edges = np.linspace(-1 - 1 / (levels - 1), 1 + 1 / (levels - 1), levels + 1)
    j = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, levels - 1)
    assert np.array_equal(j, k)                                     # every y stays in its own bin
    nats = -np.sum(np.log(P[j] / np.diff(edges)[j]), axis=1)
    bpd = L.nats_to_bpd(nats, 2, levels)
    # Jensen is tight for a density flat on the bins: the bound is -log2 P(x) exactly, per example
    np.testing.assert_allclose(bpd, -np.log2(P[k]).mean(axis=1), rtol=TOL["exact64"], atol=TOL["exact64"])
    assert mc_close(bpd.mean(), entropy, bpd.std() / math.sqrt(len(bpd)))


def test_E7_dequantised_bound_is_above_the_exact_discrete_nll_of_a_gaussian_and_closes_as_the_bins_shrink():
    s = 0.5
    nodes, weights = np.polynomial.legendre.leggauss(16)                 # E_u by quadrature: no Monte Carlo
    u = 0.5 * (nodes + 1)
    gaps = []
    for levels in (9, 17, 65, 257):
        x = 2 * np.arange(levels) / (levels - 1) - 1
        h = 1 / (levels - 1)
        exact = -np.log2(ndtr((x + h) / s) - ndtr((x - h) / s))        # -log2 of the bin's mass under N(0, s^2)
        y = np.stack([L.dequantize(x[:, None], levels, np.full((levels, 1), ui))[:, 0] for ui in u])
        nats = 0.5 * np.log(2 * np.pi * s * s) + y**2 / (2 * s * s)
        bound = L.nats_to_bpd(0.5 * weights @ nats, 1, levels)
        gap = bound - exact
        assert np.all(gap > 0)
        # to leading order the gap is (Delta^2 / 24) |d log p / dx|^2 nats (likelihood.md, E7); the O(Delta^4)
        # rest is 1.7% of it near x = 0 (where the leading term vanishes) and < 1e-3 of it for |x| >= 1/2
        lead = (2 * h) ** 2 / 24 * (x / s**2) ** 2 / math.log(2)
        if levels >= 65:
            far = np.abs(x) >= 0.5
            np.testing.assert_allclose(gap[far], lead[far], rtol=1e-3)
        gaps.append(gap.max())
    assert np.all(np.diff(np.log(gaps)) < 0)


def test_E8_global_error_of_the_adaptive_solve_follows_the_tolerance(rng):
    mix = GaussianMixtureOracle(W, MEANS, cov=COVS)
    x, _ = mix.sample(rng, 32)
    exact = -blurred(W, MEANS, COVS, S_MIN).log_prob(x, 1.0)
    nfe = []
    for tol in (1e-5, 1e-7, 1e-9):
        r = L.ode_nll(L.mixture_field(mix), x, S_MIN, 1e10, rtol=tol, atol=tol)
        err = np.abs(r.nats - exact)
        # the RMS over examples, not the largest: the largest of N errors is a tail that grows with N
        assert math.sqrt(np.mean(err**2)) <= TOL["ode_per_tol"] * tol, (tol, math.sqrt(np.mean(err**2)))
        assert err.max() <= TOL["ode_per_tol_max"] * tol, (tol, err.max())
        nfe.append(r.nfe)
    assert nfe == sorted(nfe) and nfe[0] < nfe[-1]
