"""derivations/design_space.md (D1-D16), each through an independent route: quadrature and ODE solves of the
process's own coefficients, Bayes' rule on a grid, Monte Carlo within 5 standard errors, the exact mixture oracle
(reference/oracle.py) as the network of every parameterisation, KS tests against closed-form CDFs, and Kingma &
Gao's printed weightings."""
from types import SimpleNamespace as NS

import numpy as np
import pytest
from scipy import stats
from scipy.integrate import solve_ivp
from scipy.special import expit, logit

from common.choices import PROCESSES
from reference import objectives as O
from reference import processes as P
from reference import samplers, solvers
from reference.oracle import GaussianMixtureOracle
from reference.schedules import Schedule, make_betas
from reference.score import trained_sigmas
from tolerances import TOL, mc_close

# a 1-D mixture: skewed and bimodal, so no identity of Gaussian data can pass for a general one
MIX = GaussianMixtureOracle([0.3, 0.7], [[-1.0], [0.8]], var=[[0.05], [0.2]])
EDM, FLOW = NS(objective="edm"), NS(objective="flow")


def _times(proc, n=7):
    return np.linspace(0.05, 0.9, n) * proc.t_max


def _vp(x_tilde, sigma_tilde):
    """The VP coordinates of (x~, sigma~): x = x~ sqrt(abar), abar = 1 / (1 + sigma~^2) (K6), for the oracle."""
    a = 1.0 / (1.0 + np.asarray(sigma_tilde, dtype=np.float64) ** 2)
    return x_tilde * np.sqrt(a).reshape((-1, 1) if np.ndim(a) else ()), a


# ---- the process family (D1-D4) -------------------------------------------------------------------

@pytest.mark.parametrize("name", PROCESSES)
def test_D1_the_sde_of_f_and_g2_integrated_by_quadrature_has_the_process_variance(name):
    """v' = 2 f v + g^2 from v(0) = sigma(0)^2 + alpha(0)^2 Var x0, solved by DOP853, is sigma^2 + alpha^2 Var x0."""
    proc, var0 = P.make_process(name), 0.37
    ts = _times(proc)
    v0 = float(proc.sigma(0.0) ** 2 + proc.alpha(0.0) ** 2 * var0)
    sol = solve_ivp(lambda t, v: 2.0 * proc.drift(t) * v + proc.g2(t), (0.0, ts[-1]), [v0], t_eval=ts,
                    method="DOP853", rtol=1e-11, atol=1e-11)
    want = proc.sigma(ts) ** 2 + proc.alpha(ts) ** 2 * var0
    np.testing.assert_allclose(sol.y[0], want, rtol=TOL["ode64"])


@pytest.mark.parametrize("name", PROCESSES)
def test_D2_D3_derivatives_by_finite_differences_and_every_inverse_by_bisection(name):
    proc = P.make_process(name)
    t, h = _times(proc), 1e-6 * proc.t_max
    for f, df in ((proc.alpha, proc.dalpha_dt), (proc.sigma, proc.dsigma_dt), (proc.log_snr, proc.dlambda_dt)):
        np.testing.assert_allclose(df(t), (f(t + h) - f(t - h)) / (2 * h), rtol=TOL["fd64"], atol=TOL["fd64"])
    assert np.all(proc.dlambda_dt(t) < 0)                                           # (D2)  data -> noise
    np.testing.assert_allclose(proc.sigma_tilde(t), np.exp(-0.5 * proc.log_snr(t)), rtol=TOL["exact64"])
    s = proc.sigma_tilde(t)
    # the closed form against 200 halvings of the bracket, and the round trip
    np.testing.assert_allclose(proc.t_of_sigma_tilde(s), proc.solve_t(s), rtol=TOL["invert64"], atol=TOL["invert64"])
    np.testing.assert_allclose(proc.t_of_sigma_tilde(s), t, rtol=TOL["invert64"])


