"""Solvers of the probability-flow ODE over a grid of noise levels, in torch (k-diffusion style).

Mirror of reference/solvers.py (see its docstring): same names, signatures and meaning. Derivations:
derivations/solvers.md (N1-N6), derivations/continuous_time.md (K6-K8).

No host-device synchronisation inside a sampling loop: the grid is host data (a NumPy array, a list or
a CPU tensor), read once into Python floats before the loop; every per-step coefficient is a Python
float, every branch is decided on those floats, and ``model_denoiser`` looks the trained step up on
the host and hands the network a device tensor made by ``torch.full``. The state keeps x_T's dtype (float32
under bf16 autocast: the denoiser's output is cast to it). Grids come back as float64 CPU tensors.
Gradients flow through the solvers when the caller wants them; sample under ``torch.no_grad()``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from common import sampler_table
from common.choices import GRIDS
from reference.errors import InputError, check_choice, check_int, check_number, check_progress

from . import samplers
from .diffusion import PREDICTIONS, _data, predict_x0
from .samplers import Sampled
from .score import sigma_to_t, trained_sigmas

SAMPLERS = sampler_table.names("ode")   # ("euler", "heun", "dpm++2m"): the table's ODE rows
RHO = 7.0

__all__ = ["SAMPLERS", "GRIDS", "RHO", "check_sigmas", "karras_sigmas", "karras_levels", "snap_sigmas", "sigma_grid",
           "grid_timesteps", "model_denoiser", "euler", "heun", "dpmpp_2m", "SOLVERS", "nfe", "steps_for_nfe", "sample",
           "invert"]

_F64 = torch.float64

# ---- grids (N5, K8) -----------------------------------------------------------------------------


def check_sigmas(sigmas):
    """A grid as a list of Python floats: 1-D, finite, strictly decreasing, > 0 but the last (read once).

    A list of Python numbers is checked in plain Python, so torch.compile(fullgraph=True) traces a solver
    given one; a tensor (read to the host once, before the loop) or an array is converted first.
    """
    if isinstance(sigmas, (list, tuple)) and all(isinstance(v, (int, float)) for v in sigmas):
        s, shape = [float(v) for v in sigmas], (len(sigmas),)
    else:
        a = sigmas.detach().cpu().to(_F64).numpy() if isinstance(sigmas, torch.Tensor) else \
            np.asarray(sigmas, dtype=np.float64)
        s, shape = a.reshape(-1).tolist(), a.shape
    if len(shape) != 1 or shape[0] < 2:
        raise InputError(f"sigmas must be a 1-D grid of at least 2 noise levels (one step), got shape {shape}")
    if not all(math.isfinite(v) for v in s):
        raise InputError("sigmas must be finite (a zero-terminal-SNR schedule has sigma = inf at its last step: "
                         "sample it with samplers.sample_loop, sampler 'ddim')")
    bad = [k for k, v in enumerate(s) if (v <= 0 if k < len(s) - 1 else v < 0)]
    if bad:
        raise InputError(f"sigma <= 0 where the solver divides by it: sigmas[{bad[0]}] = {s[bad[0]]!r}; every noise "
                         "level must be > 0 except the last, which may be 0")
    up = [k for k in range(len(s) - 1) if s[k + 1] >= s[k]]
    if up:
        k = up[0]
        raise InputError(f"sigmas must be strictly decreasing: sigmas[{k}] = {s[k]!r}, sigmas[{k + 1}] = {s[k + 1]!r}")
    return s


def karras_sigmas(n, sigma_min, sigma_max, rho=RHO):
    """(N5) n levels from sigma_max to sigma_min equally spaced in sigma^(1/rho), then 0: (n + 1,) float64."""
    n = check_int(n, "n (number of steps)", lo=1)
    lo = check_number(sigma_min, "sigma_min", lo=0.0, lo_open=True)
    hi = check_number(sigma_max, "sigma_max", lo=lo)
    rho = check_number(rho, "rho", lo=0.0, lo_open=True)
    ramp = torch.arange(n, dtype=_F64) / (n - 1) if n > 1 else torch.zeros(1, dtype=_F64)
    # (N5)  sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    s = (hi ** (1.0 / rho) + ramp * (lo ** (1.0 / rho) - hi ** (1.0 / rho))) ** rho
    s[0], s[-1] = hi, (lo if n > 1 else hi)
    return torch.cat([s, torch.zeros(1, dtype=_F64)])


def _interp(x, xp, fp):
    """np.interp in torch: piecewise-linear through (xp, fp), xp increasing, clamped to fp's ends."""
    if xp.numel() == 1:
        return fp.expand(x.shape)
    k = torch.clamp(torch.searchsorted(xp, x), 1, xp.numel() - 1)
    u = fp[k - 1] + (x - xp[k - 1]) * (fp[k] - fp[k - 1]) / (xp[k] - xp[k - 1])
    return torch.clamp(u, min=float(fp[0]), max=float(fp[-1]))


