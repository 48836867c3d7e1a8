"""Sampling: the ancestral DDPM step, the DDIM step, timestep spacing, respacing and the loop, in torch.

Mirror of reference/samplers.py: same names, signatures and meaning. Derivations:
derivations/sampling.md (M*, A*).

Conventions: ``t`` is the 0-based index (paper step t+1), an int or an integer tensor (N,).
Data ``xt``, ``noise``, ``model_output`` are (N, ...) tensors. Noise is always an argument: a
tensor, or (in ``sample_loop``) a torch.Generator / np.random.Generator / a list of n tensors.
``timesteps`` returns an int64 tensor (the reference: an int64 array) with the same entries.

Validation: as in torch_port.diffusion (values of CPU tensors always; on an accelerator only with
``sched.validate``). One exception: ``ddpm_step`` with ``noise=None`` and a tensor ``t`` reads t
on the host to refuse a step that would need noise (a sync, on that rare path only).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from common import sampler_table
from common.choices import SPACINGS
from reference.errors import InputError, check_choice, check_progress, check_T
from reference.schedules import warn_late_start  # non-math: the shared diagnostic

from . import schedules
from .diffusion import (ALL_VARIANCES, LEARNED, PREDICTIONS, _check_same_shape, _check_values, _col, _data,
                        _timesteps, p_mean_variance, predict_eps, predict_x0, split_output)

SAMPLERS = sampler_table.names("chain")   # ("ddpm", "ddim"): the table's chain rows


class Sampled(NamedTuple):
    """What ``sample_loop`` returns: the samples x (N, ...) and, with record=True, the trajectory (a list of
    (t, x_t, x0_hat) per step); else None. As reference.samplers.Sampled."""
    x: torch.Tensor
    trajectory: list | None

__all__ = ["SPACINGS", "SAMPLERS", "Sampled", "ddpm_step", "ddim_step", "timesteps", "respace", "sample_loop"]


def _noise(sched, noise, xt, needed):
    """The noise tensor checked against xt; None is accepted only where no noise is added.

    ``needed`` is a bool, or a callable returning one (evaluated only when noise is None).
    """
    if noise is None:
        if needed() if callable(needed) else needed:
            raise InputError("noise is None but this step adds noise: pass an array shaped like xt")
        return torch.zeros_like(xt)
    noise = _data(sched, noise, "noise")
    _check_same_shape(noise, xt, "noise", "xt")
    return noise.to(device=xt.device, dtype=xt.dtype)


def ddpm_step(sched, model_output, xt, t, noise, prediction="eps", variance="fixed_small", clip_x0=False):
    """(A1) One ancestral step x_t -> x_{t-1} (Ho et al. Algorithm 2) -> (x_prev, x0_hat).

    x_{t-1} = mu_theta(x_t, t) + sigma_t z with the moments of diffusion.p_mean_variance (M1, M2; "learned": V1).
    No noise where t == 0 (per example when t is (N,)). Shapes: model_output, xt, noise (N, ...).
    """
    xt = _data(sched, xt, "xt")
    tt = _timesteps(sched, t, xt)
    nonzero = (torch.as_tensor(tt, device=xt.device) != 0)     # () or (N,) bool: (A1) z = 0 at t = 0
    noise = _noise(sched, noise, xt, needed=lambda: bool(nonzero.any()))
    p = p_mean_variance(sched, model_output, xt, tt, prediction, variance, clip_x0)
    # (A1)  x_{t-1} = mu_theta + sigma_t z, z masked at t = 0 (paper step 1)
    return p.mean + _col(nonzero, xt) * torch.sqrt(p.variance) * noise, p.x0


def _check_eta(eta):
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)) \
            or not (0.0 <= float(eta) <= 1.0):
        raise InputError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta!r}")
    return float(eta)


def _check_t_prev(sched, t_prev, tt, xt):
    """t_prev: int or (N,), each in {-1, ..., t-1}; -1 means "step to the clean sample" (abar = 1)."""
    n = xt.shape[0]
    tp = t_prev if isinstance(t_prev, torch.Tensor) else torch.as_tensor(np.asarray(t_prev))
    if tp.is_floating_point() or tp.is_complex() or tp.dtype == torch.bool or tp.ndim > 1 \
            or (tp.ndim == 1 and tp.shape[0] != n):
        raise InputError(f"t_prev must be an int or an int array of shape ({n},), got {t_prev!r}")
    tp = tp.to(device=xt.device, dtype=torch.long)
    t = torch.as_tensor(tt, device=xt.device)
    if _check_values(sched, tp):
        if bool((tp < -1).any()):
            raise InputError(f"t_prev out of range: got {int(tp.min())}; use -1 for the final step to x_0")
        if bool((tp >= t).any()):
            raise InputError("t_prev must be smaller than t (DDIM steps go from t down to t_prev < t); "
                             f"got t_prev={tp.tolist()} and t={t.tolist()}")
    return tp


def ddim_step(sched, model_output, xt, t, t_prev, noise, eta=0.0, prediction="eps", clip_x0=False):
    """(A2, A3) One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12) -> (x_prev, x0_hat).

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).
    t_prev = -1 means abar_prev = 1. ``noise`` may be None when eta = 0.
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    eta = _check_eta(eta)
    xt = _data(sched, xt, "xt")
    tt = _timesteps(sched, t, xt)
    tp = _check_t_prev(sched, t_prev, tt, xt)
    noise = _noise(sched, noise, xt, needed=eta > 0)
    abar = sched.alpha_bar.to(xt.device)
    a_t = abar[tt]                                                            # () or (N,) float64
    # abar_{t_prev}, with abar_{-1} = 1
    a_prev = torch.where(tp >= 0, abar[torch.clamp(tp, min=0)], torch.ones((), dtype=abar.dtype, device=xt.device))
    # (A3)  sigma_eta = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
    sigma = eta * torch.sqrt((1.0 - a_prev) / (1.0 - a_t)) * torch.sqrt(1.0 - a_t / a_prev)
    x0_hat = predict_x0(sched, xt, tt, model_output, prediction)
    if clip_x0:
        x0_hat = torch.clamp(x0_hat, -1.0, 1.0)
    # eps consistent with the (possibly clipped) x0_hat (R2), or the network's own (R5)
    eps_hat = predict_eps(sched, xt, tt, x0_hat, "x0") if clip_x0 else \
        predict_eps(sched, xt, tt, model_output, prediction)
    # direction coefficient sqrt(1 - abar_prev - sigma^2); the clamp only absorbs rounding (>= 0 for eta <= 1)
    dir_coef = torch.sqrt(torch.clamp(1.0 - a_prev - sigma**2, min=0.0))
    # (A2)  x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z
    x_prev = _col(torch.sqrt(a_prev), xt) * x0_hat + _col(dir_coef, xt) * eps_hat + _col(sigma, xt) * noise
    return x_prev, x0_hat


