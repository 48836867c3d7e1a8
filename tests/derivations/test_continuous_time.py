"""The continuous-time view (derivations/continuous_time.md, K1-K8), each through an independent route.

K1 the score of an eps-model: central differences of the mixture's exact log-density (G3).
K2 the chain as the SDE's discretisation: the chain's alpha_bar (F2, a product) against the SDE's
   exp(-integral of beta) as T grows, and one chain step against one Euler-Maruyama step.
K3 the SDE's marginals: Euler-Maruyama simulation (Monte Carlo) and, at matching alpha_bar, (F3).
K4 the reverse SDE: Euler-Maruyama backwards with the exact mixture score from q_1 lands on q_s (Monte Carlo).
K5 the probability-flow ODE: for Gaussian data its flow is a known linear map (quantiles move with the
   standard deviation); for a mixture it pushes the exact marginal's moments forward (Monte Carlo).
K6 the ODE in (x~, sigma): the same trajectories as (K5) in (x, s), two solve_ivp runs in different variables.
K7 DDIM = Euler: samplers.sample_loop(ddim, eta 0) against solvers.euler on the same kept steps.
K8 the sigma <-> t map: every grid is made of trained sigmas; snapping a Karras grid costs little.
"""
import math
import warnings

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from reference import diffusion, samplers, score, solvers
from reference.oracle import GaussianMixtureOracle
from reference.schedules import PriorMismatchWarning, Schedule, make_betas
from tolerances import TOL, mc_close

W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]


@pytest.fixture(scope="module")
def mix():
    return GaussianMixtureOracle(W, MEANS, cov=COVS)


@pytest.fixture(scope="module")
def sde20():
    """A short schedule (T = 20, beta 0.01..0.5, alpha_bar(1) = 0.006): 20 intervals of constant beta(s)."""
    return score.VPSDE(Schedule(make_betas("linear", 20, beta_start=0.01, beta_end=0.5), warn=False))


def _exact_q(mix, rng, n, abar):
    """n draws of q at a continuous alpha_bar: x_0 from the mixture, then (F3)."""
    x0, _ = mix.sample(rng, n)
    return math.sqrt(abar) * x0 + math.sqrt(1 - abar) * rng.standard_normal(x0.shape)


def _moments_close(x, mean, cov):
    """Sample mean and covariance within 5 standard errors (the errors from the sample's own moments)."""
    n, c = x.shape[0], x - x.mean(axis=0)
    prod = (c[:, :, None] * c[:, None, :]).reshape(n, -1)
    se_cov = (prod.std(axis=0) / math.sqrt(n)).reshape(cov.shape)
    return mc_close(x.mean(axis=0), mean, x.std(axis=0) / math.sqrt(n)) and mc_close(np.cov(x.T), cov, se_cov)


def _pf_ode_in_s(sde, mix, x, s_from, s_to, rtol=1e-11):
    """Integrate (K5) with solve_ivp on each interval of constant beta (the drift jumps at the knots)."""
    knots = np.arange(sde.T + 1) / sde.T
    pts = [s_from, *knots[(knots < s_from) & (knots > s_to)][::-1], s_to]
    for a, b in zip(pts[:-1], pts[1:]):
        mid = 0.5 * (a + b)  # beta(s) of this interval, whichever side of a knot solve_ivp evaluates

        def f(s, y, mid=mid):
            xs = y.reshape(x.shape)
            return sde.pf_ode_drift(xs, mid, mix.score(xs, sde.alpha_bar(s))).ravel()

        x = solve_ivp(f, (a, b), x.ravel(), method="DOP853", rtol=rtol, atol=rtol).y[:, -1].reshape(x.shape)
    return x


# ---- K1 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
def test_K1_score_of_the_oracle_model_is_the_gradient_of_the_log_density(mix, rng, pred):
    """Whatever the parameterisation, the model's eps (R2, R5) gives -eps / sqrt(1 - abar) = grad log q_t."""
    sched = Schedule(make_betas("linear", 1000))
    x, t = rng.normal(size=(5, 2)), np.array([0, 50, 300, 700, 999])
    eps = diffusion.predict_eps(sched, x, t, mix.predict(sched, x, t, pred), pred)
    got = score.score_from_eps(eps, sched.alpha_bar[t])
    a, h = sched.alpha_bar[t], 1e-6
    fd = np.stack([(mix.log_prob(x + h * e, a) - mix.log_prob(x - h * e, a)) / (2 * h) for e in np.eye(2)], axis=1)
    assert np.max(np.abs(got - fd) / np.maximum(1.0, np.abs(fd))) <= TOL["fd64"]
    assert np.max(np.abs(got - mix.score(x, a)) / np.maximum(1.0, np.abs(fd))) <= TOL["exact64"] * 10
    assert np.max(np.abs(score.eps_from_score(got, a) - eps)) <= TOL["exact64"] * 10


