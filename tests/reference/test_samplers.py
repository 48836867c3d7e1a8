"""Samplers: the ancestral step (A1, M1, M2), DDIM (A2, A3), spacing (A5), respacing (A4), the loop.

Independent routes: the eps form of the mean (M1) against the posterior-mean form; the exact
x0-knowing denoiser; DDPM vs DDIM at eta = 1; the Gaussian oracle (Monte Carlo against the data's
mean and covariance, and an exact affine propagation of the sampler's output moments).
"""
import numpy as np
import pytest

from reference import diffusion, samplers, schedules
from reference.errors import InputError
from reference.oracle import GaussianOracle
from tolerances import TOL, mc_close


def _sched(name="linear", T=1000, **kw):
    return schedules.Schedule(schedules.make_betas(name, T, **kw))


def _x0_knowing(sched, x0):
    """The denoiser that knows x0: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar) (R2, typed from the paper)."""
    def denoise(xt, t):
        a = sched.alpha_bar[t][:, None]
        return (xt - np.sqrt(a) * x0) / np.sqrt(1.0 - a)
    return denoise


# 2-D correlated Gaussian data for the oracle tests
MU = np.array([0.5, -0.3])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])


# ---- (A5) spacing and (A4) respacing -----------------------------------------------------------

def test_A5_timesteps_match_lin_et_al_table_2():
    # Lin et al. 2023, Table 2, T = 1000, 10 steps (0-based indices)
    np.testing.assert_array_equal(samplers.timesteps(1000, 10, "leading"), np.arange(0, 1000, 100))
    np.testing.assert_array_equal(samplers.timesteps(1000, 10, "trailing"), np.arange(99, 1000, 100))
    np.testing.assert_array_equal(samplers.timesteps(1000, 10, "linspace"), np.arange(0, 1000, 111))
    assert samplers.timesteps(1000, 10, "leading").dtype == np.int64


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
def test_A5_timesteps_are_n_unique_ascending_indices(spacing):
    for T in (1, 2, 7, 10, 999, 1000):
        for n in sorted({n for n in (1, 2, 3, T // 3, T - 1, T) if 1 <= n <= T}):
            s = samplers.timesteps(T, n, spacing)
            assert s.shape == (n,) and s.dtype == np.int64
            assert np.all(np.diff(s) > 0) and s[0] >= 0 and s[-1] <= T - 1
            if n == T:  # all steps kept, whatever the spacing
                np.testing.assert_array_equal(s, np.arange(T))
            if spacing == "trailing":
                assert s[-1] == T - 1  # trailing always starts sampling from the last step
            if spacing == "linspace" and n > 1:
                assert s[0] == 0 and s[-1] == T - 1


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
def test_A4_respaced_alpha_bar_equals_original_at_kept_steps(spacing):
    for sched in (_sched("linear"), _sched("cosine"),
                  schedules.Schedule(schedules.rescale_zero_terminal_snr(schedules.make_betas("linear", 1000)))):
        for n in (1, 10, 37, 1000):
            s = samplers.timesteps(sched.T, n, spacing)
            r = samplers.respace(sched, s, warn=False)
            assert r.T == n
            # independent route: the respaced product of alphas, from the respaced betas. Absolute:
            # 1 - (1 - abar) loses abar's relative precision where abar ~ 0 (values in [0, 1]).
            np.testing.assert_allclose(np.cumprod(1.0 - r.betas), sched.alpha_bar[s], rtol=0, atol=TOL["exact64"])


def test_A5_trailing_starts_from_pure_noise_and_leading_does_not():
    """Lin et al.'s point, measured with the oracle: leading starts at 900 of 1000 where signal is left."""
    sched = _sched("cosine")
    # cosine, T=1000: alpha_bar at index 900 is ~0.024 (signal left), at 999 it is ~1e-9
    assert sched.alpha_bar[samplers.timesteps(1000, 10, "leading")[-1]] > 1e-2
    assert sched.alpha_bar[samplers.timesteps(1000, 10, "trailing")[-1]] < 1e-6
    oracle = GaussianOracle(MU, cov=COV)
    bias = {sp: np.abs(_sampler_moments(sched, oracle, "ddim", steps=10, spacing=sp)[0] - MU).max()
            for sp in ("leading", "trailing")}
    assert bias["trailing"] < 0.1 * bias["leading"]


# ---- (A1, M1, M2) the ancestral step -------------------------------------------------------------

def test_A1_ddpm_step_adds_no_noise_at_t0(rng):
    sched = _sched()
    xt, out = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    n1, n2 = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    for variance in ("fixed_small", "fixed_large"):  # fixed_large has a nonzero variance at t = 0
        # scalar t = 0: the output is the mean, whatever the noise
        a, _ = samplers.ddpm_step(sched, out, xt, 0, n1, variance=variance)
        b, _ = samplers.ddpm_step(sched, out, xt, 0, n2, variance=variance)
        np.testing.assert_array_equal(a, b)
        # mixed per-example t: rows with t = 0 ignore the noise, the others use it
        t = np.array([0, 5, 0, 999, 1, 0])
        a, _ = samplers.ddpm_step(sched, out, xt, t, n1, variance=variance)
        b, _ = samplers.ddpm_step(sched, out, xt, t, n2, variance=variance)
        zero = t == 0
        np.testing.assert_array_equal(a[zero], b[zero])
        assert np.all(np.abs(a[~zero] - b[~zero]) > 0)


def test_M2_fixed_small_and_fixed_large_variances(rng):
    """sigma_t^2: beta~_t (fixed_small) and beta_t (fixed_large), read off the step with unit noise."""
    sched = _sched("linear", 200, beta_start=1e-3, beta_end=0.1)
    t = np.arange(1, 200)
    xt, out = rng.standard_normal((199, 3)), rng.standard_normal((199, 3))
    one = np.ones_like(xt)
    # independent route for beta~: alpha_bar by a running product, beta~ = (1 - abar_{t-1}) / (1 - abar_t) beta_t
    abar, b = np.cumprod(1.0 - sched.betas), sched.betas
    beta_tilde = (1.0 - abar[t - 1]) / (1.0 - abar[t]) * b[t]
    for variance, expected in (("fixed_small", beta_tilde), ("fixed_large", b[t])):
        x1, _ = samplers.ddpm_step(sched, out, xt, t, one, variance=variance)
        x0, _ = samplers.ddpm_step(sched, out, xt, t, 0 * one, variance=variance)
        np.testing.assert_allclose((x1 - x0) ** 2, np.broadcast_to(expected[:, None], xt.shape),
                                   rtol=TOL["exact64"], atol=0)  # measured 4e-15


def test_M1_ddpm_mean_is_eps_form(rng):
    """(M1) mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t), against the posterior-mean form."""
    sched = _sched()
    t = rng.integers(1, 1000, size=50)
    xt, eps = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    mean, _ = samplers.ddpm_step(sched, eps, xt, t, np.zeros_like(xt))
    abar, b = np.cumprod(1.0 - sched.betas)[t][:, None], sched.betas[t][:, None]
    expected = (xt - b / np.sqrt(1.0 - abar) * eps) / np.sqrt(1.0 - b)
    # x10: near t = 1 the tables' 1 - abar = 1 - (1 - beta_0) ... keep only ~2^-52 / beta_0 = 2e-12 relative
    np.testing.assert_allclose(mean, expected, rtol=0, atol=TOL["exact64"] * 10)  # measured 5e-13


# ---- (A2, A3) DDIM -------------------------------------------------------------------------------

def test_A2_ddim_eta0_is_deterministic(rng):
    sched = _sched()
    xt, out = rng.standard_normal((8, 2)), rng.standard_normal((8, 2))
    a, _ = samplers.ddim_step(sched, out, xt, 500, 400, rng.standard_normal((8, 2)))
    b, _ = samplers.ddim_step(sched, out, xt, 500, 400, rng.standard_normal((8, 2)))
    c, _ = samplers.ddim_step(sched, out, xt, 500, 400, None)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
@pytest.mark.filterwarnings("ignore::reference.schedules.PriorMismatchWarning")  # 1 leading step starts at t=0 on purpose
def test_A2_ddim_with_x0_knowing_denoiser_reconstructs_x0(rng, spacing):
    sched = _sched("linear")
    x0 = rng.uniform(-1, 1, size=(64, 2))
    for steps in (None, 1, 10, 50):
        x = samplers.sample_loop(sched, _x0_knowing(sched, x0), rng.standard_normal(x0.shape), rng,
                                 sampler="ddim", steps=steps, spacing=spacing).x
        # the last x0_hat is (x_t - (x_t - sqrt(abar) x0)) / sqrt(abar) at the last step's t: rounding
        # of O(1) numbers divided by sqrt(abar), at worst sqrt(abar_T) ~ 1/160 (one step, trailing)
        np.testing.assert_allclose(x, x0, rtol=0, atol=TOL["exact64"] / np.sqrt(sched.alpha_bar[-1]))


def test_A2_A3_ddim_eta1_with_all_steps_equals_ddpm_fixed_small(rng):
    sched = _sched()
    t = np.concatenate([[0, 1, 999], rng.integers(0, 1000, size=61)])
    xt, out, z = (rng.standard_normal((64, 3)) for _ in range(3))
    for prediction in ("eps", "x0", "v"):
        a, x0a = samplers.ddpm_step(sched, out, xt, t, z, prediction=prediction, variance="fixed_small")
        b, x0b = samplers.ddim_step(sched, out, xt, t, t - 1, z, eta=1.0, prediction=prediction)
        # x10: near t = 0 both routes hold 1 - abar_0 = 1 - (1 - beta_0), relative error ~2^-52 / beta_0
        # = 2e-12, and DDIM's sqrt(1 - abar_prev - sigma^2) cancels to O(beta) too (measured 6e-13)
        np.testing.assert_allclose(b, a, rtol=0, atol=TOL["exact64"] * 10)
        np.testing.assert_array_equal(x0b, x0a)  # the same predict_x0


def _ddim_invert(sched, denoise, x0, kept):
    """Run the eta=0 DDIM update forwards in t: x_{s_{i+1}} from the prediction at x_{s_i} (the first
    step, from x_0 where abar = 1, uses the prediction at s_0 evaluated at x_0)."""
    x, t_eval = x0, kept[0]
    for s in kept:
        t = np.full(len(x), t_eval)
        out = denoise(x, t)
        x0_hat, eps_hat = (f(sched, x, t, out, "eps") for f in (diffusion.predict_x0, diffusion.predict_eps))
        # (A2) with sigma = 0, read from t_eval up to s
        x = np.sqrt(sched.alpha_bar[s]) * x0_hat + np.sqrt(1.0 - sched.alpha_bar[s]) * eps_hat
        t_eval = s
    return x


def test_A2_ddim_inversion_then_sampling_reconstructs_with_oracle(rng):
    """Inversion and sampling are two Euler discretisations of the same probability-flow ODE: the
    round trip's error is first order, so it halves when the steps double (0.6 leaves room for the
    second-order remainder); measured RMS at 100 steps ~0.022 for this data."""
    sched, oracle = _sched("cosine"), GaussianOracle(MU, cov=COV)
    denoise, x0 = oracle.denoiser(sched, "eps"), oracle.sample(rng, 256)
    rms = []
    for n in (25, 50, 100):
        kept = samplers.timesteps(1000, n, "trailing")
        xT = _ddim_invert(sched, denoise, x0, kept)
        x = samplers.sample_loop(sched, denoise, xT, rng, sampler="ddim", steps=n, spacing="trailing").x
        rms.append(np.sqrt(np.mean((x - x0) ** 2)))
    assert rms[1] < 0.6 * rms[0] and rms[2] < 0.6 * rms[1]
    assert rms[2] < 0.05  # 2x the measured first-order error at 100 steps


# ---- the loop: noise feeding, recording, progress ------------------------------------------------

@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_sample_loop_noise_list_equals_generator(rng, sampler):
    sched, oracle = _sched("cosine", 100), GaussianOracle(MU, cov=COV)
    xT = rng.standard_normal((16, 2))
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    noises = [g2.standard_normal(xT.shape) for _ in range(20)]
    calls = []
    kw = dict(sampler=sampler, steps=20, spacing="trailing", eta=1.0)
    a = samplers.sample_loop(sched, oracle.denoiser(sched), xT, g1, **kw)
    assert a.trajectory is None
    a = a.x
    b, traj = samplers.sample_loop(sched, oracle.denoiser(sched), xT, noises, record=True,
                                   progress=lambda it: calls.append(1) or it, **kw)
    np.testing.assert_array_equal(a, b)
    assert calls == [1] and len(traj) == 20
    assert [t for t, _, _ in traj] == list(samplers.timesteps(100, 20, "trailing")[::-1])
    np.testing.assert_array_equal(traj[0][1], xT)


# ---- Gaussian data + oracle: the samplers reproduce the data distribution -------------------------

def _mc_check_moments(x, mu, cov):
    """Sample mean and covariance within mc_z standard errors of the truth (Gaussian data)."""
    n = x.shape[0]
    d = np.diag(cov)
    se_mean = np.sqrt(d / n)
    se_cov = np.sqrt((np.outer(d, d) + cov**2) / n)  # Var of a sample covariance entry, Gaussian data
    assert mc_close(x.mean(axis=0), mu, se_mean), (x.mean(axis=0), mu, se_mean)
    assert mc_close(np.cov(x.T), cov, se_cov), (np.cov(x.T), cov, se_cov)


# Each configuration's own bias (exact, from _sampler_moments) is below 0.6 standard errors at N=4000:
# fixed_small all 1000 steps -0.7% of the variance; fixed_large T=200 +0.7%; respaced to 100 +1.4%;
# DDIM 250 steps -1.2%; one standard error of a variance at N=4000 is sqrt(2/N) = 2.2%.
SAMPLER_CASES = {
    "ddpm_fixed_small": (dict(name="cosine", T=1000), dict(sampler="ddpm", variance="fixed_small")),
    "ddpm_fixed_large": (dict(name="cosine", T=200), dict(sampler="ddpm", variance="fixed_large")),
    "ddpm_respaced": (dict(name="cosine", T=1000),
                      dict(sampler="ddpm", variance="fixed_large", steps=100, spacing="trailing")),
    "ddpm_respaced_v": (dict(name="cosine", T=1000),
                        dict(sampler="ddpm", variance="fixed_large", steps=100, spacing="trailing", prediction="v")),
    "ddim_eta0": (dict(name="cosine", T=1000), dict(sampler="ddim", steps=250, spacing="trailing")),
    "ddim_eta0_x0": (dict(name="cosine", T=1000), dict(sampler="ddim", steps=250, spacing="trailing", prediction="x0")),
}


@pytest.mark.parametrize("case", list(SAMPLER_CASES))
def test_A1_A2_A4_G1_samplers_reproduce_gaussian_data(rng, case):
    sk, kw = SAMPLER_CASES[case]
    sched, oracle = _sched(**sk), GaussianOracle(MU, cov=COV)
    denoise = oracle.denoiser(sched, kw.get("prediction", "eps"))
    x = samplers.sample_loop(sched, denoise, rng.standard_normal((4000, 2)), rng, **kw).x
    _mc_check_moments(x, MU, COV)


def _sampler_moments(sched, oracle, sampler, steps=None, spacing="leading", variance="fixed_small", eta=0.0):
    """Exact mean and covariance of the loop's output with the oracle (the whole chain is affine in
    x_T and the noises): propagate the moments through each step, reading the step's affine map
    off the sampler itself at x = 0, e_1, e_2 and unit noises."""
    T = sched.T
    kept = np.arange(T) if steps is None else samplers.timesteps(T, steps, spacing)
    n = kept.size
    step_sched = samplers.respace(sched, kept) if (sampler == "ddpm" and n < T) else sched
    denoise, D = oracle.denoiser(sched, "eps"), 2
    m, C = np.zeros(D), np.eye(D)
    X = np.vstack([np.zeros(D), np.eye(D), np.zeros((D, D))])  # base, unit inputs, base for noise
    Z = np.vstack([np.zeros((1 + D, D)), np.eye(D)])
    for k in range(n):
        i = n - 1 - k
        t = np.full(len(X), kept[i])
        if sampler == "ddpm":
            ts = np.full(len(X), i) if step_sched is not sched else t
            y, _ = samplers.ddpm_step(step_sched, denoise(X, t), X, ts, Z, variance=variance)
        else:
            y, _ = samplers.ddim_step(sched, denoise(X, t), X, t, np.full(len(X), kept[i - 1] if i else -1), Z, eta)
        b, A, S = y[0], (y[1:1 + D] - y[0]).T, (y[1 + D:] - y[0]).T  # x' = A x + b + S z
        m, C = A @ m + b, A @ C @ A.T + S @ S.T
    return m, C


@pytest.mark.parametrize("sampler,variance", [("ddpm", "fixed_small"), ("ddpm", "fixed_large"), ("ddim", None)])
def test_A4_sampled_distribution_converges_to_data_as_steps_grow(sampler, variance):
    """With the oracle the sampled covariance's error shrinks ~1/steps (respaced DDPM and DDIM)."""
    sched, oracle = _sched("cosine"), GaussianOracle(MU, cov=COV)
    err = []
    for n in (50, 100, 200, 1000):
        m, C = _sampler_moments(sched, oracle, sampler, steps=n, spacing="trailing", variance=variance or "fixed_small")
        err.append(np.abs(C - COV).max())
    assert err[0] > err[1] > err[2] > err[3]
    assert err[3] < 0.02  # at all 1000 steps: the bias is < 1 SE of the N=4000 Monte Carlo tests
    if sampler == "ddim":  # eta = 1 is DDPM (fixed_small): same moments
        np.testing.assert_allclose(_sampler_moments(sched, oracle, "ddim", 100, "trailing", eta=1.0)[1],
                                   _sampler_moments(sched, oracle, "ddpm", 100, "trailing")[1], rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_A1_G1_ddpm_output_matches_its_exact_moments_large_sample(variance):
    """At N=100000 the sampler's own bias (up to 1% of a variance) reaches a standard error (0.45%): compare
    the Monte Carlo moments with the exact output moments of the chain, and those with the data."""
    rng = np.random.default_rng(3)
    sched, oracle = _sched("linear"), GaussianOracle(MU, cov=COV)
    m, C = _sampler_moments(sched, oracle, "ddpm", variance=variance)
    x = samplers.sample_loop(sched, oracle.denoiser(sched), rng.standard_normal((100000, 2)), rng, variance=variance).x
    _mc_check_moments(x, m, C)
    assert np.abs(C - COV).max() < 0.02  # the chain's bias at T=1000: measured 0.0085 (fixed_small)


# ---- bad input -----------------------------------------------------------------------------------

def test_bad_input_raises_input_error(rng):
    sched = _sched("linear", 100, beta_end=0.2)
    xt, out, z = (rng.standard_normal((4, 2)) for _ in range(3))
    cases = [
        (lambda: samplers.ddpm_step(sched, out, xt, 1, z, prediction="epsilon"), "unknown prediction"),
        (lambda: samplers.ddpm_step(sched, out, xt, 1, z, variance="learned_range"), "unknown variance"),
        (lambda: samplers.ddpm_step(sched, out, xt, 1, z, variance="learned"), "shape mismatch"),
        (lambda: samplers.ddpm_step(sched, out, xt, 100, z), "t out of range"),
        (lambda: samplers.ddpm_step(sched, out, xt, -1, z), "t out of range"),
        (lambda: samplers.ddpm_step(sched, out, xt, np.array([1, 2]), z), "t has shape"),
        (lambda: samplers.ddpm_step(sched, out, xt, 1, z[:3]), "shape mismatch"),
        (lambda: samplers.ddpm_step(sched, out[:, :1], xt, 1, z), "shape mismatch"),
        (lambda: samplers.ddpm_step(sched, out, xt * np.nan, 1, z), "non-finite"),
        (lambda: samplers.ddpm_step(sched, out, xt, 1, z * np.inf), "non-finite"),
        (lambda: samplers.ddpm_step(sched, out, xt, 1, None), "noise is None"),
        (lambda: samplers.ddim_step(sched, out, xt, 5, 5, z), "t_prev must be smaller than t"),
        (lambda: samplers.ddim_step(sched, out, xt, 5, 7, z), "t_prev must be smaller than t"),
        (lambda: samplers.ddim_step(sched, out, xt, 5, -2, z), "t_prev out of range"),
        (lambda: samplers.ddim_step(sched, out, xt, 5, 2.5, z), "t_prev must be an int"),
        (lambda: samplers.ddim_step(sched, out, xt, 5, 2, z, eta=1.5), "eta must be a number in [0, 1]"),
        (lambda: samplers.ddim_step(sched, out, xt, 5, 2, None, eta=0.5), "noise is None"),
        (lambda: samplers.timesteps(100, 101, "leading"), "must be in 1..T=100"),
        (lambda: samplers.timesteps(100, 0, "trailing"), "must be in 1..T=100"),
        (lambda: samplers.timesteps(100, 10, "uniform"), "unknown spacing"),
        (lambda: samplers.timesteps(100, 2.0, "leading"), "must be an integer"),
        (lambda: samplers.respace(sched, [0, 5, 5]), "strictly ascending"),
        (lambda: samplers.respace(sched, [0, 100]), "steps out of range"),
        (lambda: samplers.sample_loop(sched, lambda x, t: x, xt, rng, sampler="euler"), "unknown sampler"),
        (lambda: samplers.sample_loop(sched, lambda x, t: x, xt, [z] * 3, steps=4), "one noise array per"),
        (lambda: samplers.sample_loop(sched, lambda x, t: x[:, :1], xt, rng), "shape mismatch"),
    ]
    for call, words in cases:
        with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
            call()


def test_ddim_eps_prediction_refused_at_zero_terminal_snr(rng):
    sched = schedules.Schedule(schedules.rescale_zero_terminal_snr(schedules.make_betas("linear", 100, beta_end=0.2)))
    xt = rng.standard_normal((4, 2))
    with pytest.raises(InputError, match="alpha_bar = 0"):
        samplers.ddim_step(sched, xt, xt, 99, 50, None)
    x, x0 = samplers.ddim_step(sched, xt, xt, 99, 50, None, prediction="v")  # v is fine there
    assert np.all(np.isfinite(x))


def test_A5_leading_start_with_signal_left_warns_and_trailing_does_not(rng):
    sched = _sched("linear", T=1000)
    x = rng.standard_normal((4, 2))
    den = _x0_knowing(sched, np.zeros((4, 2)))
    # 2 leading steps keep t = 0 and 500: sampling from N(0, I) at t=500, where alpha_bar ~ 0.08
    with pytest.warns(schedules.PriorMismatchWarning, match=r"sampling starts at t=\d+ \(not T-1=999\)"):
        samplers.sample_loop(sched, den, x, rng, sampler="ddim", steps=2, spacing="leading")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samplers.sample_loop(sched, den, x, rng, sampler="ddim", steps=2, spacing="trailing")
        samplers.sample_loop(sched, den, x, rng, sampler="ddim", steps=50, spacing="leading")  # starts at 980: fine


def test_A5_trailing_amplifies_eps_errors_on_the_clipped_cosine_step(rng):
    """Why the CLI's default spacing is "leading": the cosine schedule's last beta is clipped to 0.999, so
    alpha_bar_{T-1} ~ 2.4e-9 and x0_hat = (x - sqrt(1 - abar) eps_hat) / sqrt(abar) multiplies an eps error
    by ~2e4 (R1). A deterministic DDIM jump from T-1 carries sqrt(abar_prev) times that error, while the
    leading start (t = 980, abar ~ 1e-3, prior term < 1e-3 bits/dim) never divides by the tiny alpha_bar."""
    from reference.oracle import GaussianOracle

    sched = _sched("cosine", T=1000)
    exact = GaussianOracle(np.full(2, 0.5), var=np.full(2, 0.05**2)).denoiser(sched)   # (G1), exact eps
    off = lambda xt, t: exact(xt, t) + 1e-3                                             # noqa: E731
    x_T = rng.standard_normal((8, 2))
    dev = {}
    for s in ("leading", "trailing"):
        a = samplers.sample_loop(sched, exact, x_T, rng, sampler="ddim", steps=50, spacing=s).x
        b = samplers.sample_loop(sched, off, x_T, rng, sampler="ddim", steps=50, spacing=s).x
        dev[s] = float(np.max(np.abs(a - b)))           # what an eps error of 1e-3 does to the samples
    amp = np.sqrt((1 - sched.alpha_bar[-1]) / sched.alpha_bar[-1])   # the (R1) factor at t = T-1
    assert amp > 1e4
    # measured: leading 3.3e-4, trailing 2.3e-2 (70x)
    assert dev["leading"] < 1e-3 and dev["trailing"] > 20 * dev["leading"]
