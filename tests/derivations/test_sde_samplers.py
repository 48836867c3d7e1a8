"""The SDE samplers (derivations/sde_samplers.md, Q1-Q13) against exact laws and independent implementations.

Gaussian data x0 ~ N(m, s^2): the Bayes denoiser is affine, D(x~, sigma) = m + s^2 / (s^2 + sigma^2) (x~ - m), derived
here from the Gaussian posterior (not taken from reference/oracle.py), so every step of every sampler is affine in
the state and the fresh noise: the output is x = mu + sum_j c_j xi_j over independent standard normals xi_j (the
start and each draw), a Gaussian whose mean and variance the class ``Law`` below carries step by step from the
page's per-step formulas. The samplers' Monte Carlo output (many 1-D chains) must match it within 5 standard errors.
The mixture oracle's exact D, the DDIM step of reference/samplers.py and diffusers' DPMSolverMultistepScheduler
are the other routes.
"""
import math

import numpy as np
import pytest
import torch

from reference import oracle as RO
from reference import samplers, sde
from reference.schedules import Schedule, make_betas
from reference.solvers import karras_sigmas, model_denoiser, sigma_grid
from tolerances import TOL, mc_close

M, S2 = 0.7, 0.3 ** 2                     # the data N(M, S2)
N = 20000                                 # Monte Carlo chains (1-D)
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]
MIX = RO.GaussianMixtureOracle(W, MEANS, cov=COVS)


def gauss_D(x, sigma):
    """E[x0 | x~] for x0 ~ N(M, S2), x~ = x0 + sigma eps: the posterior precision 1/S2 + 1/sigma^2, mean by Bayes."""
    prec = 1.0 / S2 + 1.0 / sigma ** 2
    return (M / S2 + x / sigma ** 2) / prec


class Law:
    """An affine function mu + c . xi of independent standard normals xi (index 0 the start, 1 + k draw k)."""

    def __init__(self, mu, c):
        self.mu, self.c = float(mu), np.asarray(c, dtype=np.float64)

    def __add__(self, o):
        return Law(self.mu + o.mu, self.c + o.c) if isinstance(o, Law) else Law(self.mu + o, self.c)

    def __rmul__(self, a):
        return Law(a * self.mu, a * self.c)

    def __sub__(self, o):
        return self + (-1.0) * o

    def D(self, sigma):
        k = S2 / (S2 + sigma ** 2)                                    # the affine Gaussian denoiser's slope
        return Law(M + k * (self.mu - M), k * self.c)

    def z(self, k):
        c = np.zeros_like(self.c)
        c[1 + k] = 1.0
        return Law(0.0, c)

    @property
    def var(self):
        return float(self.c @ self.c)


def start(sig0, n_draws):
    """The exact marginal at sigma_0: x~ ~ N(M, S2 + sigma_0^2)."""
    c = np.zeros(1 + n_draws)
    c[0] = math.sqrt(S2 + sig0 ** 2)
    return Law(M, c)


def law_em(s, pred=False):
    """(Q2, Q3, Q6) EM (or the reverse-diffusion predictor): x~ + g2 score + sqrt(g2) z, g2 = 2 s (s - s') (or
    s^2 - s'^2); the step to 0 is D."""
    x, k = start(s[0], len(s) - 2), 0
    for a, b in zip(s[:-1], s[1:]):
        if b == 0:
            return x.D(a)
        g2 = a * a - b * b if pred else 2 * a * (a - b)
        x = x + (g2 / a ** 2) * (x.D(a) - x) + math.sqrt(g2) * x.z(k)
        k += 1
    return x


