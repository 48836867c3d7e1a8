"""The solvers (derivations/solvers.md, N1-N6) measured against exact routes on the Gaussian-mixture oracle.

The oracle's denoiser is exact at every sigma, so the probability-flow ODE's solution from a given x_T is
computed independently by scipy's solve_ivp (DOP853, rtol = atol = 1e-12, in lambda = -log sigma), and
each solver's global error is measured against it: its log-log slope against NFE is the order.
Every solver ends with the same step from sigma_min to 0, x0_hat = D(x~, sigma_min), so the reference
is the exact solve to sigma_min followed by that step (the last step is not part of the discretisation).

Measured with this file's mixture and grid (the linear T = 1000 schedule's sigma range, Karras rho = 7,
64 points): fitted slopes over NFE 8..64 Euler 1.03, Heun 2.43, DPM-Solver++(2M) 2.13 (RMS errors at
NFE 64: 0.027, 0.0087, 0.0023; at NFE 8: 0.23, 1.75, 0.18 -- Heun's 4 steps over sigma 157 -> 0.01 are
not yet in its asymptotic range); between successive NFE over 64..512 Euler 0.99,
Heun 2.02-2.09, DPM-Solver++(2M) 2.02-2.09.
"""
import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from reference import score, solvers
from reference.oracle import GaussianMixtureOracle
from reference.schedules import Schedule, make_betas
from tolerances import TOL, mc_close

W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]
ORDER = {"euler": 1, "heun": 2, "dpm++2m": 2}


@pytest.fixture(scope="module")
def mix():
    return GaussianMixtureOracle(W, MEANS, cov=COVS)


@pytest.fixture(scope="module")
def ends():
    """(sigma_min, sigma_max) of the linear T = 1000 schedule: 0.0100, 157.4."""
    table = score.trained_sigmas(Schedule(make_betas("linear", 1000)))
    return float(table[0]), float(table[-1])


def _solve_ivp(mix, x, sig_from, sig_to, dense=False):
    """The ODE in lambda = -log sigma: dx~/dlambda = D(x~, sigma) - x~ (K6 with dsigma = -sigma dlambda)."""
    def f(lam, y):
        xs = y.reshape(x.shape)
        return (mix.denoise_sigma(xs, math.exp(-lam)) - xs).ravel()

    return solve_ivp(f, (-math.log(sig_from), -math.log(sig_to)), x.ravel(), method="DOP853", rtol=1e-12,
                     atol=1e-12, dense_output=dense)


@pytest.fixture(scope="module")
def problem(mix, ends):
    """x_T (64, 2) and the exact x_0 of its ODE trajectory."""
    lo, hi = ends
    x_T = np.random.default_rng(7).standard_normal((64, 2))
    sol = _solve_ivp(mix, x_T * math.sqrt(1 + hi**2), hi, lo)
    return x_T, mix.denoise_sigma(sol.y[:, -1].reshape(x_T.shape), lo)


def _errors(mix, ends, problem, sampler, nfes):
    x_T, exact = problem
    out = []
    for m in nfes:
        g = solvers.karras_sigmas(solvers.steps_for_nfe(sampler, m), *ends)
        x = solvers.sample(mix.denoise_sigma, x_T, g, sampler).x
        out.append((solvers.nfe(sampler, g), math.sqrt(np.mean((x - exact) ** 2))))
    return np.array(out)


@pytest.mark.parametrize("sampler", solvers.SAMPLERS)
def test_N1_N2_N4_global_error_falls_at_the_solvers_order_over_nfe_8_to_64(mix, ends, problem, sampler):
    e = _errors(mix, ends, problem, sampler, [8, 16, 32, 64])
    slope = -np.polyfit(np.log(e[:, 0]), np.log(e[:, 1]), 1)[0]
    assert abs(slope - ORDER[sampler]) <= TOL["order_fit"], (sampler, slope, e)
    assert np.all(np.diff(e[:, 1]) < 0)


@pytest.mark.parametrize("sampler", solvers.SAMPLERS)
def test_N1_N2_N4_asymptotic_order_between_successive_nfe_64_to_512(mix, ends, problem, sampler):
    e = _errors(mix, ends, problem, sampler, [64, 128, 256, 512])
    local = -np.diff(np.log(e[:, 1])) / np.diff(np.log(e[:, 0]))
    assert np.all(np.abs(local - ORDER[sampler]) <= TOL["order_asym"]), (sampler, local)


