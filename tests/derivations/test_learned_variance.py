"""Learned variances and L_hybrid (derivations/learned_variance.md): V1 the interpolation, V2 what the KL's
gradient makes the variance learn, V4 the hybrid loss (the factor T, the stop-gradient, the size of lambda),
V5 learned variances under respacing.

Independent routes: the fixed-variance tables (V1's ends); Monte Carlo over x_0 and eps with the exact
(oracle) denoiser of unit Gaussian data (V2, V5); the bound computed step by step by ``vlb_terms`` (V4);
Gaussian conditioning on the original alpha_bar for the long respaced step (V5); whole sampled chains (V5).
"""
import math

import numpy as np
import pytest

from reference import diffusion as D
from reference import losses, samplers, vlb
from reference.errors import InputError
from reference.oracle import GaussianOracle
from reference.schedules import Schedule, make_betas
from tolerances import TOL, mc_close


def _linear(T=1000, **kw):
    return Schedule(make_betas("linear", T, **kw), warn=False)


def _with_u(denoise, u):
    """A 2C-channel network: the mean channels of ``denoise``, then a constant variance channel u."""
    def net(xt, t):
        mean = denoise(xt, t)
        return np.concatenate([mean, np.full_like(mean, u)], axis=1)
    return net


def test_V1_interpolation_hits_both_ends_and_maps_to_improved_diffusion(rng):
    """u = -1 is fixed_small's log beta~ (with the (P4) rule at t = 0), u = +1 is log beta_t (fixed_large's at
    t >= 1; at t = 0 beta_0, not fixed_large's beta~_1), affine in u between; the mean is the mean channels'."""
    s = _linear()
    t = np.array([0, 1, 2, 10, 500, 999])
    xt, mean_out = rng.standard_normal((2, 6, 2, 3, 3))
    small = D.p_mean_variance(s, mean_out, xt, t, "eps", "fixed_small")
    large = D.p_mean_variance(s, mean_out, xt, t, "eps", "fixed_large")
    ends = {}
    for u in (-1.0, 0.0, 0.4, 1.0):
        out = np.concatenate([mean_out, np.full_like(mean_out, u)], axis=1)
        p = D.p_mean_variance(s, out, xt, t, "eps", "learned")
        assert np.array_equal(p.mean, small.mean) and np.array_equal(p.x0, small.x0) and np.array_equal(p.eps, small.eps)
        assert np.allclose(p.variance, np.exp(p.log_variance), rtol=TOL["exact64"], atol=0)
        ends[u] = p.log_variance
    np.testing.assert_allclose(ends[-1.0], small.log_variance, rtol=TOL["exact64"])   # improved-diffusion's min_log
    np.testing.assert_allclose(ends[1.0][1:], large.log_variance[1:], rtol=TOL["exact64"])  # its max_log, log beta
    np.testing.assert_allclose(ends[1.0][0], math.log(s.betas[0]), rtol=TOL["exact64"])
    assert np.all(ends[1.0][0] - large.log_variance[0] > 0.6)          # beta_0 / beta~_1 = 1.83 (linear)
    np.testing.assert_allclose(np.exp(ends[0.0]), np.sqrt(np.exp(ends[-1.0] + ends[1.0])), rtol=TOL["exact64"])
    # affine in u: the value at u = 0.4 is 70% of the way from u = -1 to u = 1 (nu = (u + 1) / 2)
    np.testing.assert_allclose(ends[0.4], 0.3 * ends[-1.0] + 0.7 * ends[1.0], rtol=TOL["exact64"], atol=TOL["exact64"])


@pytest.mark.parametrize("t", [1, 10, 300])
def test_V2_expected_kl_is_stationary_at_the_true_reverse_variance_monte_carlo(t, rng):
    """For x_0 ~ N(0, I) and its Bayes-optimal (oracle) mean, E[dKL/du] = 0 at u = 1 (sigma^2 = beta_t, M2's true
    reverse variance for these data) and < 0 at u = -1 and 0 (descent raises u toward it); for one point and the
    x0-knowing eps the KL's gradient is exactly 0 at u = -1 (sigma^2 = beta~_t)."""
    s = _linear()
    n, D_ = 20000, 4
    x0, eps = rng.standard_normal((2, n, D_))
    tt = np.full(n, t)
    xt = D.q_sample(s, x0, tt, eps)
    oracle = GaussianOracle(np.zeros(D_), np.ones(D_)).denoiser(s, "eps")
    means = {}
    for u in (-1.0, 0.0, 1.0):
        _, grad = vlb.vlb_term_and_grad(s, _with_u(oracle, u)(xt, tt), x0, xt, tt, "eps", "learned", levels=None)
        g = grad[:, D_:].reshape(-1)                    # d(sum of terms)/du per element
        means[u] = (g.mean(), g.std() / math.sqrt(g.size))
    assert mc_close(means[1.0][0], 0.0, means[1.0][1]), means[1.0]
    for u in (-1.0, 0.0):
        assert means[u][0] < -TOL["mc_z"] * means[u][1], (u, means[u])
    c = np.full((8, D_), 0.3)                           # a single point: x0 known, Delta = 0
    xt_c = D.q_sample(s, c, np.full(8, t), eps[:8])
    knows = (xt_c - s.sqrt_alpha_bar[t] * c) / s.sqrt_one_minus_alpha_bar[t]
    _, grad = vlb.vlb_term_and_grad(s, np.concatenate([knows, -np.ones_like(knows)], 1), c, xt_c, np.full(8, t),
                                    "eps", "learned", levels=None)
    assert np.abs(grad).max() <= TOL["exact64"]


