"""The forward process, the posterior, the three parameterisations and the reverse step's moments.

Derivations: derivations/forward.md (F*), derivations/posterior.md (P*),
derivations/parameterisations.md (R*), derivations/sampling.md (M*), derivations/learned_variance.md (V*).

Conventions: ``t`` is the 0-based index (paper step t+1), an int or an int array of shape (N,)
matching the batch. Data ``x0``, ``xt``, ``eps`` are (N, ...) arrays: (N, 2) points or NCHW
images. Coefficients come from the float64 tables of ``sched`` and are cast to the data's dtype.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import InputError, check_batched, check_choice, check_finite, check_same_shape, check_timesteps

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large")   # sigma_t^2 from the schedule (M2)
LEARNED = "learned"   # the network's last C of 2C channels interpolate log beta~_t .. log beta_t (V1)
ALL_VARIANCES = VARIANCES + (LEARNED,)


def _col(c, x):
    """Coefficients c of shape () or (N,) shaped to broadcast against x (N, ...): () stays (), (N,) becomes
    (N, 1, 1, ...); in x's dtype when x is floating, else float64."""
    c = np.asarray(c)
    if c.ndim == 1:
        c = c.reshape((-1,) + (1,) * (np.ndim(x) - 1))
    dtype = x.dtype if isinstance(x, np.ndarray) and x.dtype.kind == "f" else np.float64
    return c.astype(dtype, copy=False)


def _bcast(table, t, x):
    """table[t] shaped by ``_col`` against x, after checking t against the table and x's batch."""
    t = check_timesteps(t, len(table), n=np.shape(x)[0] if np.ndim(x) else None)
    return _col(table[t], x)


def _data(x, name):
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise InputError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    return check_finite(check_batched(x, name), name)


def q_sample(sched, x0, t, eps):
    """(F3) Draw x_t ~ q(x_t | x_0) in closed form: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
    x0, eps = _data(x0, "x0"), _data(eps, "eps")
    check_same_shape(x0, eps, "x0", "eps")
    # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    return _bcast(sched.sqrt_alpha_bar, t, x0) * x0 + _bcast(sched.sqrt_one_minus_alpha_bar, t, x0) * eps


def q_mean_variance(sched, x0, t):
    """(F3) Mean and variance of q(x_t | x_0): sqrt(abar_t) x_0 and (1 - abar_t) I."""
    x0 = _data(x0, "x0")
    mean = _bcast(sched.sqrt_alpha_bar, t, x0) * x0
    var = np.broadcast_to(_bcast(1.0 - sched.alpha_bar, t, x0), mean.shape)
    return mean, var


def q_step(sched, x_prev, t, eps):
    """(F1) One forward step q(x_t | x_{t-1}): x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps.

    ``x_prev`` is x_{t-1} in the 0-based index, i.e. x_0 (the data) when t = 0.
    """
    x_prev, eps = _data(x_prev, "x_prev"), _data(eps, "eps")
    check_same_shape(x_prev, eps, "x_prev", "eps")
    # (F1)  x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps
    return _bcast(np.sqrt(sched.alphas), t, x_prev) * x_prev + _bcast(np.sqrt(sched.betas), t, x_prev) * eps


def q_posterior(sched, x0, xt, t):
    """Mean, variance and (clipped) log-variance of q(x_{t-1} | x_t, x_0) — (P2), (P3), (P4).

    At t = 0 the "previous" sample is the data itself: the mean is x_0 and the variance 0;
    the log-variance there is log beta~ at the next step (P4), never log 0.
    """
    x0, xt = _data(x0, "x0"), _data(xt, "xt")
    check_same_shape(x0, xt, "x0", "xt")
    # (P2)  mu~ = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
    mean = _bcast(sched.posterior_mean_coef_x0, t, x0) * x0 + _bcast(sched.posterior_mean_coef_xt, t, xt) * xt
    # (P3)  beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t
    var = np.broadcast_to(_bcast(sched.posterior_variance, t, x0), mean.shape)
    log_var = np.broadcast_to(_bcast(sched.posterior_log_variance_clipped, t, x0), mean.shape)
    return mean, var, log_var


def v_target(sched, x0, t, eps):
    """(R3) v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)."""
    x0, eps = _data(x0, "x0"), _data(eps, "eps")
    check_same_shape(x0, eps, "x0", "eps")
    return _bcast(sched.sqrt_alpha_bar, t, x0) * eps - _bcast(sched.sqrt_one_minus_alpha_bar, t, x0) * x0


def predict_x0(sched, xt, t, model_output, prediction):
    """x_0 implied by the network's output under ``prediction`` ("eps" | "x0" | "v").

    eps (R1): x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  — undefined where abar_t = 0.
    x0:       the output itself.
    v   (R4): x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v.
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    xt, out = _data(xt, "xt"), _data(model_output, "model_output")
    check_same_shape(xt, out, "xt", "model_output")
    if prediction == "x0":
        return out
    if prediction == "eps":
        tt = check_timesteps(t, sched.T, n=xt.shape[0])
        if np.any(sched.alpha_bar[tt] == 0):
            raise InputError(
                "x0 cannot be recovered from an eps prediction at a step with alpha_bar = 0 (zero terminal "
                "SNR: x_t holds no signal there). Train with prediction='v' or 'x0' for such schedules.")
        # (R1)  x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps
        return _bcast(sched.sqrt_recip_alpha_bar, t, xt) * xt - _bcast(sched.sqrt_recipm1_alpha_bar, t, xt) * out
    # (R4)  x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v
    return _bcast(sched.sqrt_alpha_bar, t, xt) * xt - _bcast(sched.sqrt_one_minus_alpha_bar, t, xt) * out


