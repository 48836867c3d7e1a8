"""Solvers of the probability-flow ODE over a grid of noise levels, k-diffusion style.

Derivations: derivations/solvers.md (N1-N6), derivations/continuous_time.md (K6-K8).

The state is x~ = x / sqrt(abar) = x_0 + sigma eps (k-diffusion's ``x``), the noise level
sigma = sqrt((1 - abar) / abar), and the ODE (K6) reads dx~/dsigma = (x~ - D(x~, sigma)) / sigma.
A denoiser ``D(x~, sigma) -> x0_hat`` takes the state (N, ...) and sigma as a Python float > 0: the
grid is host data, one level per step. Each solver is one function ``solver(D, x~, sigmas)`` over a
strictly decreasing grid whose entries are > 0 except the last, which may be 0 (then the last step
returns D's x0_hat: no division by sigma = 0).

``sample`` and ``invert`` speak VP variables at the ends (x_T ~ N(0, I) in, x_0 out, as
samplers.sample_loop): x~ = x sqrt(1 + sigma^2) (K6). NFE (network evaluations) per grid of n steps:
euler n, dpm++2m n, heun 2n - 1 (its last step to sigma = 0 is an Euler step); ``nfe`` and
``steps_for_nfe`` convert. Grids for a model trained on discrete steps are snapped to its trained
sigmas (K8): ``sigma_grid``; ``model_denoiser`` turns such a network into D and refuses other levels.
"""
from __future__ import annotations

import math

import numpy as np

from common import sampler_table
from common.choices import GRIDS

from . import samplers
from .diffusion import PREDICTIONS, _data, predict_x0
from .errors import InputError, check_choice, check_int, check_number, check_progress
from .samplers import Sampled
from .score import sigma_to_t, trained_sigmas

SAMPLERS = sampler_table.names("ode")   # ("euler", "heun", "dpm++2m"): the table's ODE rows
RHO = 7.0  # Karras et al. 2022's grid exponent

# ---- grids (N5, K8) -----------------------------------------------------------------------------


