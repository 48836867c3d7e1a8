"""Forward process (F*), posterior (P*), parameterisations (R*) and the reverse moments (M*),
each against an independent route: iterated recursions, Monte Carlo, Bayes' rule on a grid."""
import math

import numpy as np
import pytest

from reference import diffusion as D
from reference import schedules as S
from reference.errors import InputError
from tolerances import TOL, mc_close


def sched_of(name, T=1000, zero_snr=False):
    b = S.make_betas(name, T)
    return S.Schedule(S.rescale_zero_terminal_snr(b) if zero_snr else b, warn=False)


def maxrel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("name", S.SCHEDULES)
def test_F1_F2_F3_composed_steps_have_the_closed_form_moments(name):
    """Iterate the moment recursion of x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps from x_0 = 1:
    m_t = sqrt(alpha_t) m_{t-1}, v_t = alpha_t v_{t-1} + beta_t. It must land on (F3) at every t."""
    sched = sched_of(name)
    m, v = 1.0, 0.0
    ms, vs = [], []
    for beta in sched.betas:
        m, v = math.sqrt(1 - beta) * m, (1 - beta) * v + beta
        ms.append(m), vs.append(v)
    mean, var = D.q_mean_variance(sched, np.ones((sched.T, 1)), np.arange(sched.T))
    assert np.max(np.abs(mean[:, 0] - ms)) < TOL["exact64"]
    assert np.max(np.abs(var[:, 0] - vs)) < TOL["exact64"] * 10  # sum of 1000 terms of size ~1: ~1e-13 each


def test_F1_F3_monte_carlo_chain_of_q_steps_matches_q_sample(rng):
    sched = sched_of("linear", T=200)
    n, x0 = 40_000, 0.7
    x = np.full((n, 1), x0)
    for t in range(sched.T):
        x = D.q_step(sched, x, t, rng.standard_normal((n, 1)))
    a = sched.alpha_bar[-1]
    mean, var = math.sqrt(a) * x0, 1 - a
    se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
    assert mc_close(x.mean(), mean, se_mean)
    assert mc_close(x.var(ddof=1), var, se_var)
    # and q_sample draws from the same law
    y = D.q_sample(sched, np.full((n, 1), x0), sched.T - 1, rng.standard_normal((n, 1)))
    assert mc_close(y.mean(), mean, se_mean) and mc_close(y.var(ddof=1), var, se_var)


# Cov[x_0] = L L^T = [[4, 2.4], [2.4, 1.6]] (not the identity), and the identity (variance preserving)
F4_FACTORS = {"correlated": np.array([[2.0, 0.0], [1.2, 0.4]]), "unit": np.eye(2)}


@pytest.mark.parametrize("data", sorted(F4_FACTORS))
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_F4_q_sample_q_step_and_q_mean_variance_carry_cov_x0_to_abar_cov_x0_plus_one_minus_abar(name, data):
    """x_0 = L z with z ~ N(0, I), so Cov[x_0] = L L^T. q_sample and q_step are linear in (x_0, noise) with
    scalar coefficients: fed the basis vectors as a batch, each returns the rows of R, the exact coefficients
    of x_t in independent unit normals, and Cov[x_t] = R^T R. q_mean_variance gives Cov[x_t] by the law of
    total covariance over a four-point x_0 with the same covariance. All three against (F4),
    Cov[x_t] = abar_t Cov[x_0] + (1 - abar_t) I, with abar_t a plain product of (1 - beta)."""
    sched = sched_of(name)
    L, T, n = F4_FACTORS[data], sched.T, 2
    c0, eye = L @ L.T, np.eye(n)
    points = np.sqrt(n) * np.concatenate([L.T, -L.T])      # (4, n): +-sqrt(n) L e_j, weight 1/4: Cov = L L^T
    # q_step route: rows [x_0's coefficients on z (n rows); on eps_1 (n rows); ...; on eps_T (n rows)]
    rows = np.zeros((n + T * n, n))
    rows[:n] = L.T
    # q_sample route: x_t = q_sample(L z, t, eps) for z = e_j, eps = 0 and for z = 0, eps = e_j
    z_rows, eps_rows = np.concatenate([L.T, np.zeros((n, n))]), np.concatenate([np.zeros((n, n)), eye])
    abar = 1.0
    for t, beta in enumerate(sched.betas.tolist()):
        abar *= 1.0 - beta                                                  # (F2) by hand
        want = abar * c0 + (1.0 - abar) * eye                              # (F4)
        fresh = np.zeros_like(rows)
        fresh[n + t * n: n + (t + 1) * n] = eye                           # this step's noise eps_{t+1}
        rows = D.q_step(sched, rows, t, fresh)                            # (F1)
        by_step = rows.T @ rows
        r = D.q_sample(sched, z_rows, t, eps_rows)                       # (F3)
        by_sample = r.T @ r
        # q_mean_variance route: Cov[E[x_t | x_0]] + E[Var[x_t | x_0]] over the four points
        mean, var = D.q_mean_variance(sched, points, t)
        centred = mean - mean.mean(0)
        by_moments = centred.T @ centred / len(points) + np.diag(var.mean(0))
        for route, got in [("q_step", by_step), ("q_sample", by_sample), ("q_mean_variance", by_moments)]:
            assert np.max(np.abs(got - want)) <= TOL["exact64"] * np.max(np.abs(want)), (route, t, got, want)