def snap_sigmas(sched, sigmas):
    """(K8) Each nonzero level moved to the nearest trained sigma_t in log sigma, kept strictly decreasing.

    As the reference: neighbours that would share a step are pushed to the next steps up (at most T levels),
    and down from the top where that would pass T-1.
    """
    s = torch.tensor(check_sigmas(sigmas), dtype=_F64)
    pos = s[s > 0]
    if pos.numel() > sched.T:
        raise InputError(f"a grid of {pos.numel()} nonzero levels cannot be snapped to T={sched.T} trained steps")
    table = trained_sigmas(sched)
    # (K8)  t(sigma) by interpolation in log sigma between trained steps, then rounded
    t = torch.round(_interp(torch.log(pos), torch.log(table), torch.arange(sched.T, dtype=_F64))).long().tolist()
    for i in range(len(t) - 2, -1, -1):          # from the bottom: distinct steps, pushed upwards
        t[i] = max(t[i], t[i + 1] + 1)
    for i in range(len(t)):                      # from the top: stay within 0..T-1
        t[i] = min(t[i], sched.T - 1 - i)
    return torch.cat([table[torch.tensor(t, dtype=torch.long)], s[pos.numel():]])


def sigma_grid(sched, n, grid):
    """(K8, N5, A5) n trained levels, strictly decreasing, then 0: (n + 1,) float64 CPU tensor."""
    check_choice(grid, GRIDS, "grid")
    table = trained_sigmas(sched)
    if grid != "karras":
        kept = samplers.timesteps(sched.T, n, grid)
        return torch.cat([table[kept.flip(0)], torch.zeros(1, dtype=_F64)])
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= sched.T:
        raise InputError(f"n (number of sampling steps) must be an integer in 1..T={sched.T}, got {n!r}")
    n = int(n)
    if not math.isfinite(float(table[-1])):
        raise InputError("the schedule ends at alpha_bar = 0 (sigma = inf): the sigma grids need a finite "
                         "sigma_max; sample with samplers.sample_loop, sampler 'ddim'")
    return snap_sigmas(sched, karras_levels(table, n))


def karras_levels(table, n):
    """(N7) As the reference: the rho grid of n levels over the increasing ``table``, a clipped top taken once."""
    top, taken = table.numel() - 1, []
    while n - len(taken) >= 2 and top >= 1:
        k = karras_sigmas(n - len(taken), float(table[0]), float(table[top]))
        # (N7)  level 1 inside the top trained step (sigma_{top-1}, sigma_top): no trained level is near it
        if float(k[1]) <= float(table[top - 1]):
            break
        taken.append(float(table[top]))
        top -= 1
    rest = karras_sigmas(n - len(taken), float(table[0]), float(table[top]))
    return torch.cat([torch.tensor(taken, dtype=_F64), rest])


def grid_timesteps(sched, sigmas):
    """(K8) The 0-based step t of each nonzero level of a snapped grid, (n,) int64 CPU tensor."""
    return torch.tensor([sigma_to_t(sched, s) for s in check_sigmas(sigmas) if s > 0], dtype=torch.long)


# ---- a network trained on discrete steps as a denoiser (K8) -------------------------------------

def model_denoiser(sched, model, prediction="eps", clip_x0=False):
    """D(x~, sigma) from ``model(x_t, t) -> output`` trained on discrete 0-based steps; as the reference.

    The step is found on the host (K8); the network gets x_t = sqrt(abar_t) x~ (K6) and t = torch.full
    ((N,), t) on x~'s device; the output (any dtype, e.g. bf16 under autocast) comes back in x~'s dtype.
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    sqrt_abar = np.sqrt(np.asarray(sched.alpha_bar_host, dtype=np.float64)).tolist()

    def D(x, sigma):
        t = sigma_to_t(sched, sigma)                                   # (K8)  host lookup: sigma == sigma_t
        # (K6)  x_t = sqrt(abar_t) x~
        xt = x * sqrt_abar[t]
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = model(xt, tt).to(x.dtype)
        x0 = predict_x0(sched, xt, t, out, prediction)
        return torch.clamp(x0, -1.0, 1.0) if clip_x0 else x0

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
    """(N2) Heun's steps (Karras et al. 2022, Algorithm 1 without churn); the step to sigma = 0 is Euler."""
    s = check_sigmas(sigmas)
    for i in check_progress(progress)(range(len(s) - 1)):
        x0 = D(x, s[i])
        if callback is not None:
            callback(i, s[i], x, x0)
        d = (x - x0) / s[i]                                            # (K6)
        x_euler = x + (s[i + 1] - s[i]) * d                            # (N1)  the predictor
        if s[i + 1] == 0:
            x = x_euler  # (N2)  last step: Euler
        else:
            d_next = (x_euler - D(x_euler, s[i + 1])) / s[i + 1]        # (K6)  slope at the predictor
            # (N2)  x~_{i+1} = x~_i + (sigma_{i+1} - sigma_i) (d + d') / 2
            x = x + (s[i + 1] - s[i]) * 0.5 * (d + d_next)
    return x


