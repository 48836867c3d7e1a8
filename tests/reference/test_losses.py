"""Losses: Gaussian KL (L2), L_simple and its weights (L4, L5, R6), the decoder (L6), the bound (L1, L3, L8).

Independent routes: Monte Carlo for the KL, a log-space quadrature of the Gaussian density for the
decoder, central finite differences for the gradient, x0-space losses through predict_x0 for the
weights, and the perfect (x0-knowing) denoiser for the bound's structure.
"""
import math

import numpy as np
import pytest
from scipy.special import ndtr

from reference import diffusion, losses, schedules
from reference.errors import InputError
from tolerances import TOL, mc_close

GRID = -1.0 + 2.0 * np.arange(256) / 255.0  # the 256 8-bit values in [-1, 1]


def _sched(name="linear", T=1000, **kw):
    return schedules.Schedule(schedules.make_betas(name, T, **kw))


def _zero_snr_sched(T=1000):
    return schedules.Schedule(schedules.rescale_zero_terminal_snr(schedules.make_betas("linear", T)))


# ---- (L2) Gaussian KL ------------------------------------------------------------------------------

def test_L2_gaussian_kl_matches_monte_carlo(rng):
    cases = [(0.0, 0.0, 0.0, 0.0), (0.3, -1.0, -0.5, 0.4), (2.0, 0.5, 0.0, -0.7), (-1.0, -3.0, -1.2, -2.5)]
    for m1, lv1, m2, lv2 in cases:
        x = m1 + math.exp(0.5 * lv1) * rng.standard_normal(200_000)
        # log N1(x) - log N2(x), sampled under N1
        log_ratio = (-0.5 * lv1 - 0.5 * (x - m1) ** 2 / math.exp(lv1)) - (-0.5 * lv2 - 0.5 * (x - m2) ** 2 / math.exp(lv2))
        kl = losses.normal_kl(m1, lv1, m2, lv2)
        assert kl >= 0
        assert mc_close(log_ratio.mean(), kl, log_ratio.std() / math.sqrt(x.size) + 1e-300)
    assert losses.normal_kl(np.ones(3), np.zeros(3), np.ones(3), np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


# ---- (L6) the discretised decoder -----------------------------------------------------------------

DECODER_PARAMS = [(0.0, 0.1), (0.3, 0.01), (-0.9, 1e-3), (0.0, 2.0), (5.0, 0.1), (-3.0, 0.05),
                  (50.0, 0.01), (-1e4, 1e-3), (1e6, 0.5), (0.2, 1e3), (1.0 / 255.0, 1e-6)]


@pytest.mark.parametrize("approx", losses.APPROXES)
def test_L6_decoder_bins_sum_to_one(approx):
    for mu, sigma in DECODER_PARAMS:
        logp = losses.discretized_gaussian_log_likelihood(GRID, mu, math.log(sigma), approx=approx)
        assert np.all(np.isfinite(logp)) and np.all(logp <= 0)
        if approx == "exact":
            # 256 terms each with relative rounding ~1e-16: exact64
            assert abs(np.exp(logp).sum() - 1.0) < TOL["exact64"]
        else:
            # the tanh CDF telescopes too, except where improved-diffusion's 1e-12 floor lifts a bin
            assert abs(np.exp(logp).sum() - 1.0) < 256 * 1e-12


def _log_bin_mass_by_quadrature(x, mu, sigma):
    """log of the integral of N(mu, sigma^2) over x's bin, by the trapezoid rule in log space.

    In standard units z the bin is [a, b]; write the density as phi(zp) exp(-(z^2 - zp^2) / 2) with zp
    the point of [a, b] nearest 0 (the maximum). Integrate up to u = 40 / max(1, |zp|) away from zp, where
    the integrand exp(-zp u - u^2/2) is below e^-40 of its maximum, on 400001 points: h |zp| <= 2e-4, so
    the trapezoid's relative error ~ (h |zp|)^2 / 12 is below 1e-8."""
    a = -np.inf if x <= -1 + 1e-9 else (x - 1 / 255 - mu) / sigma
    b = np.inf if x >= 1 - 1e-9 else (x + 1 / 255 - mu) / sigma
    zp = min(max(0.0, a), b)
    reach = 40.0 / max(1.0, abs(zp))
    lo, hi = max(a, zp - reach), min(b, zp + reach)
    z = np.linspace(lo, hi, 400_001)
    f = np.exp(-0.5 * (z - zp) * (z + zp))  # exp(-(z^2 - zp^2)/2) <= 1
    integral = np.sum((f[1:] + f[:-1]) * 0.5 * np.diff(z))
    return -0.5 * zp**2 - 0.5 * math.log(2 * math.pi) + math.log(integral)


def test_L6_decoder_matches_numeric_integral_of_density():
    cases = [(GRID[130], 0.0, 0.1), (GRID[0], 5.0, 0.1), (GRID[255], -3.0, 0.05), (GRID[191], -20.0, 0.01),
             (GRID[64], 30.0, 0.02), (GRID[10], 0.0, 3.0), (GRID[255], 0.5, 0.2), (GRID[0], -0.999, 0.004),
             (GRID[128], GRID[128], 1e-4)]
    for x, mu, sigma in cases:
        got = losses.discretized_gaussian_log_likelihood(np.array([x]), mu, math.log(sigma))[0]
        # grid64: quadrature error far below 1e-6 relative on the mass, i.e. 1e-6 absolute on log P
        # (measured <= 1e-9, also where log P ~ -2e6)
        assert abs(got - _log_bin_mass_by_quadrature(x, mu, sigma)) < TOL["grid64"], (x, mu, sigma)


def test_L6_decoder_is_finite_in_both_tails():
    """Means far outside [-1, 1]: every bin keeps a finite log-probability (no log 0, no NaN, no warning)."""
    for mu in (-1e8, -1e3, -30.0, 30.0, 1e3, 1e8):
        for sigma in (1e-4, 1e-2, 1.0):
            logp = losses.discretized_gaussian_log_likelihood(GRID, mu, math.log(sigma))
            assert np.all(np.isfinite(logp))
            # the edge bin toward the mean holds all the mass; the far bins are astronomically unlikely
            assert abs(logp[0 if mu < 0 else 255]) < TOL["exact64"]
            # log P rises toward the mean, except the far edge bin, which holds the whole far tail
            assert np.all(np.diff(logp[1:]) > 0) if mu > 0 else np.all(np.diff(logp[:-1]) < 0)


def test_L6_tanh_approximation_differs_by_its_cdf_error():
    """|P_exact - P_tanh| <= 2 max_z |Phi_tanh(z) - Phi(z)| per bin (+1e-12 for improved-diffusion's floor);
    the CDF error of Ho et al.'s approximation, measured on a grid, is 1.8e-4."""
    z = np.linspace(-12, 12, 2_400_001)
    tanh_cdf = 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))  # Ho et al.'s formula
    max_err = np.abs(tanh_cdf - ndtr(z)).max()
    assert 1.7e-4 < max_err < 1.9e-4  # the documented size
    worst = 0.0
    for mu, sigma in DECODER_PARAMS:
        p = np.exp(losses.discretized_gaussian_log_likelihood(GRID, mu, math.log(sigma)))
        q = np.exp(losses.discretized_gaussian_log_likelihood(GRID, mu, math.log(sigma), approx="tanh"))
        worst = max(worst, np.abs(p - q).max())
    assert worst <= 2 * max_err + 1e-12
    assert worst > 1e-5  # and the approximation is visibly not exact