def _noisy_model(xt, t):
    """Any 2C network will do for the bound's identities: eps part and variance part, deliberately not optimal."""
    tt = t.reshape((-1,) + (1,) * (xt.ndim - 1))
    return np.concatenate([0.5 * xt - 0.1 + 0.001 * tt, np.tanh(xt) * 0.8 - 0.2], axis=1)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_V4_T_times_the_per_draw_term_is_unbiased_for_the_bounds_sum(prediction, rng):
    """The average over every t of the training losses equals the bound computed by vlb_terms (same noise):
    loss 'vlb' gives mean_n sum_t L_t, and the bound part of 'hybrid' lambda times it."""
    s = _linear(30, beta_end=0.3)
    x0 = -1.0 + 2.0 * rng.integers(0, 17, (4, 1, 3, 3)) / 16
    noise = rng.standard_normal((s.T,) + x0.shape)
    bound = losses.vlb_terms(s, _noisy_model, x0, noise, prediction, "learned", levels=17)
    want = float(np.mean(bound["total"] - bound["prior"]))        # mean_n sum_t L_t
    per_t_vlb, per_t_hybrid = [], []
    for t in range(s.T):
        tt = np.full(4, t)
        xt = D.q_sample(s, x0, tt, noise[t])
        out = _noisy_model(xt, tt)
        per_t_vlb.append(vlb.training_loss(s, out, x0, xt, tt, noise[t], prediction, "vlb", "learned", levels=17)[0])
        hybrid = vlb.training_loss(s, out, x0, xt, tt, noise[t], prediction, "hybrid", "learned", levels=17)[0]
        per_t_hybrid.append(hybrid - losses.simple_loss(s, out[:, :1], x0, tt, noise[t], prediction))
    assert abs(np.mean(per_t_vlb) - want) <= TOL["exact64"] * want
    assert abs(np.mean(per_t_hybrid) - vlb.HYBRID_LAMBDA * want) <= TOL["exact64"] * vlb.HYBRID_LAMBDA * want


def test_V4_stop_gradient_leaves_the_mean_to_l_simple_and_the_variance_to_the_bound(rng):
    """The hybrid gradient's mean channels are L_simple's exactly, for every lambda; its variance channels are
    lambda T / N times the bound's own gradient (the full vlb gradient's variance part), linear in lambda."""
    s = _linear(100, beta_end=0.2)
    x0 = -1.0 + 2.0 * rng.integers(0, 17, (6, 1, 2, 2)) / 16
    t, eps = np.array([0, 1, 5, 40, 99, 0]), rng.standard_normal(x0.shape)
    xt = D.q_sample(s, x0, t, eps)
    out = 0.5 * rng.standard_normal((6, 2, 2, 2))
    _, d_simple = losses.simple_loss_and_grad(s, out[:, :1], x0, t, eps, "eps")
    _, d_bound = vlb.vlb_term_and_grad(s, out, x0, xt, t, "eps", "learned", 17)   # mean not stopped
    for lam in (1e-3, 1.0):
        _, g, _ = vlb.training_loss_and_grad(s, out, x0, xt, t, eps, "eps", "hybrid", "learned", lam, levels=17)
        assert np.array_equal(g[:, :1], d_simple)
        np.testing.assert_allclose(g[:, 1:], lam * s.T / 6 * d_bound[:, 1:], rtol=TOL["exact64"], atol=0)
    assert np.abs(d_bound[:, :1]).max() > 0          # without the stop the bound does push on the mean


