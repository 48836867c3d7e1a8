"""The bound as a training loss: L_vlb, L_hybrid (Nichol & Dhariwal 2021) and their hand-written gradients.

Derivations: derivations/learned_variance.md (V*), derivations/elbo.md (L1, L2, L6, L9).

One draw per example: t (N,) 0-based, x_t = q_sample(x_0, t, eps), and the term L_t of the bound (L1) in bits
per dimension (``losses.vlb_term``: the KL for t >= 1, the decoder at t = 0). The bound is a SUM over the T
terms, so its estimator from a uniform t is T L_t (V4); an importance-sampled t carries the weight 1/(T p_t) (I2).
  loss "simple"  L_simple (L4) on the mean channels; the variance, fixed, is not trained.
  loss "hybrid"  L_simple + lambda T L_t with the mean frozen inside L_t (a stop-gradient): the mean learns from
                 L_simple only, the variance channels from the bound only (V4). lambda = 0.001.
  loss "vlb"     w T L_t, the whole gradient (mean and variance); w = 1/(T p_t) under importance sampling.
Gradients are with respect to the network's output (N, C or 2C, ...): the KL's and the decoder's derivatives
with respect to the reverse step's mean and log-variance (V2, V3), chained through the posterior mean (P2), the
parameterisation (R1, R4) and the interpolation (V1).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erfcx, log_ndtr

from common import rules
from common.choices import LOSSES, TRAIN_VARIANCES  # noqa: F401  (reference.vlb's names)
from common.rules import HYBRID_LAMBDA, loss_settings  # noqa: F401  (the rule, written once; reference.vlb's names)

from .diffusion import ALL_VARIANCES, LEARNED, PREDICTIONS, _col, _data, p_mean_variance, q_posterior, split_output
from .errors import InputError, check_choice, check_same_shape, check_timesteps
from .losses import (LEVELS, LN2, _log_phi_diff, _per_dim, bin_edges, gaussian_log_likelihood, normal_kl,
                     simple_loss_and_grad)


# ---- derivatives of the KL and the decoders with respect to the reverse step's moments -------------

def normal_kl_grads(mean1, logvar1, mean2, logvar2):
    """(V2) d KL / d mean2 and d KL / d logvar2 of KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise."""
    inv_var2 = np.exp(-logvar2)
    diff = mean2 - mean1
    # (V2)  dKL/dmu_2 = (mu_2 - mu_1) / sigma_2^2
    d_mean = diff * inv_var2
    # (V2)  dKL/dl_2 = 1/2 (1 - e^{l_1 - l_2} - (mu_1 - mu_2)^2 e^{-l_2})
    d_logvar = 0.5 * (1.0 - np.exp(logvar1 - logvar2) - diff * diff * inv_var2)
    return d_mean, d_logvar


def _mills(z):
    """phi(z) / Phi(z) for every z, without cancellation: sqrt(2/pi) / erfcx(-z / sqrt 2) (0 at +inf, inf at -inf)."""
    return math.sqrt(2.0 / math.pi) / erfcx(-z / math.sqrt(2.0))


def discretized_nll_grads(x, means, log_variance, levels=LEVELS):
    """(V3) The L-level decoder's -log P(x) (L9), per element in nats, and its derivatives with respect to
    the mean and the log-variance -> (nll, d nll / d mean, d nll / d logvar), float64.

    With a = (x - h - mu)/sigma, b = (x + h - mu)/sigma: d(-log P)/d mu = (phi(b) - phi(a)) / (sigma P) and
    d(-log P)/d log sigma^2 = (b phi(b) - a phi(a)) / (2 P), phi(z) = 0 at z = +-inf. Each phi(z)/P is the Mills
    ratio phi(z)/Phi(+-z) times Phi(+-z)/P, both free of cancellation (log-space differences of log Phi lose
    ~1e-5 of relative accuracy at |z| ~ 4e5, where log Phi ~ -8e10).
    """
    a, b, inv_sigma = bin_edges(x, means, 0.5 * np.asarray(log_variance), levels)
    nll = -_log_phi_diff(a, b)
    upper = a > 0  # as in _log_phi_diff: P = Phi(b) - Phi(a), or Phi(-a) - Phi(-b) in the upper tail
    hi = np.where(upper, log_ndtr(-a), log_ndtr(b))
    lo = np.where(upper, log_ndtr(-b), log_ndtr(a))
    hi_over_p = 1.0 / -np.expm1(lo - hi)            # P_hi / P >= 1
    lo_over_p = np.exp(lo - hi) * hi_over_p         # P_lo / P
    fa, fb = np.isfinite(a), np.isfinite(b)
    a0, b0 = np.where(fa, a, 0.0), np.where(fb, b, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # (V3)  phi(a)/P and phi(b)/P: the Mills ratio of the CDF each edge belongs to, times that CDF over P
        ra = np.where(upper, _mills(-a0) * hi_over_p, _mills(a0) * lo_over_p)
        rb = np.where(upper, _mills(-b0) * lo_over_p, _mills(b0) * hi_over_p)
    ra, rb = np.where(fa, ra, 0.0), np.where(fb, rb, 0.0)   # the edge bins' infinite ends: phi = 0
    # (V3)  d(-log P)/d mu = (phi(b) - phi(a)) / (sigma P)
    d_mean = (rb - ra) * inv_sigma
    # (V3)  d(-log P)/d l = (b phi(b) - a phi(a)) / (2 P)
    d_logvar = 0.5 * (b0 * rb - a0 * ra)
    return nll, d_mean, d_logvar


def gaussian_nll_grads(x, means, log_variance):
    """(V3) -log N(x; mu, e^l) per element in nats (the continuous decoder of 2-D points) and its derivatives."""
    inv_var = np.exp(-log_variance)
    r = means - x
    nll = -gaussian_log_likelihood(x, means, 0.5 * log_variance)
    # (V3)  d/d mu = (mu - x) e^{-l};  d/dl = 1/2 - (x - mu)^2 e^{-l} / 2
    return nll, r * inv_var, 0.5 - 0.5 * r * r * inv_var


# ---- one term of the bound and its gradient with respect to the network's output ---------------------

def _term_grads(sched, p, x0, xt, tt, levels):
    """L_t per element in nats (L1) and its derivatives with respect to the reverse mean and log-variance,
    all in float64 (the network's dtype only at the end)."""
    first = tt == 0
    q_mean, _, q_log_var = (a.astype(np.float64) for a in q_posterior(sched, x0, xt, tt))   # (P2, P3)
    mean, log_var = p.mean.astype(np.float64), np.asarray(p.log_variance, np.float64)
    term = normal_kl(q_mean, q_log_var, mean, log_var)                                  # (L2)
    d_mean, d_logvar = normal_kl_grads(q_mean, q_log_var, mean, log_var)                # (V2)
    if first.any():
        x_dec = x0[first].astype(np.float64)
        if levels is None:
            nll, dm, dl = gaussian_nll_grads(x_dec, mean[first], log_var[first])
        else:
            nll, dm, dl = discretized_nll_grads(x_dec, mean[first], log_var[first], levels)  # (V3)
        term[first], d_mean[first], d_logvar[first] = nll, dm, dl                       # (L1)  L_0 at t = 0
    return term, d_mean, d_logvar


def _dx0_dout(sched, prediction, tt, like):
    """d x0_hat / d model_output per example: eps (R1) -sqrt(1/abar - 1), x0 1, v (R4) -sqrt(1 - abar)."""
    if prediction == "eps":
        return _col(-sched.sqrt_recipm1_alpha_bar[tt], like)
    if prediction == "v":
        return _col(-sched.sqrt_one_minus_alpha_bar[tt], like)
    return _col(np.ones(tt.shape), like)


def vlb_term_and_grad(sched, model_output, x0, xt, t, prediction="eps", variance=LEARNED, levels=LEVELS,
                      stop_mean=False):
    """(L1, V2-V4) L_t per example in bits/dim (N,), and the gradient of the SUM of those terms with respect to
    model_output (its shape; float64). levels=None: the Gaussian decoder (continuous data, 2-D points).

    stop_mean=True: the mean is a constant inside L_t (the stop-gradient of L_hybrid): the mean channels get
    zero and only the variance channels (variance="learned") a gradient. No clipping of x0_hat (training).
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    check_choice(variance, ALL_VARIANCES, "variance")
    x0, xt = _data(x0, "x0"), _data(xt, "xt")
    check_same_shape(x0, xt, "x0", "xt")
    tt = np.broadcast_to(check_timesteps(t, sched.T, n=x0.shape[0]), (x0.shape[0],))
    mean_out, u = split_output(model_output, variance)
    p = p_mean_variance(sched, model_output, xt, tt, prediction, variance)
    term, d_mean, d_logvar = _term_grads(sched, p, x0, xt, tt, levels)
    scale = 1.0 / (LN2 * (term.size // term.shape[0]))              # (L7)  per dimension, in bits
    grads = []
    if not stop_mean:
        # (P2, R1, R4)  d mu / d out = posterior_mean_coef_x0 * d x0_hat / d out
        coef = _col(sched.posterior_mean_coef_x0[tt], d_mean) * _dx0_dout(sched, prediction, tt, d_mean)
        grads.append(scale * d_mean * coef)
    else:
        grads.append(np.zeros(mean_out.shape))
    if u is not None:
        # (V1)  d log sigma^2 / d u = (log beta_t - log beta~_t) / 2
        dl_du = 0.5 * (_col(np.log(sched.betas[tt]), d_logvar) - _col(sched.posterior_log_variance_clipped[tt],
                                                                          d_logvar))
        grads.append(scale * d_logvar * dl_du)
    return _per_dim(term) / LN2, np.concatenate(grads, axis=1) if u is not None else grads[0]


# ---- the training losses -------------------------------------------------------------------------

def check_loss(loss, variance, hybrid_lambda=HYBRID_LAMBDA):
    """The loss against the variance (common.rules.check_loss, in the arguments' words): "hybrid" needs learned
    variances, learned variances need "hybrid" or "vlb"; ``variance`` one of diffusion.ALL_VARIANCES."""
    check_choice(variance, ALL_VARIANCES, "variance")
    rules.check_loss(loss, variance, hybrid_lambda)


def _weights(weights, n):
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError(f"weights must be {n} finite numbers >= 0 (one per example), got shape {w.shape}")
    return w


def training_loss_and_grad(sched, model_output, x0, xt, t, eps, prediction="eps", loss="simple",
                           variance="fixed_small", hybrid_lambda=HYBRID_LAMBDA, weights=None, weighting=None,
                           gamma=5.0, levels=LEVELS):
    """(L4, V4, I2) The training loss of one batch -> (loss float, d loss / d model_output, terms).

    terms: the per-example L_t in bits/dim (N,) (what importance sampling records), None for "simple".
      simple  mean of w(t) (out - target)^2 (L4, L5; ``weighting``); the variance is not trained.
      hybrid  L_simple(mean channels) + lambda T mean_n L_t(frozen mean, u) (V4).
      vlb     mean_n w_n T L_t, w_n = ``weights`` (importance sampling, I2) or 1 (V4).
    Shapes: model_output (N, C, ...) or (N, 2C, ...) for variance "learned"; x0, xt, eps (N, C, ...); t (N,).
    """
    check_loss(loss, variance, hybrid_lambda)
    if loss == "simple":
        value, grad = simple_loss_and_grad(sched, model_output, x0, t, eps, prediction, weighting, gamma)
        return value, grad, None
    n, T = np.shape(x0)[0], sched.T
    terms, grad = vlb_term_and_grad(sched, model_output, x0, xt, t, prediction, variance, levels,
                                    stop_mean=loss == "hybrid")
    if loss == "vlb":
        w = _weights(weights, n)
        # (V4, I2)  L = mean_n w_n T L_t  (the sum over t estimated from one draw per example)
        value = float(np.mean(w * T * terms))
        grad = grad * _col(w * T / n, grad)
        return value, grad.astype(np.asarray(model_output).dtype, copy=False), terms
    if weights is not None:
        raise InputError("weights (importance sampling) apply to loss 'vlb' only")
    mean_out, _ = split_output(model_output, variance)
    simple, d_simple = simple_loss_and_grad(sched, mean_out, x0, t, eps, prediction, weighting, gamma)
    # (V4)  L_hybrid = L_simple + lambda T mean_n L_t, the bound's gradient reaching the variance channels only
    value = simple + hybrid_lambda * T * float(np.mean(terms))
    grad = grad * (hybrid_lambda * T / n)
    grad[:, :d_simple.shape[1]] = d_simple
    return value, grad.astype(np.asarray(model_output).dtype, copy=False), terms


def training_loss(sched, model_output, x0, xt, t, eps, prediction="eps", loss="simple", variance="fixed_small",
                  hybrid_lambda=HYBRID_LAMBDA, weights=None, weighting=None, gamma=5.0, levels=LEVELS):
    """(L4, V4, I2) ``training_loss_and_grad`` without the gradient -> (loss float, terms (N,) or None)."""
    value, _, terms = training_loss_and_grad(sched, model_output, x0, xt, t, eps, prediction, loss, variance,
                                             hybrid_lambda, weights, weighting, gamma, levels)
    return value, terms


def best_step_variance(sched, small_terms):
    """(V6) The bound's step terms with the best single variance at every step t >= 1, given the mean.

    ``small_terms`` (T,): the mean over items of the bound's terms L_t in bits/dim (``vlb_terms(...)["terms"]``
    averaged over the items) with variance "fixed_small", so that L_t = e_t / (2 beta~_t ln 2) at t >= 1, e_t the
    mean's squared error against mu~_t per dimension. -> (terms (T,), variances (T,)) float64: at t >= 1 the KL
    of sigma_t^2 = beta~_t + e_t, 1/2 log(1 + e_t / beta~_t) in bits/dim, the least any one variance of step t
    reaches with this mean; t = 0 (the decoder) is kept as given, its variance nan. The ceiling of what a
    learned variance constant over the items can gain (a per-element variance can go further).
    """
    small = np.asarray(small_terms, dtype=np.float64)
    if small.shape != (sched.T,) or not np.all(np.isfinite(small)) or np.any(small < 0):
        raise InputError(f"small_terms must be {sched.T} finite terms >= 0 (bits/dim, one per step t), "
                         f"got shape {small.shape}")
    # (V6)  e_t / beta~_t = 2 ln 2 L_t(fixed_small)
    ratio = 2.0 * LN2 * small[1:]
    # (V6)  KL* = 1/2 log(1 + e_t / beta~_t), sigma*^2 = beta~_t (1 + e_t / beta~_t)
    terms = np.concatenate([small[:1], 0.5 * np.log1p(ratio) / LN2])
    variances = np.concatenate([[np.nan], sched.posterior_variance[1:] * (1.0 + ratio)])
    return terms, variances
