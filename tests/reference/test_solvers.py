"""reference/solvers.py and reference/score.py as an API: what the CLI calls, and every refusal.

The math is tested in tests/derivations/test_solvers.py and test_continuous_time.py; here: grids and
NFE bookkeeping, record/progress, dtypes, and a clear InputError for each bad input the issue names.
"""
import math
import re

import numpy as np
import pytest

from reference import score, solvers
from reference.errors import InputError
from reference.oracle import GaussianMixtureOracle
from reference.schedules import Schedule, make_betas, rescale_zero_terminal_snr
from tolerances import TOL


@pytest.fixture(scope="module")
def sched():
    return Schedule(make_betas("linear", 1000))


@pytest.fixture(scope="module")
def mix():
    return GaussianMixtureOracle([0.4, 0.6], [[-1.0, 0.0], [1.0, 0.5]], var=[[0.1, 0.2], [0.2, 0.1]])


def test_conversions_invert_each_other_and_the_trained_levels_increase(sched):
    a = np.array([1e-5, 0.3, 0.9999])
    s = score.sigma_from_alpha_bar(a)
    assert np.allclose(score.alpha_bar_from_sigma(s), a, rtol=TOL["exact64"], atol=0)
    assert np.allclose(score.lambda_from_sigma(s), 0.5 * np.log(a / (1 - a)), rtol=TOL["exact64"])   # half log-SNR
    table = score.trained_sigmas(sched)
    assert table.shape == (1000,) and np.all(np.diff(table) > 0)
    assert np.allclose(table**2, sched.snr ** -1, rtol=TOL["exact64"])              # sigma^2 = 1/SNR (S7)
    assert [score.sigma_to_t(sched, table[t]) for t in (0, 1, 500, 999)] == [0, 1, 500, 999]


def test_nfe_and_steps_for_nfe_agree_for_every_sampler(sched):
    assert [solvers.steps_for_nfe("heun", m) for m in (3, 4, 10, 20)] == [2, 2, 5, 10]
    for sampler in solvers.SAMPLERS:
        for m in (3, 5, 10, 20, 50):
            g = solvers.sigma_grid(sched, solvers.steps_for_nfe(sampler, m), "karras")
            assert solvers.nfe(sampler, g) == (m - (m % 2 == 0) if sampler == "heun" else m)


def test_record_and_progress_report_each_step_in_vp_variables(sched, mix):
    g = solvers.sigma_grid(sched, 6, "trailing")
    x_T = np.random.default_rng(0).standard_normal((3, 2))
    wrapped = []

    def progress(it):
        wrapped.append(list(it))
        return wrapped[-1]

    for sampler in solvers.SAMPLERS:
        res = solvers.sample(mix.denoise_sigma, x_T, g, sampler, record=True, progress=progress)
        assert isinstance(res, solvers.Sampled) and len(res.trajectory) == 6 and wrapped[-1] == list(range(6))
        assert [s for s, _, _ in res.trajectory] == g[:-1].tolist()
        assert np.array_equal(res.trajectory[0][1], x_T)                 # the first step's input is x_T itself
        assert np.allclose(res.trajectory[-1][2], res.x, atol=TOL["exact64"])  # the last x0_hat is the sample
    assert solvers.sample(mix.denoise_sigma, x_T, g).trajectory is None
    seen = []
    inv = solvers.invert(lambda x, s: seen.append(s) or mix.denoise_sigma(x, s), x_T * 0.1, g, record=True)
    # (N6) D at every level but the top, in increasing order, each at the state of its own level
    assert seen == [s for s, _, _ in inv.trajectory] == g[-2:0:-1].tolist()
    assert np.array_equal(inv.trajectory[0][1] * np.sqrt(1 + g[-2] ** 2), x_T * 0.1)   # x~(sigma_min) = x_0
    # a one-level grid takes no step: x_0 is x~ at that level, so the latent is x_0 / sqrt(1 + sigma^2)
    assert np.allclose(solvers.invert(mix.denoise_sigma, x_T, [3.0, 0.0]).x, x_T / np.sqrt(10.0), rtol=TOL["exact64"])
    # a grid that ends above 0 takes (and sample returns) the VP sample at that level: with D(x~) = x~ the
    # flow is still, x~ is constant, and only the VP scale sqrt(abar) = 1 / sqrt(1 + sigma^2) changes
    z = solvers.invert(lambda x, s: x, x_T, [3.0, 2.0]).x
    assert np.allclose(z, x_T * np.sqrt(5.0 / 10.0), rtol=TOL["exact64"])
    assert np.allclose(solvers.sample(lambda x, s: x, z, [3.0, 2.0]).x, x_T, rtol=TOL["exact64"])


