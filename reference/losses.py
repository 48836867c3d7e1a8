"""Training losses and the variational bound, term by term.

Derivations: derivations/elbo.md (L*), derivations/parameterisations.md (R6).

Conventions: ``t`` is the 0-based index (paper step t+1), an int or an int array of shape (N,).
Data ``x0``, ``eps``, ``model_output`` are (N, ...) arrays ((N, 2) points or NCHW images).
Per-example results are averaged over every non-batch dimension ("per dimension").

Which paper term is which index (Ho et al. 2020, eq. 5): the code's ``terms[t]`` is the paper's
L_t for every t in 0..T-1:
  terms[0]             L_0     = -log p_theta(x_0 | x_1)                        decoder     (L6)
  terms[t], t >= 1     L_t     = KL(q(x_t | x_{t+1}, x_0) || p_theta(x_t | x_{t+1}))  (paper steps)
                               = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))  (code indices)
  prior                L_T     = KL(q(x_T | x_0) || N(0, I))                                (L8)
(the paper's x_{s} is the code's x at index s-1; the KL at code index t compares the two
distributions of the sample one step cleaner than index t.)

scipy.special is used for the exact normal CDF (ndtr, log_ndtr) of the discretised decoder.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import log_ndtr

from .diffusion import PREDICTIONS, VARIANCES, _data, p_mean_variance, q_posterior, q_sample, v_target
from .errors import InputError, check_choice, check_finite, check_progress, check_same_shape, check_timesteps

WEIGHTINGS = (None, "snr", "min_snr")
DECODERS = ("discretized", "gaussian")
APPROXES = ("exact", "tanh")
LN2 = math.log(2.0)
# 8-bit data in [-1, 1]: 256 bins of width 2/255 centred on -1 + 2k/255; half a bin is 1/255.
HALF_BIN = 1.0 / 255.0


# ---- L_simple and its SNR weightings --------------------------------------------------------

def snr_weights(sched, t, prediction, weighting=None, gamma=5.0):
    """Per-example loss weights (N,) or () applied to the squared error of ``prediction``.

    Weights are defined in x0 space (Hang et al. 2023, Table 1): loss = w_x0(t) ||x0_hat - x0||^2,
    and converted to the parameterisation through (R6): ||x0_hat - x0||^2 equals
    ||eps_hat - eps||^2 / snr  and  ||v_hat - v||^2 / (snr + 1)  (per element).
      None       w = 1 on the parameterisation's own MSE (L_simple, L4).
      "min_snr"  w_x0 = min(snr, gamma) (min-SNR-gamma, L5):
                   eps: min(snr, g) / snr = g / max(snr, g)   (= 1 at snr = 0: finite at zero SNR)
                   x0:  min(snr, g)
                   v:   min(snr, g) / (snr + 1)
      "snr"      w_x0 = snr (Hang et al.'s "SNR" strategy): every parameterisation's loss becomes
                 the eps-MSE (eps: 1, x0: snr, v: snr / (snr + 1)); min_snr with gamma = inf.
    Every weight is finite for a zero-terminal-SNR schedule (snr[T-1] = 0).
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    if weighting is not None:
        check_choice(weighting, WEIGHTINGS[1:], "weighting")
    tt = check_timesteps(t, sched.T)
    snr = sched.snr[tt]
    if weighting is None:
        return np.ones_like(snr)
    if weighting == "min_snr":
        if not (isinstance(gamma, (int, float, np.floating, np.integer)) and math.isfinite(gamma) and gamma > 0):
            raise InputError(f"gamma (min-SNR clip) must be a finite number > 0, got {gamma!r}")
        w_x0 = np.minimum(snr, gamma)  # (L5)  w_x0 = min(snr, gamma)
        if prediction == "eps":
            return gamma / np.maximum(snr, gamma)  # (L5, R6)  min(snr, g) / snr, finite at snr = 0
    else:
        w_x0 = snr  # (R6)  x0-space weight that turns every loss into the eps-MSE
        if prediction == "eps":
            return np.ones_like(snr)  # (R6)  snr / snr = 1
    if prediction == "x0":
        return w_x0
    return w_x0 / (snr + 1.0)  # (R6)  v: ||v_hat - v||^2 = (snr + 1) ||x0_hat - x0||^2


def _simple_residual(sched, model_output, x0, t, eps, prediction, weighting, gamma):
    """Per-example weights broadcast to the data, and the residual model_output - target."""
    check_choice(prediction, PREDICTIONS, "prediction")
    out, x0, eps = _data(model_output, "model_output"), _data(x0, "x0"), _data(eps, "eps")
    check_same_shape(out, x0, "model_output", "x0")
    check_same_shape(eps, x0, "eps", "x0")
    check_timesteps(t, sched.T, n=x0.shape[0])
    if prediction == "eps":
        target = eps  # (L4)  eps-prediction target
    elif prediction == "x0":
        target = x0  # (L4)  x0-prediction target
    else:
        target = v_target(sched, x0, t, eps)  # (R3)  v = sqrt(abar) eps - sqrt(1 - abar) x0
    w = snr_weights(sched, t, prediction, weighting, gamma)
    w = np.asarray(w, dtype=out.dtype).reshape(np.shape(w) + (1,) * (out.ndim - np.ndim(w)))
    return w, out - target


def simple_loss(sched, model_output, x0, t, eps, prediction, weighting=None, gamma=5.0):
    """(L4, L5) mean over all elements of w(t) (model_output - target)^2 -> float.

    target: eps, x0, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0, for prediction "eps" | "x0" | "v".
    Shapes: model_output, x0, eps (N, ...); t int or (N,), 0-based. Weights: see ``snr_weights``.
    """
    w, r = _simple_residual(sched, model_output, x0, t, eps, prediction, weighting, gamma)
    # (L4)  L = mean_{n, i} w_n (out - target)^2
    return float(np.mean(w * r * r))


def simple_loss_and_grad(sched, model_output, x0, t, eps, prediction, weighting=None, gamma=5.0):
    """(L4, L5) ``simple_loss`` and its gradient dL/d model_output (same shape as model_output)."""
    w, r = _simple_residual(sched, model_output, x0, t, eps, prediction, weighting, gamma)
    # (L4)  dL/d out = 2 w (out - target) / (number of elements)
    grad = (2.0 / r.size) * w * r
    return float(np.mean(w * r * r)), grad


# ---- Gaussian KL and the decoder ------------------------------------------------------------

def _numeric(a, name):
    """A finite float array (scalars allowed: the KL broadcasts)."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise InputError(f"{name} must be numeric, got dtype {a.dtype}")
    return check_finite(a if a.dtype.kind == "f" else a.astype(np.float64), name)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """(L2) KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)) elementwise, in nats (broadcasting)."""
    m1, lv1, m2, lv2 = (_numeric(mean1, "mean1"), _numeric(logvar1, "logvar1"),
                        _numeric(mean2, "mean2"), _numeric(logvar2, "logvar2"))
    # (L2)  KL = 1/2 (log s2^2 - log s1^2 + s1^2 / s2^2 + (m1 - m2)^2 / s2^2 - 1)
    return 0.5 * (lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2) - 1.0)


def _log_phi_diff(a, b):
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails; a may be -inf and b +inf.

    Lower/middle (a <= 0): log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b))).
    Upper tail (a > 0), by symmetry Phi(b) - Phi(a) = Phi(-a) - Phi(-b):
                           log Phi(-a) + log(1 - exp(log Phi(-b) - log Phi(-a))).
    Both use log_ndtr, which keeps its relative accuracy to |z| ~ 1e150; no log(0) for finite a < b.
    """
    upper = a > 0
    hi = np.where(upper, log_ndtr(-a), log_ndtr(b))  # log of the larger CDF value
    lo = np.where(upper, log_ndtr(-b), log_ndtr(a))  # log of the smaller one
    # (L6)  log(P_hi - P_lo) = log P_hi + log(-expm1(log P_lo - log P_hi))
    return hi + np.log(-np.expm1(lo - hi))