def timesteps(T, n, spacing):
    """(A5) The n kept 0-based indices out of T, ascending, as an int64 tensor (CPU).

    leading   arange(n) * (T // n)                    T=1000, n=10: 0, 100, ..., 900
    trailing  round(T - arange(n) T / n) - 1, sorted  T=1000, n=10: 99, 199, ..., 999 (keeps T-1)
    linspace  round(linspace(0, T - 1, n))            T=1000, n=10: 0, 111, 222, ..., 999
    """
    T = check_T(T)
    check_choice(spacing, SPACINGS, "spacing")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise InputError(f"n (number of sampling steps) must be an integer, got {n!r}")
    if not 1 <= n <= T:
        raise InputError(f"n (number of sampling steps) must be in 1..T={T}, got {n}")
    k = torch.arange(int(n), dtype=torch.float64)
    if spacing == "leading":
        steps = k * (T // n)                                                  # (A5)
    elif spacing == "trailing":
        steps = torch.round(T - k * (T / n)) - 1                              # (A5)
    else:
        # (A5)  round(k (T-1)/(n-1)), the last entry exactly T-1. Written as NumPy's linspace evaluates
        #       it (k * step, then the end point set): torch.linspace differs by an ulp, which flips
        #       round() at exact half-integers (e.g. T=100, n=47, k=23: 49.5).
        steps = k * ((T - 1) / (n - 1)) if n > 1 else k
        if n > 1:
            steps[-1] = T - 1
        steps = torch.round(steps)
    return torch.sort(steps.to(torch.long)).values


def _check_steps(sched, steps):
    T = sched.T
    s = steps if isinstance(steps, torch.Tensor) else torch.as_tensor(np.asarray(steps))
    if s.ndim != 1 or s.numel() < 1 or s.is_floating_point() or s.is_complex() or s.dtype == torch.bool:
        raise InputError(f"steps must be a non-empty 1-D int array of kept indices, got {steps!r}")
    s = s.to(device=sched.device, dtype=torch.long)
    if _check_values(sched, s):
        lo, hi = int(s.min()), int(s.max())
        if lo < 0 or hi > T - 1:
            raise InputError(f"steps out of range: kept indices must lie in 0..{T - 1}, got {lo}..{hi}")
        if bool((torch.diff(s) <= 0).any()):
            raise InputError("steps must be strictly ascending (unique kept indices)")
    return s


def respace(sched, steps, warn=True):
    """(A4) A Schedule on the kept indices ``steps`` (ascending): alpha_bar equals the original there.

    beta'_0 = 1 - abar[s_0], beta'_i = 1 - abar[s_i] / abar[s_{i-1}]. The network still receives the
    original index s_i. The new schedule lives on sched's device and keeps its ``validate``.
    ``warn``: passed to Schedule (warns when the last kept step leaves signal, e.g. "leading" spacing).
    """
    s = _check_steps(sched, steps)
    abar = sched.alpha_bar[s]                                                 # (n,)
    # (A4)  beta'_i = 1 - abar[s_i] / abar[s_{i-1}], with abar[s_{-1}] = 1
    betas = 1.0 - abar / torch.cat([torch.ones(1, dtype=abar.dtype, device=abar.device), abar[:-1]])
    return schedules.Schedule(betas, warn=warn, validate=bool(getattr(sched, "validate", False)))


def _noises(rng_or_noises, n, x):
    """A function k -> noise of the k-th sampling step (k = 0 is the first step, from x_T)."""
    if isinstance(rng_or_noises, torch.Generator):
        g = rng_or_noises
        return lambda k: torch.randn(x.shape, generator=g, dtype=x.dtype, device=g.device).to(x.device)
    if isinstance(rng_or_noises, np.random.Generator):
        return lambda k: torch.as_tensor(rng_or_noises.standard_normal(tuple(x.shape))).to(x.device, x.dtype)
    if len(rng_or_noises) != n:
        raise InputError(f"need one noise array per sampling step: {n} steps but {len(rng_or_noises)} arrays")
    return lambda k: rng_or_noises[k]


def sample_loop(sched, denoise, x_T, rng_or_noises, sampler="ddpm", steps=None, spacing="leading", eta=0.0,
                prediction="eps", variance="fixed_small", clip_x0=False, record=False, progress=None):
    """Run the reverse process from x_T -> Sampled(x, trajectory): the samples (N, ...), and the trajectory
    when ``record`` (else None).

    Same meaning as reference.samplers.sample_loop. ``denoise(xt, t)`` gets the ORIGINAL 0-based
    indices t as a LongTensor (N,) on x_T's device. steps=None keeps all T steps; steps=n keeps
    ``timesteps(T, n, spacing)``: "ddpm" steps on ``respace(sched, kept)`` (A4), "ddim" steps
    between the kept indices ending at t_prev = -1 (A2). ``rng_or_noises``: a torch.Generator
    (draws on its own device), a np.random.Generator (one draw per step, used or not), or a
    sequence of n tensors/arrays shaped like x_T in sampling order. variance "learned": a 2C-channel network
    (V1); ddpm steps on the respaced beta', beta~' when shortened (V5), ddim reads the mean channels only.
    trajectory: a list of (t, x_t, x0_hat), one per step, t the original index, x_t the step's input.
    """
    check_choice(sampler, SAMPLERS, "sampler")
    check_choice(prediction, PREDICTIONS, "prediction")
    check_choice(variance, ALL_VARIANCES, "variance")
    x = _data(sched, x_T, "x_T")
    kept = torch.arange(sched.T) if steps is None else timesteps(sched.T, steps, spacing)   # CPU int64
    kept_list = kept.tolist()
    n = len(kept_list)
    noise_at = _noises(rng_or_noises, n, x)
    warn_late_start(float(sched.alpha_bar_host[kept_list[-1]]), kept_list[-1], sched.T)
    step = CHAIN_STEPS[sampler](sched, kept, kept_list, eta, prediction, variance, clip_x0)
    N, trajectory = x.shape[0], []
    for k in check_progress(progress)(range(n)):
        i = n - 1 - k  # position in the kept list, from the last (noisiest) to the first
        t = torch.full((N,), kept_list[i], dtype=torch.long, device=x.device)
        x_new, x0_hat = step(i, denoise(x, t), x, t, noise_at(k))
        if record:
            trajectory.append((kept_list[i], x, x0_hat))
        x = x_new
    return Sampled(x, trajectory if record else None)


# ---- the chain's samplers: one step maker per row of common/sampler_table.py's chain family ---------------

def _ancestral(sched, kept, kept_list, eta, prediction, variance, clip_x0):
    """(A1, A4) ddpm: ancestral steps on ``respace(sched, kept)`` (the schedule itself when all are kept),
    indexed by the position i in the kept list. -> step(i, out, x, t, noise); as the reference."""
    step_sched = respace(sched, kept, warn=False) if len(kept_list) < sched.T else sched

    def step(i, out, x, t, noise):
        t_step = torch.full_like(t, i) if step_sched is not sched else t
        return ddpm_step(step_sched, out, x, t_step, noise, prediction, variance, clip_x0)
    return step


def _implicit(sched, kept, kept_list, eta, prediction, variance, clip_x0):
    """(A2) ddim: steps between the kept indices, the last to t_prev = -1. -> step(i, out, x, t, noise)."""
    def step(i, out, x, t, noise):
        t_prev = torch.full_like(t, kept_list[i - 1] if i > 0 else -1)
        if variance == LEARNED:  # (V5)  DDIM's sigma is its own (A3): it reads the mean channels only
            out = split_output(out, variance)[0]
        return ddim_step(sched, out, x, t, t_prev, noise, eta, prediction, clip_x0)
    return step


CHAIN_STEPS = {"ddpm": _ancestral, "ddim": _implicit}