def predict_eps(sched, xt, t, model_output, prediction):
    """eps implied by the network's output under ``prediction`` ("eps" | "x0" | "v").

    x0 (R2): eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)   (1 - abar_t >= beta_0 > 0 always)
    v  (R5): eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    xt, out = _data(xt, "xt"), _data(model_output, "model_output")
    check_same_shape(xt, out, "xt", "model_output")
    if prediction == "eps":
        return out
    if prediction == "x0":
        # (R2)
        return (xt - _bcast(sched.sqrt_alpha_bar, t, xt) * out) / _bcast(sched.sqrt_one_minus_alpha_bar, t, xt)
    # (R5)
    return _bcast(sched.sqrt_alpha_bar, t, xt) * out + _bcast(sched.sqrt_one_minus_alpha_bar, t, xt) * xt


def split_output(model_output, variance):
    """(V1) The network's output as (mean part, variance part): with variance="learned" the 2C channels (axis 1)
    split into the C channels of the mean's parameterisation (eps / x0 / v) and the C raw interpolation
    channels u; with a fixed variance the output is all mean: (model_output, None).

    DDIM and the ODE solvers use the mean part only (``split_output(out, "learned")[0]``).
    """
    check_choice(variance, ALL_VARIANCES, "variance")
    out = _data(model_output, "model_output")
    if variance != LEARNED:
        return out, None
    if out.ndim < 2 or out.shape[1] % 2:
        raise InputError(f"variance='learned' needs a model output with 2C channels on axis 1 (the mean's C, then "
                         f"the variance's C), got shape {out.shape}")
    c = out.shape[1] // 2
    return out[:, :c], out[:, c:]


def learned_log_variance(sched, u, t):
    """(V1) log sigma_t^2 = nu log beta_t + (1 - nu) log beta~_t with nu = (u + 1) / 2, per element.

    u: the variance channels (N, C, ...) (improved-diffusion's LEARNED_RANGE "model_var_values": u = -1 is
    beta~_t, u = 1 is beta_t, u = 0, a zero-initialised head, their geometric mean). At t = 0 log beta~_0 is
    log beta~_1 (P4), so the decoder's range is [beta~_1, beta_0]. On a respaced schedule (A4) both ends are
    the respaced beta' and beta~' of the kept step (V5).
    """
    u = _data(u, "u")
    tt = check_timesteps(t, sched.T, n=u.shape[0])
    log_beta = _col(np.log(sched.betas[tt]), u)
    log_beta_tilde = _col(sched.posterior_log_variance_clipped[tt], u)
    # (V1)  nu = (u + 1) / 2
    nu = (u + 1.0) / 2.0
    # (V1, P4)  log sigma^2 = nu log beta_t + (1 - nu) log beta~_t
    return nu * log_beta + (1.0 - nu) * log_beta_tilde


class Reverse(NamedTuple):
    """Moments of p_theta(x_{t-1} | x_t) and the x_0, eps they were computed from."""
    mean: np.ndarray
    variance: np.ndarray
    log_variance: np.ndarray
    x0: np.ndarray
    eps: np.ndarray


def p_mean_variance(sched, model_output, xt, t, prediction="eps", variance="fixed_small", clip_x0=False):
    """Mean and variance of p_theta(x_{t-1} | x_t) = N(mu~(x0_hat, x_t), sigma_t^2 I).

    The mean is the posterior mean (P2) at the predicted x_0 — for an eps prediction this equals
    (M1) 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps). The variance (M2) is
      "fixed_small": beta~_t (posterior variance; 0 at t=0, log taken with the (P4) rule),
      "fixed_large": beta_t, except at t=0 where beta~_1 is used, as in Ho et al.'s code
                     (so the decoder step keeps a finite, small log-variance).
      "learned":     model_output has 2C channels: the mean's C, then u with
                     log sigma^2 = nu log beta_t + (1 - nu) log beta~_t, nu = (u + 1) / 2 (V1).
    ``clip_x0`` clips x0_hat to [-1, 1] (images) and re-derives eps from the clipped x0_hat.
    """
    check_choice(variance, ALL_VARIANCES, "variance")
    if variance == LEARNED:
        model_output, u = split_output(model_output, variance)
    x0_hat = predict_x0(sched, xt, t, model_output, prediction)
    if clip_x0:
        x0_hat = np.clip(x0_hat, -1.0, 1.0)
    eps_hat = predict_eps(sched, xt, t, x0_hat, "x0") if (clip_x0 or prediction != "eps") else np.asarray(model_output)
    mean, post_var, post_log_var = q_posterior(sched, x0_hat, xt, t)
    if variance == "fixed_small":
        var, log_var = post_var, post_log_var
    elif variance == LEARNED:
        log_var = learned_log_variance(sched, u, t)  # (V1)
        var = np.exp(log_var)
    else:
        # (M2)  sigma_t^2 = beta_t, with beta~_1 at t = 0 (the Schedule's table)
        var = np.broadcast_to(_bcast(sched.fixed_large_variance, t, xt), mean.shape)
        log_var = np.broadcast_to(_bcast(sched.fixed_large_log_variance, t, xt), mean.shape)
    return Reverse(mean, var, log_var, x0_hat, eps_hat)
