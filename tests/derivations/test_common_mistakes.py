"""Common mistakes (derivations/common_mistakes.md): each test runs ONE independent route on a wrong
form and on the right form (the reference's), and asserts that the route rejects the first and
accepts the second.
"""
import inspect
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from lab.config import TrainConfig
from reference import diffusion, losses, samplers
from reference import train as train_module
from reference.errors import InputError
from reference.schedules import PriorMismatchWarning, Schedule, make_betas
from tolerances import TOL, mc_close


# ---- C1 ------------------------------------------------------------------------------------------

def _closed_form_error(sched, step):
    """Iterate ``step(x_prev, t, eps)`` on coefficient vectors [x0, eps_1..eps_T] (valid for any step
    linear in (x_prev, eps)) and return the largest deviation from the closed form (F3):
    x0-coefficient sqrt(abar_t), noise variance 1 - abar_t."""
    T = sched.T
    state = np.zeros((1, T + 1))
    state[0, 0] = 1.0
    worst = 0.0
    for t in range(T):
        unit = np.zeros((1, T + 1))
        unit[0, t + 1] = 1.0
        state = step(state, t, unit)
        worst = max(worst, abs(state[0, 0] - sched.sqrt_alpha_bar[t]),
                    abs(np.sum(state[0, 1:] ** 2) - (1 - sched.alpha_bar[t])))
    return worst


def test_C1_forward_step_with_xt_on_both_sides_fails_the_closed_form():
    s = Schedule(make_betas("linear", 200), warn=False)
    beta = s.betas

    def both_sides(x_prev, t, eps):   # x_t = sqrt(1-b) x_t + sqrt(b) eps, solved for x_t
        return math.sqrt(beta[t]) / (1 - math.sqrt(1 - beta[t])) * eps

    def std_as_variance(x_prev, t, eps):   # x_t = sqrt(1-b) x_{t-1} + b eps
        return math.sqrt(1 - beta[t]) * x_prev + beta[t] * eps

    assert _closed_form_error(s, lambda x, t, e: diffusion.q_step(s, x, t, e)) <= TOL["exact64"]
    assert _closed_form_error(s, both_sides) > 0.5
    assert _closed_form_error(s, std_as_variance) > 0.5


# ---- C2 ------------------------------------------------------------------------------------------

def _grid_posterior_mean(s, x0, xt, t, n=200001):
    """Mean of q(x_{t-1} | x_t, x_0) by Bayes' rule normalised on a grid (t 0-based, >= 1)."""
    prev_mean, prev_var = math.sqrt(s.alpha_bar[t - 1]) * x0, 1 - s.alpha_bar[t - 1]
    y = np.linspace(prev_mean - 12 * math.sqrt(prev_var), prev_mean + 12 * math.sqrt(prev_var), n)
    log_w = -0.5 * (xt - math.sqrt(s.alphas[t]) * y) ** 2 / s.betas[t] - 0.5 * (y - prev_mean) ** 2 / prev_var
    w = np.exp(log_w - log_w.max())
    return np.trapezoid(w * y, y) / np.trapezoid(w, y), s.posterior_variance[t]


def test_C2_mean_with_sqrt_one_minus_alpha_misses_the_bayes_posterior_mean(rng):
    s = Schedule(make_betas("linear", 1000), warn=False)
    for t in [1, 10, 500, 999]:
        x0, eps = float(rng.uniform(-1, 1)), float(rng.standard_normal())
        xt = float(diffusion.q_sample(s, np.array([x0]), t, np.array([eps]))[0])
        want, var = _grid_posterior_mean(s, x0, xt, t)
        right = diffusion.p_mean_variance(s, np.array([[eps]]), np.array([[xt]]), t, "eps").mean[0, 0]
        a = s.alphas[t]
        wrong = (xt - (1 - a) / math.sqrt(1 - a) * eps) / math.sqrt(a)
        sd = math.sqrt(var)
        assert abs(right - want) <= TOL["grid64"] * sd, t
        assert abs(wrong - want) > 1e3 * TOL["grid64"] * sd, t     # off by far more than the grid's error
    # ... and the two forms agree at the first step (abar_1 = alpha_1), where a test cannot tell them apart
    a = s.alphas[0]
    assert abs((1 - a) / math.sqrt(1 - a) - (1 - a) / math.sqrt(1 - s.alpha_bar[0])) <= TOL["exact64"]


# ---- C3 ------------------------------------------------------------------------------------------

