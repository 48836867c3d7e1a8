"""Classifier guidance (derivations/classifier_guidance.md, H1-H6): each label through an independent route.

The exact classifier of the labelled mixture (H5) against central differences of its own log-probability and
against the oracle's conditional and marginal scores; the classifier-free difference of the oracle's conditional
and unconditional eps (the implicit classifier); the guided steps and denoisers against the oracle's CONDITIONAL
denoiser (never the classifier's gradient typed again): the exact conditional mean at x_t (H2, where a gradient
taken at the step's mean fails), Algorithm 2 and D_s at s = 1 (H3, H4), DDIM against Euler (H4, K7); Monte Carlo
moments of the sampled class (H1, H6) and, in one dimension, the distribution the guided ODE reaches against the
tilted density p(y | x)^s p(x) normalised on a grid (H6).
"""
import math
import warnings

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error
from scipy.integrate import solve_ivp
from scipy.stats import norm
from tolerances import TOL, mc_close

from reference import classifier_guidance as CG
from reference import guidance, samplers, solvers
from reference.errors import InputError
from reference.oracle import GaussianMixtureOracle
from reference.schedules import Schedule, make_betas

W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]
LEVELS = (0.999, 0.9, 0.5, 0.1, 0.01)


@pytest.fixture(scope="module")
def mix():
    return GaussianMixtureOracle(W, MEANS, cov=COVS)


@pytest.fixture(scope="module")
def sched():
    return Schedule(make_betas("linear", 1000))


@pytest.fixture(scope="module")
def coarse(sched):
    """20 trailing steps of the linear schedule: betas up to 0.63, where the point of the gradient shows."""
    return samplers.respace(sched, samplers.timesteps(1000, 20, "trailing"), warn=False)


# ---- H5: the exact classifier, and classifier-free guidance as an implicit classifier ---------------------

def test_H5_the_exact_classifier_gradient_is_the_finite_difference_of_its_log_prob_and_the_score_difference(mix, rng):
    """grad log p_t(y | x) (closed form from the responsibilities) against central differences of log p_t(y | x)
    and against score(x | y) - score(x) of the oracle (G4); p_t(. | x) sums to one and is the responsibilities."""
    clf, x, y = CG.mixture_classifier(mix), rng.standard_normal((6, 2)) * 1.5, np.arange(6) % 3
    for a in LEVELS:
        g = clf.grad_log_prob(x, a, y)
        num = numeric_grad(lambda: float(np.sum(clf.log_prob(x, a, y))), x)
        assert rel_error(g, num) <= TOL["fd64"], a
        assert np.max(np.abs(g - (mix.score(x, a, y) - mix.score(x, a)))) <= TOL["exact64"] * max(1, np.abs(g).max())
        p = np.stack([np.exp(clf.log_prob(x, a, np.full(6, k))) for k in range(3)], axis=1)
        assert np.max(np.abs(p - mix.responsibilities(x, a))) <= TOL["exact64"]


def test_H5_the_cfg_difference_is_minus_sqrt_one_minus_abar_times_the_exact_classifier_gradient(mix, rng):
    """eps(x_t, c) - eps(x_t, null) of the oracle, the conditional network of (W5), is -sqrt(1 - abar) grad log
    p_t(c | x_t): classifier-free guidance's difference is an implicit classifier, exactly. So W2's eps_s and
    Algorithm 2 (H3) with the exact classifier are one prediction at every scale."""
    clf, x, y = CG.mixture_classifier(mix), rng.standard_normal((9, 2)) * 1.5, np.arange(9) % 3
    for a in LEVELS[1:]:
        diff = mix.eps_mean(x, a, y) - mix.eps_mean(x, a)
        assert np.max(np.abs(diff + math.sqrt(1 - a) * clf.grad_log_prob(x, a, y))) <= TOL["exact64"], a
        for s in (0.0, 2.5):
            cfg = guidance.combine(mix.eps_mean(x, a, y), mix.eps_mean(x, a), s)
            cg = mix.eps_mean(x, a) - s * math.sqrt(1 - a) * clf.grad_log_prob(x, a, y)
            assert np.max(np.abs(cfg - cg)) <= TOL["exact64"], (a, s)