def test_float32_stays_float32_through_a_trained_style_denoiser(sched, mix):
    D = solvers.model_denoiser(sched, mix.denoiser(sched, "v"), "v", clip_x0=True)
    x_T = np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32)
    for sampler in solvers.SAMPLERS:
        x = solvers.sample(D, x_T, solvers.sigma_grid(sched, 10, "karras"), sampler).x
        assert x.dtype == np.float32 and np.all(np.abs(x) <= 1.0)
    z = solvers.invert(D, x / 2, solvers.sigma_grid(sched, 10, "linspace"), item_shape=(2,), data_range=(-1, 1)).x
    assert z.dtype == np.float32 and np.all(np.isfinite(z))


def test_snap_keeps_the_length_where_karras_is_finer_than_the_trained_steps():
    sched = Schedule(make_betas("linear", 20, beta_start=0.01, beta_end=0.5), warn=False)
    g = solvers.sigma_grid(sched, 15, "karras")
    assert g.size == 16 and np.all(np.diff(g) < 0)
    assert solvers.grid_timesteps(sched, g)[-4:].tolist() == [3, 2, 1, 0]   # pushed onto consecutive steps
    assert solvers.grid_timesteps(sched, solvers.sigma_grid(sched, 20, "karras")).tolist() == list(range(19, -1, -1))


# ---- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    ([3.0, 3.0, 0.0], "strictly decreasing"),
    ([1.0, 2.0, 0.0], "strictly decreasing"),
    ([3.0, 0.0, -1.0], "sigma <= 0"),
    ([3.0, -1.0], "sigma <= 0"),
    ([0.0, 0.0], "sigma <= 0"),
    ([np.inf, 1.0, 0.0], "finite"),
    ([np.nan, 1.0, 0.0], "finite"),
    ([1.0], "at least 2"),
    ([[2.0, 1.0, 0.0]], "1-D"),
])
def test_bad_grids_are_refused_by_every_solver(mix, bad, match):
    for sampler in solvers.SAMPLERS:
        with pytest.raises(InputError, match=match):
            solvers.sample(mix.denoise_sigma, np.zeros((2, 2)), bad, sampler)
    with pytest.raises(InputError, match=match):
        solvers.invert(mix.denoise_sigma, np.zeros((2, 2)), bad)


def test_second_order_samplers_refuse_grids_too_short_for_a_second_order_step(mix):
    x = np.zeros((2, 2))
    with pytest.raises(InputError, match=r"heun takes no second-order step.*NFE 1.*at least 2 steps"):
        solvers.sample(mix.denoise_sigma, x, [5.0, 0.0], "heun")
    with pytest.raises(InputError, match=r"dpm\+\+2m takes no second-order step.*NFE 2.*at least 3 steps"):
        solvers.sample(mix.denoise_sigma, x, [5.0, 1.0, 0.0], "dpm++2m")
    solvers.sample(mix.denoise_sigma, x, [5.0, 1.0], "heun")          # one full Heun step (no final 0): fine
    solvers.sample(mix.denoise_sigma, x, [5.0, 1.0, 0.0], "euler")    # Euler has no such minimum
    for sampler in ("heun", "dpm++2m"):
        with pytest.raises(InputError, match="too small for the second-order sampler"):
            solvers.steps_for_nfe(sampler, 2)
    with pytest.raises(InputError, match="NFE"):
        solvers.steps_for_nfe("euler", 0)


