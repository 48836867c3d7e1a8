"""DPM-Solver++(2M) and Heun step by step against routes that are not the project's code, on both sides.

An order test cannot pin a multistep solver's coefficients (a wrong r = h_old / h keeps the order 2), so each
step is compared on short, uneven grids with the Gaussian-mixture oracle as the denoiser (exact at every sigma):

* Lu et al. 2022b (DPM-Solver++), Algorithm 2 (2M), written out below in the paper's VP variables
  x_t = alpha_t x_0 + sigma_t eps and lambda_t = log(alpha_t / sigma_t): no diffusers needed;
* diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, lower-order final, epsilon) and
  HeunDiscreteScheduler (its timesteps doubled: [t_0, t_1, t_1, ..., t_{n-1}, t_{n-1}], 2n - 1 model calls,
  the step to sigma = 0 an Euler step as ours), fed the oracle's eps at the scheduler's own sigmas; those
  sigmas (float32 values) are the grid both our sides solve on, so only arithmetic differs.

Tolerances: the paper's steps in float64 VP variables against the solvers' x~ = x sqrt(1 + sigma^2) variables
differ by rounding only, carried in x~ up to sqrt(1 + sigma_max^2) = 157 times x: TOL["solve64"]; diffusers
runs its update in float32 (it casts the sample to float32 and keeps its sigmas in float32): TOL["op32"],
relative to the state's size.
"""
import math

import numpy as np
import pytest
import torch

from reference import oracle as RO
from reference import solvers as RS
from reference.schedules import Schedule, make_betas
from tolerances import TOL
from torch_port import oracle as TO
from torch_port import solvers as TS

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              # diffusers 0.42 builds its sigmas with np.array(tensor ** 0.5), which numpy 2 flags; not ours to fix
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]
MIX = RO.GaussianMixtureOracle(W, MEANS, cov=COVS)
SIDES = {"reference": (RS, MIX.denoise_sigma, lambda a: a, lambda a: a),
         "torch_port": (TS, TO.GaussianMixtureOracle(W, MEANS, cov=COVS).denoise_sigma, torch.from_numpy,
                        lambda a: a.numpy())}


def _steps(side, solver, x_T, grid):
    """The VP state entering each step, then the result: (n + 1, N, 2), solved by ``side``'s ``solver``."""
    S, D, to, back = SIDES[side]
    seen = []
    x = getattr(S, solver)(D, to(x_T * math.sqrt(1.0 + grid[0] ** 2)), [float(s) for s in grid],
                           callback=lambda i, s, x, x0: seen.append(back(x) / math.sqrt(1.0 + s**2)))
    return np.stack(seen + [back(x)])


def _paper_dpmpp_2m(x_T, grid):
    """Lu et al. 2022b, Algorithm 2 (DPM-Solver++(2M)), in VP variables; the step to sigma~ = 0 first order.

    sigma~ = sigma_t / alpha_t is the grid's level, alpha_t = 1 / sqrt(1 + sigma~^2); the data prediction
    x_theta(x_t, t) = D(x_t / alpha_t, sigma~) (the oracle's posterior mean of x_0)."""
    alpha = [1.0 / math.sqrt(1.0 + s**2) for s in grid]
    sigma = [s * a for s, a in zip(grid, alpha)]
    lam = [math.log(a / s) if s > 0 else math.inf for a, s in zip(alpha, sigma)]
    xs, x, M = [x_T], x_T, []
    for i in range(1, len(grid)):
        M.append(MIX.denoise_sigma(x / alpha[i - 1], grid[i - 1]))          # x_theta(x_{t_{i-1}}, t_{i-1})
        h = lam[i] - lam[i - 1]
        if i == 1 or sigma[i] == 0:
            Dm = M[-1]                                                       # first order: the first and last
        else:
            r = (lam[i - 1] - lam[i - 2]) / h                               # r_i = h_{i-1} / h_i
            Dm = (1 + 1 / (2 * r)) * M[-1] - 1 / (2 * r) * M[-2]
        # x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i
        x = (sigma[i] / sigma[i - 1]) * x - alpha[i] * (math.exp(-h) - 1.0) * Dm
        xs.append(x)
    return np.stack(xs)