# ---- (L4, L5, R6) L_simple and its weights ----------------------------------------------------------

def _batch(rng, sched, n=16, shape=(3,), t=None):
    x0, eps, out = (rng.standard_normal((n,) + shape) for _ in range(3))
    t = rng.integers(0, sched.T, size=n) if t is None else t
    return x0, eps, out, t


def test_L4_simple_loss_targets(rng):
    sched = _sched()
    x0, eps, delta, t = _batch(rng, sched)
    a = sched.alpha_bar[t][:, None]
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    # v from its defining property x0 = sqrt(abar) x_t - sqrt(1 - abar) v (R4), solved for v
    v = (np.sqrt(a) * xt - x0) / np.sqrt(1 - a)
    for prediction, target in (("eps", eps), ("x0", x0), ("v", v)):
        loss = losses.simple_loss(sched, target + delta, x0, t, eps, prediction)
        assert abs(loss - np.mean(delta**2)) <= TOL["exact64"] * loss


@pytest.mark.parametrize("weighting", ["min_snr", "snr"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_L5_R6_weighted_loss_equals_x0_space_loss(rng, prediction, weighting):
    """w(t) ||out - target||^2 = w_x0(t) ||x0_hat - x0||^2 with x0_hat = predict_x0(out), w_x0 = min(snr, g) or snr."""
    sched, gamma = _sched("cosine"), 5.0
    x0, eps, out, t = _batch(rng, sched, n=64)
    t[:3] = [0, 1, 999]  # snr above and below gamma, and the smallest snr
    xt = diffusion.q_sample(sched, x0, t, eps)
    x0_hat = diffusion.predict_x0(sched, xt, t, out, prediction)
    snr = sched.alpha_bar[t] / (1 - sched.alpha_bar[t])
    w_x0 = np.minimum(snr, gamma) if weighting == "min_snr" else snr
    expected = np.mean(w_x0[:, None] * (x0_hat - x0) ** 2)
    got = losses.simple_loss(sched, out, x0, t, eps, prediction, weighting=weighting, gamma=gamma)
    assert abs(got - expected) <= TOL["exact64"] * expected  # measured <= 1.5e-15


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_L5_min_snr_weights_finite_with_zero_terminal_snr(rng, prediction):
    sched = _zero_snr_sched()
    assert sched.snr[-1] == 0.0
    t = np.arange(sched.T)
    for weighting in (None, "snr", "min_snr"):
        w = losses.snr_weights(sched, t, prediction, weighting)
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
        x0, eps, out, _ = _batch(rng, sched, n=sched.T, shape=(2,))
        assert math.isfinite(losses.simple_loss(sched, out, x0, t, eps, prediction, weighting))
    w = losses.snr_weights(sched, sched.T - 1, prediction, "min_snr")
    # the limits at snr -> 0: eps min(snr, g)/snr -> 1, x0 min(snr, g) -> 0, v min(snr, g)/(snr + 1) -> 0
    assert w == {"eps": 1.0, "x0": 0.0, "v": 0.0}[prediction]


@pytest.mark.parametrize("weighting", [None, "min_snr", "snr"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_L4_simple_loss_gradient_matches_central_differences(rng, prediction, weighting):
    sched = _sched()
    x0, eps, out, t = _batch(rng, sched, n=4, shape=(2, 3))
    loss, grad = losses.simple_loss_and_grad(sched, out, x0, t, eps, prediction, weighting)
    assert loss == losses.simple_loss(sched, out, x0, t, eps, prediction, weighting)
    h = 1e-6
    fd = np.empty_like(out)
    for i in np.ndindex(out.shape):
        up, dn = out.copy(), out.copy()
        up[i] += h
        dn[i] -= h
        fd[i] = (losses.simple_loss(sched, up, x0, t, eps, prediction, weighting)
                 - losses.simple_loss(sched, dn, x0, t, eps, prediction, weighting)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=TOL["fd64"], atol=TOL["fd64"] * np.abs(grad).max())


# ---- (L1, L3, L8) the bound ---------------------------------------------------------------------------

def _x0_knowing(sched, x0):
    def denoise(xt, t):  # eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
        a = sched.alpha_bar[t].reshape((-1,) + (1,) * (x0.ndim - 1))
        return (xt - np.sqrt(a) * x0) / np.sqrt(1.0 - a)
    return denoise


def test_L1_vlb_structure_with_the_perfect_denoiser(rng):
    """With the x0-knowing denoiser and fixed_small, p_theta(x_{t-1}|x_t) = q(x_{t-1}|x_t, x0): every
    KL term is 0; the decoder is a Gaussian of variance beta~_1 centred on x0 exactly."""
    sched = _sched("linear", 100, beta_end=0.2)
    x0 = GRID[rng.integers(0, 256, size=(5, 1, 2, 2))]
    out = losses.vlb_terms(sched, _x0_knowing(sched, x0), x0, rng)
    assert out["terms"].shape == (100, 5) and out["prior"].shape == (5,) and out["total"].shape == (5,)
    np.testing.assert_allclose(out["terms"][1:], 0.0, atol=TOL["exact64"])
    sigma = math.sqrt(sched.posterior_variance[1])
    # decoder: the central bin's mass under N(x0, sigma^2), or half the line beyond an edge
    p_mid = ndtr((1 / 255) / sigma) - ndtr(-(1 / 255) / sigma)
    p = np.where(np.abs(x0) == 1.0, ndtr((1 / 255) / sigma), p_mid)
    np.testing.assert_allclose(out["terms"][0], -np.log2(p).reshape(5, -1).mean(axis=1), rtol=TOL["exact64"] * 10)
    np.testing.assert_allclose(out["total"], out["prior"] + out["terms"].sum(axis=0), rtol=TOL["exact64"])
    assert losses.bits_per_dim(sched, _x0_knowing(sched, x0), x0, np.random.default_rng(0)) == pytest.approx(
        out["total"].mean(), rel=TOL["exact64"])


def test_L3_fixed_variance_kl_is_weighted_eps_mse(rng):
    """(L3) With sigma^2 = beta~_t: KL = beta_t^2 / (2 beta~_t alpha_t (1 - abar_t)) ||eps - eps_hat||^2."""
    sched = _sched("linear", 50, beta_start=1e-3, beta_end=0.3)
    x0 = rng.standard_normal((6, 3))
    noise = rng.standard_normal((50, 6, 3))
    denoise = lambda xt, t: 0.7 * xt + 0.1  # any network: the identity is exact for every output
    out = losses.vlb_terms(sched, denoise, x0, noise, decoder="gaussian")
    for t in range(1, 50):
        abar = np.prod(1.0 - sched.betas[: t + 1])
        b, abar_prev = sched.betas[t], np.prod(1.0 - sched.betas[:t])
        beta_tilde = (1 - abar_prev) / (1 - abar) * b
        xt = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise[t]
        mse = np.mean((noise[t] - denoise(xt, t)) ** 2, axis=1)
        expected = b**2 / (2 * beta_tilde * (1 - b) * (1 - abar)) * mse / math.log(2)
        np.testing.assert_allclose(out["terms"][t], expected, rtol=1e-10)  # KL = difference of O(1) logs


def test_L8_prior_term(rng):
    x0 = np.linspace(-1, 1, 9)[:, None]
    with pytest.warns(schedules.PriorMismatchWarning):  # leaves signal at T: a visible prior term
        sched = _sched("linear", 100, beta_end=0.05)
    out = losses.vlb_terms(sched, lambda xt, t: xt, x0, rng, decoder="gaussian")
    # Schedule.prior_bpd: the same KL written as 1/2 (abar x0^2 - abar - log(1 - abar)) / log 2
    expected = [sched.prior_bpd(x0_sq=float(v) ** 2) for v in x0[:, 0]]
    np.testing.assert_allclose(out["prior"], expected, rtol=TOL["exact64"] * 10)
    assert _zero_snr_sched(100).prior_bpd() == 0.0
    zero = losses.vlb_terms(_zero_snr_sched(100), lambda xt, t: xt, x0, rng, prediction="v", decoder="gaussian")
    np.testing.assert_array_equal(zero["prior"], 0.0)


# ---- bad input ------------------------------------------------------------------------------------------

def test_bad_input_raises_input_error(rng):
    sched = _sched("linear", 100, beta_end=0.2)
    x0, eps, out, t = _batch(rng, sched, n=4, shape=(2,))
    img = GRID[rng.integers(0, 256, size=(4, 2))]
    ok = lambda xt, t: xt
    cases = [
        (lambda: losses.simple_loss(sched, out, x0, t, eps, "epsilon"), "unknown prediction"),
        (lambda: losses.simple_loss(sched, out, x0, t, eps, "eps", weighting="minsnr"), "unknown weighting"),
        (lambda: losses.simple_loss(sched, out, x0, t, eps, "eps", weighting="min_snr", gamma=0.0), "gamma"),
        (lambda: losses.simple_loss(sched, out[:, :1], x0, t, eps, "eps"), "shape mismatch"),
        (lambda: losses.simple_loss(sched, out, x0, t, eps[:3], "eps"), "shape mismatch"),
        (lambda: losses.simple_loss(sched, out, x0, t[:3], eps, "eps"), "t has shape"),
        (lambda: losses.simple_loss(sched, out, x0, t + 100, eps, "eps"), "t out of range"),
        (lambda: losses.simple_loss(sched, out * np.nan, x0, t, eps, "eps"), "non-finite"),
        (lambda: losses.simple_loss_and_grad(sched, out, x0 * np.inf, t, eps, "x0"), "non-finite"),
        (lambda: losses.normal_kl(0.0, np.nan, 0.0, 0.0), "non-finite"),
        (lambda: losses.discretized_gaussian_log_likelihood(img, img, np.zeros(3)), "shape mismatch"),
        (lambda: losses.discretized_gaussian_log_likelihood(img * 1.5, img, 0.0), "8-bit data scaled to"),
        (lambda: losses.discretized_gaussian_log_likelihood(np.full(3, 0.5), 0.0, 0.0), "on the grid"),
        (lambda: losses.discretized_gaussian_log_likelihood(img, img, 0.0, approx="erf"), "unknown approx"),
        (lambda: losses.vlb_terms(sched, ok, img, rng, decoder="logistic"), "unknown decoder"),
        (lambda: losses.vlb_terms(sched, ok, img, rng, variance="learnt"), "unknown variance"),
        (lambda: losses.vlb_terms(sched, lambda xt, t: xt[:, :1], img, rng, variance="learned"), "2C channels"),
        (lambda: losses.vlb_terms(sched, ok, img, rng, levels=1), "levels"),
        (lambda: losses.vlb_terms(sched, ok, img, rng, levels=17), "data of 17 levels on the grid"),
        (lambda: losses.vlb_terms(sched, ok, img, rng.standard_normal((99, 4, 2))), "noise must have shape"),
        (lambda: losses.vlb_terms(sched, ok, np.full((4, 2), 0.5), rng), "on the grid"),
        (lambda: losses.vlb_terms(sched, lambda xt, t: xt[:, :1], img, rng), "shape mismatch"),
        (lambda: losses.vlb_terms(sched, ok, img, rng, progress=3), "progress must be"),
    ]
    for call, words in cases:
        with pytest.raises(InputError, match=words):
            call()