@pytest.mark.parametrize("name", PROCESSES)
def test_D3_D4_the_bayes_denoiser_by_quadrature_is_one_function_of_x_tilde_and_sigma_tilde_in_every_process(name):
    """E[x0 | x_t] by Bayes' rule on a grid in the process's own (alpha, sigma) equals the oracle's D(x~, sigma~)."""
    proc, grid = P.make_process(name), np.linspace(-4.0, 4.0, 8001)
    prior = np.exp(MIX.log_prob(grid[:, None], 1.0))
    for t in _times(proc, 4):
        a, s = float(proc.alpha(t)), float(proc.sigma(t))
        xt = np.array([-2.0, -0.7, 0.1, 0.9, 2.5]) * np.sqrt(a * a + s * s)
        like = np.exp(-0.5 * ((xt[:, None] - a * grid[None]) / s) ** 2)
        post = prior[None] * like
        want = np.trapezoid(post * grid[None], grid, axis=1) / np.trapezoid(post, grid, axis=1)
        x_tilde, sigma_tilde = P.to_tilde(proc, xt[:, None], t)
        got = MIX.denoise_sigma(x_tilde, float(sigma_tilde))[:, 0]
        np.testing.assert_allclose(got, want, rtol=TOL["grid64"], atol=TOL["grid64"])
        back, t_back = P.from_tilde(proc, x_tilde, sigma_tilde)
        np.testing.assert_allclose(back[:, 0], xt, rtol=TOL["invert64"])
        np.testing.assert_allclose(t_back, t, rtol=TOL["invert64"])


def _flow_velocity_of_oracle(x, time_in):
    """The exact marginal velocity E[eps - x0 | x_t] of the mixture on the flow path, from the oracle's VP
    posterior means (R2, G4): the same eps and x0 at the same sigma~ = t / (1 - t)."""
    t = time_in / 1000.0
    x_vp, a = _vp(x / (1.0 - t)[:, None], t / (1.0 - t))
    return MIX.eps_mean(x_vp, a) - MIX.x0_mean(x_vp, a)


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_D4_D13_ddim_on_the_vp_chain_and_euler_on_the_flow_path_give_the_same_x0(spacing):
    sched = Schedule(make_betas("linear", 1000))
    kept = samplers.timesteps(1000, 12, spacing)[::-1]
    x_T = np.random.default_rng(0).standard_normal((64, 1))
    x = x_T
    for i, t in enumerate(kept):                               # DDIM, eta = 0, the exact eps, down to t = -1
        t_prev = kept[i + 1] if i + 1 < len(kept) else -1
        eps = MIX.predict(sched, x, np.full(64, t), "eps")
        x, _ = samplers.ddim_step(sched, eps, x, t, t_prev, None)
    # flow matching at the same lambda grid: t_f = sigma~ / (1 + sigma~), Euler in t_f on dx/dt = u
    sig = trained_sigmas(sched)[kept]
    tf = np.concatenate([sig / (1.0 + sig), [0.0]])
    xf = (1.0 - tf[0]) * x_T * np.sqrt(1.0 + sig[0] ** 2)      # (D3)  the same x~ = x_T / sqrt(abar)
    for i in range(len(kept)):
        xf = xf + (tf[i + 1] - tf[i]) * _flow_velocity_of_oracle(xf, np.full(64, 1000.0 * tf[i]))
    np.testing.assert_allclose(xf, x, rtol=TOL["equiv64"], atol=TOL["equiv64"])
    # and the solvers' Euler with the flow objective's denoiser, on the same sigma~ grid
    D = O.denoiser(FLOW, _flow_velocity_of_oracle)
    xe = solvers.euler(D, x_T * np.sqrt(1.0 + sig[0] ** 2), np.concatenate([sig, [0.0]]))
    np.testing.assert_allclose(xe, x, rtol=TOL["equiv64"], atol=TOL["equiv64"])


# ---- EDM (D5-D8) -----------------------------------------------------------------------------------

