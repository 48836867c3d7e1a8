"""Posterior q(x_{t-1} | x_t, x_0) (derivations/posterior.md): P1 Bayes, P2 mean, P3 variance, P4 the t=0 rule.

Independent route: evaluate the numerator of Bayes' rule, q(x_t | x_{t-1}) q(x_{t-1} | x_0), on a fine
grid of x_{t-1} from the Gaussian densities (F1), (F3) and normalise numerically (trapezoid). Its
moments must be the closed-form mean and variance; its integral must be the normaliser q(x_t | x_0).
"""
import numpy as np
import pytest

from reference import diffusion
from reference.schedules import Schedule, make_betas
from tolerances import TOL


def _log_normal(x, mean, var):
    return -0.5 * np.log(2 * np.pi * var) - 0.5 * (x - mean) ** 2 / var


def grid_posterior(s, x0, xt, t, n=400001):
    """Mean, variance of x_{t-1} and the normaliser, from Bayes' rule on a grid. t is 0-based, t >= 1."""
    prev_mean, prev_var = np.sqrt(s.alpha_bar[t - 1]) * x0, 1.0 - s.alpha_bar[t - 1]   # q(x_{t-1}|x0) (F3)
    # The posterior is narrower than both factors; a grid covering the prior 12 sd either side holds it.
    half = 12 * np.sqrt(prev_var)
    y = np.linspace(prev_mean - half, prev_mean + half, n)
    log_num = _log_normal(xt, np.sqrt(s.alphas[t]) * y, s.betas[t]) + _log_normal(y, prev_mean, prev_var)  # (P1)
    top = log_num.max()
    w = np.exp(log_num - top)                                  # rescaled against underflow
    z = np.trapezoid(w, y)
    mean = np.trapezoid(w * y, y) / z
    var = np.trapezoid(w * (y - mean) ** 2, y) / z
    return mean, var, z * np.exp(top)


@pytest.mark.parametrize("name,T", [("linear", 1000), ("cosine", 1000), ("linear", 10)])
def test_P1_P2_P3_posterior_is_bayes_rule_on_a_grid(name, T, rng):
    s = Schedule(make_betas(name, T), warn=False)
    for t in sorted({1, 2, T // 10, T // 2, T - 1}):
        x0 = float(rng.uniform(-1, 1))
        xt = float(diffusion.q_sample(s, np.array([x0]), t, rng.standard_normal(1))[0])   # a typical x_t
        g_mean, g_var, g_z = grid_posterior(s, x0, xt, t)
        mean, var, log_var = diffusion.q_posterior(s, np.array([x0]), np.array([xt]), t)
        scale = np.sqrt(g_var)                                   # compare the mean in posterior sds
        assert abs(mean[0] - g_mean) <= TOL["grid64"] * scale, (t, mean[0], g_mean)      # (P2)
        assert abs(var[0] / g_var - 1) <= TOL["grid64"], (t, var[0], g_var)             # (P3)
        assert abs(log_var[0] - np.log(g_var)) <= TOL["grid64"]
        # (P1) the normaliser is q(x_t | x_0), the closed form (F3) at t
        q_mean, q_var = diffusion.q_mean_variance(s, np.array([x0]), t)
        assert abs(g_z / np.exp(_log_normal(xt, q_mean[0], q_var[0])) - 1) <= TOL["grid64"]


def test_P1_P3_posterior_variance_is_below_beta_and_batches(rng):
    """Knowing x0 can only shrink the uncertainty: 0 <= beta~ <= beta; per-sample t in a batch."""
    s = Schedule(make_betas("linear", 1000), warn=False)
    assert np.all(s.posterior_variance >= 0) and np.all(s.posterior_variance <= s.betas)
    t = np.array([1, 5, 500, 999])
    x0 = rng.standard_normal((4, 3))
    xt = diffusion.q_sample(s, x0, t, rng.standard_normal((4, 3)))
    mean, var, _ = diffusion.q_posterior(s, x0, xt, t)
    for i, ti in enumerate(t):
        g_mean, g_var, _ = grid_posterior(s, x0[i, 0], xt[i, 0], int(ti), n=200001)
        assert abs(mean[i, 0] - g_mean) <= TOL["grid64"] * np.sqrt(g_var)
        assert abs(var[i, 0] / g_var - 1) <= TOL["grid64"]


@pytest.mark.parametrize("T", [1, 2, 1000])
def test_P4_first_step_is_a_point_mass_with_a_finite_clipped_log_variance(T, rng):
    s = Schedule(make_betas("linear", T), warn=False)
    x0, xt = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    mean, var, log_var = diffusion.q_posterior(s, x0, xt, 0)
    # At code t = 0 (paper t = 1): alpha_bar_prev = 1, the posterior is the data itself, exactly.
    assert s.alpha_bar_prev[0] == 1.0
    # coef_x0 = beta_0 / (1 - alpha_0) is 1 up to the rounding of 1 - (1 - beta_0); coef_xt is exactly 0.
    assert np.allclose(mean, x0, rtol=TOL["exact64"], atol=0) and np.all(var == 0)
    assert s.posterior_mean_coef_xt[0] == 0.0
    # (P4): finite, equal to log beta~ of the next step (log beta_0 when T = 1), never log 0.
    assert np.all(np.isfinite(s.posterior_log_variance_clipped))
    want = np.log(s.posterior_variance[1]) if T > 1 else np.log(s.betas[0])
    assert np.all(log_var == want)
    # Elsewhere the clipped table is the plain log of the variance.
    assert np.allclose(s.posterior_log_variance_clipped[1:], np.log(s.posterior_variance[1:]),
                       rtol=0, atol=TOL["exact64"])
    if T > 1:
        # Independent route for the replacement value: the grid posterior variance at the next step.
        g_var = grid_posterior(s, 0.3, 0.2, 1)[1]
        assert abs(log_var[0, 0] - np.log(g_var)) <= TOL["grid64"]