def test_N2_N4_nfe_counts_the_denoiser_calls(mix, ends):
    calls = []

    def D(x, sigma):
        calls.append(sigma)
        return mix.denoise_sigma(x, sigma)

    for sampler in solvers.SAMPLERS:
        for g in (solvers.karras_sigmas(7, *ends), solvers.karras_sigmas(7, *ends)[:-1]):  # to 0, and to sigma_min
            calls.clear()
            solvers.sample(D, np.zeros((2, 2)), g, sampler)
            assert len(calls) == solvers.nfe(sampler, g)
            n = len(g) - 1
            assert len(calls) == (2 * n - (g[-1] == 0) if sampler == "heun" else n)
    heun_nfe = [solvers.nfe("heun", solvers.karras_sigmas(solvers.steps_for_nfe("heun", m), *ends))
                for m in (3, 8, 9, 64)]
    assert heun_nfe == [3, 7, 9, 63]


def test_N3_exact_step_is_the_variation_of_constants_integral(mix, ends, problem):
    """x~(lambda_b) = e^{-h} x~(lambda_a) + int e^{-(lambda_b - lambda)} D(x~(lambda), lambda) dlambda, the
    integral by 64-node Gauss-Legendre along solve_ivp's dense trajectory."""
    x_T, _ = problem
    lo, hi = ends
    sol = _solve_ivp(mix, x_T[:8] * math.sqrt(1 + hi**2), hi, lo, dense=True)
    nodes, weights = np.polynomial.legendre.leggauss(64)
    for sig_a, sig_b in [(hi, 20.0), (3.0, 0.7), (0.2, 0.05)]:
        la, lb = -math.log(sig_a), -math.log(sig_b)
        lam = 0.5 * (lb - la) * nodes + 0.5 * (la + lb)
        integral = sum(w * math.exp(-(lb - l)) * mix.denoise_sigma(sol.sol(l).reshape(8, 2), math.exp(-l))
                       for w, l in zip(weights, lam)) * 0.5 * (lb - la)
        want = sol.sol(lb).reshape(8, 2)
        got = math.exp(-(lb - la)) * sol.sol(la).reshape(8, 2) + integral
        assert np.max(np.abs(got - want)) <= TOL["ode64"] * np.max(np.abs(want))


def test_N3_K7_the_first_order_exponential_step_is_the_euler_step(mix, ends, rng):
    """With D frozen over a step, (N3) gives (sigma'/sigma) x~ + (1 - sigma'/sigma) D: Euler in (x~, sigma), DDIM."""
    x = rng.normal(size=(5, 2)) * 30.0
    for g in ([40.0, 9.0], [2.0, 0.3], [0.05, 0.0]):
        a, b = solvers.dpmpp_2m(mix.denoise_sigma, x, g), solvers.euler(mix.denoise_sigma, x, g)
        assert np.max(np.abs(a - b)) <= TOL["exact64"] * np.max(np.abs(x))
    # the 2M correction vanishes for a denoiser constant in lambda, so the two agree on a whole grid
    c = np.array([[0.3, -0.2]])
    g = solvers.karras_sigmas(10, *ends)
    a, b = (f(lambda x, s: np.broadcast_to(c, x.shape), x, g) for f in (solvers.dpmpp_2m, solvers.euler))
    assert np.max(np.abs(a - b)) <= TOL["exact64"] * np.max(np.abs(x))


def test_N5_karras_grid_is_uniform_in_sigma_to_the_one_over_rho(ends):
    lo, hi = ends
    g = solvers.karras_sigmas(12, lo, hi)
    assert g[0] == hi and g[-2] == lo and g[-1] == 0.0 and np.all(np.diff(g) < 0)
    steps = np.diff(g[:-1] ** (1 / 7))
    assert np.max(np.abs(steps - steps.mean())) <= TOL["exact64"] * 10
    assert np.allclose(solvers.karras_sigmas(12, lo, hi, rho=1.0)[:-1], np.linspace(hi, lo, 12), rtol=TOL["exact64"])
    geometric = np.geomspace(hi, lo, 12)  # rho -> infinity: uniform in log sigma, error O(log(range)^2 / rho)
    assert np.allclose(solvers.karras_sigmas(12, lo, hi, rho=1e6)[:-1], geometric, rtol=1e-4)
    assert np.array_equal(solvers.karras_sigmas(1, lo, hi), [hi, 0.0])


