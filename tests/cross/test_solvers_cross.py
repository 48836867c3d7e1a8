"""NumPy reference vs torch port, float64: the score module (K1-K6), the mixture oracle (G3, G4), the grids
(K8, N5), one step of each solver (K7, N1-N4) and whole solves and inversions (N6).

Tolerances: TOL["cross64"] for a function or one step (assert_allclose with rtol = atol); TOL["solve64"]
for a whole 20-step solve, where the state x~ = x sqrt(1 + sigma^2) is up to 157 times x (the reason is in
tests/tolerances.py); grids of trained steps and their integer steps must agree exactly.
"""
import numpy as np
import pytest
import torch

from reference import oracle as RO
from reference import score as RSc
from reference import solvers as RS
from reference.errors import InputError
from torch_port import oracle as TO
from torch_port import score as TSc
from torch_port import solvers as TS
from reference import schedules as RSch
from crosscheck import close, schedule_pair
from tolerances import TOL

pytestmark = pytest.mark.usefixtures("one_torch_thread")
tt = torch.from_numpy
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]
SCHEDS = {name: schedule_pair(RSch.make_betas(name, 1000)) for name in ("linear", "cosine")}


@pytest.fixture(scope="module", params=["full", "diagonal"])
def mixes(request):
    kw = {"cov": COVS} if request.param == "full" else {"var": [[0.1, 0.2], [0.2, 0.1], [0.1, 0.1]]}
    return RO.GaussianMixtureOracle(W, MEANS, **kw), TO.GaussianMixtureOracle(W, MEANS, **kw)


def _x(seed=0, n=6, scale=1.0):
    return np.random.default_rng(seed).standard_normal((n, 2)) * scale


def test_G3_G4_mixture_oracle_matches(mixes):
    ro, to = mixes
    x = _x()
    for a in (0.97, 0.3, np.array([1.0, 0.9, 0.5, 0.2, 0.01, 0.0])):
        ta = tt(a) if isinstance(a, np.ndarray) else a
        for name in ("log_prob", "responsibilities", "x0_mean", "score"):
            close(getattr(to, name)(tt(x), ta), getattr(ro, name)(x, a))
    close(to.eps_mean(tt(x), 0.4), ro.eps_mean(x, 0.4))
    close(to.denoise_sigma(tt(x) * 30, 29.0), ro.denoise_sigma(x * 30, 29.0))
    close(to.mean, ro.mean)
    close(to.cov, ro.cov)
    ref, port = SCHEDS["cosine"]
    t = np.array([0, 3, 400, 700, 990, 999])
    for pred in ("eps", "x0", "v"):
        close(to.predict(port, tt(x), tt(t), pred), ro.predict(ref, x, t, pred))
    far = np.array([[60.0, -40.0]])
    close(to.responsibilities(tt(far), 1.0), ro.responsibilities(far, 1.0))


def test_K1_to_K6_score_module_matches():
    ref, port = SCHEDS["linear"]
    a, x = np.array([1e-5, 0.3, 0.9, 0.9999, 0.5, 0.2]), _x(1)
    close(TSc.sigma_from_alpha_bar(tt(a)), RSc.sigma_from_alpha_bar(a))
    close(TSc.alpha_bar_from_sigma(tt(a)), RSc.alpha_bar_from_sigma(a))
    close(TSc.lambda_from_sigma(tt(a)), RSc.lambda_from_sigma(a))
    close(TSc.trained_sigmas(port), RSc.trained_sigmas(ref))
    table = RSc.trained_sigmas(ref)
    assert [TSc.sigma_to_t(port, table[t]) for t in (0, 7, 500, 999)] == [0, 7, 500, 999]
    close(TSc.score_from_eps(tt(x), tt(a)), RSc.score_from_eps(x, a))
    close(TSc.eps_from_score(tt(x), 0.3), RSc.eps_from_score(x, 0.3))
    close(TSc.ode_slope(tt(x), 2.5, tt(x[::-1].copy())), RSc.ode_slope(x, 2.5, x[::-1]))
    rs, ts = RSc.VPSDE(ref), TSc.VPSDE(port)
    s = np.array([0.0, 0.0005, 0.25, 0.5004, 0.9, 1.0])
    for name in ("beta", "integral", "alpha_bar", "diffusion"):
        close(getattr(ts, name)(tt(s)), getattr(rs, name)(s))
    close(ts.s_of_alpha_bar(tt(rs.alpha_bar(s))), s)
    close(rs.s_of_alpha_bar(rs.alpha_bar(s)), s)
    for got, want in zip(ts.marginal(tt(x), tt(s)), rs.marginal(x, s)):
        close(got, want)
    close(ts.drift(tt(x), 0.3), rs.drift(x, 0.3))
    z = _x(2)
    close(ts.em_step(tt(x), tt(s), 1e-3, tt(z)), rs.em_step(x, s, 1e-3, z))
    close(ts.reverse_drift(tt(x), 0.7, tt(z)), rs.reverse_drift(x, 0.7, z))
    close(ts.pf_ode_drift(tt(x), 0.7, tt(z)), rs.pf_ode_drift(x, 0.7, z))