def test_C3_cosine_beta_equal_to_one_minus_alpha_bar_fails_the_telescoping_product():
    T, off = 1000, 0.008
    u = np.arange(T + 1) / T
    abar = np.cos((u + off) / (1 + off) * np.pi / 2) ** 2 / np.cos(off / (1 + off) * np.pi / 2) ** 2  # (S2)
    wrong = np.minimum(1 - abar[1:], 0.999)
    right = make_betas("cosine", T)
    for betas, ok in [(right, True), (wrong, False)]:
        prod = np.cumprod(1 - betas)                                  # (F2)
        err = np.max(np.abs(prod[:-1] - abar[1:-1]))                  # all but the clipped last step
        assert (err <= TOL["exact64"]) == ok, err
    assert np.prod(1 - wrong[:500]) < 1e-40 and abar[500] > 0.49


# ---- C4 ------------------------------------------------------------------------------------------

def test_C4_noise_at_the_last_step_spreads_point_mass_data(rng):
    """Data = one point c on the 8-bit grid; the exact denoiser predicts c. The right sampler returns c;
    scaling the last step's noise by exp(log_var / 2) (clipped, (P4)) moves pixels off their bins."""
    s = Schedule(make_betas("linear", 1000), warn=False)
    n, c = 2000, np.array([-1.0 + 2 * 200 / 255, -1.0 + 2 * 60 / 255])   # interior levels: bins of half-width 1/255
    oracle = lambda xt, t: np.broadcast_to(c, xt.shape).copy()  # noqa: E731
    x_T = rng.standard_normal((n, 2))
    right = samplers.sample_loop(s, oracle, x_T, np.random.default_rng(1), prediction="x0").x
    x = x_T
    noise_rng = np.random.default_rng(1)
    for t in range(s.T - 1, -1, -1):                 # wrong: noise at every step, t = 0 included
        tt = np.full(n, t)
        p = diffusion.p_mean_variance(s, oracle(x, tt), x, tt, "x0", "fixed_small")
        x = p.mean + np.exp(0.5 * p.log_variance) * noise_rng.standard_normal(x.shape)
    half_bin = 1 / 255
    assert np.max(np.abs(right - c)) <= TOL["exact64"]
    assert np.mean(np.abs(x - c) > half_bin) > 0.5   # most pixels land in a wrong bin (P(|z| > 0.53) = 0.6)


# ---- C5 ------------------------------------------------------------------------------------------

def _trained_timesteps(T, monkeypatch, draws=200):
    """The set of t the reference Trainer draws, captured by replacing the update itself."""
    seen = set()

    def record(model, opt, ema, sched, x0, t, eps, *args, **kw):
        seen.update(np.asarray(t).tolist())
        return 0.0, 0.0

    monkeypatch.setattr(train_module, "train_step", record)
    trainer = train_module.Trainer(TrainConfig(data="moons", T=T, schedule="cosine"), (2,))
    x0 = np.zeros((64, 2), dtype=np.float32)
    for k in range(draws):
        trainer.step(x0, k)
    return seen


def _sampled_timesteps(sched, **kw):
    """The indices the sampler calls the network with, in calling order."""
    seen = []

    def denoise(xt, t):
        seen.extend(np.unique(t).tolist())
        return np.zeros_like(xt)

    with warnings.catch_warnings():   # a leading start that leaves signal warns (A5); not what this records
        warnings.simplefilter("ignore", PriorMismatchWarning)
        samplers.sample_loop(sched, denoise, np.zeros((2, 2)), np.random.default_rng(0), **kw)
    return seen


def _leading_start_quoted(page):
    """(t, n, T) of the sentence "$t = 900$ for $n = 10$ at $T = 1000$" on a derivations page."""
    text = (Path(__file__).resolve().parents[2] / "derivations" / page).read_text()
    found = re.findall(r"\$t = (\d+)\$ for \$n = (\d+)\$ at \$T = (\d+)\$", text)
    assert len(found) == 1, f"{page} should state once where leading spacing starts, found {found}"
    return tuple(int(v) for v in found[0])


