"""The forward process, the posterior, the three parameterisations and the reverse step's moments,
written again in torch. Mirror of reference/diffusion.py: same names, signatures and meaning.

Derivations: derivations/forward.md (F*), derivations/posterior.md (P*),
derivations/parameterisations.md (R*), derivations/sampling.md (M*), derivations/learned_variance.md (V*).

Conventions: ``t`` is the 0-based index (paper step t+1): an int, or an integer tensor/array of
shape (N,) matching the batch. Data ``x0``, ``xt``, ``eps`` are (N, ...) tensors ((N, 2) points
or NCHW images); arrays are accepted and turned into CPU tensors, integer data into float64.
Coefficients are gathered at ``t`` from the float64 tables of ``sched`` on the data's device and
cast to the data's dtype (keep the schedule on that device: ``sched.to(device)``).

Input checks raise the reference's InputError with the reference's messages. Shapes and dtypes are
checked always; values (t in range, t integral, data finite, no eps prediction at a zero-SNR step)
are checked when the tensor is on the CPU, or on any device with ``Schedule(..., validate=True)``.
The default (validate=False) keeps accelerator loops free of host syncs.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from reference.errors import InputError, check_batched, check_choice, check_timesteps

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large")   # sigma_t^2 from the schedule (M2)
LEARNED = "learned"   # the network's last C of 2C channels interpolate log beta~_t .. log beta_t (V1)
ALL_VARIANCES = VARIANCES + (LEARNED,)

__all__ = ["PREDICTIONS", "VARIANCES", "LEARNED", "ALL_VARIANCES", "split_output", "learned_log_variance",
           "q_sample", "q_mean_variance", "q_step", "q_posterior", "v_target",
           "predict_x0", "predict_eps", "Reverse", "p_mean_variance"]


# ---- input handling (not math) ------------------------------------------------------------

def _check_values(sched, x):
    """Value checks run for CPU tensors always, elsewhere only when sched.validate (a host sync)."""
    return x.device.type == "cpu" or bool(getattr(sched, "validate", False))


def _data(sched, x, name):
    """x as a floating tensor (N, ...); ints become float64. Same errors as reference.diffusion._data."""
    if not isinstance(x, torch.Tensor):
        a = np.asarray(x)
        if a.dtype.kind not in "fiu":
            raise InputError(f"{name} must be a numeric array, got dtype {a.dtype}")
        x = torch.as_tensor(a)
    if x.dtype == torch.bool or x.is_complex():
        raise InputError(f"{name} must be a numeric array, got dtype {_dtype_name(x.dtype)}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    check_batched(x, name)
    if _check_values(sched, x) and not bool(torch.isfinite(x).all()):
        n_bad = int(x.numel() - torch.isfinite(x).sum())
        raise InputError(f"{name} holds {n_bad} non-finite value(s) (NaN or inf)")
    return x


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")  # "float64", as NumPy names it, in the shared messages


def _check_same_shape(a, b, name_a, name_b):
    """reference.errors._check_same_shape for tensors, with the shapes printed as tuples."""
    if tuple(a.shape) != tuple(b.shape):
        raise InputError(f"shape mismatch: {name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")


def _timesteps(sched, t, x):
    """t as a Python int or a LongTensor (N,) on x's device; the checks of reference check_timesteps."""
    n, T = x.shape[0], sched.T
    if not isinstance(t, torch.Tensor):  # host data (int, array, list): the shared check is free
        ta = check_timesteps(t, T, n=n)
        return int(ta) if ta.ndim == 0 else torch.as_tensor(ta, device=x.device)
    values = _check_values(sched, t)
    if t.dtype == torch.bool or t.is_complex() or (
            t.is_floating_point() and values and not bool((torch.isfinite(t) & (t == torch.round(t))).all())):
        raise InputError(f"t must be an integer time index (0-based, 0..T-1), got dtype {_dtype_name(t.dtype)}")
    if t.ndim > 1:
        raise InputError(f"t must be an int or an int array of shape (N,), got shape {tuple(t.shape)}")
    if t.ndim == 1 and t.shape[0] != n:
        raise InputError(f"t has shape {tuple(t.shape)} but the batch has N={n}; t must be an int or shape ({n},)")
    t = t.to(device=x.device, dtype=torch.long)
    if values and t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi > T - 1:
            raise InputError(f"t out of range: got {lo if lo < 0 else hi}, valid indices are 0..{T - 1} "
                             "(0-based; paper step = t+1)")
    return t


def _col(c, x):
    """Coefficients c of shape () or (N,) shaped to broadcast against x (N, ...), on x's device in x's dtype."""
    if c.ndim == 1:
        c = c.reshape((-1,) + (1,) * (x.ndim - 1))
    return c.to(device=x.device, dtype=x.dtype)


def _bcast(table, t, x):
    """table[t] shaped by ``_col`` against x: () for scalar t, (N, 1, 1, ...) for t of shape (N,)."""
    return _col(table.to(x.device)[t], x)