def test_V4_at_initialisation_lambda_makes_the_bound_comparable_with_l_simple():
    """The figures on the page: the zero network (eps = 0, u = 0) on 64 digits of the test split, cosine T = 1000,
    17 levels, noise default_rng(0): L_vlb = 747 bits/dim, 728 of them (97%) from the clipped last step, so
    lambda L_vlb = 0.75 against L_simple = E eps^2 = 1."""
    from lab import data
    x = data.load("digits", split="test")[:64].astype(np.float64)
    s = Schedule(make_betas("cosine", 1000), warn=False)
    zero = _with_u(lambda xt, t: np.zeros_like(xt), 0.0)
    out = losses.vlb_terms(s, zero, x, np.random.default_rng(0), variance="learned", levels=17)
    total = float(np.mean(out["total"] - out["prior"]))
    per_t = out["terms"].mean(axis=1)
    assert 746 < total < 748 and int(np.argmax(per_t)) == 999 and 727 < per_t[999] < 729
    assert 0.97 < per_t[999] / total < 0.98
    assert 0.74 < vlb.HYBRID_LAMBDA * total < 0.76


def _bayes_step_variances(abar_s, abar_t):
    """Var[x_s | x_t] of the long step s < t by Gaussian conditioning on the ORIGINAL alpha_bar: for one point
    x_0 (x_s | x_0 ~ N(., 1 - abar_s), x_t | x_s ~ N(sqrt(a) x_s, 1 - a), a = abar_t / abar_s) and for N(0, I) data."""
    a = abar_t / abar_s
    point = 1.0 / (1.0 / (1.0 - abar_s) + a / (1.0 - a))
    return point, 1.0 - a


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_V5_respaced_ends_are_the_true_variances_of_the_long_step(spacing, rng):
    s = Schedule(make_betas("cosine", 1000), warn=False)
    kept = samplers.timesteps(1000, 10, spacing)
    step = samplers.respace(s, kept, warn=False)
    xt, mean_out = rng.standard_normal((2, 10, 1, 2, 2))
    i = np.arange(10)
    for u, which in ((-1.0, 0), (1.0, 1)):
        out = np.concatenate([mean_out, np.full_like(mean_out, u)], axis=1)
        var = D.p_mean_variance(step, out, xt, i, "eps", "learned").variance[:, 0, 0, 0]
        want = _bayes_step_variances(s.alpha_bar[kept[:-1]], s.alpha_bar[kept[1:]])[which]
        np.testing.assert_allclose(var[1:], want, rtol=TOL["respace64"])
        # the un-respaced rule would use one original step's variance for a step spanning ~100 of them: off by
        # 95% or more at every kept step but the noisiest (where cosine's clipped beta = 0.999 is near 1 anyway)
        one_step = D.p_mean_variance(s, out, xt, kept, "eps", "learned").variance[1:, 0, 0, 0]
        assert np.all(np.abs(one_step / want - 1)[:-1] > 0.9)


def test_V5_respaced_chain_with_u_1_samples_unit_gaussian_data_exactly_monte_carlo(rng):
    """x_0 ~ N(0, I): the 10-step ancestral chain with the oracle mean and u = 1 gives x_0 ~ N(0, I) (mean 0,
    variance 1 within 5 standard errors); for one point with u = -1 every kept step's x has q's variance
    1 - abar; DDIM ignores u (same samples as the mean channels alone)."""
    s = Schedule(make_betas("cosine", 1000), warn=False)
    n = 40000
    g = GaussianOracle(np.zeros(2), np.ones(2))
    x = samplers.sample_loop(s, _with_u(g.denoiser(s, "eps"), 1.0), rng.standard_normal((n, 2)), rng,
                             steps=10, spacing="linspace", variance="learned").x
    assert mc_close(x.mean(0), 0.0, x.std(0) / math.sqrt(n))
    assert mc_close(x.var(0), 1.0, math.sqrt(2.0 / n)), x.var(0)
    def knows_x0(xt, t):  # the exact eps of one point c = 0.4: (x_t - sqrt(abar) c) / sqrt(1 - abar)
        return (xt - s.sqrt_alpha_bar[t][:, None] * 0.4) / s.sqrt_one_minus_alpha_bar[t][:, None]
    res = samplers.sample_loop(s, _with_u(knows_x0, -1.0), rng.standard_normal((n, 2)), rng,
                               steps=10, spacing="linspace", variance="learned", record=True)
    for t, xt, _ in res.trajectory[1:]:      # the input of each step after the first (which starts from N(0, I))
        assert mc_close(xt.var(0), 1.0 - s.alpha_bar[t], (1.0 - s.alpha_bar[t]) * math.sqrt(2.0 / n)), t
    x_T = rng.standard_normal((64, 2))
    mean_only = samplers.sample_loop(s, g.denoiser(s, "eps"), x_T, [None] * 10, "ddim", 10, "linspace",
                                     variance="fixed_small").x
    learned = samplers.sample_loop(s, _with_u(g.denoiser(s, "eps"), 0.7), x_T, [None] * 10, "ddim", 10, "linspace",
                                   variance="learned").x
    assert np.array_equal(mean_only, learned)


