"""The Gaussian oracle (G1, G2) and the bound it attains (L1, L6, L7).

For x_0 ~ N(mu, Sigma) the optimal denoiser and the data's likelihood are known exactly. Independent
routes: Bayes' rule normalised on a grid, the matrix form of Gaussian conditioning, orthogonality of
the optimal eps by Monte Carlo, scipy's multivariate normal, and for the bound two decompositions
(forward, term by term; reverse, entropy plus variance mismatch) against Monte Carlo of vlb_terms.
"""
import math

import numpy as np
import pytest
from scipy.special import ndtr
from scipy.stats import multivariate_normal

from reference import losses, schedules
from reference.errors import InputError
from reference.oracle import GaussianOracle
from tolerances import TOL, mc_close

MU = np.array([0.5, -0.3])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])


def _sched(name="cosine", T=100, **kw):
    return schedules.Schedule(schedules.make_betas(name, T, **kw))


# ---- (G1) the optimal predictors ----------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_G1_oracle_is_the_posterior_mean_by_bayes_rule_on_a_grid(prediction):
    mu, s2 = 0.4, 0.6
    oracle = GaussianOracle(np.array([mu]), var=np.array([s2]))
    sched = schedules.Schedule(schedules.rescale_zero_terminal_snr(schedules.make_betas("linear", 1000)))
    x0 = np.linspace(mu - 12 * math.sqrt(s2), mu + 12 * math.sqrt(s2), 200_001)
    for t in (0, 10, 300, 700, 999):
        a = sched.alpha_bar[t]
        for xt in (-2.0, 0.1, 1.7):
            # Bayes: p(x0 | xt) proportional to N(x0; mu, s2) N(xt; sqrt(a) x0, 1 - a), on the grid
            log_w = -0.5 * (x0 - mu) ** 2 / s2 - 0.5 * (xt - math.sqrt(a) * x0) ** 2 / (1 - a)
            w = np.exp(log_w - log_w.max())
            eps = (xt - math.sqrt(a) * x0) / math.sqrt(1 - a)
            target = {"x0": x0, "eps": eps, "v": math.sqrt(a) * eps - math.sqrt(1 - a) * x0}[prediction]
            expected = np.sum(w * target) / np.sum(w)
            got = oracle.predict(sched, np.array([[xt]]), np.array([t]), prediction)[0, 0]
            # grid64 (the eps and v targets divide by sqrt(1 - abar) >= 1e-2: errors stay below grid64)
            assert abs(got - expected) < TOL["grid64"], (t, xt)


def test_G1_full_covariance_oracle_matches_the_matrix_formula(rng):
    sched, oracle = _sched("linear", 1000), GaussianOracle(MU, cov=COV)
    t = rng.integers(0, 1000, size=32)
    xt = rng.standard_normal((32, 2)) * 2
    got = oracle.x0_mean(sched, xt, t)
    for i in range(32):
        a = sched.alpha_bar[t[i]]
        # E[x0 | xt] = mu + Cov(x0, xt) Var(xt)^-1 (xt - E xt) = mu + sqrt(a) Sigma (a Sigma + (1-a) I)^-1 (...)
        expected = MU + math.sqrt(a) * COV @ np.linalg.solve(a * COV + (1 - a) * np.eye(2), xt[i] - math.sqrt(a) * MU)
        np.testing.assert_allclose(got[i], expected, rtol=0, atol=TOL["exact64"] * 10)
    np.testing.assert_allclose(oracle.cov, COV, atol=TOL["exact64"])
    np.testing.assert_allclose(oracle.mean, MU, atol=TOL["exact64"])


def test_G1_optimal_eps_error_is_orthogonal_to_x_t(rng):
    """E[(eps - eps_hat)] = 0 and E[(eps - eps_hat) x_t^T] = 0: the least-squares (L_simple) optimum."""
    sched, oracle, n = _sched("linear", 1000), GaussianOracle(MU, cov=COV), 50_000
    for t in (5, 200, 900):
        x0, eps = oracle.sample(rng, n), rng.standard_normal((n, 2))
        a = sched.alpha_bar[t]
        xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
        r = eps - oracle.predict(sched, xt, np.full(n, t), "eps")
        prods = np.concatenate([r, (r[:, :, None] * xt[:, None, :]).reshape(n, 4)], axis=1)  # r_i, r_i xt_j
        assert mc_close(prods.mean(axis=0), 0.0, prods.std(axis=0) / math.sqrt(n))


# ---- (G2) exact likelihood -------------------------------------------------------------------------

def test_G2_exact_nll_matches_scipy_and_the_entropy(rng):
    oracle = GaussianOracle(MU, cov=COV)
    x0 = oracle.sample(rng, 20_000)
    nll = oracle.nll_bpd(x0)
    np.testing.assert_allclose(nll, -multivariate_normal(MU, COV).logpdf(x0) / (2 * math.log(2)), rtol=TOL["exact64"] * 10)
    assert oracle.entropy_bpd() == pytest.approx(multivariate_normal(MU, COV).entropy() / (2 * math.log(2)),
                                                  rel=TOL["exact64"])
    assert mc_close(nll.mean(), oracle.entropy_bpd(), nll.std() / math.sqrt(nll.size))
    # and the samples have the data's moments
    assert mc_close(x0.mean(axis=0), MU, np.sqrt(np.diag(COV) / x0.shape[0]))