def _bayes_on_grid(sched, x0, xt, t, half_width=12.0, n=400_001):
    """Posterior of x_{t-1} given x_t and x_0 by Bayes' rule (P1), normalised numerically."""
    a_prev = sched.alpha_bar_prev[t]
    beta = sched.betas[t]
    m_prior, v_prior = math.sqrt(a_prev) * x0, 1 - a_prev  # q(x_{t-1} | x_0)
    m_lik, s_lik = xt / math.sqrt(1 - beta), math.sqrt(beta / (1 - beta))  # q(x_t|x_{t-1}) as a function of x_{t-1}
    s_prior = math.sqrt(v_prior)
    # a grid covering both factors (the posterior lies between them), fine enough for the narrower one
    grid = np.linspace(min(m_prior - half_width * s_prior, m_lik - half_width * s_lik),
                       max(m_prior + half_width * s_prior, m_lik + half_width * s_lik), n)
    log_prior = -0.5 * (grid - m_prior) ** 2 / v_prior
    log_lik = -0.5 * (xt - math.sqrt(1 - beta) * grid) ** 2 / beta  # q(x_t | x_{t-1})
    w = np.exp(log_prior + log_lik - np.max(log_prior + log_lik))
    trap = lambda f: np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(grid))  # noqa: E731
    z = trap(w)
    mean = trap(w * grid) / z
    return mean, trap(w * (grid - mean) ** 2) / z


@pytest.mark.parametrize("t", [1, 2, 17, 500, 999])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_P1_P2_P3_posterior_is_bayes_rule_on_a_grid(name, t):
    sched = sched_of(name)
    x0, xt = np.array([[0.4]]), np.array([[-0.9]])
    mean, var, log_var = D.q_posterior(sched, x0, xt, np.array([t]))
    g_mean, g_var = _bayes_on_grid(sched, 0.4, -0.9, t)
    assert abs(mean.item() - g_mean) < TOL["grid64"] * max(1, abs(g_mean))
    assert abs(var.item() - g_var) / g_var < TOL["grid64"]
    assert log_var.item() == pytest.approx(math.log(var.item()), rel=TOL["exact64"])


def test_P3_P4_first_step_is_a_point_mass_with_a_finite_log_variance():
    sched = sched_of("linear")
    x0, xt = np.array([[0.3]]), np.array([[0.2]])
    mean, var, log_var = D.q_posterior(sched, x0, xt, 0)
    # at t=0 "x_{t-1}" is x_0 itself: alpha_bar_prev = 1 so the mean is x_0 and the variance 0
    assert mean.item() == pytest.approx(0.3, abs=TOL["exact64"]) and var.item() == 0.0
    # (P4) log 0 is replaced by the next step's log-variance, never -inf
    assert log_var.item() == math.log(sched.posterior_variance[1])


CASES = [("linear", False, 0), ("linear", False, 999), ("cosine", False, 999), ("cosine", False, 0),
         ("linear", True, 998), ("linear", True, 0)]


@pytest.mark.parametrize("name, zero_snr, t", CASES)
@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_R1_R2_R3_R4_R5_conversions_round_trip(name, zero_snr, t, prediction, rng):
    sched = sched_of(name, zero_snr=zero_snr)
    x0, eps = rng.standard_normal((5, 3, 4, 4)), rng.standard_normal((5, 3, 4, 4))
    tt = np.full(5, t)
    xt = D.q_sample(sched, x0, tt, eps)
    # the network's ideal output under each parameterisation, from the definitions
    a = sched.alpha_bar[t]
    out = {"eps": eps, "x0": x0, "v": math.sqrt(a) * eps - math.sqrt(1 - a) * x0}[prediction]
    assert maxrel(D.v_target(sched, x0, tt, eps), math.sqrt(a) * eps - math.sqrt(1 - a) * x0) < TOL["exact64"]
    # x0 is recovered by dividing by sqrt(abar): its error grows like 1/sqrt(abar) (~160 at cosine t=T-1... and more)
    amp = 1.0 / math.sqrt(a)
    assert maxrel(D.predict_x0(sched, xt, tt, out, prediction), x0) < TOL["exact64"] * 10 * amp
    assert maxrel(D.predict_eps(sched, xt, tt, out, prediction), eps) < TOL["exact64"] * 10 * amp