def check_sigmas(sigmas):
    """A grid of noise levels as a list of Python floats: 1-D, finite, strictly decreasing, > 0 but the last."""
    s = np.asarray(sigmas, dtype=np.float64) if not isinstance(sigmas, np.ndarray) else sigmas.astype(np.float64)
    if s.ndim != 1 or s.size < 2:
        raise InputError(f"sigmas must be a 1-D grid of at least 2 noise levels (one step), got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise InputError("sigmas must be finite (a zero-terminal-SNR schedule has sigma = inf at its last step: "
                         "sample it with samplers.sample_loop, sampler 'ddim')")
    if np.any(s[:-1] <= 0) or s[-1] < 0:
        k = int(np.flatnonzero(np.concatenate([s[:-1] <= 0, [s[-1] < 0]]))[0])
        raise InputError(f"sigma <= 0 where the solver divides by it: sigmas[{k}] = {float(s[k])!r}; every noise "
                         "level must be > 0 except the last, which may be 0")
    if np.any(np.diff(s) >= 0):
        k = int(np.flatnonzero(np.diff(s) >= 0)[0])
        raise InputError(f"sigmas must be strictly decreasing: sigmas[{k}] = {float(s[k])!r}, "
                         f"sigmas[{k + 1}] = {float(s[k + 1])!r}")
    return s.tolist()


def karras_sigmas(n, sigma_min, sigma_max, rho=RHO):
    """(N5) n levels from sigma_max to sigma_min equally spaced in sigma^(1/rho), then 0: (n + 1,) float64."""
    n = check_int(n, "n (number of steps)", lo=1)
    lo = check_number(sigma_min, "sigma_min", lo=0.0, lo_open=True)
    hi = check_number(sigma_max, "sigma_max", lo=lo)
    rho = check_number(rho, "rho", lo=0.0, lo_open=True)
    ramp = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    # (N5)  sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    s = (hi ** (1.0 / rho) + ramp * (lo ** (1.0 / rho) - hi ** (1.0 / rho))) ** rho
    s[0], s[-1] = hi, (lo if n > 1 else hi)  # the ends exactly, not through the rho-th power and root
    return np.concatenate([s, [0.0]])


def snap_sigmas(sched, sigmas):
    """(K8) Each nonzero level moved to the nearest trained sigma_t in log sigma, kept strictly decreasing.

    Where the grid is finer than the trained steps (Karras near sigma_min), neighbours that would share
    a step are pushed to the next steps up, so the grid keeps its length: at most T nonzero levels. Levels
    pushed past T-1 that way are pushed down from the top instead (sigma_grid's "karras" avoids that case
    with karras_levels, N7). Returns (n + 1,) float64 with the trailing 0 kept (if the input has one).
    """
    s = np.asarray(check_sigmas(sigmas))
    pos = s[s > 0]
    if pos.size > sched.T:
        raise InputError(f"a grid of {pos.size} nonzero levels cannot be snapped to T={sched.T} trained steps")
    table = trained_sigmas(sched)
    # (K8)  t(sigma) by interpolation in log sigma between trained steps, then rounded
    t = np.round(np.interp(np.log(pos), np.log(table), np.arange(sched.T))).astype(np.int64)
    for i in range(t.size - 2, -1, -1):          # from the bottom: distinct steps, pushed upwards
        t[i] = max(t[i], t[i + 1] + 1)
    for i in range(t.size):                      # from the top: stay within 0..T-1
        t[i] = min(t[i], sched.T - 1 - i)
    return np.concatenate([table[t], s[pos.size:]])


def sigma_grid(sched, n, grid):
    """(K8, N5, A5) n trained levels, strictly decreasing, then 0: (n + 1,) float64 for n steps.

    "leading" | "trailing" | "linspace": the kept steps of samplers.timesteps (A5), noisiest first;
    "karras": the rho = 7 grid between the trained sigma_min = sigma_0 and sigma_max = sigma_{T-1}, with
    a clipped top step taken once (karras_levels, N7), snapped to trained steps (K8). On every grid the
    network receives integer steps only.
    """
    check_choice(grid, GRIDS, "grid")
    table = trained_sigmas(sched)
    if grid != "karras":
        kept = samplers.timesteps(sched.T, n, grid)
        return np.concatenate([table[kept[::-1]], [0.0]])
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= sched.T:
        raise InputError(f"n (number of sampling steps) must be an integer in 1..T={sched.T}, got {n!r}")
    n = int(n)
    if not np.isfinite(table[-1]):
        raise InputError("the schedule ends at alpha_bar = 0 (sigma = inf): the sigma grids need a finite "
                         "sigma_max; sample with samplers.sample_loop, sampler 'ddim'")
    return snap_sigmas(sched, karras_levels(table, n))


def karras_levels(table, n):
    """(N7) The rho = 7 grid of n levels over the trained sigmas ``table`` (increasing), then 0, unsnapped.

    Where the trained steps at the top are coarser than the grid (the cosine schedule's clipped last step
    jumps from sigma_{T-2} to sigma_{T-1} in one step), the grid's second level falls inside the top step,
    where snapping can only move it onto one of its ends: that top step is taken once, as a level of its
    own, and the remaining levels form the rho grid below it, repeated until the second level lies at or
    below sigma_{top-1}. Where the top is not coarser (every schedule but the clipped cosine at n <= T) this
    is karras_sigmas(n, sigma_0, sigma_{T-1}).
    """
    top, taken = table.size - 1, []
    while n - len(taken) >= 2 and top >= 1:
        k = karras_sigmas(n - len(taken), table[0], table[top])
        # (N7)  level 1 inside the top trained step (sigma_{top-1}, sigma_top): no trained level is near it
        if k[1] <= table[top - 1]:
            break
        taken.append(float(table[top]))
        top -= 1
    return np.concatenate([taken, karras_sigmas(n - len(taken), table[0], table[top])])


def grid_timesteps(sched, sigmas):
    """(K8) The 0-based step t of each nonzero level of a snapped grid, (n,) int64 (noisiest first)."""
    return np.array([sigma_to_t(sched, s) for s in check_sigmas(sigmas) if s > 0], dtype=np.int64)


# ---- a network trained on discrete steps as a denoiser (K8) -------------------------------------

def model_denoiser(sched, model, prediction="eps", clip_x0=False):
    """D(x~, sigma) from ``model(x_t, t) -> output`` trained on discrete 0-based steps t.

    sigma must be a trained level (K8, refused otherwise); the network gets x_t = sqrt(abar_t) x~ (K6)
    and t as int64 (N,); ``prediction`` "eps" | "x0" | "v" converts its output to x0_hat (R1, R4),
    clipped to [-1, 1] with ``clip_x0`` (images). Output in x~'s dtype.
    """
    check_choice(prediction, PREDICTIONS, "prediction")

    def D(x, sigma):
        t = sigma_to_t(sched, sigma)                                   # (K8)  sigma == sigma_t exactly
        # (K6)  x_t = sqrt(abar_t) x~
        xt = (x * sched.sqrt_alpha_bar[t]).astype(x.dtype, copy=False)
        tt = np.full(x.shape[0], t, dtype=np.int64)
        x0 = predict_x0(sched, xt, tt, model(xt, tt), prediction)
        return (np.clip(x0, -1.0, 1.0) if clip_x0 else x0).astype(x.dtype, copy=False)

    return D


# ---- the solvers (K7, N1-N4) --------------------------------------------------------------------

def euler(D, x, sigmas, callback=None, progress=None):
    """(K7, N1) Euler steps of the ODE in (x~, sigma): DDIM with eta = 0, step for step. NFE = n."""
    s = check_sigmas(sigmas)
    for i in check_progress(progress)(range(len(s) - 1)):
        x0 = D(x, s[i])
        if callback is not None:
            callback(i, s[i], x, x0)
        # (K6)  d = dx~/dsigma = (x~ - x0_hat) / sigma
        d = (x - x0) / s[i]
        # (K7, N1)  x~_{i+1} = x~_i + (sigma_{i+1} - sigma_i) d
        x = x + (s[i + 1] - s[i]) * d
    return x


def heun(D, x, sigmas, callback=None, progress=None):
    """(N2) Heun's steps (Karras et al. 2022, Algorithm 1 without churn); the step to sigma = 0 is Euler.

    NFE = 2n - 1 for a grid ending at 0 (2n otherwise).
    """
    s = check_sigmas(sigmas)
    for i in check_progress(progress)(range(len(s) - 1)):
        x0 = D(x, s[i])
        if callback is not None:
            callback(i, s[i], x, x0)
        d = (x - x0) / s[i]                                            # (K6)
        x_euler = x + (s[i + 1] - s[i]) * d                            # (N1)  the predictor
        if s[i + 1] == 0:
            x = x_euler  # (N2)  last step: Euler (the slope at sigma = 0 would divide by 0)
        else:
            d_next = (x_euler - D(x_euler, s[i + 1])) / s[i + 1]        # (K6)  slope at the predictor
            # (N2)  x~_{i+1} = x~_i + (sigma_{i+1} - sigma_i) (d + d') / 2
            x = x + (s[i + 1] - s[i]) * 0.5 * (d + d_next)
    return x


def dpmpp_2m(D, x, sigmas, callback=None, progress=None):
    """(N3, N4) DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) in lambda = -log sigma. NFE = n.

    First step first order (no history yet); the step to sigma = 0 first order too: it returns x0_hat.
    """
    s = check_sigmas(sigmas)
    x0_old, h_old = None, None
    for i in check_progress(progress)(range(len(s) - 1)):
        x0 = D(x, s[i])
        if callback is not None:
            callback(i, s[i], x, x0)
        if s[i + 1] == 0:
            x = x0  # (N3)  h = inf: x~ -> (0 / sigma) x~ + (1 - 0) x0_hat, first order
        else:
            # (N3)  h = lambda_{i+1} - lambda_i = log(sigma_i / sigma_{i+1})
            h = math.log(s[i] / s[i + 1])
            if x0_old is None:
                x0_d = x0
            else:
                r = h_old / h
                # (N4)  D_i + (D_i - D_{i-1}) / (2 r): the x0-prediction extrapolated linearly in lambda
                x0_d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_old
            # (N3)  x~_{i+1} = (sigma_{i+1} / sigma_i) x~_i + (1 - e^{-h}) D
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * x0_d
            h_old = h
        x0_old = x0
    return x


SOLVERS = {"euler": euler, "heun": heun, "dpm++2m": dpmpp_2m}


# ---- NFE, and the sampling and inversion entries ------------------------------------------------

def nfe(sampler, sigmas):
    """Network evaluations of ``sampler`` on the grid: euler and dpm++2m n, heun 2n - 1 (2n if it ends above 0)."""
    check_choice(sampler, SAMPLERS, "sampler")
    s = check_sigmas(sigmas)
    return sampler_table.row(sampler).nfe(len(s) - 1, ends_at_zero=s[-1] == 0)   # the table's count


def _check_order(sampler, s):
    """A second-order sampler needs one second-order update on the grid (the table's min_steps on one to 0)."""
    r = sampler_table.row(sampler)
    if r.order > 1 and r.second_order_steps(len(s) - 1, ends_at_zero=s[-1] == 0) < 1:
        raise InputError(f"{sampler} takes no second-order step on a grid of {len(s) - 1} step(s) ending at "
                         f"sigma = {s[-1]:g} (NFE {nfe(sampler, s)}): it needs at least {r.min_steps} steps "
                         f"(NFE >= {r.nfe(r.min_steps)}); use more steps or sampler 'euler'")


def steps_for_nfe(sampler, n_evals):
    """The number of steps n whose NFE is at most ``n_evals`` on a grid ending at 0 (heun: 2n - 1 <= NFE)."""
    check_choice(sampler, SAMPLERS, "sampler")
    return sampler_table.steps_for_nfe(sampler, n_evals)


def _recorder(record):
    """A callback that stores (sigma, x_t, x0_hat) per step, x_t = x~ / sqrt(1 + sigma^2) in VP variables."""
    trajectory = [] if record else None
    cb = None if not record else \
        (lambda i, sigma, x, x0: trajectory.append((sigma, x / math.sqrt(1.0 + sigma**2), x0)))
    return trajectory, cb


def sample(D, x_T, sigmas, sampler="euler", record=False, progress=None):
    """Solve the ODE from x_T (VP, at sigmas[0]) down the grid -> Sampled(x, trajectory) (as sample_loop).

    x is the VP sample at sigmas[-1] (x_0 when the grid ends at 0). Draws nothing: x_T is the noise.
    trajectory (record=True): a list of (sigma, x_t, x0_hat) per step, x_t the step's input in VP variables.
    """
    check_choice(sampler, SAMPLERS, "sampler")
    s = check_sigmas(sigmas)
    _check_order(sampler, s)
    x = _data(x_T, "x_T")
    trajectory, cb = _recorder(record)
    # (K6)  x~ = x / sqrt(abar) = x sqrt(1 + sigma^2)
    x = SOLVERS[sampler](D, x * math.sqrt(1.0 + s[0] ** 2), s, callback=cb, progress=progress)
    return Sampled(x / math.sqrt(1.0 + s[-1] ** 2), trajectory)


def _check_invert_input(x0, item_shape, data_range):
    x0 = _data(x0, "x0")
    if item_shape is not None and tuple(x0.shape[1:]) != tuple(item_shape):
        raise InputError(f"inversion input has items of shape {tuple(x0.shape[1:])}, but the model's items are "
                         f"{tuple(item_shape)}: pass an array (N, {', '.join(map(str, item_shape))})")
    if data_range is not None and x0.size and (x0.min() < data_range[0] or x0.max() > data_range[1]):
        raise InputError(f"inversion input out of range: values {x0.min():.4g}..{x0.max():.4g}, the model's data "
                         f"lie in [{data_range[0]}, {data_range[1]}] (images in model space are in [-1, 1])")
    return x0


def invert(D, x0, sigmas, record=False, progress=None, item_shape=None, data_range=None):
    """(N6) DDIM inversion: Euler steps up the decoding grid ``sigmas`` -> Sampled(x_T, trajectory).

    x0 is the VP sample at sigmas[-1]; when that is 0 the step 0 -> sigmas[-2] has slope
    eps_hat(x~, 0) = 0 (N6), so x_0 is placed at the lowest level unchanged (no evaluation there).
    x_T (VP, at sigmas[0]) decodes with ``sample(D, x_T, sigmas, "euler")`` to x_0 up to O(step).
    NFE = n - 1 for a grid ending at 0. ``item_shape`` / ``data_range`` (lo, hi): checks of the input.
    """
    s = check_sigmas(sigmas)
    x = _check_invert_input(x0, item_shape, data_range)
    up = s[::-1] if s[-1] > 0 else s[-2::-1]      # ascending; (N6) x~(sigma_min) = x_0 when the grid ends at 0
    trajectory, cb = _recorder(record)
    # (K6)  x~ = x sqrt(1 + sigma^2) at the grid's last level: x~ = x_0 itself when that is 0
    x = x * math.sqrt(1.0 + s[-1] ** 2)
    for j in check_progress(progress)(range(len(up) - 1)):
        x0_hat = D(x, up[j])
        if cb is not None:
            cb(j, up[j], x, x0_hat)
        # (N6)  x~_{j+1} = x~_j + (sigma_{j+1} - sigma_j) (x~_j - x0_hat) / sigma_j : Euler, sigma increasing
        x = x + (up[j + 1] - up[j]) * ((x - x0_hat) / up[j])
    return Sampled(x / math.sqrt(1.0 + up[-1] ** 2), trajectory)