# ---- K2, K3 -------------------------------------------------------------------------------------

def test_K2_the_ddpm_chain_is_the_euler_maruyama_discretisation_of_the_vp_sde(rng):
    """Song et al.'s VP SDE, beta(s) = 0.1 + 19.9 s, as T-step chains with beta_t = beta(s)/T (DDPM's linear
    1e-4..0.02 at T = 1000). T Euler-Maruyama steps of ``em_step`` (ds = 1/T, each linear in x and z: its two
    coefficients read off by feeding (x, z) = (1, 0) and (0, 1)) carry the mean and variance of x(1) | x(0) = 1,
    and so does the chain (F3); both approach the SDE's exact marginal (K3) at rate 1/T: the chain is a
    first-order discretisation of the SDE, and EM's mean and variance over the whole of [0, 1] say so."""
    Ts, gaps = [250, 500, 1000, 2000], {"em": [], "chain": []}
    basis, z = np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]])
    for T in Ts:
        sched = Schedule(make_betas("linear", T, beta_start=0.1 / T, beta_end=20.0 / T), warn=False)
        sde = score.VPSDE(sched)
        assert abs(sde.integral(1.0) - 0.5 * (0.1 + 20.0)) <= TOL["exact64"] * 100   # the knots: sum of betas
        m, v = 1.0, 0.0
        for k in range(T):
            a, b = sde.em_step(basis, (k + 0.5) / T, 1.0 / T, z)[:, 0]      # (K2) x' = a x + b z
            m, v = a * m, a * a * v + b * b
        m_sde, v_sde = (float(q[0, 0]) for q in sde.marginal(np.ones((1, 1)), 1.0))   # (K3)
        m_chain, v_chain = (float(q[0, 0]) for q in diffusion.q_mean_variance(sched, np.ones((1, 1)), T - 1))
        gaps["em"].append(abs(math.log(m / m_sde)) + abs(math.log(v / v_sde)))
        gaps["chain"].append(abs(math.log(m_chain / m_sde)) + abs(math.log(v_chain / v_sde)))
    for name, g in gaps.items():
        assert abs(np.polyfit(np.log(Ts), np.log(g), 1)[0] + 1.0) <= TOL["rate64"], (name, g)
    # one step: q_step (F1) and one Euler-Maruyama step of ds = 1/T share the noise term; their means differ
    # by (sqrt(1 - beta) - 1 + beta/2) x = O(beta^2): halving beta quarters the gap
    x, z, gap = rng.normal(size=(4, 2)), rng.normal(size=(4, 2)), []
    for T in (500, 1000):
        sched = Schedule(make_betas("linear", T, beta_start=0.1 / T, beta_end=20.0 / T), warn=False)
        t = T // 2
        em = score.VPSDE(sched).em_step(x, (t + 0.5) / T, 1.0 / T, z)
        gap.append(np.max(np.abs(diffusion.q_step(sched, x, t, z) - em) / np.abs(x)))
    assert abs(gap[0] / gap[1] - 4.0) <= 0.05


def test_K3_euler_maruyama_of_the_vp_sde_reproduces_its_marginals_and_q_at_matching_alpha_bar(sde20, rng):
    """Euler-Maruyama's weak error here is sum (beta ds)^2 / 8 ~ 0.4% of the mean, far inside 5 standard errors."""
    n, M = 10000, 1000
    x0 = np.tile([[0.8, -0.3]], (n, 1))
    x, grid = x0.copy(), np.linspace(0.0, 1.0, M + 1)
    checks = (250, 500, 1000)
    for k in range(M):
        x = sde20.em_step(x, 0.5 * (grid[k] + grid[k + 1]), grid[k + 1] - grid[k], rng.standard_normal(x.shape))
        if k + 1 in checks:
            mean, var = sde20.marginal(x0[:1], grid[k + 1])
            se = np.sqrt(var[0] / n)
            assert mc_close(x.mean(axis=0), mean[0], se), (k, x.mean(axis=0), mean[0])
            assert mc_close(x.var(axis=0), var[0], var[0] * math.sqrt(2.0 / n))
    # at the s where alpha_bar(s) = abar_t the marginal is the chain's closed form (F3)
    sched = Schedule(make_betas("linear", 20, beta_start=0.01, beta_end=0.5), warn=False)
    for t in (0, 7, 15):  # (the chain's prod(1 - beta) < exp(-sum beta): abar_19 lies below alpha_bar(1))
        s = sde20.s_of_alpha_bar(sched.alpha_bar[t])
        assert abs(sde20.alpha_bar(s) - sched.alpha_bar[t]) <= TOL["exact64"]
        got, want = sde20.marginal(x0[:2], s), diffusion.q_mean_variance(sched, x0[:2], t)
        assert all(np.max(np.abs(g - w)) <= TOL["exact64"] for g, w in zip(got, want))