# ---- H1, H2: Algorithm 1 and the point of the gradient ---------------------------------------------------

def test_H1_H2_the_guided_step_takes_the_gradient_at_x_t_and_the_exact_conditional_mean_needs_it_there(
        mix, coarse, rng):
    """(H2) The exact conditional mean E[x_{t-1} | x_t, y] (the ancestral step of the oracle's CONDITIONAL eps, no
    noise) minus the unconditional one is beta_t / sqrt(alpha_t) grad log p_t(y | x_t) with the gradient at x_t;
    at the step's mean mu (guided-diffusion #51's reading) it misses by O(beta). (H1) classifier_guided_ddpm_step
    shifts the mean by s Sigma g(x_t): equal to s Sigma sqrt(alpha_t) / beta_t times that conditional difference,
    and it calls grad_fn once, on x_t itself."""
    clf, den = CG.mixture_classifier(mix), mix.denoiser(coarse)
    grad, x, y = clf.chain_grad(coarse), rng.standard_normal((6, 2)) * 1.5, np.arange(6) % 3
    zero, miss_at_mean = np.zeros_like(x), 0.0
    for t in (1, 5, 10, 19):
        tt = np.full(6, t)
        mu, _ = samplers.ddpm_step(coarse, den(x, tt), x, tt, zero)
        mu_c, _ = samplers.ddpm_step(coarse, den(x, tt, y), x, tt, zero)
        k = coarse.betas[t] / math.sqrt(coarse.alphas[t])
        assert np.max(np.abs(mu_c - mu - k * grad(x, tt, y))) <= TOL["exact64"], t
        miss_at_mean = max(miss_at_mean, np.max(np.abs(mu_c - mu - k * grad(mu, tt, y))))
        for s, variance in [(1.0, "fixed_small"), (2.5, "fixed_small"), (2.5, "fixed_large")]:
            seen = []
            spy = lambda z, level, c: seen.append(z) or grad(z, level, c)  # noqa: E731
            got, _ = CG.classifier_guided_ddpm_step(coarse, den(x, tt), x, tt, zero, spy, y, s, variance=variance)
            mu_v, _ = samplers.ddpm_step(coarse, den(x, tt), x, tt, zero, variance=variance)
            sigma2 = coarse.posterior_variance[t] if variance == "fixed_small" else coarse.fixed_large_variance[t]
            assert np.max(np.abs(got - mu_v - s * sigma2 / k * (mu_c - mu))) <= TOL["exact64"], (t, s, variance)
            assert len(seen) == 1 and np.array_equal(seen[0], x)   # once, at x_t
    assert miss_at_mean >= 1e6 * TOL["exact64"], miss_at_mean   # measured 0.09 at t = 1, 2e-5 at t = 19


def test_H1_the_guided_step_adds_sqrt_sigma_z_but_none_at_the_last_step_and_s0_is_ddpm(mix, coarse, rng):
    clf, den = CG.mixture_classifier(mix), mix.denoiser(coarse)
    x, z, y, grad = rng.standard_normal((4, 2)), rng.standard_normal((4, 2)), 1, clf.chain_grad(coarse)
    tt = np.array([0, 3, 0, 12])
    for variance, table in [("fixed_small", coarse.posterior_variance), ("fixed_large", coarse.fixed_large_variance)]:
        got, _ = CG.classifier_guided_ddpm_step(coarse, den(x, tt), x, tt, z, grad, y, 2.0, variance=variance)
        mean, _ = CG.classifier_guided_ddpm_step(coarse, den(x, tt), x, tt, np.zeros_like(z), grad, y, 2.0,
                                                 variance=variance)
        sd = np.sqrt(table[tt])[:, None] * (tt != 0)[:, None]     # (A1) no noise at t = 0, whatever Sigma_0 is
        assert np.max(np.abs(got - mean - sd * z)) <= TOL["exact64"], variance
    unguided, _ = samplers.ddpm_step(coarse, den(x, tt), x, tt, z)
    assert np.array_equal(CG.classifier_guided_ddpm_step(coarse, den(x, tt), x, tt, z, grad, y, 0)[0], unguided)


