"""Gaussian data (derivations/gaussian_oracle.md): G1 the optimal denoiser / Tweedie, G2 the exact NLL.

Independent routes: a Monte Carlo least-squares regression of x0 on x_t over simulated pairs (G1);
Bayes' rule integrated on a grid and the score by central differences of the exact marginal, for a
non-Gaussian mixture (Tweedie's identity itself, G1); normalisation of the density on a 2-D grid and
a Monte Carlo mean of the NLL (G2); the bound by Monte Carlo through losses.vlb_terms (L1).
"""
import math

import numpy as np
import pytest

from reference import diffusion, losses
from reference.oracle import GaussianOracle
from reference.schedules import Schedule, make_betas
from tolerances import TOL, mc_close


@pytest.fixture
def sched():
    return Schedule(make_betas("cosine", 1000), warn=False)


@pytest.mark.parametrize("t", [5, 300, 800])
def test_G1_oracle_matches_a_monte_carlo_regression_of_x0_on_xt(sched, rng, t):
    """E[x0 | x_t] is linear for Gaussian data, so least squares over simulated pairs estimates it."""
    mu, sd, n = 0.3, 0.5, 200000
    oracle = GaussianOracle(mean=np.array([mu]), var=np.array([sd**2]))
    x0 = oracle.sample(rng, n)                                                        # (n, 1)
    xt = diffusion.q_sample(sched, x0, t, rng.standard_normal(x0.shape))
    A = np.column_stack([np.ones(n), xt[:, 0]])
    (icpt, slope), *_ = np.linalg.lstsq(A, x0[:, 0], rcond=None)
    resid = x0[:, 0] - A @ np.array([icpt, slope])
    s2 = resid @ resid / (n - 2)
    sxx = np.sum((xt[:, 0] - xt[:, 0].mean()) ** 2)
    se_slope = math.sqrt(s2 / sxx)
    se_icpt = math.sqrt(s2 * (1 / n + xt[:, 0].mean() ** 2 / sxx))
    # the oracle's line, read off at x_t = 0 and x_t = 1
    m0 = oracle.x0_mean(sched, np.zeros((1, 1)), t)[0, 0]
    m1 = oracle.x0_mean(sched, np.ones((1, 1)), t)[0, 0]
    assert mc_close(icpt, m0, se_icpt) and mc_close(slope, m1 - m0, se_slope), (icpt, m0, slope, m1 - m0)
    v = oracle.x0_var(sched, t)[0]
    assert mc_close(s2, v, v * math.sqrt(2.0 / (n - 2)))
    # the eps and v outputs are the same optimum seen through (R2), (R3)
    x = rng.standard_normal((4, 1))
    e = oracle.predict(sched, x, t, "eps")
    assert np.max(np.abs(diffusion.predict_x0(sched, x, t, e, "eps") - oracle.x0_mean(sched, x, t))) \
        <= TOL["exact64"] * sched.sqrt_recip_alpha_bar[t] * max(1.0, np.max(np.abs(x)))


def _mixture_marginal(x, a, b, w, m, s):
    """p_t(x) for p_0 = sum_k w_k N(m_k, s_k^2): sum_k w_k N(x; a m_k, a^2 s_k^2 + b^2) (exact)."""
    var = a**2 * s**2 + b**2
    return np.sum(w * np.exp(-0.5 * (x[..., None] - a * m) ** 2 / var) / np.sqrt(2 * np.pi * var), axis=-1)


@pytest.mark.parametrize("t", [50, 400, 900])
def test_G1_tweedie_holds_for_a_gaussian_mixture_on_a_grid(sched, t):
    a, b = math.sqrt(sched.alpha_bar[t]), math.sqrt(1 - sched.alpha_bar[t])
    w, m, s = np.array([0.3, 0.7]), np.array([-0.8, 0.5]), np.array([0.1, 0.3])
    x0 = np.linspace(-3, 3, 600001)
    p0 = np.sum(w * np.exp(-0.5 * (x0[:, None] - m) ** 2 / s**2) / np.sqrt(2 * np.pi * s**2), axis=1)
    h = 1e-5
    for xt in [-1.0, 0.0, 0.4, 1.7]:
        lik = np.exp(-0.5 * (xt - a * x0) ** 2 / b**2)
        post_mean = np.trapezoid(x0 * lik * p0, x0) / np.trapezoid(lik * p0, x0)     # Bayes on a grid
        score = (math.log(_mixture_marginal(np.array(xt + h), a, b, w, m, s))
                 - math.log(_mixture_marginal(np.array(xt - h), a, b, w, m, s))) / (2 * h)
        tweedie = (xt + b**2 * score) / a                                              # (G1)
        assert abs(tweedie - post_mean) <= TOL["grid64"] / a, (xt, tweedie, post_mean)
    # one component: the grid/Tweedie value is the oracle's closed form
    oracle = GaussianOracle(mean=np.array([0.5]), var=np.array([0.09]))
    xt = 0.4
    one = (np.array([1.0]), np.array([0.5]), np.array([0.3]))          # weight, mean, sd of N(0.5, 0.09)
    score = (math.log(_mixture_marginal(np.array(xt + h), a, b, *one))
             - math.log(_mixture_marginal(np.array(xt - h), a, b, *one))) / (2 * h)
    assert abs((xt + b**2 * score) / a - oracle.x0_mean(sched, np.array([[xt]]), t)[0, 0]) <= TOL["fd64"] / a


def test_G2_L1_exact_nll_is_a_normalised_density_whose_mean_is_the_entropy_and_bounds_the_vlb(rng):
    cov = np.array([[0.25, 0.1], [0.1, 0.16]])
    oracle = GaussianOracle(mean=np.array([0.2, -0.1]), cov=cov)
    D = 2
    # normalisation on a grid: integral of exp(-nll) = 1, with nll in nats = bpd * D * ln 2
    g = np.linspace(-3.5, 3.5, 1401)
    X, Y = np.meshgrid(g, g, indexing="ij")
    pts = np.column_stack([X.ravel(), Y.ravel()])
    dens = np.exp(-oracle.nll_bpd(pts) * D * math.log(2)).reshape(X.shape)
    total = np.trapezoid(np.trapezoid(dens, g, axis=1), g)
    assert abs(total - 1) <= TOL["grid64"]
    # E[nll] = entropy, by Monte Carlo over the data
    n = 100000
    nll = oracle.nll_bpd(oracle.sample(rng, n))
    assert mc_close(nll.mean(), oracle.entropy_bpd(), nll.std() / math.sqrt(n))
    assert abs(oracle.entropy_bpd() - 0.5 * math.log2(np.linalg.det(2 * math.pi * math.e * cov)) / D) <= TOL["exact64"]
    # the bound with the perfect network sits above the entropy, by exactly the gap (L1, G2)
    s = Schedule(make_betas("linear", 20, beta_start=0.01, beta_end=0.4), warn=False)
    x0 = oracle.sample(rng, 20000)
    vlb = losses.vlb_terms(s, oracle.denoiser(s), x0, rng, "eps", "fixed_large", decoder="gaussian")["total"]
    gap = oracle.vlb_gap_bpd(s, "fixed_large")
    assert gap > 0
    assert mc_close(vlb.mean(), oracle.entropy_bpd() + gap, vlb.std() / math.sqrt(x0.shape[0]))
