"""NumPy reference vs torch port: the ancestral step (A1, M1, M2), the DDIM step (A2, A3), timestep
spacings (A5, exact equality), respacing (A4) and a whole 20-step sampling trajectory, step by
step. Noise drawn ONCE in NumPy and fed to both sides; float64.

Tolerance: TOL["cross64"] as ``assert_allclose(rtol=tol, atol=tol)`` (relative above 1, absolute
below). Over a 20-step trajectory rounding differences are carried, not amplified: each step is a
contraction-or-near-identity map of x_t (coefficients <= 1/sqrt(alpha_t)), so cross64 holds.
"""
import warnings

import numpy as np
import pytest
import torch

from reference import oracle as RO
from reference import samplers as RSa
from reference import schedules as RS
from reference.errors import InputError
from torch_port import oracle as TO
from torch_port import samplers as TSa
from crosscheck import close, schedule_pair
from tolerances import TOL

TOLX = TOL["cross64"]
PREDS = ("eps", "x0", "v")
tt = torch.from_numpy


SCHEDS = {"linear": schedule_pair(RS.make_betas("linear", 1000)), "cosine": schedule_pair(RS.make_betas("cosine", 1000)),
          "zero-terminal": schedule_pair(RS.rescale_zero_terminal_snr(RS.make_betas("linear", 1000)))}


def _draw(seed=0, shape=(4, 3, 4, 4)):
    rng = np.random.default_rng(seed)
    xt, out, noise = (rng.normal(size=shape) for _ in range(3))
    return xt, out * 1.5, noise  # |x0_hat| > 1 somewhere, so clip_x0 bites


# ---- one step ---------------------------------------------------------------------------------

@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("sname", ["linear", "cosine"])
def test_A1_M1_M2_ddpm_step_matches_reference(sname, pred, variance, clip_x0):
    ref, port = SCHEDS[sname]
    xt, out, noise = _draw()
    for t in (np.array([0, 1, 500, 999]), 0, 640):  # t = 0 (paper step 1): no noise, per example
        got = TSa.ddpm_step(port, tt(out), tt(xt), tt(t) if np.ndim(t) else t, tt(noise), pred, variance, clip_x0)
        want = RSa.ddpm_step(ref, out, xt, t, noise, pred, variance, clip_x0)
        for g, w in zip(got, want):
            close(g, w)


# x0 from eps is undefined at SNR 0: zero-terminal runs v and x0 only (eps is in the bad-input test)
DDIM_CASES = [(s, p) for s in ("linear", "cosine", "zero-terminal") for p in PREDS
              if (s, p) != ("zero-terminal", "eps")]


@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("sname,pred", DDIM_CASES)
def test_A2_A3_ddim_step_matches_reference(sname, pred, eta, clip_x0):
    ref, port = SCHEDS[sname]
    xt, out, noise = _draw(1)
    t, t_prev = np.array([0, 10, 500, 999]), np.array([-1, 3, 450, 899])  # -1: step to the clean sample
    for a, b in ((t, t_prev), (999, 949), (5, -1)):
        got = TSa.ddim_step(port, tt(out), tt(xt), tt(a) if np.ndim(a) else a, tt(b) if np.ndim(b) else b,
                            tt(noise), eta, pred, clip_x0)
        want = RSa.ddim_step(ref, out, xt, a, b, noise, eta, pred, clip_x0)
        for g, w in zip(got, want):
            close(g, w)


def test_A2_ddim_eta0_accepts_no_noise_on_both_sides():
    ref, port = SCHEDS["linear"]
    xt, out, _ = _draw(2)
    close(TSa.ddim_step(port, tt(out), tt(xt), 700, 600, None)[0], RSa.ddim_step(ref, out, xt, 700, 600, None)[0])
    close(TSa.ddpm_step(port, tt(out), tt(xt), 0, None)[0], RSa.ddpm_step(ref, out, xt, 0, None)[0])


# ---- timesteps and respacing --------------------------------------------------------------------

