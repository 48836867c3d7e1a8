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

from .diffusion import ALL_VARIANCES, PREDICTIONS, _data, p_mean_variance, q_posterior, q_sample, v_target
from .errors import InputError, check_choice, check_finite, check_progress, check_same_shape, check_timesteps

WEIGHTINGS = (None, "snr", "min_snr")
DECODERS = ("discretized", "gaussian")
APPROXES = ("exact", "tanh")
LN2 = math.log(2.0)
# 8-bit data in [-1, 1]: 256 bins of width 2/255 centred on -1 + 2k/255; half a bin is 1/255.
HALF_BIN = 1.0 / 255.0
LEVELS = 256  # the decoder's default: 8-bit data. Data with L levels (digits: 17) has half-bins 1/(L-1) (L9)


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


def check_levels(levels):
    """The decoder's number of levels L: an int >= 2 (256 for 8-bit images, 17 for the digits)."""
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise InputError(f"levels (pixel values per channel) must be an integer >= 2, got {levels!r}")
    return int(levels)


def _check_on_levels(x, levels):
    """x as a finite array on the L-level grid -1 + 2k/(L-1) of [-1, 1]; the message names the grid."""
    x = _numeric(x, "x")
    what = "8-bit data" if levels == 256 else f"data of {levels} levels"
    if np.any(np.abs(x) > 1.0 + 1e-6):
        raise InputError(f"x must be {what} scaled to [-1, 1]; got values in [{x.min():.4g}, {x.max():.4g}]")
    k = (x.astype(np.float64) + 1.0) * ((levels - 1) / 2.0)
    if np.any(np.abs(k - np.round(k)) > 1e-3):
        raise InputError(f"x must be {what} on the grid -1 + 2k/{levels - 1} (k = 0..{levels - 1}); got values "
                         "between bins (pass levels=L for data of L levels, or use decoder='gaussian' for "
                         "continuous data)")
    return x


def bin_edges(x, means, log_scales, levels=LEVELS):
    """(L6, L9) The bin of each x in standard units, a = (x - 1/(L-1) - mu) / sigma and
    b = (x + 1/(L-1) - mu) / sigma, with a = -inf at x = -1 and b = +inf at x = 1 (the edge bins take the
    tails) -> (a, b, 1/sigma), float64 arrays of the broadcast shape."""
    levels = check_levels(levels)
    x = _check_on_levels(x, levels)
    means, log_scales = _numeric(means, "means"), _numeric(log_scales, "log_scales")
    try:
        x, means, log_scales = np.broadcast_arrays(x, means, log_scales)
    except ValueError:
        raise InputError(f"shape mismatch: x {x.shape}, means {means.shape} and log_scales "
                         f"{log_scales.shape} do not broadcast together") from None
    half = 1.0 / (levels - 1)  # (L9)  half a bin: 1/255 for 8-bit data, 1/16 for the 17-level digits
    inv_sigma = np.exp(-log_scales.astype(np.float64))
    centred = x.astype(np.float64) - means
    left, right = x < -1.0 + half, x > 1.0 - half  # the two edge bins
    # (L6, L9)  bin edges in standard units; the edge bins open to -inf and +inf
    a = np.where(left, -np.inf, (centred - half) * inv_sigma)
    b = np.where(right, np.inf, (centred + half) * inv_sigma)
    return a, b, inv_sigma


def discretized_gaussian_log_likelihood(x, means, log_scales, approx="exact", levels=LEVELS):
    """(L6, L9) log P(x) of data x on L levels in [-1, 1] under N(means, exp(log_scales)^2), per element, in nats.

    P(x) = Phi((x + h - mu) / sigma) - Phi((x - h - mu) / sigma), h = 1/(L-1), the mass of the bin of
    width 2/(L-1) around x; the edge bins extend to -inf (x = -1) and +inf (x = 1), so the L bin
    masses sum to 1. levels=256 (the default) is 8-bit data, h = 1/255; the digits have 17 levels.
    ``log_scales`` = log sigma (= 0.5 * log variance, as in improved-diffusion).
    Shapes: x, means, log_scales broadcast together; the result has the broadcast shape.
    approx="exact": scipy's log_ndtr, stable in both tails (finite for means far outside [-1, 1]).
    approx="tanh":  Ho et al.'s tanh approximation of Phi with improved-diffusion's clamp of every
                    probability at 1e-12 (log P >= -27.6): for comparison only. The approximation's
                    CDF is off by at most 1.8e-4 (max |Phi_tanh - Phi|, at z ~ -2.59), so each bin mass
                    is off by at most 3.6e-4 (the test derives this bound on a grid).
    """
    check_choice(approx, APPROXES, "approx")
    a, b, _ = bin_edges(x, means, log_scales, levels)
    if approx == "exact":
        return _log_phi_diff(a, b)  # (L6)  log(Phi(b) - Phi(a))
    left, right = a == -np.inf, b == np.inf
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