def test_N6_inversion_then_decoding_returns_x0_with_an_error_that_falls_at_first_order(mix, ends, rng):
    lo, hi = ends
    x0, _ = mix.sample(rng, 64)
    exact = _solve_ivp(mix, x0, lo, hi).y[:, -1].reshape(x0.shape) / math.sqrt(1 + hi**2)  # the exact latent
    round_trip, latent = [], []
    for n in (8, 16, 32, 64):
        g = solvers.karras_sigmas(n, lo, hi)
        z = solvers.invert(mix.denoise_sigma, x0, g).x
        back = solvers.sample(mix.denoise_sigma, z, g, "euler").x
        round_trip.append(math.sqrt(np.mean((back - x0) ** 2)))
        latent.append(math.sqrt(np.mean((z - exact) ** 2)))
    for err in (round_trip, latent):
        slope = -np.polyfit(np.log([8, 16, 32, 64]), np.log(err), 1)[0]
        assert abs(slope - 1.0) <= TOL["order_fit"], (slope, err)
        # and the size of a first-order error, C / n: an order fit alone lets a wrong level slip through
        assert np.all(np.array(err) * [8, 16, 32, 64] <= TOL["inversion_n_err"]), (err, latent is err)


@pytest.mark.parametrize("sampler", solvers.SAMPLERS)
def test_K5_N1_N2_N4_ode_samples_from_the_prior_have_the_data_moments(mix, ends, sampler):
    """x_T ~ N(0, I) through the ODE has the data's mean and covariance within Monte Carlo error. The step
    counts keep the solver's RMS error per sample (0.0035 Euler at 512 steps, 0.0087 Heun at 32 steps = NFE
    63, 0.0023 DPM++ at 64) below the standard error of the mean (0.011), and a moment's bias is at most
    that RMS error; the prior's mismatch at sigma_max (alpha_bar_T = 4e-5) moves the moments by
    ~sqrt(alpha_bar_T) = 0.006 times the data's spread, a twentieth of a standard error."""
    n = 4000
    x_T = np.random.default_rng(11).standard_normal((n, 2))
    steps = {"euler": 512, "heun": 32, "dpm++2m": 64}[sampler]
    x = solvers.sample(mix.denoise_sigma, x_T, solvers.karras_sigmas(steps, *ends), sampler).x
    c = x - x.mean(axis=0)
    se_cov = ((c[:, :, None] * c[:, None, :]).reshape(n, -1).std(axis=0) / math.sqrt(n)).reshape(2, 2)
    assert mc_close(x.mean(axis=0), mix.mean, x.std(axis=0) / math.sqrt(n))
    assert mc_close(np.cov(x.T), mix.cov, se_cov)


def test_N2_heuns_correction_is_the_denoisers_change_times_sigma_ratio_over_two(rng):
    """A Heun step equals its Euler predictor D_i + sigma_{i+1} d_i minus (sigma_i - sigma_{i+1}) / (2 sigma_{i+1})
    times D_i - D' (derivations/solvers.md, Heun): a denoiser that moves by 0.01 between the clipped cosine's
    sigma_{T-1} = 2.03e4 and sigma = 6.36 moves the sample by ~16, while Euler's step has no such term."""
    x = 2.03e4 * rng.standard_normal((5, 3))
    lo_level = 6.36
    c_hi, c_lo = rng.uniform(-1, 1, (2, 1, 3))
    c_lo = c_hi + 0.01 * np.sign(c_lo)           # the denoiser's output changes by 0.01 per element

    def D(x_, sigma):                            # a denoiser constant in x: D_i at the top level, D' below it
        return np.broadcast_to(c_hi if sigma > 1e3 else c_lo, x_.shape)

    grid = np.array([2.03e4, lo_level])
    d = (x - c_hi) / grid[0]
    euler = c_hi + lo_level * d                  # x + (sigma_1 - sigma_0) d, rearranged
    got = solvers.heun(D, x, grid)
    want = euler - (grid[0] - lo_level) / (2 * lo_level) * (c_hi - c_lo)
    np.testing.assert_allclose(got, want, rtol=TOL["exact64"], atol=TOL["exact64"] * 2.03e4)
    assert np.allclose(np.abs(got - euler), 0.01 * (grid[0] - lo_level) / (2 * lo_level), rtol=1e-12)
    assert 1590 < (grid[0] - lo_level) / (2 * lo_level) < 1600
    np.testing.assert_allclose(solvers.euler(D, x, grid), euler, rtol=TOL["exact64"], atol=TOL["exact64"] * 2.03e4)
