"""Sampling: the ancestral DDPM step, the DDIM step, timestep spacing, respacing and the loop.

Derivations: derivations/sampling.md (M*, A*).

Conventions: ``t`` is the 0-based index (paper step t+1), an int or an int array of shape (N,).
Data ``xt``, ``noise``, ``model_output`` are (N, ...) arrays. Noise is always an argument.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from common import sampler_table
from common.choices import SPACINGS

from . import schedules
from .diffusion import (ALL_VARIANCES, LEARNED, PREDICTIONS, _col, _data, p_mean_variance, predict_eps, predict_x0,
                        split_output)
from .errors import InputError, check_choice, check_progress, check_same_shape, check_T, check_timesteps

SAMPLERS = sampler_table.names("chain")   # ("ddpm", "ddim"): the table's chain rows


class Sampled(NamedTuple):
    """What ``sample_loop`` returns: the samples x (N, ...) and, with record=True, the trajectory, a list
    of (t, x_t, x0_hat) per step (t the original 0-based index, x_t the step's input); else None."""
    x: np.ndarray
    trajectory: list | None


def _noise(noise, xt, needed):
    """The noise array checked against xt; None is accepted only where no noise is added."""
    if noise is None:
        if needed:
            raise InputError("noise is None but this step adds noise: pass an array shaped like xt")
        return np.zeros_like(xt)
    noise = _data(noise, "noise")
    check_same_shape(noise, xt, "noise", "xt")
    return noise.astype(xt.dtype, copy=False)


def ddpm_step(sched, model_output, xt, t, noise, prediction="eps", variance="fixed_small", clip_x0=False):
    """(A1) One ancestral step x_t -> x_{t-1} (Ho et al. Algorithm 2) -> (x_prev, x0_hat).

    x_{t-1} = mu_theta(x_t, t) + sigma_t z, with the mean and variance of diffusion.p_mean_variance:
    variance "fixed_small" sigma^2 = beta~_t, "fixed_large" sigma^2 = beta_t (M2), "learned" the network's
    interpolation (V1; model_output then has 2C channels; on a respaced schedule between its beta', beta~', V5).
    No noise where t == 0 (the last sampling step returns the mean): the mask is per example when t is (N,).
    Shapes: model_output, xt, noise (N, ...); t int or (N,) 0-based.
    """
    xt = _data(xt, "xt")
    tt = check_timesteps(t, sched.T, n=xt.shape[0])
    noise = _noise(noise, xt, needed=bool(np.any(tt != 0)))
    p = p_mean_variance(sched, model_output, xt, tt, prediction, variance, clip_x0)
    nonzero = _col(tt != 0, xt)  # (A1)  z = 0 at t = 0 (paper step 1)
    # (A1)  x_{t-1} = mu_theta + sigma_t z
    return p.mean + nonzero * np.sqrt(p.variance) * noise, p.x0


def _check_eta(eta):
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)) \
            or not (0.0 <= float(eta) <= 1.0):
        raise InputError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta!r}")
    return float(eta)


def _check_t_prev(t_prev, tt, n):
    """t_prev: int or (N,), each in {-1, ..., t-1}; -1 means "step to the clean sample" (abar = 1)."""
    tp = np.asarray(t_prev)
    if not np.issubdtype(tp.dtype, np.integer) or tp.ndim > 1 or (tp.ndim == 1 and tp.shape[0] != n):
        raise InputError(f"t_prev must be an int or an int array of shape ({n},), got {t_prev!r}")
    tp = tp.astype(np.int64)
    if np.any(tp < -1):
        raise InputError(f"t_prev out of range: got {int(tp.min())}; use -1 for the final step to x_0")
    if np.any(tp >= tt):
        raise InputError("t_prev must be smaller than t (DDIM steps go from t down to t_prev < t); "
                         f"got t_prev={tp.tolist()} and t={tt.tolist()}")
    return tp