def test_R1_zero_terminal_snr_refuses_x0_from_eps_and_v_still_works(rng):
    sched = sched_of("linear", zero_snr=True)
    x0, eps = rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    t = np.full(4, sched.T - 1)
    xt = D.q_sample(sched, x0, t, eps)
    assert np.array_equal(xt, eps)  # no signal left at all
    with pytest.raises(InputError, match="alpha_bar = 0"):
        D.predict_x0(sched, xt, t, eps, "eps")
    v = D.v_target(sched, x0, t, eps)
    assert maxrel(D.predict_x0(sched, xt, t, v, "v"), x0) < TOL["exact64"]
    assert np.all(np.isfinite(D.predict_eps(sched, xt, t, x0, "x0")))


@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_M1_reverse_mean_in_eps_form(t, rng):
    sched = sched_of("linear")
    xt, eps = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    r = D.p_mean_variance(sched, eps, xt, np.full(3, t), "eps", "fixed_small")
    beta, a, abar = sched.betas[t], 1 - sched.betas[t], sched.alpha_bar[t]
    # (M1)  mu = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps)
    want = (xt - beta / math.sqrt(1 - abar) * eps) / math.sqrt(a)
    assert maxrel(r.mean, want) < TOL["exact64"] * 10


def test_M2_variance_choices():
    sched = sched_of("linear", T=100)
    x = np.zeros((3, 2))
    t = np.array([0, 1, 99])
    small = D.p_mean_variance(sched, x, x, t, variance="fixed_small")
    large = D.p_mean_variance(sched, x, x, t, variance="fixed_large")
    b, a = sched.betas, sched.alpha_bar
    tilde = lambda k: (1 - a[k - 1]) / (1 - a[k]) * b[k]  # noqa: E731
    assert np.allclose(small.variance[:, 0], [0.0, tilde(1), tilde(99)], rtol=TOL["exact64"], atol=0)
    assert np.allclose(large.variance[:, 0], [tilde(1), b[1], b[99]], rtol=TOL["exact64"], atol=0)
    assert np.all(np.isfinite(small.log_variance)) and np.all(np.isfinite(large.log_variance))
    # beta~ <= beta: "fixed_small" and "fixed_large" are the two extremes (Ho et al. 3.2)
    assert np.all(sched.posterior_variance <= sched.betas)


def test_clipped_x0_rederives_a_consistent_eps(rng):
    sched = sched_of("linear")
    xt = 3 * rng.standard_normal((6, 1, 4, 4))
    out = 3 * rng.standard_normal((6, 1, 4, 4))
    t = np.full(6, 10)
    r = D.p_mean_variance(sched, out, xt, t, "eps", clip_x0=True)
    assert r.x0.min() >= -1 and r.x0.max() <= 1 and np.any(np.abs(r.x0) == 1)
    # consistency: q_sample of the clipped x0 with the re-derived eps gives back x_t
    assert maxrel(D.q_sample(sched, r.x0, t, r.eps), xt) < TOL["exact64"] * 100


def test_dtype_follows_the_data(rng):
    sched = sched_of("linear")
    x = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    assert D.q_sample(sched, x, np.array([3, 4]), x).dtype == np.float32
    assert D.q_posterior(sched, x, x, 5)[0].dtype == np.float32


@pytest.mark.parametrize("call, words", [
    (lambda s, x: D.q_sample(s, x, 1000, x), ["t out of range", "1000", "0..999"]),
    (lambda s, x: D.q_sample(s, x, -1, x), ["t out of range", "-1"]),
    (lambda s, x: D.q_sample(s, x, 1.5, x), ["integer time index"]),
    (lambda s, x: D.q_sample(s, x, np.array([1, 2, 3]), x), ["t has shape (3,)", "N=4"]),
    (lambda s, x: D.q_sample(s, x, 0, x[:, :1]), ["shape mismatch", "x0", "eps"]),
    (lambda s, x: D.q_sample(s, np.where(x > 0, np.nan, x), 0, x), ["x0 holds", "non-finite"]),
    (lambda s, x: D.q_posterior(s, x, np.full_like(x, np.inf), 0), ["xt holds", "non-finite"]),
    (lambda s, x: D.predict_x0(s, x, 0, x, "epsilon"), ["unknown prediction 'epsilon'", "did you mean 'eps'"]),
    (lambda s, x: D.p_mean_variance(s, x, x, 0, variance="learned_range"), ["unknown variance 'learned_range'", "did you mean 'learned'"]),
    (lambda s, x: D.q_step(s, x, 0, x.astype(str)), ["numeric"]),
])
def test_bad_input_names_the_problem(call, words, rng):
    sched = sched_of("linear")
    x = rng.standard_normal((4, 2))
    with pytest.raises(InputError) as e:
        call(sched, x)
    for w in words:
        assert w in str(e.value)