@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_A5_timesteps_equal_reference_exactly_for_every_n(spacing):
    for T in (1, 7, 100, 1000):
        for n in range(1, T + 1):
            got, want = TSa.timesteps(T, n, spacing), RSa.timesteps(T, n, spacing)
            assert got.dtype == torch.int64
            assert np.array_equal(got.numpy(), want), (T, n)


@pytest.mark.parametrize("n,spacing", [(10, "leading"), (50, "trailing"), (37, "linspace"), (1000, "leading")])
@pytest.mark.parametrize("sname", ["linear", "cosine", "zero-terminal"])
def test_A4_respace_matches_reference(sname, n, spacing):
    ref, port = SCHEDS[sname]
    steps = RSa.timesteps(1000, n, spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RS.PriorMismatchWarning)
        want, got = RSa.respace(ref, steps), TSa.respace(port, tt(steps))
    assert got.T == want.T == n
    for name in ("betas", "alpha_bar", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef_x0", "posterior_mean_coef_xt", "snr"):
        close(getattr(got, name), getattr(want, name))


def test_A4_respace_warns_like_reference():
    ref, port = SCHEDS["linear"]
    steps = np.array([0, 100, 300])  # the last kept index leaves signal (abar ~ 0.35): both warn
    for side, s in ((RSa, ref), (TSa, port)):
        with pytest.warns(RS.PriorMismatchWarning):
            side.respace(s, steps)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            side.respace(s, steps, warn=False)


# ---- a whole trajectory, step by step --------------------------------------------------------

LOOPS = [("ddpm", "leading", 0.0, "eps", "fixed_small", False), ("ddpm", "trailing", 0.0, "v", "fixed_large", True),
         ("ddim", "linspace", 0.0, "x0", "fixed_small", True), ("ddim", "trailing", 0.5, "v", "fixed_small", False),
         ("ddim", "leading", 1.0, "eps", "fixed_small", True)]


@pytest.mark.parametrize("sampler,spacing,eta,pred,variance,clip_x0", LOOPS)
def test_A1_A2_A4_twenty_step_trajectory_matches_reference_step_by_step(sampler, spacing, eta, pred, variance,
                                                                         clip_x0):
    ref, port = SCHEDS["cosine"]
    mean, var = np.array([0.3, -0.2, 0.0]), np.array([0.1, 0.3, 0.05])
    r_or, t_or = RO.GaussianOracle(mean, var=var), TO.GaussianOracle(mean, var=var)
    rng = np.random.default_rng(11)
    x_T, noises = rng.normal(size=(5, 3)), [rng.normal(size=(5, 3)) for _ in range(20)]
    kw = dict(sampler=sampler, steps=20, spacing=spacing, eta=eta, prediction=pred, variance=variance,
              clip_x0=clip_x0, record=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RS.PriorMismatchWarning)  # "leading" respacing ends before T-1
        want_x, want_traj = RSa.sample_loop(ref, r_or.denoiser(ref, pred), x_T, noises, **kw)
        got_x, got_traj = TSa.sample_loop(port, t_or.denoiser(port, pred), tt(x_T), [tt(z) for z in noises], **kw)
    assert len(got_traj) == len(want_traj) == 20
    for (g_t, g_x, g_x0), (w_t, w_x, w_x0) in zip(got_traj, want_traj):
        assert g_t == w_t  # the same original index at the same step
        close(g_x, w_x)
        close(g_x0, w_x0)
    close(got_x, want_x)


def test_full_length_loop_without_record_matches_reference():
    """All T steps of a short schedule: the loop's identity respacing path (no respace)."""
    ref, port = schedule_pair(RS.make_betas("cosine", 30))
    r_or, t_or = RO.GaussianOracle(0.1, var=0.2), TO.GaussianOracle(0.1, var=0.2)
    rng = np.random.default_rng(12)
    x_T, noises = rng.normal(size=(3, 2)), [rng.normal(size=(3, 2)) for _ in range(30)]
    got = TSa.sample_loop(port, t_or.denoiser(port), tt(x_T), [tt(z) for z in noises])
    assert got.trajectory is None
    close(got.x, RSa.sample_loop(ref, r_or.denoiser(ref), x_T, noises).x)


# ---- the same bad inputs raise the same InputError on both sides ---------------------------

X, Z = np.zeros((2, 3)), np.ones((2, 3))
BAD = [
    ("ddpm noise None", "linear", lambda m, s: m.ddpm_step(s, Z, X, np.array([0, 3]), None)),
    ("ddpm noise shape", "linear", lambda m, s: m.ddpm_step(s, Z, X, 3, Z[:1])),
    ("ddpm t range", "linear", lambda m, s: m.ddpm_step(s, Z, X, 1000, Z)),
    ("ddpm variance", "linear", lambda m, s: m.ddpm_step(s, Z, X, 3, Z, "eps", "learned_range")),
    ("ddim eta", "linear", lambda m, s: m.ddim_step(s, Z, X, 5, 4, Z, eta=1.5)),
    ("ddim eta bool", "linear", lambda m, s: m.ddim_step(s, Z, X, 5, 4, Z, eta=True)),
    ("ddim noise None", "linear", lambda m, s: m.ddim_step(s, Z, X, 5, 4, None, eta=0.5)),
    ("ddim t_prev >= t", "linear", lambda m, s: m.ddim_step(s, Z, X, np.array([5, 5]), np.array([4, 5]), Z)),
    ("ddim t_prev < -1", "linear", lambda m, s: m.ddim_step(s, Z, X, 5, -2, Z)),
    ("ddim t_prev float", "linear", lambda m, s: m.ddim_step(s, Z, X, 5, 4.0, Z)),
    ("ddim prediction", "linear", lambda m, s: m.ddim_step(s, Z, X, 5, 4, Z, prediction="score")),
    ("ddim eps at zero SNR", "zero-terminal", lambda m, s: m.ddim_step(s, Z, X, 999, 500, Z)),
    ("timesteps spacing", "linear", lambda m, s: m.timesteps(1000, 10, "uniform")),
    ("timesteps n > T", "linear", lambda m, s: m.timesteps(10, 11, "leading")),
    ("timesteps n float", "linear", lambda m, s: m.timesteps(10, 2.0, "leading")),
    ("timesteps T", "linear", lambda m, s: m.timesteps(0, 1, "leading")),
    ("respace unsorted", "linear", lambda m, s: m.respace(s, np.array([5, 3]))),
    ("respace range", "linear", lambda m, s: m.respace(s, np.array([3, 1000]))),
    ("respace float", "linear", lambda m, s: m.respace(s, np.array([1.0, 2.0]))),
    ("loop sampler", "linear", lambda m, s: m.sample_loop(s, None, X, [], sampler="euler")),
    ("loop noises", "linear", lambda m, s: m.sample_loop(s, None, X, [Z] * 3, steps=4)),
    ("loop steps", "linear", lambda m, s: m.sample_loop(s, None, X, [Z] * 3, steps=0)),
]


@pytest.mark.parametrize("what,sname,call", BAD, ids=[b[0] for b in BAD])
def test_same_bad_sampler_inputs_raise_the_same_InputError(what, sname, call):
    ref, port = SCHEDS[sname]
    with pytest.raises(InputError) as ref_err:
        call(RSa, ref)
    with pytest.raises(InputError) as port_err:
        call(TSa, port)
    assert str(port_err.value) == str(ref_err.value)


def test_a_numpy_generator_draws_the_same_noise_on_both_sides():
    """rng_or_noises as np.random.Generator: one standard-normal draw per step on both sides, so
    equal seeds give equal samples (the port turns each NumPy draw into a tensor)."""
    ref, port = SCHEDS["cosine"]
    r_or, t_or = RO.GaussianOracle(0.1, var=0.2), TO.GaussianOracle(0.1, var=0.2)
    x_T = np.random.default_rng(13).normal(size=(3, 2))
    kw = dict(sampler="ddim", steps=15, spacing="trailing", eta=0.7)
    want = RSa.sample_loop(ref, r_or.denoiser(ref), x_T, np.random.default_rng(14), **kw).x
    close(TSa.sample_loop(port, t_or.denoiser(port), tt(x_T), np.random.default_rng(14), **kw).x, want)