def test_V1_V5_with_every_step_kept_respacing_is_the_plain_rule(rng):
    for name in ("linear", "cosine"):
        s = Schedule(make_betas(name, 1000), warn=False)
        every = samplers.respace(s, np.arange(1000), warn=False)
        u = rng.uniform(-1.5, 1.5, (1000, 3))
        t = np.arange(1000)
        np.testing.assert_allclose(D.learned_log_variance(every, u, t), D.learned_log_variance(s, u, t),
                                   rtol=TOL["respace64"], atol=TOL["respace64"])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_V6_best_step_variance_is_the_numerical_minimum_of_the_average_kl(schedule, rng):
    """At each step, errors of the mean from tiny (r = e / beta~ ~ 1e-3) to large (r ~ 30): the bound's term with
    fixed_small (the library's normal_kl at sigma^2 = beta~_t) fed to best_step_variance gives the minimum over
    log sigma^2 of the items' average KL found by Brent's method, and where it is reached."""
    from scipy.optimize import minimize_scalar
    s = Schedule(make_betas(schedule, 1000), warn=False)
    steps, scales = (1, 3, 10, 100, 500, 998), (0.03, 0.3, 1.0, 5.5, 0.1, 2.0)
    small = np.zeros(s.T)
    small[0] = 0.7                                                   # L_0: kept as given
    errors = {}
    for t, k in zip(steps, scales):
        lq = math.log(s.posterior_variance[t])
        delta = k * math.sqrt(s.posterior_variance[t]) * rng.standard_normal((64, 3))   # mu_theta - mu~_t
        errors[t] = delta
        small[t] = np.mean(losses.normal_kl(0.0, lq, delta, lq)) / losses.LN2
    terms, variances = vlb.best_step_variance(s, small)
    assert terms[0] == 0.7 and np.isnan(variances[0])
    for t in steps:
        lq = math.log(s.posterior_variance[t])
        avg = lambda ell: np.mean(losses.normal_kl(0.0, lq, errors[t], ell)) / losses.LN2   # noqa: E731
        best = minimize_scalar(avg, bounds=(lq - 5.0, lq + 8.0), method="bounded", options={"xatol": 1e-11})
        # the minimum value is flat in log sigma^2: Brent's 1e-11 in the argument is ~1e-22 in the value
        np.testing.assert_allclose(terms[t], best.fun, rtol=TOL["exact64"], atol=0)
        # the argument of a quadratic minimum to sqrt(float64 eps * value / curvature) ~ 1e-8
        np.testing.assert_allclose(math.log(variances[t]), best.x, rtol=0, atol=TOL["fd64"])
        assert terms[t] <= small[t] and terms[t] > 0
    untouched = np.setdiff1d(np.arange(1, s.T), steps)
    assert np.all(terms[untouched] == 0) and np.allclose(variances[untouched], s.posterior_variance[untouched])
    with pytest.raises(InputError, match="1000 finite terms"):
        vlb.best_step_variance(s, small[:10])


def test_V6_clipped_cosine_last_step_leaves_the_interpolation_no_range():
    """Cosine, T = 1000: at t = T - 1 (beta clipped to 0.999) every u of (V1) gives the same variance to 1e-5,
    an unclipped eps error delta makes the step's r = e / beta~ = beta / (1 - beta) delta^2 = 999 delta^2 (about 1
    at delta = 0.03), and x0_hat clipped to
    [-1, 1] bounds r below 1e-5 for every eps error (x0 in [-1, 1])."""
    s = Schedule(make_betas("cosine", 1000), warn=False)
    t = np.array([s.T - 1] * 4)
    x0 = np.array([[-1.0, 1.0], [0.5, -0.25], [1.0, 1.0], [-1.0, -1.0]])
    eps = np.array([[0.3, -1.2], [2.0, 0.1], [-0.5, 0.5], [1.0, 1.0]])
    xt = D.q_sample(s, x0, t, eps)
    spread = [D.p_mean_variance(s, np.concatenate([eps, np.full_like(eps, u)], 1), xt, t, "eps", "learned")
              .log_variance for u in (-1.0, 1.0)]
    assert np.abs(spread[1] - spread[0]).max() < 1e-5
    q_mean, q_var, _ = D.q_posterior(s, x0, xt, t)
    for err, clip, (lo, hi) in ((0.01, False, (0.099, 0.1)), (0.03, False, (0.89, 0.9)), (0.03, True, (0.0, 1e-5)), (5.0, True, (0.0, 1e-5))):
        p = D.p_mean_variance(s, eps + err, xt, t, "eps", "fixed_small", clip_x0=clip)
        r = np.mean((p.mean - q_mean) ** 2) / q_var.mean()
        assert lo <= r <= hi, (err, clip, r)