def _tanh_cdf(z):
    """Phi(z) ~ 1/2 (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))), as in Ho et al. / improved-diffusion."""
    return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


def _check_8bit(x):
    x = _numeric(x, "x")
    if np.any(np.abs(x) > 1.0 + 1e-6):
        raise InputError(f"x must be 8-bit data scaled to [-1, 1]; got values in [{x.min():.4g}, {x.max():.4g}]")
    k = (x.astype(np.float64) + 1.0) * 127.5
    if np.any(np.abs(k - np.round(k)) > 1e-3):
        raise InputError("x must be 8-bit data on the grid -1 + 2k/255 (k = 0..255); got values between bins "
                         "(use decoder='gaussian' for continuous data)")
    return x


def discretized_gaussian_log_likelihood(x, means, log_scales, approx="exact"):
    """(L6) log P(x) of 8-bit data x in [-1, 1] under N(means, exp(log_scales)^2), per element, in nats.

    P(x) = Phi((x + 1/255 - mu) / sigma) - Phi((x - 1/255 - mu) / sigma), the mass of the bin of
    width 2/255 around x; the edge bins extend to -inf (x = -1) and +inf (x = 1), so the 256 bin
    masses sum to 1. ``log_scales`` = log sigma (= 0.5 * log variance, as in improved-diffusion).
    Shapes: x, means, log_scales broadcast together; the result has the broadcast shape.
    approx="exact": scipy's log_ndtr, stable in both tails (finite for means far outside [-1, 1]).
    approx="tanh":  Ho et al.'s tanh approximation of Phi with improved-diffusion's clamp of every
                    probability at 1e-12 (log P >= -27.6): for comparison only. The approximation's
                    CDF is off by at most 1.8e-4 (max |Phi_tanh - Phi|, at z ~ -2.59), so each bin mass
                    is off by at most 3.6e-4 (the test derives this bound on a grid).
    """
    check_choice(approx, APPROXES, "approx")
    x = _check_8bit(x)
    means, log_scales = _numeric(means, "means"), _numeric(log_scales, "log_scales")
    try:
        x, means, log_scales = np.broadcast_arrays(x, means, log_scales)
    except ValueError:
        raise InputError(f"shape mismatch: x {x.shape}, means {means.shape} and log_scales "
                         f"{log_scales.shape} do not broadcast together") from None
    inv_sigma = np.exp(-log_scales.astype(np.float64))
    centred = x.astype(np.float64) - means
    left, right = x < -1.0 + 1e-3, x > 1.0 - 1e-3  # the two edge bins
    # (L6)  bin edges in standard units; the edge bins open to -inf and +inf
    a = np.where(left, -np.inf, (centred - HALF_BIN) * inv_sigma)
    b = np.where(right, np.inf, (centred + HALF_BIN) * inv_sigma)
    if approx == "exact":
        return _log_phi_diff(a, b)  # (L6)  log(Phi(b) - Phi(a))
    # (L6, tanh)  improved-diffusion: log(max(P, 1e-12)) with Phi replaced by the tanh approximation
    p = np.where(left, _tanh_cdf(b), np.where(right, 1.0 - _tanh_cdf(a), _tanh_cdf(b) - _tanh_cdf(a)))
    return np.log(np.maximum(p, 1e-12))