@pytest.mark.parametrize("name, hint", [("dpmpp2m", "dpm++2m"), ("dpm++", "dpm++2m"), ("hune", "heun"),
                                        ("Euler", "euler")])
def test_unknown_sampler_names_get_a_did_you_mean(mix, name, hint):
    for call in (lambda: solvers.sample(mix.denoise_sigma, np.zeros((1, 2)), [2.0, 1.0, 0.0], name),
                 lambda: solvers.nfe(name, [2.0, 0.0]), lambda: solvers.steps_for_nfe(name, 10)):
        want = rf"unknown sampler '{re.escape(name)}' \(did you mean '{re.escape(hint)}'\?\)"
        with pytest.raises(InputError, match=want):
            call()


def test_grids_refuse_bad_names_sizes_and_infinite_sigma(sched):
    with pytest.raises(InputError, match=r"unknown grid 'karas' \(did you mean 'karras'\?\)"):
        solvers.sigma_grid(sched, 10, "karas")
    for grid in solvers.GRIDS:
        for n in (0, 1001):
            with pytest.raises(InputError, match="number of"):
                solvers.sigma_grid(sched, n, grid)
    zero_snr = Schedule(rescale_zero_terminal_snr(make_betas("linear", 1000)))
    with pytest.raises(InputError, match="alpha_bar = 0"):
        solvers.sigma_grid(zero_snr, 10, "karras")
    with pytest.raises(InputError, match="finite"):  # trailing keeps T-1, where sigma = inf
        solvers.sample(lambda x, s: x, np.zeros((1, 2)), solvers.sigma_grid(zero_snr, 10, "trailing"))
    with pytest.raises(InputError, match="sigma_min"):
        solvers.karras_sigmas(5, 0.0, 10.0)
    with pytest.raises(InputError, match="cannot be snapped"):
        solvers.snap_sigmas(Schedule(make_betas("linear", 5, beta_start=0.1, beta_end=0.9), warn=False),
                            solvers.karras_sigmas(6, 0.5, 10.0))


def test_a_trained_model_refuses_a_level_between_its_trained_steps(sched, mix):
    D = solvers.model_denoiser(sched, mix.denoiser(sched), "eps")
    between = math.sqrt(score.trained_sigmas(sched)[10] * score.trained_sigmas(sched)[11])
    with pytest.raises(InputError, match=r"not a trained noise level \(nearest: step t=1[01].*sigma_grid"):
        D(np.zeros((2, 2)), between)
    with pytest.raises(InputError, match="not a trained noise level"):
        solvers.sample(D, np.zeros((2, 2)), solvers.karras_sigmas(10, 0.02, 80.0), "euler")
    with pytest.raises(InputError, match="sigma must"):
        score.sigma_to_t(sched, 0.0)
    with pytest.raises(InputError, match="prediction"):
        solvers.model_denoiser(sched, mix.denoiser(sched), "epsilon")


def test_inversion_refuses_the_wrong_shape_or_range(sched, mix):
    g = solvers.sigma_grid(sched, 10, "linspace")
    with pytest.raises(InputError, match=r"items of shape \(3,\), but the model's items are \(2,\)"):
        solvers.invert(mix.denoise_sigma, np.zeros((4, 3)), g, item_shape=(2,))
    with pytest.raises(InputError, match="scalar"):
        solvers.invert(mix.denoise_sigma, np.float64(0.5), g, item_shape=(2,))
    with pytest.raises(InputError, match=r"out of range: values -1\.5\.\.0.*\[-1, 1\]"):
        solvers.invert(mix.denoise_sigma, np.array([[-1.5, 0.0]]), g, item_shape=(2,), data_range=(-1, 1))
    with pytest.raises(InputError, match="non-finite"):
        solvers.invert(mix.denoise_sigma, np.array([[np.nan, 0.0]]), g)