def law_ancestral(s, eta):
    """(Q4) D + (sigma_down / sigma)(x~ - D) + sigma_up z, sigma_up^2 = eta^2 s'^2 (s^2 - s'^2) / s^2."""
    x, k = start(s[0], len(s) - 2), 0
    for a, b in zip(s[:-1], s[1:]):
        up = eta * b * math.sqrt((a * a - b * b)) / a
        down = math.sqrt(b * b - up * up)
        d = x.D(a)
        x = d + (down / a) * (x - d)
        if b > 0:
            x, k = x + up * x.z(k), k + 1
    return x


def law_edm(s, churn, tmin, tmax, s_noise):
    """(Q8) Algorithm 2: x^ = x + sqrt(s^^2 - s^2) S_noise z, then Heun from s^ to s' (Euler to 0)."""
    n = len(s) - 1
    x = start(s[0], n)
    for i, (a, b) in enumerate(zip(s[:-1], s[1:])):
        g = min(churn / n, math.sqrt(2) - 1) if tmin <= a <= tmax else 0.0
        ah = a * (1 + g)
        xh = x + (math.sqrt(ah * ah - a * a) * s_noise) * x.z(i)
        d = (1 / ah) * (xh - xh.D(ah))
        x = xh + (b - ah) * d
        if b > 0:
            d2 = (1 / b) * (x - x.D(b))
            x = xh + (0.5 * (b - ah)) * (d + d2)
    return x


def law_dpmpp_sde(s, eta=1.0):
    """(Q9) x~' = (s'/s) e^{-eta h} x~ + (1 - e^{-(1+eta) h}) (D_i + (D_i - D_{i-1}) / (2r)) + s' sqrt(1 - e^{-2 eta h}) z."""
    x, k, old, h_old = start(s[0], len(s) - 2), 0, None, None
    for a, b in zip(s[:-1], s[1:]):
        d = x.D(a)
        if b == 0:
            return d
        h = math.log(a / b)
        c = 1 - math.exp(-(1 + eta) * h)
        dd = d if old is None else d + (h / (2 * h_old)) * (d - old)
        x = (b / a * math.exp(-eta * h)) * x + c * dd + (b * math.sqrt(1 - math.exp(-2 * eta * h))) * x.z(k)
        k, old, h_old = k + 1, d, h
    return x


def law_langevin(levels, T, eps, final=True):
    """(Q10, Q12) T steps x~ + alpha/2 score + sqrt(alpha) z per level, alpha = eps sigma_i^2 / sigma_L^2; then D."""
    x, k = start(levels[0], T * len(levels)), 0
    for a in levels:
        alpha = eps * a * a / levels[-1] ** 2
        for _ in range(T):
            x = x + (alpha / (2 * a * a)) * (x.D(a) - x) + math.sqrt(alpha) * x.z(k)
            k += 1
    return x.D(levels[-1]) if final else x


def run(name, grid, **kw):
    """The sampler on N chains from the exact marginal at sigma_0, with pre-drawn noise."""
    rng = np.random.default_rng(11)
    x = M + math.sqrt(S2 + grid[0] ** 2) * rng.standard_normal((N, 1))
    Z = rng.standard_normal((sde.NOISE_DRAWS[name](len(grid) - 1, kw), N, 1))
    return sde.SDE_SAMPLERS[name](gauss_D, x, grid, lambda k: Z[k], **kw)[:, 0]


def assert_law(out, law):
    v = law.var
    assert mc_close(out.mean(), law.mu, math.sqrt(v / N)), (out.mean(), law.mu)
    assert mc_close(out.var(ddof=1), v, v * math.sqrt(2.0 / (N - 1))), (out.var(ddof=1), v)