def vlb_term(sched, model_output, x0, xt, t, prediction="eps", variance="fixed_small", clip_x0=False,
             decoder="discretized", levels=LEVELS):
    """(L1) One term of the bound per example, in bits/dim (N,), from the network's output at x_t.

    t (N,) 0-based, and may mix steps: rows with t >= 1 get KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))
    (L2), rows with t == 0 the decoder -log p_theta(x_0 | x_1) ("discretized": data on ``levels`` levels,
    L6, L9; "gaussian": a density, for 2-D points). variance: "fixed_small" | "fixed_large" | "learned"
    (model_output then has 2C channels, V1). What the training losses (reference/vlb.py) and ``vlb_terms`` use.
    """
    check_choice(decoder, DECODERS, "decoder")
    x0, xt = _data(x0, "x0"), _data(xt, "xt")
    tt = np.broadcast_to(check_timesteps(t, sched.T, n=x0.shape[0]), (x0.shape[0],))
    p = p_mean_variance(sched, model_output, xt, tt, prediction, variance, clip_x0)
    out = np.empty(x0.shape[0])
    first = tt == 0
    if first.any():
        log_scale = 0.5 * p.log_variance[first]  # sigma of the decoder p(x_0 | x_1)
        if decoder == "discretized":
            ll = discretized_gaussian_log_likelihood(x0[first], p.mean[first], log_scale, levels=levels)  # (L6)
        else:
            ll = gaussian_log_likelihood(x0[first], p.mean[first], log_scale)
        out[first] = -_per_dim(ll) / LN2  # (L1, L7)  L_0 = -log p(x_0 | x_1), bits/dim
    if not first.all():
        rest = ~first
        q_mean, _, q_log_var = q_posterior(sched, x0[rest], xt[rest], tt[rest])  # (P2, P3)
        kl = normal_kl(q_mean, q_log_var, p.mean[rest], p.log_variance[rest])  # (L2)
        out[rest] = _per_dim(kl) / LN2  # (L1, L7)  L_t in bits/dim
    return out


def vlb_terms(sched, denoise, x0, noise, prediction="eps", variance="fixed_small", clip_x0=False,
              decoder="discretized", progress=None, levels=LEVELS):
    """(L1, L8) The variational bound term by term, per example, in bits per dimension.

    ``denoise(xt, t) -> model_output`` with t an int64 array (N,) of 0-based indices.
    ``noise``: array (T, *x0.shape) (eps for x_t at each index t) or a np.random.Generator.
    For t in 0..T-1: x_t = q_sample(x0, t, eps_t) and
      t >= 1: terms[t] = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))   (paper L_t; L2, L3)
      t == 0: terms[0] = -log p_theta(x_0 | x_t=0)  (paper L_0 = -log p(x_0 | x_1)); decoder
              "discretized" (data on ``levels`` levels, 256 for 8-bit images, 17 for the digits: L6, L9)
              or "gaussian" (continuous density, for 2-D points).
    variance: "fixed_small" | "fixed_large" | "learned" (a network with 2C output channels, V1).
    prior = KL(q(x_{T-1} | x_0) || N(0, I)) (paper L_T, L8). total = prior + sum_t terms[t].
    Returns {"prior": (N,), "terms": (T, N), "total": (N,)} in bits/dim (L7). ``progress``: None or a
    callable wrapping the iterable of t (e.g. a progress bar).
    """
    check_choice(decoder, DECODERS, "decoder")
    check_choice(prediction, PREDICTIONS, "prediction")
    check_choice(variance, ALL_VARIANCES, "variance")
    x0 = _check_on_levels(x0, check_levels(levels)) if decoder == "discretized" else _data(x0, "x0")
    eps_at = _noise_source(noise, sched.T, x0.shape)
    N = x0.shape[0]
    terms = np.empty((sched.T, N))
    for t in check_progress(progress)(range(sched.T)):
        tt = np.full(N, t, dtype=np.int64)
        xt = q_sample(sched, x0, tt, eps_at(t))  # (F3)
        # (L1)  terms[0] = L_0 (decoder), terms[t] = L_t (KL), in bits/dim
        terms[t] = vlb_term(sched, denoise(xt, tt), x0, xt, tt, prediction, variance, clip_x0, decoder, levels)
    prior = _per_dim(prior_kl(sched, x0.astype(np.float64))) / LN2  # (L8)
    # (L1)  -ELBO = L_T + sum_{t>=1} L_{t} + L_0
    return {"prior": prior, "terms": terms, "total": prior + terms.sum(axis=0)}


def bits_per_dim(sched, denoise, x0, noise, prediction="eps", variance="fixed_small", clip_x0=False,
                 decoder="discretized", progress=None, levels=LEVELS):
    """(L7) The bound's total averaged over the batch, in bits per dimension -> float (``levels``: see vlb_terms)."""
    out = vlb_terms(sched, denoise, x0, noise, prediction, variance, clip_x0, decoder, progress, levels)
    return float(out["total"].mean())