def test_D5_D6_D8_edm_unit_input_unit_target_and_unit_weight_by_monte_carlo():
    """Data of std sigma_data (a symmetric two-point mixture, not Gaussian): Var(c_in x) = 1 = Var(target)."""
    rng, sd, n = np.random.default_rng(1), 0.7, 200_000
    cfg = NS(objective="edm", sigma_data=sd)
    sign = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
    x0 = (sd * (0.9 * sign + np.sqrt(0.19) * rng.standard_normal(n)))[:, None]   # E x0 = 0, Var x0 = sd^2
    for sigma in (0.01, 0.3, 0.7, 5.0, 80.0):
        eps = rng.standard_normal((n, 1))
        net_in, _, target, weight = O.training_target(cfg, x0, eps, np.full(n, sigma))
        for y in (net_in, target):
            sq = y[:, 0] ** 2                                 # E y = 0: the second moment is the variance
            assert mc_close(sq.mean(), 1.0, sq.std() / np.sqrt(n))
        np.testing.assert_allclose(weight, 1.0, rtol=TOL["exact64"])      # (D8)  lambda c_out^2 = 1


def test_D6_c_skip_minimises_the_target_variance():
    """(D6) Var of (x0 - c x) / c_out over c on a grid (closed-form second moments of independent x0, eps)."""
    sd = 0.5
    for sigma in (0.1, 0.5, 3.0):
        c_skip, c_out, _, _ = (float(v) for v in O.edm_precond(sigma, sd))
        c = np.linspace(0.0, 1.0, 100_001)
        var = ((1 - c) ** 2 * sd ** 2 + c ** 2 * sigma ** 2) / c_out ** 2
        assert abs(c[np.argmin(var)] - c_skip) <= 1e-5 and abs(var.min() - 1.0) <= TOL["grid64"]


@pytest.mark.parametrize("cfg", [EDM, FLOW])
def test_D6_D10_D12_every_parameterisation_of_the_bayes_optimum_gives_the_same_denoiser(cfg):
    """The Bayes-optimal network of each objective, built from the oracle's posterior means, through
    objectives.denoiser, is the oracle's D(x~, sigma~) at every level of both grids."""
    sd = 0.5

    def edm_net(net_in, time_in):                             # F* = (x0* - c_skip x) / c_out at sigma = e^{t/250}
        sigma = np.exp(time_in / 250.0)
        x = net_in * np.sqrt(sigma ** 2 + sd ** 2)[:, None]
        x_vp, a = _vp(x, sigma)
        c_skip, c_out = sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / np.sqrt(sigma ** 2 + sd ** 2)
        return (MIX.x0_mean(x_vp, a) - c_skip[:, None] * x) / c_out[:, None]

    net = edm_net if cfg.objective == "edm" else _flow_velocity_of_oracle
    D = O.denoiser(cfg, net)
    x = np.random.default_rng(2).standard_normal((16, 1))
    for grid in ("karras", "linspace"):
        for s in O.sigma_grid(cfg, 8, grid)[:-1]:
            xs = x * np.sqrt(1.0 + s * s)
            np.testing.assert_allclose(D(xs, s), MIX.denoise_sigma(xs, s), rtol=TOL["equiv64"], atol=TOL["equiv64"])
    assert O.sigma_range(FLOW)[1] / (1 + O.sigma_range(FLOW)[1]) == pytest.approx(80 / 81, rel=TOL["exact64"])


@pytest.mark.parametrize("cfg, dist", [
    (EDM, lambda lv: stats.kstest(np.log(lv), "norm", args=(-1.2, 1.2))),
    (NS(objective="edm", p_mean=0.4, p_std=2.0), lambda lv: stats.kstest(np.log(lv), "norm", args=(0.4, 2.0))),
    (FLOW, lambda lv: stats.kstest(lv, "uniform")),
    (NS(objective="flow", t_sampling="logit-normal", logit_mean=0.5, logit_std=0.7),
     lambda lv: stats.kstest(logit(lv), "norm", args=(0.5, 0.7))),
    # (D15) the shift adds ln s to logit t: uniform t shifted by s = 3 has logit t' = logistic + ln 3
    (NS(objective="flow", shift=3.0), lambda lv: stats.kstest(logit(lv), "logistic", args=(np.log(3.0), 1.0))),
    (NS(objective="flow", t_sampling="logit-normal", shift=3.0),
     lambda lv: stats.kstest(logit(lv), "norm", args=(np.log(3.0), 1.0)))])
def test_D7_D14_D15_level_follows_its_density_ks(cfg, dist):
    u = np.random.default_rng(3).uniform(size=20_000)
    assert dist(O.level(cfg, u)).pvalue > TOL["ks_p"]