# ---- forward process ----------------------------------------------------------------------

def q_sample(sched, x0, t, eps):
    """(F3) Draw x_t ~ q(x_t | x_0) in closed form. Shapes: x0, eps (N, ...); t int or (N,)."""
    x0, eps = _data(sched, x0, "x0"), _data(sched, eps, "eps")
    _check_same_shape(x0, eps, "x0", "eps")
    t = _timesteps(sched, t, x0)
    # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    return _bcast(sched.sqrt_alpha_bar, t, x0) * x0 + _bcast(sched.sqrt_one_minus_alpha_bar, t, x0) * eps


def q_mean_variance(sched, x0, t):
    """(F3) Mean and variance of q(x_t | x_0): sqrt(abar_t) x_0 and (1 - abar_t) I, both (N, ...)."""
    x0 = _data(sched, x0, "x0")
    t = _timesteps(sched, t, x0)
    # (F3)  mean = sqrt(abar_t) x_0
    mean = _bcast(sched.sqrt_alpha_bar, t, x0) * x0
    # (F3)  var = 1 - abar_t
    var = _bcast(1.0 - sched.alpha_bar, t, x0).expand(mean.shape)
    return mean, var


def q_step(sched, x_prev, t, eps):
    """(F1) One forward step q(x_t | x_{t-1}); ``x_prev`` is x_{t-1} (the data x_0 when t = 0)."""
    x_prev, eps = _data(sched, x_prev, "x_prev"), _data(sched, eps, "eps")
    _check_same_shape(x_prev, eps, "x_prev", "eps")
    t = _timesteps(sched, t, x_prev)
    # (F1)  x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps
    return _bcast(torch.sqrt(sched.alphas), t, x_prev) * x_prev + _bcast(torch.sqrt(sched.betas), t, x_prev) * eps


def q_posterior(sched, x0, xt, t):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) — (P2), (P3), (P4).

    At t = 0 the mean is x_0 and the variance 0; the log-variance there is log beta~_1 (P4).
    Shapes: x0, xt (N, ...) -> three (N, ...) tensors.
    """
    x0, xt = _data(sched, x0, "x0"), _data(sched, xt, "xt")
    _check_same_shape(x0, xt, "x0", "xt")
    t = _timesteps(sched, t, x0)
    # (P2)  mu~ = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
    mean = _bcast(sched.posterior_mean_coef_x0, t, x0) * x0 + _bcast(sched.posterior_mean_coef_xt, t, xt) * xt
    # (P3)  beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t
    var = _bcast(sched.posterior_variance, t, x0).expand(mean.shape)
    # (P4)  log beta~_t, with log beta~_1 at t = 0
    log_var = _bcast(sched.posterior_log_variance_clipped, t, x0).expand(mean.shape)
    return mean, var, log_var


def v_target(sched, x0, t, eps):
    """(R3) v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022). Shapes (N, ...)."""
    x0, eps = _data(sched, x0, "x0"), _data(sched, eps, "eps")
    _check_same_shape(x0, eps, "x0", "eps")
    t = _timesteps(sched, t, x0)
    # (R3)
    return _bcast(sched.sqrt_alpha_bar, t, x0) * eps - _bcast(sched.sqrt_one_minus_alpha_bar, t, x0) * x0


# ---- parameterisations --------------------------------------------------------------------

def _refuse_zero_snr(sched, t):
    """x_0 from eps is undefined where abar_t = 0 (only zero-terminal-SNR schedules have such steps)."""
    first = getattr(sched, "_first_zero_snr_step", None)
    if first is None:
        return
    if isinstance(t, int):
        bad = t >= first
    else:  # abar is non-increasing, so the zero steps are t >= first
        bad = _check_values(sched, t) and bool((t >= first).any())
    if bad:
        raise InputError(
            "x0 cannot be recovered from an eps prediction at a step with alpha_bar = 0 (zero terminal "
            "SNR: x_t holds no signal there). Train with prediction='v' or 'x0' for such schedules.")


def predict_x0(sched, xt, t, model_output, prediction):
    """x_0 implied by the network's output under ``prediction`` ("eps" | "x0" | "v"). Shapes (N, ...).

    eps (R1): x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  — refused where abar_t = 0.
    x0:       the output itself.
    v   (R4): x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v.
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    xt, out = _data(sched, xt, "xt"), _data(sched, model_output, "model_output")
    _check_same_shape(xt, out, "xt", "model_output")
    if prediction == "x0":
        return out
    t = _timesteps(sched, t, xt)
    if prediction == "eps":
        _refuse_zero_snr(sched, t)
        # (R1)  x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps
        return _bcast(sched.sqrt_recip_alpha_bar, t, xt) * xt - _bcast(sched.sqrt_recipm1_alpha_bar, t, xt) * out
    # (R4)  x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v
    return _bcast(sched.sqrt_alpha_bar, t, xt) * xt - _bcast(sched.sqrt_one_minus_alpha_bar, t, xt) * out