def gaussian_log_likelihood(x, means, log_scales):
    """log N(x; mean, sigma^2) elementwise in nats (continuous data), log_scales = log sigma."""
    x, means, log_scales = _numeric(x, "x"), _numeric(means, "means"), _numeric(log_scales, "log_scales")
    z = (x - means) * np.exp(-log_scales)
    # log N = -1/2 log(2 pi) - log sigma - z^2 / 2
    return -0.5 * math.log(2.0 * math.pi) - log_scales - 0.5 * z * z


# ---- the variational bound ------------------------------------------------------------------

def _per_dim(a):
    """Mean over every non-batch dimension: (N, ...) -> (N,)."""
    return a.reshape(a.shape[0], -1).mean(axis=1)


def _noise_source(noise, T, shape):
    """A function k -> eps_k of ``shape``: from an array (T, *shape) or a np.random.Generator."""
    if isinstance(noise, np.random.Generator):
        return lambda k: noise.standard_normal(shape)
    noise = _data(noise, "noise")
    if noise.shape != (T,) + tuple(shape):
        raise InputError(f"shape mismatch: noise must have shape (T, *x0.shape) = {(T,) + tuple(shape)}, "
                         f"got {noise.shape} (one eps per step), or pass a np.random.Generator")
    return lambda k: noise[k]


