"""Forward process (derivations/forward.md): F1 one step, F2 the product, F3 the closed form, F4 covariance.

Independent routes: iterate the one-step map q_step (F1) T times and compare with the closed form
q_sample (F3) built from the product table (F2), exactly on coefficient vectors and in distribution
by Monte Carlo.
"""
import numpy as np
import pytest

from reference import diffusion
from reference.schedules import Schedule, make_betas
from tolerances import TOL, mc_close

SCHEDULES = [("linear", 1000), ("cosine", 1000), ("linear", 7), ("cosine", 3)]


def _sched(name, T):
    return Schedule(make_betas(name, T), warn=False)


@pytest.mark.parametrize("name,T", SCHEDULES)
def test_F1_F2_F3_iterating_q_step_gives_the_closed_form_coefficients(name, T):
    """q_step is linear: run it on coefficient vectors [coef of x0, coef of eps_1, ..., coef of eps_T].

    Step t feeds the unit vector e_{t+1} as its noise, so after steps 0..t the state holds the exact
    coefficients of x_{t+1} in terms of x0 and the independent noises.  (F3) says the x0-coefficient
    is sqrt(abar_t) and the noise coefficients have squared norm 1 - abar_t.
    """
    s = _sched(name, T)
    state = np.zeros((1, T + 1))
    state[0, 0] = 1.0                                             # x_0 = 1 * x0
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    for t in range(T):
        unit = np.zeros((1, T + 1))
        unit[0, t + 1] = 1.0                                      # fresh noise eps_{t+1}
        state = diffusion.q_step(s, state, t, unit)               # (F1)
        x0_coef = state[0, 0]
        noise_var = np.sum(state[0, 1:] ** 2)
        # The closed form's coefficients, read off q_sample by feeding x0 = 1, eps = 0 and x0 = 0, eps = 1.
        assert abs(x0_coef - diffusion.q_sample(s, one, t, zero)[0, 0]) <= TOL["exact64"]
        assert abs(noise_var - diffusion.q_sample(s, zero, t, one)[0, 0] ** 2) <= TOL["exact64"]
    # (F2) against a plain Python product of (1 - beta), term by term.
    prod = 1.0
    for t, beta in enumerate(s.betas.tolist()):
        prod *= 1.0 - beta
        assert abs(s.alpha_bar[t] - prod) <= TOL["exact64"]
        assert s.alpha_bar_prev[t] == (1.0 if t == 0 else s.alpha_bar[t - 1])


def test_F3_chain_of_q_steps_matches_closed_form_monte_carlo(rng):
    """Simulate the Markov chain with fresh noise at every step; x_t | x0 must be N(sqrt(abar) x0, 1 - abar)."""
    s = _sched("linear", 1000)
    n = 4000
    x0 = np.tile(np.array([[1.0, -0.5, 0.0]]), (n, 1))           # (N, 3): three fixed data values
    x = x0.copy()
    checks = {0: None, 9: None, 99: None, 499: None, 999: None}
    for t in range(s.T):
        x = diffusion.q_step(s, x, t, rng.standard_normal(x.shape))   # (F1)
        if t in checks:
            checks[t] = x.copy()
    for t, xt in checks.items():
        mean, var = diffusion.q_mean_variance(s, x0[:1], t)          # (F3) closed form
        m_hat, v_hat = xt.mean(0), xt.var(0, ddof=1)
        assert mc_close(m_hat, mean[0], np.sqrt(var[0] / n)), t
        # std error of a Gaussian sample variance: var * sqrt(2 / (n - 1))
        assert mc_close(v_hat, var[0], var[0] * np.sqrt(2.0 / (n - 1))), t


def test_F4_covariance_moves_to_identity_monte_carlo(rng):
    """Correlated 2-D data with covariance C0: Cov[x_t] = abar_t C0 + (1 - abar_t) I, checked by MC via q_step."""
    s = _sched("linear", 300)
    n = 20000
    L = np.array([[2.0, 0.0], [1.2, 0.4]])
    c0 = L @ L.T                                                   # Cov[x0] = [[4, 2.4], [2.4, 1.6]]
    x = rng.standard_normal((n, 2)) @ L.T + np.array([3.0, -1.0])
    for t in range(s.T):
        x = diffusion.q_step(s, x, t, rng.standard_normal(x.shape))
        if t in (29, 299):
            a = s.alpha_bar[t]
            want = a * c0 + (1 - a) * np.eye(2)                      # (F4)
            got = np.cov(x.T)
            # std error of a sample covariance entry of a Gaussian: sqrt((S_ij^2 + S_ii S_jj) / n)
            se = np.sqrt((want**2 + np.outer(np.diag(want), np.diag(want))) / n)
            assert mc_close(got, want, se), (t, got, want)
    # Unit covariance is a fixed point, exactly: abar * 1 + (1 - abar) = 1 from q_sample's coefficients.
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    for t in range(s.T):
        total = diffusion.q_sample(s, one, t, zero) ** 2 + diffusion.q_sample(s, zero, t, one) ** 2
        assert abs(total[0, 0] - 1.0) <= TOL["exact64"]