def test_H1_A4_a_respaced_guided_loop_steps_on_the_respaced_chain_and_asks_the_original_steps(mix, sched, coarse,
                                                                                            rng):
    """steps=20 on the T = 1000 chain: the step's coefficients are the respaced schedule's (index i) while the network
    and the classifier receive the original step kept[i]; the same as guiding on the 20-step schedule itself."""
    clf, y = CG.mixture_classifier(mix), np.arange(16) % 3
    x_T, noises = rng.standard_normal((16, 2)), list(rng.standard_normal((20, 16, 2)))
    got = CG.classifier_guided_sample_loop(sched, mix.denoiser(sched), clf.chain_grad(sched), y, 2.0, x_T, noises,
                                           steps=20, spacing="trailing").x
    want = CG.classifier_guided_sample_loop(coarse, mix.denoiser(coarse), clf.chain_grad(coarse), y, 2.0, x_T,
                                            noises).x
    assert np.max(np.abs(got - want)) <= TOL["respace64"]


def test_H2_H3_the_eps_form_ancestral_chain_at_s1_is_the_conditional_chain_exactly(mix, coarse, rng):
    """Algorithm 2's eps_s at s = 1 is the conditional eps (H3, H5), so the eps-form ancestral chain through
    samplers.sample_loop is the conditional chain, noise for noise; Algorithm 1's Sigma shift agrees with it only
    to first order in beta (H2), so on 20 coarse steps its samples differ by far more than rounding."""
    clf, den, y = CG.mixture_classifier(mix), mix.denoiser(coarse), np.arange(64) % 3
    x_T, noises = rng.standard_normal((64, 2)), list(rng.standard_normal((20, 64, 2)))
    guided = CG.classifier_guided_model(coarse, den, clf.chain_grad(coarse), y, 1.0)
    got = samplers.sample_loop(coarse, guided, x_T, noises, "ddpm").x
    want = samplers.sample_loop(coarse, lambda x, t: den(x, t, y), x_T, noises, "ddpm").x
    assert np.max(np.abs(got - want)) <= TOL["exact64"]
    alg1 = CG.classifier_guided_sample_loop(coarse, den, clf.chain_grad(coarse), y, 1.0, x_T, noises).x
    assert np.max(np.abs(alg1 - want)) >= 1e6 * TOL["exact64"]


# ---- H3, H4: Algorithm 2 and the denoiser form ------------------------------------------------------------

def test_H4_at_s1_the_guided_denoiser_is_the_conditional_denoiser_at_every_level(mix, rng):
    """D + sigma^2 grad_{x~} log p(y | x~) with the exact classifier is the oracle's conditional D(x~, sigma, y)."""
    clf, x, y = CG.mixture_classifier(mix), rng.standard_normal((9, 2)) * 3, np.arange(9) % 3
    D_s = CG.classifier_guided_denoiser(lambda z, sigma: mix.denoise_sigma(z, sigma), clf.sigma_grad, 1.0, y)
    for sigma in (1e-3, 0.05, 0.5, 1.0, 4.0, 80.0, 1e3):
        want = mix.denoise_sigma(x, sigma, y)
        assert np.max(np.abs(D_s(x, sigma) - want)) <= TOL["exact64"] * max(1.0, sigma), sigma


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_H3_H4_K7_guided_ddim_on_eps_is_guided_euler_on_d_step_for_step(mix, sched, spacing, rng):
    """DDIM on Algorithm 2's eps_s (the chain's classifier gradient at integer steps) against Euler on D_s over the
    same trained levels, the classifier moved to (x~, sigma) by sigma_grad: one sampler (K7) with guidance (H4)."""
    clf, den, y = CG.mixture_classifier(mix), mix.denoiser(sched), np.arange(32) % 3
    x_T, chain = rng.standard_normal((32, 2)), clf.chain_grad(sched)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "leading" ends above t = 0: the late-start warning is not the point here
        ddim = samplers.sample_loop(sched, CG.classifier_guided_model(sched, den, chain, y, 2.0), x_T, [None] * 12,
                                    "ddim", steps=12, spacing=spacing)
    D_s = CG.classifier_guided_denoiser(solvers.model_denoiser(sched, den), CG.sigma_grad(sched, chain), 2.0, y)
    got = solvers.sample(D_s, x_T, solvers.sigma_grid(sched, 12, spacing), "euler")
    assert np.max(np.abs(got.x - ddim.x)) <= TOL["solve64"]