def dpmpp_2m(D, x, sigmas, callback=None, progress=None):
    """(N3, N4) DPM-Solver++(2M) in lambda = -log sigma; first and last steps first order. NFE = n."""
    s = check_sigmas(sigmas)
    x0_old, h_old = None, None
    for i in check_progress(progress)(range(len(s) - 1)):
        x0 = D(x, s[i])
        if callback is not None:
            callback(i, s[i], x, x0)
        if s[i + 1] == 0:
            x = x0  # (N3)  h = inf: first order, x~ -> x0_hat
        else:
            # (N3)  h = lambda_{i+1} - lambda_i = log(sigma_i / sigma_{i+1})
            h = math.log(s[i] / s[i + 1])
            if x0_old is None:
                x0_d = x0
            else:
                r = h_old / h
                # (N4)  D_i + (D_i - D_{i-1}) / (2 r)
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
    """Solve the ODE from x_T (VP, at sigmas[0]) down the grid -> Sampled(x, trajectory); as the reference."""
    check_choice(sampler, SAMPLERS, "sampler")
    s = check_sigmas(sigmas)
    _check_order(sampler, s)
    x = _data(None, x_T, "x_T")
    trajectory, cb = _recorder(record)
    # (K6)  x~ = x / sqrt(abar) = x sqrt(1 + sigma^2)
    x = SOLVERS[sampler](D, x * math.sqrt(1.0 + s[0] ** 2), s, callback=cb, progress=progress)
    return Sampled(x / math.sqrt(1.0 + s[-1] ** 2), trajectory)


def _check_invert_input(x0, item_shape, data_range):
    x0 = _data(None, x0, "x0")
    if item_shape is not None and tuple(x0.shape[1:]) != tuple(item_shape):
        raise InputError(f"inversion input has items of shape {tuple(x0.shape[1:])}, but the model's items are "
                         f"{tuple(item_shape)}: pass an array (N, {', '.join(map(str, item_shape))})")
    if data_range is not None and x0.device.type == "cpu" and x0.numel() and \
            (float(x0.min()) < data_range[0] or float(x0.max()) > data_range[1]):
        raise InputError(f"inversion input out of range: values {float(x0.min()):.4g}..{float(x0.max()):.4g}, the "
                         f"model's data lie in [{data_range[0]}, {data_range[1]}] (images in model space are in "
                         "[-1, 1])")
    return x0


def invert(D, x0, sigmas, record=False, progress=None, item_shape=None, data_range=None):
    """(N6) DDIM inversion: Euler steps up the decoding grid -> Sampled(x_T, trajectory); as the reference.

    The range check reads values, so it runs for CPU inputs only (the CLI's .npy files are on the host).
    """
    s = check_sigmas(sigmas)
    x = _check_invert_input(x0, item_shape, data_range)
    up = s[::-1] if s[-1] > 0 else s[-2::-1]      # (N6) x~(sigma_min) = x_0 when the grid ends at 0
    trajectory, cb = _recorder(record)
    # (K6)  x~ = x sqrt(1 + sigma^2) at the grid's last level: x~ = x_0 itself when that is 0
    x = x * math.sqrt(1.0 + s[-1] ** 2)
    for j in check_progress(progress)(range(len(up) - 1)):
        x0_hat = D(x, up[j])
        if cb is not None:
            cb(j, up[j], x, x0_hat)
        # (N6)  x~_{j+1} = x~_j + (sigma_{j+1} - sigma_j) (x~_j - x0_hat) / sigma_j
        x = x + (up[j + 1] - up[j]) * ((x - x0_hat) / up[j])
    return Sampled(x / math.sqrt(1.0 + up[-1] ** 2), trajectory)