# ---- flow matching (D9-D12) -------------------------------------------------------------------------

def test_D9_the_marginal_velocity_is_the_conditional_mean_by_monte_carlo():
    """The oracle's E[eps - x0 | x_t] is orthogonal to every test function of x_t under training_target's pairs:
    E[(u*(x_t) - target) h(x_t)] = 0 (the normal equations of the regression the loss is)."""
    rng, n = np.random.default_rng(4), 400_000
    for t in (0.1, 0.5, 0.9):
        x0, eps = MIX.sample(rng, n)[0], rng.standard_normal((n, 1))
        net_in, time_in, target, _ = O.training_target(FLOW, x0, eps, np.full(n, t))
        r = (_flow_velocity_of_oracle(net_in, time_in) - target)[:, 0]
        for h in (np.ones(n), net_in[:, 0], net_in[:, 0] ** 2, np.sin(3 * net_in[:, 0])):
            assert mc_close((r * h).mean(), 0.0, (r * h).std() / np.sqrt(n))


def test_D11_reflow_of_a_gaussian_flow_is_straight_one_euler_step_is_exact():
    m, s = 0.6, 0.4                                           # data N(m, s^2); its flow map is m + s eps (1-D OT)
    gauss = GaussianMixtureOracle([1.0], [[m]], var=[[s * s]])
    z = np.linspace(-2.5, 2.5, 11)

    def u(t, x):                                              # the exact marginal velocity (D9)
        x_vp, a = _vp(x[:, None] / (1.0 - t), t / (1.0 - t))
        return (gauss.eps_mean(x_vp, a) - gauss.x0_mean(x_vp, a))[:, 0]

    # DOP853 from just below t = 1 to t = 1e-5 (the oracle's eps is ill-posed at the ends), then one Euler step to 0:
    # the step's error is O(1e-10)
    x_end = solve_ivp(u, (1.0 - 1e-9, 1e-5), z, method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    phi = x_end - 1e-5 * u(1e-5, x_end)
    np.testing.assert_allclose(phi, m + s * z, rtol=TOL["ode64"], atol=TOL["ode64"])
    one_step_first = z - u(1.0 - 1e-9, z)                     # one Euler step of the first flow: not the map
    assert np.max(np.abs(one_step_first - phi)) > 0.1
    # reflow: regress training_target's target on x_t over the coupling (phi(z), z): a line, residual 0 (paths
    # do not cross); over the independent coupling (x0 drawn apart from eps) the residual is O(1)
    rng, n = np.random.default_rng(5), 4000
    e = rng.standard_normal((n, 1))
    indep = m + s * rng.standard_normal((n, 1))
    for t in (0.2, 0.6, 1.0 - 1e-6):
        fits = []
        for x0 in (m + s * e, indep):
            net_in, _, target, _ = O.training_target(FLOW, x0, e, np.full(n, t))
            A = np.stack([np.ones(n), net_in[:, 0]], axis=1)
            coef, *_ = np.linalg.lstsq(A, target[:, 0], rcond=None)
            fits.append((coef, np.max(np.abs(A @ coef - target[:, 0]))))
        assert fits[0][1] <= TOL["equiv64"] and fits[1][1] > 0.1
        # one Euler step from t to 0 on the reflowed field lands on the map, from any start t (D10: x_t - t u)
        c0, c1 = fits[0][0]
        x_t = (1 - t) * (m + s * z) + t * z
        np.testing.assert_allclose(x_t - t * (c0 + c1 * x_t), m + s * z, rtol=TOL["equiv64"], atol=TOL["equiv64"])


# ---- the equivalences (D13-D16) --------------------------------------------------------------------

def test_D13_the_flow_velocity_from_the_v_prediction_denoises_exactly():
    """u = ((sigma~ - 1) x~ + (1 + sigma~) sqrt(1 + sigma~^2) v) / (1 + sigma~^2): the oracle's v at trained
    steps (its own R3), mapped to a velocity, through the flow objective's denoiser, gives the oracle's D."""
    sched = Schedule(make_betas("cosine", 1000))
    steps = np.array([5, 100, 400, 800, 990])
    x = np.random.default_rng(6).standard_normal((8, 1))
    for k in steps:
        st = float(trained_sigmas(sched)[k])

        def net(xt, time_in, st=st, k=k):
            x_tilde = xt / (1.0 - time_in[:, None] / 1000.0)
            v = MIX.predict(sched, x_tilde / np.sqrt(1.0 + st * st), np.full(len(xt), k), "v")
            return ((st - 1.0) * x_tilde + (1.0 + st) * np.sqrt(1.0 + st * st) * v) / (1.0 + st * st)

        xs = x * np.sqrt(1.0 + st * st)
        np.testing.assert_allclose(O.denoiser(FLOW, net)(xs, st), MIX.denoise_sigma(xs, st),
                                   rtol=TOL["equiv64"], atol=TOL["equiv64"])


@pytest.mark.parametrize("s", [0.5, 3.0, 7.0])
def test_D15_the_shift_is_a_translation_in_lambda(s):
    flow, t = P.make_process("flow"), np.linspace(0.01, 0.99, 99)
    np.testing.assert_allclose(flow.log_snr(O.shift_t(t, s)), flow.log_snr(t) - 2.0 * np.log(s),
                               rtol=TOL["exact64"], atol=TOL["exact64"] * 10)
    # the shifted density at lambda - 2 ln s is the unshifted one at lambda: w changes only by omega (D13)
    lam = flow.log_snr(t)
    np.testing.assert_allclose(O.weighting("flow", lam - 2 * np.log(s), shift=s) / O.weighting("flow", lam),
                               (expit(lam / 2) / expit(lam / 2 - np.log(s))) ** 2, rtol=TOL["exact64"] * 100)


def _ddpm_loss_per_example(proc, t, x0, eps, eps_hat, kind, gamma=5.0):
    """Each chain loss by its definition in its own space (Ho et al.; Hang et al.'s x0-space weights)."""
    a, s = proc.alpha(t)[:, None], proc.sigma(t)[:, None]
    x = a * x0 + s * eps
    x0_hat = (x - s * eps_hat) / a
    snr = (a / s) ** 2
    if kind == "v":
        return ((a * eps_hat - s * x0_hat - (a * eps - s * x0)) ** 2).mean(axis=1)
    if kind == "x0":
        return ((x0_hat - x0) ** 2).mean(axis=1)
    w = {"eps": None, "snr": snr, "min_snr": np.minimum(snr, gamma)}[kind]
    if w is None:
        return ((eps_hat - eps) ** 2).mean(axis=1)
    return (w * (x0_hat - x0) ** 2).mean(axis=1)


def _objective_outputs(cfg, lv, x0, eps, eps_hat):
    """The continuous objectives' (out, target, weight) from the code (training_target) at an eps-prediction eps_hat,
    out converted by the process's own x = alpha x0 + sigma eps."""
    net_in, _, target, weight = O.training_target(cfg, x0, eps, lv)
    if cfg.objective == "edm":
        x = x0 + lv[:, None] * eps
        c_skip, c_out, _, _ = O.edm_precond(lv, getattr(cfg, "sigma_data", 0.5))
        out = (x - lv[:, None] * eps_hat - c_skip[:, None] * x) / c_out[:, None]
    else:
        t = lv[:, None]
        out = eps_hat - (net_in - t * eps_hat) / (1.0 - t)
    return out, target, weight


CASES = [("ddpm", {"process": "vp-cosine"}, "eps"), ("ddpm", {"process": "vp-linear"}, "eps"),
         ("ddpm", {"prediction": "v"}, "v"), ("ddpm", {"prediction": "x0"}, "x0"),
         ("ddpm", {"loss_weighting": "snr"}, "snr"), ("ddpm", {"loss_weighting": "min_snr"}, "min_snr"),
         ("edm", {}, None), ("flow", {}, None), ("flow", {"t_sampling": "logit-normal"}, None),
         ("flow", {"shift": 3.0}, None), ("flow", {"t_sampling": "logit-normal", "shift": 3.0, "logit_std": 0.8}, None)]


@pytest.mark.parametrize("objective, kw, kind", CASES)
def test_D16_each_weighting_is_recovered_from_its_loss_by_monte_carlo(objective, kw, kind):
    """w(lambda) = 2 d/dlambda E[loss; level <= lambda] / eps-MSE: a histogram over lambda of the per-example loss at a
    prediction off by a fixed delta (eps-MSE = mean delta^2), against the bin average of objectives.weighting."""
    rng, n = np.random.default_rng(7), 400_000
    x0, eps = MIX.sample(rng, n)[0], rng.standard_normal((n, 1))
    delta = 0.3
    eps_hat = eps + delta
    u = rng.uniform(size=n)
    if objective == "ddpm":
        proc = P.make_process(kw.get("process", "vp-cosine"))
        t = np.clip(u, 1e-6, 1 - 1e-6)                         # t ~ U(0, 1) on the continuous chain
        lam = proc.log_snr(t)
        loss = _ddpm_loss_per_example(proc, t, x0, eps, eps_hat, kind)
    else:
        cfg = NS(objective=objective, **kw)
        lv = O.level(cfg, u)
        lam = -2 * np.log(lv) if objective == "edm" else P.make_process("flow").log_snr(lv)
        out, target, weight = _objective_outputs(cfg, lv, x0, eps, eps_hat)
        loss = weight * ((out - target) ** 2).mean(axis=1)
        # the per-example values are the code's loss: its batch mean over any subset agrees
        k = lam > 0
        assert O.loss(out[k], target[k], weight[k]) == pytest.approx(loss[k].mean(), rel=TOL["exact64"])
    edges = np.linspace(-8.0, 8.0, 17)
    h = edges[1] - edges[0]
    fine = np.linspace(edges[0], edges[-1], 16 * 400 + 1)
    w_fine = O.weighting(objective, fine, **kw)
    checked = 0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (lam >= lo) & (lam < hi)
        if inside.sum() < 200:                                # too few draws for a standard error to mean much
            continue
        y = 2.0 * loss * inside / (h * delta ** 2)
        sel = (fine >= lo) & (fine <= hi)
        want = np.trapezoid(w_fine[sel], fine[sel]) / h
        assert mc_close(y.mean(), want, y.std() / np.sqrt(n)), (lo, y.mean(), want)
        checked += 1
    assert checked >= 6


def test_D16_the_closed_forms_of_kingma_and_gao():
    """Kingma & Gao 2023 (Table 1 / Appendix): cosine (s = 0) eps: sech(lambda/2); v: e^{-lambda/2}; min-SNR-gamma:
    sech(lambda/2) min(1, gamma e^-lambda); flow (t uniform): e^{-lambda/2}; each with our factor (1/pi for cosine)."""
    lam = np.linspace(-9.0, 9.0, 37)
    cos0 = {"process": "vp-cosine", "s": 0.0}
    np.testing.assert_allclose(O.weighting("ddpm", lam, **cos0), 1 / np.cosh(lam / 2) / np.pi, rtol=TOL["kg64"])
    np.testing.assert_allclose(O.weighting("ddpm", lam, prediction="v", **cos0), 2 * np.exp(-lam / 2) / np.pi,
                               rtol=TOL["kg64"])
    np.testing.assert_allclose(O.weighting("ddpm", lam, loss_weighting="min_snr", gamma=5.0, **cos0),
                               1 / np.cosh(lam / 2) * np.minimum(1, 5 * np.exp(-lam)) / np.pi, rtol=TOL["kg64"])
    np.testing.assert_allclose(O.weighting("flow", lam), np.exp(-lam / 2), rtol=TOL["exact64"])
    # EDM: Kingma & Gao's N(lambda; 2.4, 2.4^2) (e^-lambda + 0.5^2) / 0.5^2, times our 2
    kg_edm = stats.norm.pdf(lam, 2.4, 2.4) * (np.exp(-lam) + 0.25) / 0.25
    np.testing.assert_allclose(O.weighting("edm", lam), 2 * kg_edm, rtol=TOL["exact64"] * 10)
    # every weighting integrates to 2 E[omega]: at omega = 1 (L_simple) twice the total probability, 2
    wide = np.linspace(-40, 40, 400_001)
    assert abs(np.trapezoid(O.weighting("ddpm", wide), wide) - 2.0) <= TOL["grid64"] * 10