def prior_kl(sched, x0):
    """(L8) L_T = KL(q(x_T | x_0) || N(0, I)) elementwise in nats: q(x_T | x_0) = N(sqrt(abar) x_0, 1 - abar)."""
    a = sched.alpha_bar[-1]
    # (L8, F3)  mean sqrt(abar_T) x_0, log-variance log(1 - abar_T) against N(0, 1)
    return normal_kl(math.sqrt(a) * x0, math.log1p(-a), 0.0, 0.0)


def vlb_terms(sched, denoise, x0, noise, prediction="eps", variance="fixed_small", clip_x0=False,
              decoder="discretized", progress=None):
    """(L1, L8) The variational bound term by term, per example, in bits per dimension.

    ``denoise(xt, t) -> model_output`` with t an int64 array (N,) of 0-based indices.
    ``noise``: array (T, *x0.shape) (eps for x_t at each index t) or a np.random.Generator.
    For t in 0..T-1: x_t = q_sample(x0, t, eps_t) and
      t >= 1: terms[t] = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))   (paper L_t; L2, L3)
      t == 0: terms[0] = -log p_theta(x_0 | x_t=0)  (paper L_0 = -log p(x_0 | x_1)); decoder
              "discretized" (8-bit data, L6) or "gaussian" (continuous density, for 2-D points).
    prior = KL(q(x_{T-1} | x_0) || N(0, I)) (paper L_T, L8). total = prior + sum_t terms[t].
    Returns {"prior": (N,), "terms": (T, N), "total": (N,)} in bits/dim (L7). ``progress``: None or a
    callable wrapping the iterable of t (e.g. a progress bar).
    """
    check_choice(decoder, DECODERS, "decoder")
    check_choice(prediction, PREDICTIONS, "prediction")
    check_choice(variance, VARIANCES, "variance")
    x0 = _check_8bit(x0) if decoder == "discretized" else _data(x0, "x0")
    eps_at = _noise_source(noise, sched.T, x0.shape)
    N = x0.shape[0]
    terms = np.empty((sched.T, N))
    for t in check_progress(progress)(range(sched.T)):
        tt = np.full(N, t, dtype=np.int64)
        xt = q_sample(sched, x0, tt, eps_at(t))  # (F3)
        p = p_mean_variance(sched, denoise(xt, tt), xt, tt, prediction, variance, clip_x0)
        if t == 0:
            log_scale = 0.5 * p.log_variance  # sigma of the decoder p(x_0 | x_1)
            if decoder == "discretized":
                ll = discretized_gaussian_log_likelihood(x0, p.mean, log_scale)  # (L6)
            else:
                ll = gaussian_log_likelihood(x0, p.mean, log_scale)
            terms[0] = -_per_dim(ll) / LN2  # (L1, L7)  L_0 = -log p(x_0 | x_1), bits/dim
        else:
            q_mean, _, q_log_var = q_posterior(sched, x0, xt, tt)  # (P2, P3)
            kl = normal_kl(q_mean, q_log_var, p.mean, p.log_variance)  # (L2)
            terms[t] = _per_dim(kl) / LN2  # (L1, L7)  L_t in bits/dim
    prior = _per_dim(prior_kl(sched, x0.astype(np.float64))) / LN2  # (L8)
    # (L1)  -ELBO = L_T + sum_{t>=1} L_{t} + L_0
    return {"prior": prior, "terms": terms, "total": prior + terms.sum(axis=0)}


def bits_per_dim(sched, denoise, x0, noise, prediction="eps", variance="fixed_small", clip_x0=False,
                 decoder="discretized", progress=None):
    """(L7) The bound's total averaged over the batch, in bits per dimension -> float."""
    out = vlb_terms(sched, denoise, x0, noise, prediction, variance, clip_x0, decoder, progress)
    return float(out["total"].mean())