def ddim_step(sched, model_output, xt, t, t_prev, noise, eta=0.0, prediction="eps", clip_x0=False):
    """(A2, A3) One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12) -> (x_prev, x0_hat).

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).
    t_prev = -1 means abar_prev = 1 (the step to the clean sample, where sigma = 0). ``noise`` may be
    None when sigma = 0 (eta = 0); it is ignored there. Shapes as in ``ddpm_step``; t, t_prev int or (N,).
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    eta = _check_eta(eta)
    xt = _data(xt, "xt")
    tt = check_timesteps(t, sched.T, n=xt.shape[0])
    tp = _check_t_prev(t_prev, tt, xt.shape[0])
    noise = _noise(noise, xt, needed=eta > 0)
    a_t = sched.alpha_bar[tt]
    a_prev = np.where(tp >= 0, sched.alpha_bar[np.maximum(tp, 0)], 1.0)  # abar_{-1} = 1
    # (A3)  sigma_eta = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
    sigma = eta * np.sqrt((1.0 - a_prev) / (1.0 - a_t)) * np.sqrt(1.0 - a_t / a_prev)
    x0_hat = predict_x0(sched, xt, tt, model_output, prediction)
    if clip_x0:
        x0_hat = np.clip(x0_hat, -1.0, 1.0)
    # eps consistent with the (possibly clipped) x0_hat (R2), or the network's own (R5)
    eps_hat = predict_eps(sched, xt, tt, x0_hat, "x0") if clip_x0 else \
        predict_eps(sched, xt, tt, model_output, prediction)
    # direction coefficient; max(., 0) only absorbs rounding (it is >= 0 for eta <= 1)
    dir_coef = np.sqrt(np.maximum(1.0 - a_prev - sigma**2, 0.0))
    # (A2)  x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z
    x_prev = _col(np.sqrt(a_prev), xt) * x0_hat + _col(dir_coef, xt) * eps_hat + _col(sigma, xt) * noise
    return x_prev, x0_hat


def timesteps(T, n, spacing):
    """(A5) The n kept 0-based indices out of T, ascending int64 (Lin et al. 2023, Table 2).

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
    if spacing == "leading":
        steps = np.arange(n) * (T // n)  # (A5)
    elif spacing == "trailing":
        steps = np.round(T - np.arange(n) * (T / n)) - 1  # (A5)
    else:
        steps = np.round(np.linspace(0, T - 1, n))  # (A5)
    return np.sort(steps.astype(np.int64))


def _check_steps(steps, T):
    s = np.asarray(steps)
    if s.ndim != 1 or s.size < 1 or not np.issubdtype(s.dtype, np.integer):
        raise InputError(f"steps must be a non-empty 1-D int array of kept indices, got {steps!r}")
    if s.min() < 0 or s.max() > T - 1:
        raise InputError(f"steps out of range: kept indices must lie in 0..{T - 1}, got {s.min()}..{s.max()}")
    if np.any(np.diff(s) <= 0):
        raise InputError("steps must be strictly ascending (unique kept indices)")
    return s.astype(np.int64)


def respace(sched, steps, warn=True):
    """(A4) A Schedule on the kept indices ``steps`` (ascending): alpha_bar equals the original there.

    beta'_0 = 1 - abar[s_0],  beta'_i = 1 - abar[s_i] / abar[s_{i-1}]. The network still receives
    the original index s_i; the respaced schedule's index i is only for the step's coefficients.
    ``warn``: passed to Schedule (warns when the last kept step leaves signal, e.g. "leading" spacing).
    """
    s = _check_steps(steps, sched.T)
    abar = sched.alpha_bar[s]
    # (A4)  beta'_i = 1 - abar[s_i] / abar[s_{i-1}], with abar[s_{-1}] = 1
    betas = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
    return schedules.Schedule(betas, warn=warn)


def _noises(rng_or_noises, n, x):
    """A function k -> noise of the k-th sampling step (k = 0 is the first step, from x_T)."""
    if isinstance(rng_or_noises, np.random.Generator):
        return lambda k: rng_or_noises.standard_normal(x.shape).astype(x.dtype, copy=False)
    if len(rng_or_noises) != n:
        raise InputError(f"need one noise array per sampling step: {n} steps but {len(rng_or_noises)} arrays")
    return lambda k: rng_or_noises[k]


def sample_loop(sched, denoise, x_T, rng_or_noises, sampler="ddpm", steps=None, spacing="leading", eta=0.0,
                prediction="eps", variance="fixed_small", clip_x0=False, record=False, progress=None):
    """Run the reverse process from x_T -> Sampled(x, trajectory): the samples (N, ...), and the trajectory
    when ``record`` (else None).

    ``denoise(xt, t)`` returns the model output for the ORIGINAL 0-based indices t (int64 (N,)).
    steps=None keeps all T steps; steps=n keeps ``timesteps(T, n, spacing)``.
      "ddpm": ancestral steps on ``respace(sched, kept)`` (A4) (the identity when all are kept).
      "ddim": steps directly between the kept indices, ending with t_prev = -1 (A2).
    variance: "fixed_small" | "fixed_large" | "learned" (a 2C-channel network, V1): ddpm steps with it, on the
    respaced schedule's beta' and beta~' when shortened (V5); ddim ignores it and reads the mean channels.
    ``rng_or_noises``: a np.random.Generator (one standard normal draw per step, used or not), or a
    sequence of n arrays shaped like x_T, consumed in sampling order (noises[0] at the first step).
    spacing default "leading": Song et al.'s DDIM "uniform" skip and diffusers' default (Lin et al. 2023
    recommend "trailing", which starts at T-1; improved-diffusion's respacing is "linspace").
    trajectory: a list of (t, x_t, x0_hat), one per step, t the original index, x_t the step's input.
    progress: None or a callable wrapping the iterable of steps (e.g. a progress bar).
    """
    check_choice(sampler, SAMPLERS, "sampler")
    check_choice(prediction, PREDICTIONS, "prediction")
    check_choice(variance, ALL_VARIANCES, "variance")
    x = _data(x_T, "x_T")
    kept = np.arange(sched.T) if steps is None else timesteps(sched.T, steps, spacing)
    n = kept.size
    noise_at = _noises(rng_or_noises, n, x)
    schedules.warn_late_start(float(sched.alpha_bar[kept[-1]]), int(kept[-1]), sched.T)
    step = CHAIN_STEPS[sampler](sched, kept, eta, prediction, variance, clip_x0)
    trajectory = []
    for k in check_progress(progress)(range(n)):
        i = n - 1 - k  # position in the kept list, from the last (noisiest) to the first
        t = np.full(x.shape[0], kept[i], dtype=np.int64)
        x_new, x0_hat = step(i, denoise(x, t), x, t, noise_at(k))
        if record:
            trajectory.append((int(kept[i]), x, x0_hat))
        x = x_new
    return Sampled(x, trajectory if record else None)


# ---- the chain's samplers: one step maker per row of common/sampler_table.py's chain family ---------------

def _ancestral(sched, kept, eta, prediction, variance, clip_x0):
    """(A1, A4) ddpm: ancestral steps on ``respace(sched, kept)`` (the schedule itself when all are kept); the
    respaced schedule is indexed by the position i in the kept list. -> step(i, out, x, t, noise)."""
    step_sched = respace(sched, kept, warn=False) if kept.size < sched.T else sched

    def step(i, out, x, t, noise):
        return ddpm_step(step_sched, out, x, np.full_like(t, i) if step_sched is not sched else t, noise,
                         prediction, variance, clip_x0)
    return step


def _implicit(sched, kept, eta, prediction, variance, clip_x0):
    """(A2) ddim: steps directly between the kept indices, the last to t_prev = -1. -> step(i, out, x, t, noise)."""
    def step(i, out, x, t, noise):
        t_prev = np.full_like(t, kept[i - 1] if i > 0 else -1)
        if variance == LEARNED:  # (V5)  DDIM's sigma is its own (A3): it reads the mean channels only
            out = split_output(out, variance)[0]
        return ddim_step(sched, out, x, t, t_prev, noise, eta, prediction, clip_x0)
    return step


CHAIN_STEPS = {"ddpm": _ancestral, "ddim": _implicit}