GRID = karras_sigmas(10, 0.02, 20.0).tolist()
CASES = {
    "euler-maruyama": ({}, lambda s: law_em(s)),
    "pc": ({"corrector_steps": 0}, lambda s: law_em(s, pred=True)),
    "ancestral": ({"eta": 1.0}, lambda s: law_ancestral(s, 1.0)),
    "ancestral-eta": ({"eta": 0.4}, lambda s: law_ancestral(s, 0.4)),
    "edm-sde": ({"s_churn": 8.0, "s_tmin": 0.05, "s_tmax": 5.0, "s_noise": 1.05},
                lambda s: law_edm(s, 8.0, 0.05, 5.0, 1.05)),
    # a coarse grid and a loud S_noise, where the churn's range [S_tmin, S_tmax] moves the law by 15%
    "edm-sde-coarse": ({"s_churn": 20.0, "s_tmin": 0.1, "s_tmax": 3.0, "s_noise": 1.2},
                       lambda s: law_edm(s, 20.0, 0.1, 3.0, 1.2)),
    "dpm++2m-sde": ({}, lambda s: law_dpmpp_sde(s)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_Q2_Q3_Q4_Q6_Q8_Q9_each_samplers_output_law_on_gaussian_data_is_its_closed_form_recursion(case):
    kw, law = CASES[case]
    grid = karras_sigmas(5, 0.02, 20.0).tolist() if case.endswith("-coarse") else GRID
    out = run(case.split("-eta")[0].replace("-coarse", ""), grid, **kw)
    assert_law(out, law(grid))


def test_Q10_Q12_annealed_langevins_output_law_on_gaussian_data_is_its_closed_form_recursion():
    levels = np.geomspace(2.0, 0.05, 6).tolist()
    for final in (True, False):
        out = run("langevin", levels + [0.0], langevin_steps=20, langevin_eps=0.3 * 0.05 ** 2, final_denoise=final)
        assert_law(out, law_langevin(levels, 20, 0.3 * 0.05 ** 2, final))


def test_Q1_Q2_the_laws_tend_to_the_exact_reverse_sdes_and_euler_maruyama_has_weak_order_one():
    # the exact reverse SDE carries N(M, S2 + s0^2) to N(M, S2 + smin^2); its last step D gives variance
    # k^2 (S2 + smin^2), k = S2 / (S2 + smin^2): the target every refined grid must reach
    lo, hi = 0.02, 20.0
    target = (S2 / (S2 + lo ** 2)) ** 2 * (S2 + lo ** 2)
    ns = [16, 32, 64, 128, 256]
    err = {}
    for name, law in [("em", law_em), ("pred", lambda s: law_em(s, True)), ("anc", lambda s: law_ancestral(s, 1.0)),
                      ("dpm", law_dpmpp_sde)]:
        err[name] = [abs(law(karras_sigmas(n, lo, hi).tolist()).var - target) for n in ns]
    for name, e in err.items():
        assert e[-1] < 0.05 * S2, (name, e)                              # the law reaches the data's
    slope = np.polyfit(np.log(ns), np.log(err["em"]), 1)[0]
    assert abs(slope + 1.0) < TOL["weak_order"], slope


def test_Q10_Q11_langevin_at_one_level_keeps_a_stationary_variance_inflated_by_one_over_one_minus_alpha_over_4v():
    sigma = math.sqrt(0.5 - S2)            # the level's marginal variance v = S2 + sigma^2 = 0.5
    v, alpha = S2 + sigma ** 2, 0.8        # stable: alpha < 4 sigma^2 = 1.64
    out = run("langevin", [sigma, 0.0], langevin_steps=150, langevin_eps=alpha, final_denoise=False)
    # (Q11)  s_inf^2 = v / (1 - alpha / (4 v)) = 0.625, not the level's 0.5
    s_inf = v / (1.0 - alpha / (4.0 * v))
    assert mc_close(out.var(ddof=1), s_inf, s_inf * math.sqrt(2.0 / (N - 1)))
    assert mc_close(out.mean(), M, math.sqrt(s_inf / N))
    assert not mc_close(out.var(ddof=1), v, v * math.sqrt(2.0 / (N - 1)))


def test_Q12_the_final_langevin_step_is_the_posterior_mean_by_tweedie():
    rng = np.random.default_rng(3)
    grid = [3.0, 1.0, 0.3, 0.1, 0.0]
    x = rng.standard_normal((64, 2)) * 3.0
    Z = rng.standard_normal((5 * 4, 64, 2))
    kw = {"langevin_steps": 5, "langevin_eps": 0.01}
    before = sde.langevin(MIX.denoise_sigma, x, grid, lambda k: Z[k], final_denoise=False, **kw)
    after = sde.langevin(MIX.denoise_sigma, x, grid, lambda k: Z[k], final_denoise=True, **kw)
    # (Q12)  Tweedie: E[x0 | x~] = x~ + sigma^2 grad log q_sigma(x~), with the score of the density itself (G4)
    a = 1.0 / (1.0 + 0.1 ** 2)
    tweedie = before + 0.1 ** 2 * math.sqrt(a) * MIX.score(before * math.sqrt(a), a)
    np.testing.assert_allclose(after, tweedie, rtol=TOL["equiv64"], atol=TOL["equiv64"])


def test_Q13_the_default_langevin_step_commutes_with_rescaling_the_data_and_is_song_and_ermons_at_sigma_L_0_01():
    rng = np.random.default_rng(5)
    grid, c = [3.0, 1.0, 0.3, 0.1, 0.0], 10.0
    x, Z = rng.standard_normal((64, 2)) * 3.0, rng.standard_normal((4 * 6, 64, 2))
    big = RO.GaussianMixtureOracle(W, (c * np.asarray(MEANS)).tolist(), cov=(c * c * np.asarray(COVS)).tolist())
    run_at = lambda oracle, scale, **kw: sde.langevin(oracle.denoise_sigma, scale * x, [scale * g for g in grid],  # noqa
                                                      lambda k: Z[k], langevin_steps=6, **kw)
    # (Q13)  the data and its ladder scaled by c: the default step's samples are the unscaled ones times c
    np.testing.assert_allclose(run_at(big, c), c * run_at(MIX, 1.0), rtol=TOL["equiv64"], atol=TOL["equiv64"] * c)
    # ... where one absolute step for both (the unscaled default) is not: 100x too short a step at the scaled ladder
    eps = 0.2 * 0.1 ** 2
    assert np.abs(run_at(big, c, langevin_eps=eps) - c * run_at(MIX, 1.0)).max() > 0.1 * c
    # Song & Ermon's epsilon = 2e-5 (Section 4.2) on their ladder down to sigma_L = 0.01
    song = [1.0, 0.1, 0.01, 0.0]
    np.testing.assert_array_equal(
        sde.langevin(MIX.denoise_sigma, x, song, lambda k: Z[k], langevin_steps=2),
        sde.langevin(MIX.denoise_sigma, x, song, lambda k: Z[k], langevin_steps=2, langevin_eps=2e-5))


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_Q5_ancestral_on_the_chains_levels_is_ddim_eta_step_for_step(eta):
    sched = Schedule(make_betas("linear", 1000))
    net = MIX.denoiser(sched, "eps")
    kept = samplers.timesteps(1000, 12, "trailing")[::-1]
    grid = sigma_grid(sched, 12, "trailing")
    rng = np.random.default_rng(5)
    x_T, Z = rng.standard_normal((32, 2)), rng.standard_normal((11, 32, 2))
    seen = []
    out = sde.sample(model_denoiser(sched, net), x_T, grid, "ancestral", lambda k: Z[k], record=True, eta=eta)
    x = x_T
    for i, t in enumerate(kept):
        seen.append(x)
        t_prev = int(kept[i + 1]) if i + 1 < len(kept) else -1
        z = Z[i] if t_prev >= 0 else np.zeros_like(x)             # DDIM adds nothing at t_prev = -1 (sigma = 0)
        x, _ = samplers.ddim_step(sched, net(x, np.full(32, t)), x, int(t), t_prev, z, eta=eta)
    for (_, x_t, _), want in zip(out.trajectory, seen):
        np.testing.assert_allclose(x_t, want, rtol=TOL["equiv64"], atol=TOL["equiv64"])
    np.testing.assert_allclose(out.x, x, rtol=TOL["equiv64"], atol=TOL["equiv64"])


# ---- the mixture oracle's exact D: every sampler at fine steps recovers the data's moments -------------------

def _moment_z(out):
    """(mean, cov entries) of out against the mixture's exact ones, in standard errors of the sample."""
    mu = out.mean(0)
    c = out - mu
    prods = np.stack([c[:, 0] ** 2, c[:, 0] * c[:, 1], c[:, 1] ** 2], 1)
    got = np.concatenate([mu, prods.mean(0)])
    se = np.concatenate([out.std(0), prods.std(0)]) / math.sqrt(out.shape[0])
    return (got - np.concatenate([MIX.mean, MIX.cov[[0, 0, 1], [0, 1, 1]]])) / se


LEVELS = np.geomspace(40.0, 0.01, 20).tolist() + [0.0]
MIX_CASES = {"euler-maruyama": (karras_sigmas(100, 0.01, 40.0), {}),
             "ancestral": (karras_sigmas(400, 0.01, 40.0), {}),
             "pc": (karras_sigmas(50, 0.01, 40.0), {}),
             "edm-sde": (karras_sigmas(50, 0.01, 40.0), {"s_churn": 40.0, "s_tmin": 0.01, "s_tmax": 40.0}),
             "dpm++2m-sde": (karras_sigmas(50, 0.01, 40.0), {}),
             "langevin": (LEVELS, {"langevin_steps": 40, "langevin_eps": 0.01 ** 2})}


def _mix_run(step_or_name, grid, seed=0, n=4000, **kw):
    rng = np.random.default_rng(seed)
    x0, _ = MIX.sample(rng, n)
    x = x0 + grid[0] * rng.standard_normal((n, 2))                  # the exact marginal at sigma_0
    fn = sde.SDE_SAMPLERS[step_or_name] if isinstance(step_or_name, str) else step_or_name
    return fn(MIX.denoise_sigma, x, grid, lambda k: rng.standard_normal((n, 2)), **kw)


@pytest.mark.parametrize("name", list(MIX_CASES))
def test_Q2_Q4_Q6_Q7_Q8_Q9_Q10_every_sampler_with_the_exact_mixture_denoiser_recovers_its_moments(name):
    grid, kw = MIX_CASES[name]
    assert np.all(np.abs(_moment_z(_mix_run(name, grid, **kw))) < TOL["mc_z"])


def _em_flipped(D, x, sigmas, noise):
    """(C11) The wrong reverse drift: -g^2 score (the forward process's sign kept) with the same noise."""
    s = list(sigmas)
    for i in range(len(s) - 1):
        x0 = D(x, s[i])
        if s[i + 1] == 0:
            return x0
        g2 = 2.0 * s[i] * (s[i] - s[i + 1])
        x = x - g2 * (x0 - x) / s[i] ** 2 + math.sqrt(g2) * noise(i)
    return x


def test_C11_Q2_the_reverse_drift_with_its_sign_flipped_misses_the_mixture_the_right_sign_recovers_it():
    grid = karras_sigmas(100, 0.01, 40.0)
    assert np.all(np.abs(_moment_z(_mix_run("euler-maruyama", grid))) < TOL["mc_z"])
    wrong = _mix_run(_em_flipped, grid)
    # the flipped drift pushes away from the data: the spread explodes (measured 1e5 times the data's scale)
    assert np.trace(np.cov(wrong.T)) > 1e3 * np.trace(MIX.cov)


# ---- DPM-Solver++(2M) SDE against diffusers, step for step -------------------------------------------------

@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("beta_schedule,spacing,n", [("linear", "trailing", 6), ("squaredcos_cap_v2", "leading", 9)])
def test_Q9_dpmpp_2m_sde_matches_diffusers_sde_dpmsolver_pp_step_for_step(beta_schedule, spacing, n):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                                                algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint",
                                                lower_order_final=True, prediction_type="epsilon",
                                                timestep_spacing=spacing, final_sigmas_type="zero")
    sch.set_timesteps(n)
    grid = sch.sigmas.double().numpy()                                # the scheduler's own levels, then 0
    rng = np.random.default_rng(8)
    x_T, Z = rng.standard_normal((16, 2)), rng.standard_normal((n, 16, 2))
    x, seen = torch.from_numpy(x_T.copy()), []
    for k, t in enumerate(sch.timesteps):
        seen.append(x.numpy().copy())
        s = float(grid[k])
        xt = x.numpy() * math.sqrt(1.0 + s ** 2)                       # (K6)  x~ = x_t / alpha_t
        eps = torch.from_numpy((xt - MIX.denoise_sigma(xt, s)) / s)    # the oracle's eps at the scheduler's sigma
        # diffusers works in VP x_t; its noise term sigma_t sqrt(1 - e^{-2h}) z is ours divided by sqrt(1 + sigma'^2)
        x = sch.step(eps, t, x, variance_noise=torch.from_numpy(Z[k])).prev_sample
    seen.append(x.numpy())
    out = sde.sample(MIX.denoise_sigma, x_T, grid, "dpm++2m-sde", lambda k: Z[k], record=True)
    got = np.stack([x_t for _, x_t, _ in out.trajectory] + [out.x])
    want = np.stack(seen)
    np.testing.assert_allclose(got, want, rtol=TOL["op32"], atol=TOL["op32"] * np.max(np.abs(want)))


def test_Q5_ancestral_at_eta_1_on_every_trained_level_is_ddpms_chain_with_beta_tilde():
    sched = Schedule(make_betas("linear", 1000))
    net = MIX.denoiser(sched, "eps")
    rng = np.random.default_rng(6)
    x_T, Z = rng.standard_normal((16, 2)), rng.standard_normal((999, 16, 2))
    out = sde.sample(model_denoiser(sched, net), x_T, sigma_grid(sched, 1000, "leading"), "ancestral", lambda k: Z[k])
    x = x_T
    for i, t in enumerate(range(999, -1, -1)):                        # Ho et al. Algorithm 2, sigma_t^2 = beta~_t
        z = Z[i] if t > 0 else np.zeros_like(x)
        x, _ = samplers.ddpm_step(sched, net(x, np.full(16, t)), x, t, z, variance="fixed_small")
    np.testing.assert_allclose(out.x, x, rtol=TOL["equiv64"], atol=TOL["equiv64"])


def test_Q11_on_a_point_mass_a_step_just_inside_the_bound_keeps_the_predicted_huge_stationary_variance():
    sigma, m = 0.05, np.array([0.3])
    point = RO.GaussianMixtureOracle([1.0], [m], var=0.0)             # D = m at every sigma: curvature 1 / sigma^2
    eps = 0.98 * sde.langevin_bound(sigma)                             # alpha = 0.98 * 4 sigma^2: a = -0.96
    rng = np.random.default_rng(9)
    x = m + rng.standard_normal((N, 1)) * sigma
    out = sde.langevin(point.denoise_sigma, x, [sigma, 0.0], lambda k: rng.standard_normal((N, 1)), langevin_steps=400,
                       langevin_eps=eps, final_denoise=False)[:, 0]
    # (Q11) with s = 0: V = sigma^2 / (1 - alpha / (4 sigma^2)) = 50 sigma^2, unbounded as alpha -> 4 sigma^2
    v_inf = sigma ** 2 / (1.0 - eps / (4.0 * sigma ** 2))
    assert mc_close(out.var(ddof=1), v_inf, v_inf * math.sqrt(2.0 / (N - 1)))