def test_C5_sampler_visits_only_timesteps_that_training_draws(monkeypatch):
    T, n = 20, 5
    trained = _trained_timesteps(T, monkeypatch)
    s = Schedule(make_betas("cosine", T), warn=False)
    assert trained == set(range(T))                                            # U{0..T-1}
    # right: every visited index is one training draws; all steps, trailing and linspace start at T-1
    for kw in [dict(sampler="ddpm"), dict(sampler="ddim", steps=n, spacing="trailing"),
               dict(sampler="ddim", steps=n, spacing="linspace")]:
        visited = _sampled_timesteps(s, **kw)
        assert set(visited) <= trained and visited[0] == T - 1, kw
    # ... and the default spacing, leading, starts at (n - 1) floor(T / n) = T - T / n, also a training index
    assert inspect.signature(samplers.sample_loop).parameters["spacing"].default == "leading"
    for sampler in ("ddpm", "ddim"):
        visited = _sampled_timesteps(s, sampler=sampler, steps=n)
        assert set(visited) <= trained and visited == list(range(T - T // n, -1, -(T // n))), (sampler, visited)
    # the pages quote the same start: t = 900 for n = 10 at T = 1000
    for page in ("notation.md", "common_mistakes.md"):
        t_start, n_q, T_q = _leading_start_quoted(page)
        s_q = Schedule(make_betas("cosine", T_q), warn=False)
        assert _sampled_timesteps(s_q, sampler="ddim", steps=n_q)[0] == t_start == T_q - T_q // n_q, page
    # wrong 1: train on {1..T-1} (exclusive upper end), sample from T down to 1
    wrong_trained, wrong_visited = set(range(1, T)), set(range(T, 0, -1))
    assert not wrong_visited <= wrong_trained and (wrong_visited - wrong_trained) == {T}
    with pytest.raises(InputError, match="out of range"):                     # and the reference refuses t = T
        samplers.ddpm_step(s, np.zeros((1, 2)), np.zeros((1, 2)), T, np.zeros((1, 2)))
    # wrong 2: betas on T + 1 points; the sampler then starts at index T, which training never drew
    long = Schedule(make_betas("cosine", T + 1), warn=False)
    visited = _sampled_timesteps(long, sampler="ddpm")
    assert not set(visited) <= trained and visited[0] == T


# ---- C6 ------------------------------------------------------------------------------------------

def _x_T_by_the_chain(sched, rng, n=20000):
    x = np.ones((n, 1))                                                        # x0 = 1 (a white pixel)
    for t in range(sched.T):
        x = diffusion.q_step(sched, x, t, rng.standard_normal(x.shape))       # (F1)
    return x[:, 0]


def test_C6_linear_schedule_at_T50_leaves_signal_that_the_chain_shows(rng):
    with pytest.warns(PriorMismatchWarning):
        wrong = Schedule(make_betas("linear", 50))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorMismatchWarning)                  # the right forms do not warn
        fixes = [Schedule(make_betas("cosine", 50)),
                 Schedule(make_betas("linear", 50, beta_start=1e-4 * 20, beta_end=0.02 * 20))]
    n = 20000
    x = _x_T_by_the_chain(wrong, rng, n)
    # the route: is x_T ~ N(0, 1)? (mean 0 within 5 standard errors)
    assert not mc_close(x.mean(), 0.0, x.std() / math.sqrt(n))
    assert mc_close(x.mean(), math.sqrt(np.prod(1 - wrong.betas)), x.std() / math.sqrt(n))  # sqrt(0.603)
    assert f"{wrong.alpha_bar_T:.3f}" == "0.603"
    for s in fixes:
        x = _x_T_by_the_chain(s, rng, n)
        assert mc_close(x.mean(), 0.0, 1 / math.sqrt(n)) and mc_close(x.var(), 1.0, math.sqrt(2 / n))


# ---- C7 ------------------------------------------------------------------------------------------

def test_C7_log_of_zero_first_variance_breaks_the_decoder_density():
    """The first reverse step's Gaussian density must integrate to one (trapezoid on a grid)."""
    s = Schedule(make_betas("linear", 1000), warn=False)
    mean = 0.3
    right = s.posterior_log_variance_clipped[0]
    with np.errstate(divide="ignore"):
        wrong = np.log(s.posterior_variance)[0]
    x = np.linspace(mean - 1, mean + 1, 200001)

    def integral(log_var):
        with np.errstate(all="ignore"):
            dens = np.exp(-0.5 * (x - mean) ** 2 * np.exp(-log_var) - 0.5 * log_var) / math.sqrt(2 * math.pi)
            return np.trapezoid(dens, x)

    assert abs(integral(right) - 1) <= TOL["grid64"]
    assert wrong == -np.inf and not np.isfinite(integral(wrong))
    # the reference refuses the non-finite log-variance instead of returning NaN
    with pytest.raises(InputError, match="non-finite"):
        losses.normal_kl(0.0, wrong, 0.0, right)


# ---- C9, C10 (derivations/design_space.md) -------------------------------------------------------

def _mixture_velocity():
    """The exact flow velocity u(x, t) = E[eps - x0 | x_t] of a 1-D mixture (oracle's posterior means, G4)."""
    from reference.oracle import GaussianMixtureOracle

    mix = GaussianMixtureOracle([0.4, 0.6], [[-1.0], [1.0]], var=[[0.04], [0.09]])

    def u(x, t):
        a = (1.0 - t) ** 2 / ((1.0 - t) ** 2 + t ** 2)        # the VP alpha_bar at sigma~ = t / (1 - t)
        x_vp = x / (1.0 - t) * np.sqrt(a)
        return mix.eps_mean(x_vp, a) - mix.x0_mean(x_vp, a)

    return mix, u


def test_C9_flow_time_reversed_with_v_negated_gives_identical_samples_the_sign_kept_fails():
    from types import SimpleNamespace

    from reference import objectives

    mix, u = _mixture_velocity()
    t_grid = np.linspace(1.0 - 1e-3, 0.0, 41)
    z = np.random.default_rng(9).standard_normal((256, 1))
    x = z * t_grid[0]                                         # the start at t = 1 - 1e-3: t eps (both loops share it)
    for k in range(len(t_grid) - 1):                          # ours: t = 1 (noise) down to 0, u = eps - x0
        x = x + (t_grid[k + 1] - t_grid[k]) * u(x, t_grid[k])

    def lipman(sign):                                         # theirs: s = 0 (noise) up to 1, v(x, s) = sign u(x, 1 - s)
        s_grid, y = 1.0 - t_grid, z * t_grid[0]
        for k in range(len(s_grid) - 1):
            y = y + (s_grid[k + 1] - s_grid[k]) * sign * u(y, 1.0 - s_grid[k])
        return y

    np.testing.assert_allclose(lipman(-1.0), x, rtol=0, atol=TOL["exact64"])        # right: both substituted
    wrong = lipman(+1.0)                                                             # wrong: the sign kept
    near = lambda y: np.min(np.abs(y - mix.m[:, 0][None, :]), axis=1).mean()         # distance to the nearer mode
    assert near(x) < 0.3 and near(wrong) > 1.0
    # the objective's target is the SD3 direction: dx_t/dt along the path (finite difference of x_t in t)
    x0, eps, h = mix.sample(np.random.default_rng(1), 8)[0], z[:8], 1e-6
    _, _, target, _ = objectives.training_target(SimpleNamespace(objective="flow"), x0, eps, np.full(8, 0.5))
    dxdt = (((0.5 + h) * eps + (0.5 - h) * x0) - ((0.5 - h) * eps + (0.5 + h) * x0)) / (2 * h)
    np.testing.assert_allclose(target, dxdt, rtol=TOL["fd64"], atol=TOL["fd64"])


def test_C10_the_shift_applied_twice_translates_lambda_twice_as_far():
    from types import SimpleNamespace

    from reference import objectives, processes

    flow, s = processes.make_process("flow"), 3.0
    t = np.linspace(1.0, 0.0, 21)[:-1]                        # an unshifted grid, noise first
    once = objectives.shift_t(t, s)
    # the route: record the shifted ends, rebuild the linspace between them, shift again
    rebuilt = np.linspace(once[0], once[-1], len(t))
    twice = objectives.shift_t(rebuilt, s)
    lam = flow.log_snr(t[1:])
    np.testing.assert_allclose(flow.log_snr(once[1:]), lam - 2 * math.log(s), rtol=TOL["exact64"], atol=TOL["exact64"] * 10)
    err = np.abs(flow.log_snr(twice[1:]) - (lam - 2 * math.log(s)))
    assert err.max() > 1.0                                    # rejected: not the one translation the model expects
    np.testing.assert_allclose(objectives.shift_t(objectives.shift_t(t, s), s), objectives.shift_t(t, s * s),
                               rtol=TOL["exact64"])           # composition: shift_s twice is shift_{s^2}
    # and the trained levels: level() shifts once (its logit is the unshifted one plus ln s, exactly)
    u = np.linspace(0.01, 0.99, 99)
    got = objectives.level(SimpleNamespace(objective="flow", shift=s), u)
    np.testing.assert_allclose(np.log(got / (1 - got)), np.log(u / (1 - u)) + math.log(s), rtol=TOL["exact64"],
                               atol=TOL["exact64"] * 10)