# ---- K4, K5, K6 ---------------------------------------------------------------------------------

def test_K4_reverse_sde_with_the_exact_score_carries_q1_back_to_qs_monte_carlo(mix, sde20, rng):
    n, M, s_end = 4000, 400, 0.3
    x = _exact_q(mix, rng, n, sde20.alpha_bar(1.0))
    grid = np.linspace(1.0, s_end, M + 1)
    for k in range(M):
        s, ds = 0.5 * (grid[k] + grid[k + 1]), grid[k + 1] - grid[k]             # ds < 0
        drift = sde20.reverse_drift(x, s, mix.score(x, sde20.alpha_bar(s)))
        # (K4)  x_{s+ds} = x + [f - g^2 score] ds + g sqrt(|ds|) z
        x = x + drift * ds + sde20.diffusion(s) * math.sqrt(-ds) * rng.standard_normal(x.shape)
    a = sde20.alpha_bar(s_end)
    assert _moments_close(x, math.sqrt(a) * mix.mean, a * mix.cov + (1 - a) * np.eye(2))


def test_K5_pf_ode_moves_gaussian_data_by_the_exact_linear_map(sde20, rng):
    """One Gaussian N(mu, U diag(lam) U^T): each eigen-coordinate of x - sqrt(abar) mu scales by
    sqrt(abar lam + 1 - abar), the standard deviation of q (derivations/continuous_time.md)."""
    mu, cov = np.array([0.4, -0.2]), np.array([[0.3, 0.12], [0.12, 0.1]])
    one = GaussianMixtureOracle([1.0], [mu], cov=[cov])
    lam, U = np.linalg.eigh(cov)
    s_a, s_b = 0.9, 0.12
    x_a = rng.normal(size=(6, 2)) * 2.0
    x_b = _pf_ode_in_s(sde20, one, x_a, s_a, s_b)
    a, b = sde20.alpha_bar(s_a), sde20.alpha_bar(s_b)
    scale = np.sqrt((b * lam + 1 - b) / (a * lam + 1 - a))
    want = math.sqrt(b) * mu + (((x_a - math.sqrt(a) * mu) @ U) * scale) @ U.T
    assert np.max(np.abs(x_b - want)) <= TOL["ode64"] * np.max(np.abs(want))


def test_K5_pf_ode_pushes_the_mixture_marginal_forward_monte_carlo(mix, sde20, rng):
    s_end = 0.1
    x = _pf_ode_in_s(sde20, mix, _exact_q(mix, rng, 3000, sde20.alpha_bar(1.0)), 1.0, s_end, rtol=1e-8)
    a = sde20.alpha_bar(s_end)
    assert _moments_close(x, math.sqrt(a) * mix.mean, a * mix.cov + (1 - a) * np.eye(2))


def test_K5_K6_pf_ode_in_s_and_the_ode_in_sigma_have_the_same_solution(mix, sde20, rng):
    """(K5) in (x, s) with the score; (K6) in (x~ = x / sqrt(abar), sigma) with the denoiser D: the same path."""
    s_a, s_b = 1.0, 0.05
    x_a = _exact_q(mix, rng, 8, sde20.alpha_bar(s_a))
    x_b = _pf_ode_in_s(sde20, mix, x_a, s_a, s_b)
    sig_a, sig_b = score.sigma_from_alpha_bar(sde20.alpha_bar(s_a)), score.sigma_from_alpha_bar(sde20.alpha_bar(s_b))

    def f(sig, y):
        xs = y.reshape(x_a.shape)
        return score.ode_slope(xs, sig, mix.denoise_sigma(xs, sig)).ravel()

    y = solve_ivp(f, (sig_a, sig_b), (x_a / math.sqrt(sde20.alpha_bar(s_a))).ravel(), method="DOP853",
                  rtol=1e-11, atol=1e-11).y[:, -1].reshape(x_a.shape)
    want = x_b / math.sqrt(sde20.alpha_bar(s_b))
    assert np.max(np.abs(y - want)) <= TOL["ode64"] * np.max(np.abs(want))