def predict_eps(sched, xt, t, model_output, prediction):
    """eps implied by the network's output under ``prediction`` ("eps" | "x0" | "v"). Shapes (N, ...).

    x0 (R2): eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)   (1 - abar_t >= beta_0 > 0 always)
    v  (R5): eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    xt, out = _data(sched, xt, "xt"), _data(sched, model_output, "model_output")
    _check_same_shape(xt, out, "xt", "model_output")
    if prediction == "eps":
        return out
    t = _timesteps(sched, t, xt)
    if prediction == "x0":
        # (R2)
        return (xt - _bcast(sched.sqrt_alpha_bar, t, xt) * out) / _bcast(sched.sqrt_one_minus_alpha_bar, t, xt)
    # (R5)
    return _bcast(sched.sqrt_alpha_bar, t, xt) * out + _bcast(sched.sqrt_one_minus_alpha_bar, t, xt) * xt


# ---- reverse step -------------------------------------------------------------------------

def split_output(model_output, variance):
    """(V1) (mean part, variance part) of the network's output: with variance="learned" the 2C channels (dim 1)
    split into the C channels of the mean's parameterisation and the C raw interpolation channels u; with a
    fixed variance (model_output, None). DDIM and the ODE solvers use the mean part only. As the reference's.
    """
    check_choice(variance, ALL_VARIANCES, "variance")
    if variance != LEARNED:
        return model_output, None
    out = model_output if isinstance(model_output, torch.Tensor) else torch.as_tensor(np.asarray(model_output))
    if out.ndim < 2 or out.shape[1] % 2:
        raise InputError(f"variance='learned' needs a model output with 2C channels on axis 1 (the mean's C, then "
                         f"the variance's C), got shape {tuple(out.shape)}")
    c = out.shape[1] // 2
    return out[:, :c], out[:, c:]


def learned_log_variance(sched, u, t):
    """(V1) log sigma_t^2 = nu log beta_t + (1 - nu) log beta~_t, nu = (u + 1) / 2, per element (N, C, ...).

    At t = 0 log beta~_0 is log beta~_1 (P4). On a respaced schedule both ends are the kept step's beta', beta~' (V5).
    """
    u = _data(sched, u, "u")
    t = _timesteps(sched, t, u)
    log_beta = torch.log(_bcast(sched.betas, t, u))
    log_beta_tilde = _bcast(sched.posterior_log_variance_clipped, t, u)
    # (V1)  nu = (u + 1) / 2
    nu = (u + 1.0) / 2.0
    # (V1, P4)  log sigma^2 = nu log beta_t + (1 - nu) log beta~_t
    return nu * log_beta + (1.0 - nu) * log_beta_tilde


class Reverse(NamedTuple):
    """Moments of p_theta(x_{t-1} | x_t) and the x_0, eps they were computed from (tensors (N, ...))."""
    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor


def p_mean_variance(sched, model_output, xt, t, prediction="eps", variance="fixed_small", clip_x0=False):
    """Mean and variance of p_theta(x_{t-1} | x_t) = N(mu~(x0_hat, x_t), sigma_t^2 I). Shapes (N, ...).

    Mean: the posterior mean (P2) at the predicted x_0 (for eps this is (M1)). Variance (M2):
    "fixed_small" beta~_t (log with the (P4) rule); "fixed_large" beta_t, with beta~_1 at t = 0.
    "learned": model_output has 2C channels, the mean's C then u (V1).
    ``clip_x0`` clips x0_hat to [-1, 1] and re-derives eps from the clipped x0_hat.
    """
    check_choice(variance, ALL_VARIANCES, "variance")
    if variance == LEARNED:
        model_output, u = split_output(model_output, variance)
    x0_hat = predict_x0(sched, xt, t, model_output, prediction)
    if clip_x0:
        x0_hat = torch.clamp(x0_hat, -1.0, 1.0)
    if clip_x0 or prediction != "eps":
        # (R2)  eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
        eps_hat = predict_eps(sched, xt, t, x0_hat, "x0")
    else:
        eps_hat = _data(sched, model_output, "model_output")
    # (P2, P3, P4)  mean mu~(x0_hat, x_t), variance beta~_t
    mean, post_var, post_log_var = q_posterior(sched, x0_hat, xt, t)
    if variance == "fixed_small":
        var, log_var = post_var, post_log_var
    elif variance == LEARNED:
        log_var = learned_log_variance(sched, u, t)                      # (V1)
        var = torch.exp(log_var)
    else:
        xt = _data(sched, xt, "xt")
        t = _timesteps(sched, t, xt)
        # (M2)  sigma_t^2 = beta_t, with beta~_1 at t = 0 (the Schedule's table)
        var = _bcast(sched.fixed_large_variance, t, xt).expand(mean.shape)
        log_var = _bcast(sched.fixed_large_log_variance, t, xt).expand(mean.shape)
    return Reverse(mean, var, log_var, x0_hat, eps_hat)