# ---- (L1, G2) the bound with the oracle: >= the exact NLL, and by how much --------------------------

def _check_vlb_against_closed_form(sched, oracle, x0, rng, variance):
    out = losses.vlb_terms(sched, oracle.denoiser(sched, "eps"), x0, rng, variance=variance, decoder="gaussian")
    n = x0.shape[0]
    exp = oracle.expected_vlb_bpd(sched, variance)
    gap = oracle.vlb_gap_bpd(sched, variance)
    # (L1) the forward decomposition (term by term) and the reverse one (entropy + mismatch) agree exactly
    assert exp["total"] == pytest.approx(oracle.entropy_bpd() + gap, rel=TOL["exact64"] * 100)  # a sum of T terms
    assert gap > 0
    # Monte Carlo of every term and of the prior against the closed form
    se = out["terms"].std(axis=1) / math.sqrt(n)
    assert mc_close(out["terms"].mean(axis=1), exp["terms"], se)
    assert mc_close(out["prior"].mean(), exp["prior"], out["prior"].std() / math.sqrt(n))
    # bound - exact NLL, paired per example: its mean is the gap, >= 0 (in expectation over the data)
    d = out["total"] - oracle.nll_bpd(x0)
    se_d = d.std() / math.sqrt(n)
    assert mc_close(d.mean(), gap, se_d)
    assert d.mean() >= -TOL["mc_z"] * se_d
    return d.mean(), gap


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_L1_G2_vlb_with_oracle_is_entropy_plus_variance_mismatch(rng, variance):
    """Continuous 2-D Gaussian data, decoder "gaussian". The oracle has the true reverse mean at every
    step, so the whole gap above the exact NLL comes from the fixed variances (M2) being wrong: the
    true q(x_{t-1}|x_t) has variance beta~_t + c0_t^2 Var[x0|x_t]. fixed_small is too small by that at
    the first steps (where it is O(beta~)): gap ~1.1 bits/dim at T=100 (cosine), ~0.8 at T=1000, not
    shrinking with T; fixed_large (right for unit-variance data) ~0.1-0.2 bits/dim."""
    sched, oracle = _sched("cosine", 100), GaussianOracle(MU, cov=COV)
    _, gap = _check_vlb_against_closed_form(sched, oracle, oracle.sample(rng, 2000), rng, variance)
    assert gap < {"fixed_small": 1.3, "fixed_large": 0.15}[variance]


@pytest.mark.slow
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_L1_G2_vlb_with_oracle_large_T(variance):
    rng = np.random.default_rng(5)
    sched, oracle = _sched("linear", 1000), GaussianOracle(MU, cov=COV)
    _check_vlb_against_closed_form(sched, oracle, oracle.sample(rng, 10_000), rng, variance)


def test_L6_L7_G2_discretised_bits_per_dim_is_above_the_discrete_entropy(rng):
    """8-bit data: x_0 = a quantised N(m, s^2) on the grid -1 + 2k/255 (edge bins take the tails). The
    exact NLL is -log2 P_k with P_k = Phi((hi_k - m)/s) - Phi((lo_k - m)/s) (scipy's ndtr; the decoder
    under test uses log_ndtr). E[bound] >= cross-entropy >= the discrete entropy H = -sum P log2 P.
    Closeness: the discrete gap comes out just below the continuous gap of the same oracle (measured
    0.07 vs 0.11 bits/dim, fixed_large, T=100): the discretised decoder integrates the bin instead of
    reading a density; we assert it does not exceed the continuous gap (+ MC error)."""
    m, s = 0.1, 0.3
    k = np.arange(256)
    grid = -1.0 + 2.0 * k / 255.0
    lo, hi = np.where(k == 0, -np.inf, grid - 1 / 255), np.where(k == 255, np.inf, grid + 1 / 255)
    P = ndtr((hi - m) / s) - ndtr((lo - m) / s)
    idx = rng.choice(256, size=(2000, 1, 2, 2), p=P / P.sum())
    x0 = grid[idx]
    sched, oracle = _sched("cosine", 100), GaussianOracle(m, var=s**2)
    out = losses.vlb_terms(sched, oracle.denoiser(sched, "eps"), x0, rng, variance="fixed_large")
    nll = (-np.log2(P[idx])).reshape(2000, -1).mean(axis=1)
    d = out["total"] - nll
    se = d.std() / math.sqrt(d.size)
    assert d.mean() >= -TOL["mc_z"] * se
    assert d.mean() <= oracle.vlb_gap_bpd(sched, "fixed_large") + TOL["mc_z"] * se


# ---- bad input ------------------------------------------------------------------------------------------

def test_oracle_bad_input():
    with pytest.raises(InputError, match="exactly one of var"):
        GaussianOracle(MU)
    with pytest.raises(InputError, match="shape mismatch"):
        GaussianOracle(MU, cov=np.eye(3))
    with pytest.raises(InputError, match="positive definite"):
        GaussianOracle(MU, cov=np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(InputError, match="symmetric"):
        GaussianOracle(MU, cov=np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(InputError, match="unknown prediction"):
        GaussianOracle(MU, cov=COV).denoiser(_sched(), "score")
    with pytest.raises(InputError, match="t out of range"):
        GaussianOracle(MU, cov=COV).predict(_sched(), np.zeros((2, 2)), np.array([0, 100]))