# ---- K7, K8 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
def test_K7_euler_on_the_kept_steps_is_ddim_eta0_step_for_step(mix, rng, pred, spacing, clip_x0):
    """Equal to rounding: x~ is x sqrt(1 + sigma^2), up to 157 x at the linear schedule's last step (the
    cosine's sigma_max = 3e4 carries rounding of ~1e-12 into x0_hat; its algebra is the same)."""
    sched = Schedule(make_betas("linear", 1000))
    x_T = rng.normal(size=(16, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PriorMismatchWarning)  # "leading" starts late: the same for both
        ddim = samplers.sample_loop(sched, mix.denoiser(sched, pred), x_T, [None] * 12, "ddim", steps=12,
                                    spacing=spacing, eta=0.0, prediction=pred, clip_x0=clip_x0, record=True)
    D = solvers.model_denoiser(sched, mix.denoiser(sched, pred), pred, clip_x0)
    got = solvers.sample(D, x_T, solvers.sigma_grid(sched, 12, spacing), "euler", record=True)
    assert np.max(np.abs(got.x - ddim.x)) <= TOL["exact64"]
    for (t, xt, x0), (sig, xs, x0s) in zip(ddim.trajectory, got.trajectory):
        assert sig == score.trained_sigmas(sched)[t]
        assert np.max(np.abs(xs - xt)) <= TOL["exact64"] and np.max(np.abs(x0s - x0)) <= TOL["exact64"]


@pytest.mark.parametrize("grid", solvers.GRIDS)
@pytest.mark.parametrize("n", [1, 10, 50, 1000])
def test_K8_every_grid_is_trained_sigmas_and_the_network_sees_their_integer_steps(mix, grid, n):
    sched = Schedule(make_betas("linear", 1000))
    table = score.trained_sigmas(sched)
    g = solvers.sigma_grid(sched, n, grid)
    assert g.shape == (n + 1,) and g[-1] == 0.0 and np.all(np.diff(g) < 0)
    steps = np.searchsorted(table, g[:-1])
    assert np.array_equal(table[steps], g[:-1])                        # each level IS a trained sigma_t
    if grid != "karras":
        assert np.array_equal(steps, samplers.timesteps(1000, n, grid)[::-1])
    else:
        assert steps[0] == 999 and (n == 1 or steps[-1] == 0)
    seen = []
    D = solvers.model_denoiser(sched, lambda xt, t: seen.append(t) or mix.predict(sched, xt, t), "eps")
    solvers.sample(D, np.zeros((3, 2)), g, "euler")
    assert all(t.dtype == np.int64 and np.all(t == t[0]) for t in seen)
    assert [int(t[0]) for t in seen] == steps.tolist() == solvers.grid_timesteps(sched, g).tolist()


@pytest.mark.parametrize("sampler", ["euler", "dpm++2m"])
def test_K8_snapping_moves_a_karras_grid_to_the_nearest_trained_level_and_barely_changes_the_error(mix, rng, sampler):
    sched = Schedule(make_betas("linear", 1000))
    table = score.trained_sigmas(sched)
    x_T = rng.normal(size=(32, 2))
    fine = solvers.sample(mix.denoise_sigma, x_T, solvers.karras_sigmas(2000, table[0], table[-1]), "dpm++2m").x
    for n in (8, 16, 32, 64):
        cont = solvers.karras_sigmas(n, table[0], table[-1])
        snapped = solvers.sigma_grid(sched, n, "karras")
        t = solvers.grid_timesteps(sched, snapped)
        moved = np.abs(np.log(snapped[:-1]) - np.log(cont[:-1]))
        nearest = np.min(np.abs(np.log(table)[None, :] - np.log(cont[:-1])[:, None]), axis=1)  # in log sigma
        pushed = np.concatenate([t[:-1] == t[1:] + 1, [False]])       # moved up to keep the steps distinct
        assert np.all((moved <= nearest + 1e-12) | pushed)
        errs = [np.sqrt(np.mean((solvers.sample(mix.denoise_sigma, x_T, g, sampler).x - fine) ** 2))
                for g in (cont, snapped)]
        assert abs(errs[1] / errs[0] - 1.0) <= TOL["snap_cost"], (n, errs)


def test_K8_a_level_snaps_to_the_nearest_trained_step_in_log_sigma_not_in_sigma():
    """Just past the log-midpoint from step t to t+1 (fraction 0.505 in log sigma), the nearest trained level
    in log sigma is t+1, in sigma still t (the sigma-midpoint lies at 0.51-0.55 for the linear schedule's
    first steps, where sigma_{t+1} / sigma_t = 1.48, 1.22, 1.15)."""
    sched = Schedule(make_betas("linear", 1000))
    table = score.trained_sigmas(sched)
    levels = [table[t] * (table[t + 1] / table[t]) ** 0.505 for t in (2, 1, 0)]
    assert solvers.grid_timesteps(sched, solvers.snap_sigmas(sched, levels + [0.0])).tolist() == [3, 2, 1]