@pytest.mark.parametrize("sname", ["linear", "cosine"])
def test_K8_N5_grids_match_exactly_in_their_steps(sname):
    ref, port = SCHEDS[sname]
    for grid in RS.GRIDS:
        for n in (1, 2, 10, 20, 64, 500):
            g_ref, g_port = RS.sigma_grid(ref, n, grid), TS.sigma_grid(port, n, grid)
            assert isinstance(g_port, torch.Tensor) and g_port.dtype == torch.float64
            close(g_port, g_ref)
            assert TS.grid_timesteps(port, g_port).tolist() == RS.grid_timesteps(ref, g_ref).tolist()
    close(TS.karras_sigmas(17, 0.002, 80.0, rho=5.0), RS.karras_sigmas(17, 0.002, 80.0, rho=5.0))
    wild = np.array([300.0, 20.0, 1.0, 0.05, 0.001, 0.0])      # off the table at both ends, clamped
    close(TS.snap_sigmas(port, wild), RS.snap_sigmas(ref, wild))


@pytest.mark.parametrize("sampler", RS.SAMPLERS)
def test_K7_N1_N2_N4_one_step_matches(mixes, sampler):
    ro, to = mixes
    x = _x(3, scale=20.0)
    grid = [20.0, 12.0, 7.0]  # two steps: the second is dpm++2m's multistep (2M) update
    for g in (grid[:2], grid):
        got = TS.SOLVERS[sampler](to.denoise_sigma, tt(x), g)
        close(got, RS.SOLVERS[sampler](ro.denoise_sigma, x, g))


@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
@pytest.mark.parametrize("grid", RS.GRIDS)
@pytest.mark.parametrize("sampler", RS.SAMPLERS)
def test_K7_N1_N2_N4_whole_20_step_solve_with_a_trained_style_model_matches(mixes, sampler, grid, pred):
    ro, to = mixes
    ref, port = SCHEDS["linear"]
    x_T = _x(4, n=8)
    g = RS.sigma_grid(ref, 20, grid)
    want = RS.sample(RS.model_denoiser(ref, ro.denoiser(ref, pred), pred, clip_x0=True), x_T, g, sampler,
                     record=True)
    got = TS.sample(TS.model_denoiser(port, to.denoiser(port, pred), pred, clip_x0=True), tt(x_T),
                    TS.sigma_grid(port, 20, grid), sampler, record=True)
    close(got.x, want.x, TOL["solve64"])
    for (sg, xg, x0g), (sw, xw, x0w) in zip(got.trajectory, want.trajectory):
        assert abs(sg - sw) <= TOL["cross64"] * sw
        close(xg, xw, TOL["solve64"])
        close(x0g, x0w, TOL["solve64"])


def test_N6_inversion_and_a_continuous_karras_solve_match(mixes):
    ro, to = mixes
    g = RS.karras_sigmas(20, 0.01, 157.0)
    x0 = _x(5, n=8) * 0.5
    z_ref = RS.invert(ro.denoise_sigma, x0, g, item_shape=(2,), data_range=(-3, 3)).x
    z_port = TS.invert(to.denoise_sigma, tt(x0), tt(g), item_shape=(2,), data_range=(-3, 3)).x
    close(z_port, z_ref, TOL["solve64"])
    for sampler in RS.SAMPLERS:
        close(TS.sample(to.denoise_sigma, z_port, g, sampler).x, RS.sample(ro.denoise_sigma, z_ref, g, sampler).x,
              TOL["solve64"])


def test_both_sides_refuse_the_same_inputs_with_the_same_messages(mixes):
    ro, to = mixes
    ref, port = SCHEDS["linear"]
    cases = [
        lambda S, o, s, x: S.sample(o.denoise_sigma, x, [3.0, 3.0, 0.0]),
        lambda S, o, s, x: S.sample(o.denoise_sigma, x, [3.0, -1.0, 0.0]),
        lambda S, o, s, x: S.sample(o.denoise_sigma, x, [np.inf, 1.0, 0.0]),
        lambda S, o, s, x: S.sample(o.denoise_sigma, x, [5.0, 0.0], "heun"),
        lambda S, o, s, x: S.sample(o.denoise_sigma, x, [5.0, 1.0, 0.0], "dpm++2m"),
        lambda S, o, s, x: S.sample(o.denoise_sigma, x, [5.0, 1.0, 0.0], "dpmpp2m"),
        lambda S, o, s, x: S.steps_for_nfe("heun", 2),
        lambda S, o, s, x: S.sigma_grid(s, 10, "karas"),
        lambda S, o, s, x: S.sigma_grid(s, 0, "karras"),
        lambda S, o, s, x: S.model_denoiser(s, o.denoiser(s), "eps")(x, 0.5),
        lambda S, o, s, x: S.invert(o.denoise_sigma, x, [2.0, 1.0, 0.0], item_shape=(3,)),
        lambda S, o, s, x: S.invert(o.denoise_sigma, x * 10, [2.0, 1.0, 0.0], data_range=(-1, 1)),
    ]
    x = _x(6, n=2)
    for case in cases:
        with pytest.raises(InputError) as want:
            case(RS, ro, ref, x)
        with pytest.raises(InputError) as got:
            case(TS, to, port, tt(x))
        assert str(got.value) == str(want.value)