# ---- H1, H6: at s = 1, the class -------------------------------------------------------------------------

def _class_moments_close(x, y):
    for k in range(3):
        xs, cov = x[y == k], np.asarray(COVS[k])
        n = len(xs)
        assert mc_close(xs.mean(axis=0), MEANS[k], np.sqrt(np.diag(cov) / n)), (k, xs.mean(axis=0))
        se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # Gaussian: Var S_ij = (S_ii S_jj + S_ij^2)/n
        assert mc_close(np.cov(xs.T), cov, se), (k, np.cov(xs.T))


def test_H1_H6_at_s1_algorithm_1_and_dpm_solver_on_d_s_sample_each_class(mix, sched):
    """The unconditional oracle guided by the exact classifier at s = 1: Algorithm 1 over the full chain (1000 steps)
    and DPM-Solver++(2M) on D_s (64 Karras steps) give each class's mean and covariance within 5 standard errors."""
    n, rng = 1500, np.random.default_rng(11)
    clf, y = CG.mixture_classifier(mix), np.arange(n) % 3
    x = CG.classifier_guided_sample_loop(sched, mix.denoiser(sched), clf.chain_grad(sched), y, 1.0,
                                         rng.standard_normal((n, 2)), rng).x
    _class_moments_close(x, y)
    D_s = CG.classifier_guided_denoiser(lambda z, sigma: mix.denoise_sigma(z, sigma), clf.sigma_grad, 1.0, y)
    x = solvers.sample(D_s, rng.standard_normal((n, 2)), solvers.karras_sigmas(64, 0.01, 157.4), "dpm++2m").x
    _class_moments_close(x, y)


# ---- H6: at s != 1, not p(y | x)^s p(x) (one dimension, exact scores; guidance.md's W6 setting) ------------

ONE_D = GaussianMixtureOracle([0.5, 0.5], [[-1.0], [1.0]], var=[[0.25], [0.25]])
C, SIGMA_MAX, SIGMA_MIN = 1, 1e4, 1e-5
X, Z = np.linspace(-6.0, 6.0, 24001), np.linspace(-8.0, 8.0, 4001)


def _reached(s):
    """The classifier-guided probability-flow ODE by DOP853 from the quantiles Z: (x_0(Z), mean, std) reached."""
    clf = CG.mixture_classifier(ONE_D)
    D = CG.classifier_guided_denoiser(lambda x, sigma: ONE_D.denoise_sigma(x, sigma), clf.sigma_grad, s, C)
    f = lambda lam, x: D(x[:, None], math.exp(-lam))[:, 0] - x  # noqa: E731  (K6) in lambda: D - x~
    sol = solve_ivp(f, (-math.log(SIGMA_MAX), -math.log(SIGMA_MIN)), Z * math.sqrt(1 + SIGMA_MAX**2),
                    method="DOP853", rtol=1e-10, atol=1e-10)
    x0 = D(sol.y[:, -1][:, None], SIGMA_MIN)[:, 0]
    assert sol.success and np.all(np.diff(x0) > 0)   # a 1-D flow keeps its order: the reached CDF at x0(z) is Phi(z)
    w = norm.pdf(Z) / np.trapezoid(norm.pdf(Z), Z)
    m = np.trapezoid(x0 * w, Z)
    return x0, m, math.sqrt(np.trapezoid((x0 - m) ** 2 * w, Z))