def _uneven_grids():
    """Short grids with uneven steps in lambda (so r != 1), on both schedules, ending at 0."""
    lin, cos = Schedule(make_betas("linear", 1000)), Schedule(make_betas("cosine", 1000), warn=False)
    return {"linear-trailing-6": RS.sigma_grid(lin, 6, "trailing"), "linear-karras-8": RS.sigma_grid(lin, 8, "karras"),
            "cosine-leading-7": RS.sigma_grid(cos, 7, "leading"),
            "free": np.array([80.0, 9.0, 4.0, 0.6, 0.3, 0.02, 0.0])}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("grid_name", ["linear-trailing-6", "linear-karras-8", "cosine-leading-7", "free"])
def test_N3_N4_dpmpp_2m_is_lu_et_al_algorithm_2_step_for_step(side, grid_name):
    grid = _uneven_grids()[grid_name]
    h = np.diff(-np.log(grid[:-1]))
    assert np.max(np.abs(h[1:] / h[:-1] - 1)) > 0.05     # the grid's steps in lambda are uneven: r matters
    x_T = np.random.default_rng(3).standard_normal((16, 2))
    got, want = _steps(side, "dpmpp_2m", x_T, grid), _paper_dpmpp_2m(x_T, grid)
    np.testing.assert_allclose(got, want, rtol=TOL["solve64"], atol=TOL["solve64"])


# ---- diffusers (optional extra) ---------------------------------------------------------------------------

def _eps_model(sched):
    """eps(x_t) of the oracle at the scheduler's current sigma (diffusers' model sees x_t and an integer t)."""
    def eps(x_t, sigma):
        x = x_t.numpy() * math.sqrt(1.0 + sigma**2)                          # (K6)  x~ = x_t / alpha_t
        return torch.from_numpy((x - MIX.denoise_sigma(x, sigma)) / sigma)   # (R1)  eps = (x~ - x0_hat) / sigma
    return eps


DIFFUSERS_CASES = [("linear", "trailing", 6), ("linear", "linspace", 8), ("squaredcos_cap_v2", "leading", 7)]


def _close32(got, want):
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=TOL["op32"], atol=TOL["op32"] * scale)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("beta_schedule,spacing,n", DIFFUSERS_CASES)
def test_N4_dpmpp_2m_matches_diffusers_dpm_solver_multistep_step_for_step(side, beta_schedule, spacing, n):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                                                algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
                                                prediction_type="epsilon", timestep_spacing=spacing,
                                                final_sigmas_type="zero")
    sch.set_timesteps(n)
    grid = sch.sigmas.double().numpy()                                         # n levels, then 0
    assert grid.size == n + 1 and grid[-1] == 0.0
    x_T = np.random.default_rng(4).standard_normal((16, 2))
    x, eps, seen = torch.from_numpy(x_T.copy()), _eps_model(grid), []
    for k, t in enumerate(sch.timesteps):
        seen.append(x.numpy().copy())
        x = sch.step(eps(x, float(grid[k])), t, x).prev_sample               # diffusers works in x_t (VP)
    seen.append(x.numpy())
    _close32(_steps(side, "dpmpp_2m", x_T, grid), np.stack(seen))


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("beta_schedule,spacing,n", DIFFUSERS_CASES)
def test_N2_heun_matches_diffusers_heun_discrete_step_for_step(side, beta_schedule, spacing, n):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.HeunDiscreteScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                                          prediction_type="epsilon", timestep_spacing=spacing)
    sch.set_timesteps(n)
    levels = sch.sigmas.double().numpy()                      # [s_0, s_1, s_1, ..., s_{n-1}, s_{n-1}, 0]
    assert len(sch.timesteps) == 2 * n - 1 == RS.nfe("heun", np.concatenate([levels[::2], [0.0]]))
    grid = np.concatenate([levels[::2], [0.0]])
    x_T = np.random.default_rng(5).standard_normal((16, 2))
    # x~ = x_T sqrt(1 + sigma_max^2) as ours (diffusers' init_noise_sigma is sigma_max itself on some spacings)
    x, eps, seen = torch.from_numpy(x_T * math.sqrt(1.0 + levels[0] ** 2)), _eps_model(grid), []
    for k, t in enumerate(sch.timesteps):
        if k % 2 == 0:                                                         # a first-order call starts a step
            seen.append(x.numpy() / math.sqrt(1.0 + levels[k] ** 2))
        x_t = sch.scale_model_input(x, t)                                      # x~ / sqrt(1 + sigma^2)
        x = sch.step(eps(x_t, float(levels[k])), t, x).prev_sample            # diffusers works in x~
    seen.append(x.numpy())
    _close32(_steps(side, "heun", x_T, grid), np.stack(seen))