def test_H6_classifier_guidance_is_cfg_at_every_scale_and_at_s3_misses_p_y_given_x_to_the_s_times_p_x():
    """The exact classifier's D_s equals classifier-free guidance's at the same s everywhere (H5, W3); at s = 1 the
    guided ODE reaches p(x | c) within TOL["guided_grid"]; at s = 3 it reaches mean 1.525, std 0.315 (guidance.md's
    W6 row), while p(y | x)^3 p(x), normalised on a grid, has mean 1.051, std 0.457: a Kolmogorov distance of 0.50,
    over 100 budgets."""
    clf, x = CG.mixture_classifier(ONE_D), np.linspace(-3, 3, 13)[:, None]
    for s in (0.0, 1.0, 3.0):
        D_s = CG.classifier_guided_denoiser(lambda z, sigma: ONE_D.denoise_sigma(z, sigma), clf.sigma_grad, s, C)
        cfg = guidance.guided(lambda z, sigma, y: ONE_D.denoise_sigma(z, sigma, y), C, s, 2)
        for sigma in (1e-3, 0.3, 1.0, 10.0):
            assert np.max(np.abs(D_s(x, sigma) - cfg(x, sigma))) <= TOL["exact64"] * max(1.0, sigma), (s, sigma)
    budget = TOL["guided_grid"]
    for s in (1.0, 3.0):
        x0, m, sd = _reached(s)
        # p(y | x_0)^s p(x_0) = p(x_0 | y)^s p(x_0)^(1 - s) p(y)^s: the tilt, normalised on X
        log_q = s * clf.log_prob(X[:, None], 1.0, np.full(X.size, C)) + ONE_D.log_prob(X[:, None], 1.0)
        q = np.exp(log_q - log_q.max())
        q /= np.trapezoid(q, X)
        F = np.concatenate([[0.0], np.cumsum(0.5 * (q[1:] + q[:-1]) * np.diff(X))])
        mq = np.trapezoid(X * q, X)
        sq = math.sqrt(np.trapezoid((X - mq) ** 2 * q, X))
        ks = np.max(np.abs(np.interp(x0, X, F) - norm.cdf(Z)))
        if s == 1.0:
            assert ks <= budget and abs(m - 1) <= budget and abs(sd - 0.5) <= budget, (ks, m, sd)
        else:
            assert ks >= 100 * budget and m - mq >= 100 * budget and sq - sd >= 100 * budget, (ks, m, mq, sd, sq)


# ---- the scale's checks -------------------------------------------------------------------------------------

def test_H1_H4_a_negative_or_non_finite_scale_is_refused_naming_the_classifier_scale(mix, sched):
    clf, den, x = CG.mixture_classifier(mix), mix.denoiser(sched), np.zeros((2, 2))
    for bad in (-0.5, float("nan"), float("inf"), True, "2"):
        for make in (lambda: CG.classifier_guided_denoiser(lambda z, s: z, clf.sigma_grad, bad, 0),  # noqa: B023
                     lambda: CG.classifier_guided_model(sched, den, clf.chain_grad(sched), 0, bad),  # noqa: B023
                     lambda: CG.classifier_guided_ddpm_step(sched, den(x, 5), x, 5, x, clf.chain_grad(sched), 0,
                                                            bad)):  # noqa: B023
            with pytest.raises(InputError, match="classifier scale"):
                make()
    with pytest.raises(InputError, match="class 3 is out of range"):
        clf.grad_log_prob(x, 0.5, 3)
    with pytest.raises(InputError, match="the classifier gradient"):
        CG.classifier_guided_ddpm_step(sched, den(x, 5), x, 5, x, lambda z, t, y: z[:1], 0, 1.0)
