"""Training losses and the variational bound, term by term, written again in torch.

Mirror of reference/losses.py: same names, signatures and meaning (see its module docstring for
which paper term is which index). Derivations: derivations/elbo.md (L*),
derivations/parameterisations.md (R6).

Conventions: ``t`` is the 0-based index (paper step t+1): an int or an integer tensor (N,).
Data ``x0``, ``eps``, ``model_output`` are (N, ...) tensors. Per-example results are averaged over
every non-batch dimension ("per dimension").

Differences of form, not of meaning: ``simple_loss`` returns a 0-d tensor (differentiable: training
calls ``.backward()`` on it) where the reference returns a float; ``simple_loss_and_grad`` returns
(0-d tensor, gradient tensor), the gradient written out (autograd agrees: tests/torch_port).
``vlb_terms`` returns tensors. The exact normal CDF is torch.special.log_ndtr.

Validation: as in torch_port.diffusion, values are checked for CPU tensors always and on an
accelerator only when ``sched.validate`` is True. The functions without a schedule
(normal_kl, the log-likelihoods) check values of CPU tensors only.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from reference.errors import InputError, check_choice, check_progress

from .diffusion import (ALL_VARIANCES, PREDICTIONS, _check_same_shape, _data, _dtype_name, _timesteps,
                        p_mean_variance, q_posterior, q_sample, v_target)

WEIGHTINGS = (None, "snr", "min_snr")
DECODERS = ("discretized", "gaussian")
APPROXES = ("exact", "tanh")
LN2 = math.log(2.0)
# 8-bit data in [-1, 1]: 256 bins of width 2/255 centred on -1 + 2k/255; half a bin is 1/255.
HALF_BIN = 1.0 / 255.0
LEVELS = 256  # the decoder's default: 8-bit data. Data with L levels (digits: 17) has half-bins 1/(L-1) (L9)

__all__ = ["WEIGHTINGS", "DECODERS", "APPROXES", "LN2", "HALF_BIN", "LEVELS", "snr_weights", "simple_loss",
           "simple_loss_and_grad", "normal_kl", "check_levels", "bin_edges", "discretized_gaussian_log_likelihood",
           "gaussian_log_likelihood", "prior_kl", "vlb_term", "vlb_terms", "bits_per_dim"]


# ---- L_simple and its SNR weightings --------------------------------------------------------

def _check_gamma(gamma):
    if not (isinstance(gamma, (int, float, np.floating, np.integer)) and math.isfinite(gamma) and gamma > 0):
        raise InputError(f"gamma (min-SNR clip) must be a finite number > 0, got {gamma!r}")


def snr_weights(sched, t, prediction, weighting=None, gamma=5.0):
    """Per-example loss weights, float64 tensor (N,) or (), on the squared error of ``prediction``.

    Same meaning as reference.losses.snr_weights: weights defined in x0 space and converted by (R6).
      None: 1 (L4).  "min_snr": w_x0 = min(snr, gamma) (L5).  "snr": w_x0 = snr.
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    if weighting is not None:
        check_choice(weighting, WEIGHTINGS[1:], "weighting")
    shape = tuple(t.shape) if isinstance(t, torch.Tensor) else np.shape(t)
    n = shape[0] if len(shape) == 1 else 1                 # no batch to match: t's own length
    tt = _timesteps(sched, t, torch.empty((n,), device=sched.device))
    snr = sched.snr[tt]                                    # (N,) or ()
    if weighting is None:
        return torch.ones_like(snr)
    if weighting == "min_snr":
        _check_gamma(gamma)
        # (L5)  w_x0 = min(snr, gamma)
        w_x0 = torch.clamp(snr, max=gamma)
        if prediction == "eps":
            # (L5, R6)  min(snr, g) / snr = g / max(snr, g): finite at snr = 0
            return gamma / torch.clamp(snr, min=gamma)
    else:
        # (R6)  w_x0 = snr turns every loss into the eps-MSE
        w_x0 = snr
        if prediction == "eps":
            return torch.ones_like(snr)            # (R6)  snr / snr = 1
    if prediction == "x0":
        return w_x0
    # (R6)  v: ||v_hat - v||^2 = (snr + 1) ||x0_hat - x0||^2
    return w_x0 / (snr + 1.0)


def _simple_residual(sched, model_output, x0, t, eps, prediction, weighting, gamma):
    """Per-example weights shaped to broadcast against the data, and the residual output - target."""
    check_choice(prediction, PREDICTIONS, "prediction")
    out, x0, eps = _data(sched, model_output, "model_output"), _data(sched, x0, "x0"), _data(sched, eps, "eps")
    _check_same_shape(out, x0, "model_output", "x0")
    _check_same_shape(eps, x0, "eps", "x0")
    t = _timesteps(sched, t, x0)
    if prediction == "eps":
        target = eps                                   # (L4)  eps-prediction target
    elif prediction == "x0":
        target = x0                                    # (L4)  x0-prediction target
    else:
        target = v_target(sched, x0, t, eps)           # (R3)  v = sqrt(abar) eps - sqrt(1 - abar) x0
    w = snr_weights(sched, t, prediction, weighting, gamma).to(device=out.device, dtype=out.dtype)
    w = w.reshape(tuple(w.shape) + (1,) * (out.ndim - w.ndim))   # (N, 1, ...) or ()
    return w, out - target


def simple_loss(sched, model_output, x0, t, eps, prediction, weighting=None, gamma=5.0):
    """(L4, L5) mean over all elements of w(t) (model_output - target)^2 -> 0-d tensor (differentiable).

    target: eps, x0 or v for prediction "eps" | "x0" | "v". Shapes: model_output, x0, eps (N, ...);
    t int or (N,), 0-based. Weights: see ``snr_weights``.
    """
    w, r = _simple_residual(sched, model_output, x0, t, eps, prediction, weighting, gamma)
    # (L4)  L = mean_{n, i} w_n (out - target)^2
    return torch.mean(w * r * r)


def simple_loss_and_grad(sched, model_output, x0, t, eps, prediction, weighting=None, gamma=5.0):
    """(L4, L5) ``simple_loss`` (0-d tensor) and dL/d model_output (shape of model_output), written out."""
    w, r = _simple_residual(sched, model_output, x0, t, eps, prediction, weighting, gamma)
    # (L4)  dL/d out = 2 w (out - target) / (number of elements)
    grad = (2.0 / r.numel()) * w * r
    return torch.mean(w * r * r), grad


# ---- Gaussian KL and the decoder ------------------------------------------------------------

def _numeric(a, name, like=None):
    """A floating tensor (scalars allowed: the KL broadcasts), checked finite when on the CPU."""
    if not isinstance(a, torch.Tensor):
        arr = np.asarray(a)
        if arr.dtype.kind not in "fiu":
            raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
        a = torch.as_tensor(arr, device=None if like is None else like.device)
    if a.dtype == torch.bool or a.is_complex():
        raise InputError(f"{name} must be numeric, got dtype {_dtype_name(a.dtype)}")
    if not a.is_floating_point():
        a = a.to(torch.float64)
    if a.device.type == "cpu" and not bool(torch.isfinite(a).all()):
        n_bad = int(a.numel() - torch.isfinite(a).sum())
        raise InputError(f"{name} holds {n_bad} non-finite value(s) (NaN or inf)")
    return a


def _first_tensor(*args):
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """(L2) KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)) elementwise, in nats (broadcasting)."""
    like = _first_tensor(mean1, logvar1, mean2, logvar2)
    m1, lv1, m2, lv2 = (_numeric(mean1, "mean1", like), _numeric(logvar1, "logvar1", like),
                        _numeric(mean2, "mean2", like), _numeric(logvar2, "logvar2", like))
    # (L2)  KL = 1/2 (log s2^2 - log s1^2 + s1^2 / s2^2 + (m1 - m2)^2 / s2^2 - 1)
    return 0.5 * (lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2) - 1.0)


def _log_phi_diff(a, b):
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails; a may be -inf and b +inf.

    Lower/middle (a <= 0): log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b))).
    Upper tail (a > 0), by symmetry Phi(b) - Phi(a) = Phi(-a) - Phi(-b).
    """
    upper = a > 0
    hi = torch.where(upper, torch.special.log_ndtr(-a), torch.special.log_ndtr(b))   # log of the larger CDF
    lo = torch.where(upper, torch.special.log_ndtr(-b), torch.special.log_ndtr(a))   # log of the smaller one
    # (L6)  log(P_hi - P_lo) = log P_hi + log(-expm1(log P_lo - log P_hi))
    return hi + torch.log(-torch.expm1(lo - hi))


def _tanh_cdf(z):
    """Phi(z) ~ 1/2 (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))), as in Ho et al. / improved-diffusion."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


def check_levels(levels):
    """The decoder's number of levels L: an int >= 2 (256 for 8-bit images, 17 for the digits)."""
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise InputError(f"levels (pixel values per channel) must be an integer >= 2, got {levels!r}")
    return int(levels)


def _check_on_levels(x, levels, validate=False):
    """x as a tensor on the L-level grid -1 + 2k/(L-1) of [-1, 1]; values checked on the CPU or when ``validate``."""
    x = _numeric(x, "x")
    if not (x.device.type == "cpu" or validate):
        return x
    what = "8-bit data" if levels == 256 else f"data of {levels} levels"
    if x.numel() and bool((x.abs() > 1.0 + 1e-6).any()):
        raise InputError(f"x must be {what} scaled to [-1, 1]; got values in "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")
    k = (x.to(torch.float64) + 1.0) * ((levels - 1) / 2.0)
    if bool(((k - torch.round(k)).abs() > 1e-3).any()):
        raise InputError(f"x must be {what} on the grid -1 + 2k/{levels - 1} (k = 0..{levels - 1}); got values "
                         "between bins (pass levels=L for data of L levels, or use decoder='gaussian' for "
                         "continuous data)")
    return x


def bin_edges(x, means, log_scales, levels=LEVELS):
    """(L6, L9) Each x's bin in standard units -> (a, b, 1/sigma), float64 tensors of the broadcast shape:
    a = (x - 1/(L-1) - mu) / sigma, b = (x + 1/(L-1) - mu) / sigma, a = -inf at x = -1, b = +inf at x = 1."""
    levels = check_levels(levels)
    x = _check_on_levels(x, levels)
    means, log_scales = _numeric(means, "means", x), _numeric(log_scales, "log_scales", x)
    try:
        x, means, log_scales = torch.broadcast_tensors(x, means, log_scales)
    except RuntimeError:
        raise InputError(f"shape mismatch: x {tuple(x.shape)}, means {tuple(means.shape)} and log_scales "
                         f"{tuple(log_scales.shape)} do not broadcast together") from None
    half = 1.0 / (levels - 1)                                               # (L9)  half a bin
    inv_sigma = torch.exp(-log_scales.to(torch.float64))                    # 1 / sigma
    centred = x.to(torch.float64) - means                                   # x - mu
    left, right = x < -1.0 + half, x > 1.0 - half                           # the two edge bins
    # (L6, L9)  bin edges in standard units; the edge bins open to -inf and +inf
    a = torch.where(left, -math.inf, (centred - half) * inv_sigma)
    b = torch.where(right, math.inf, (centred + half) * inv_sigma)
    return a, b, inv_sigma


def discretized_gaussian_log_likelihood(x, means, log_scales, approx="exact", levels=LEVELS):
    """(L6, L9) log P(x) of data x on L levels in [-1, 1] under N(means, exp(log_scales)^2), per element, in nats.

    P(x) = Phi((x + h - mu) / sigma) - Phi((x - h - mu) / sigma), h = 1/(L-1) (1/255 for the default 8-bit
    data); the edge bins extend to -inf (x = -1) and +inf (x = 1). Shapes broadcast; the result has the
    broadcast shape (float64). approx="exact": torch.special.log_ndtr, stable in both tails. approx="tanh":
    Ho et al.'s tanh approximation of Phi with improved-diffusion's clamp of every probability at 1e-12.
    """
    check_choice(approx, APPROXES, "approx")
    a, b, _ = bin_edges(x, means, log_scales, levels)
    if approx == "exact":
        # (L6)  log(Phi(b) - Phi(a))
        return _log_phi_diff(a, b)
    left, right = a == -math.inf, b == math.inf
    # (L6, tanh)  log(max(P, 1e-12)) with Phi replaced by the tanh approximation
    p = torch.where(left, _tanh_cdf(b), torch.where(right, 1.0 - _tanh_cdf(a), _tanh_cdf(b) - _tanh_cdf(a)))
    return torch.log(torch.clamp(p, min=1e-12))


def gaussian_log_likelihood(x, means, log_scales):
    """log N(x; mean, sigma^2) elementwise in nats (continuous data), log_scales = log sigma."""
    like = _first_tensor(x, means, log_scales)
    x, means = _numeric(x, "x", like), _numeric(means, "means", like)
    log_scales = _numeric(log_scales, "log_scales", like)
    z = (x - means) * torch.exp(-log_scales)
    # log N = -1/2 log(2 pi) - log sigma - z^2 / 2
    return -0.5 * math.log(2.0 * math.pi) - log_scales - 0.5 * z * z


# ---- the variational bound ------------------------------------------------------------------

def _per_dim(a):
    """Mean over every non-batch dimension: (N, ...) -> (N,)."""
    return a.reshape(a.shape[0], -1).mean(dim=1)


def _noise_source(sched, noise, T, x0):
    """A function k -> eps_k shaped like x0: from a (T, *x0.shape) tensor/array or a generator.

    A torch.Generator draws standard normals on its own device (then moved to x0's); a
    np.random.Generator draws in NumPy (as the reference does) and the draw is moved to x0.
    """
    shape = tuple(x0.shape)
    if isinstance(noise, torch.Generator):
        return lambda k: torch.randn(shape, generator=noise, dtype=x0.dtype, device=noise.device).to(x0.device)
    if isinstance(noise, np.random.Generator):
        return lambda k: torch.as_tensor(noise.standard_normal(shape)).to(device=x0.device, dtype=x0.dtype)
    noise = _data(sched, noise, "noise")
    if tuple(noise.shape) != (T,) + shape:
        raise InputError(f"shape mismatch: noise must have shape (T, *x0.shape) = {(T,) + shape}, "
                         f"got {tuple(noise.shape)} (one eps per step), or pass a np.random.Generator")
    noise = noise.to(x0.device)
    return lambda k: noise[k]


def prior_kl(sched, x0):
    """(L8) L_T = KL(q(x_T | x_0) || N(0, I)) elementwise in nats; q(x_T | x_0) = N(sqrt(abar) x_0, 1 - abar)."""
    x0 = x0 if isinstance(x0, torch.Tensor) else torch.as_tensor(np.asarray(x0))  # checked by normal_kl
    a = sched.alpha_bar[-1].to(x0.device)                  # () abar_T, float64
    # (L8, F3)  mean sqrt(abar_T) x_0, log-variance log(1 - abar_T), against N(0, 1)
    return normal_kl(torch.sqrt(a) * x0, torch.log1p(-a), torch.zeros_like(a), torch.zeros_like(a))


def vlb_term(sched, model_output, x0, xt, t, prediction="eps", variance="fixed_small", clip_x0=False,
             decoder="discretized", levels=LEVELS):
    """(L1) One term of the bound per example, in bits/dim (N,) float64, from the network's output at x_t.

    As reference.losses.vlb_term: rows with t >= 1 the KL (L2), rows with t == 0 the decoder (L6, L9 on
    ``levels`` levels; "gaussian": a density). Differentiable (the training losses of torch_port/vlb.py).
    """
    check_choice(decoder, DECODERS, "decoder")
    x0, xt = _data(sched, x0, "x0"), _data(sched, xt, "xt")
    tt = _timesteps(sched, t, x0)
    tt = tt.expand(x0.shape[0]) if isinstance(tt, torch.Tensor) else torch.full((x0.shape[0],), tt, device=x0.device)
    p = p_mean_variance(sched, model_output, xt, tt, prediction, variance, clip_x0)
    first = (tt == 0).reshape((-1,) + (1,) * (x0.ndim - 1))               # (N, 1, ...)
    log_scale = 0.5 * p.log_variance                                        # sigma of the decoder p(x_0 | x_1)
    if decoder == "discretized":
        # x_0 must lie on the grid only where t == 0; elsewhere the decoder's value is not used (-1: a level)
        x_dec = torch.where(first, x0, -torch.ones((), dtype=x0.dtype, device=x0.device))
        ll = discretized_gaussian_log_likelihood(x_dec, p.mean, log_scale, levels=levels)       # (L6)
    else:
        ll = gaussian_log_likelihood(x0, p.mean, log_scale)
    q_mean, _, q_log_var = q_posterior(sched, x0, xt, tt)                   # (P2, P3)
    kl = normal_kl(q_mean, q_log_var, p.mean, p.log_variance)               # (L2)
    # (L1, L7)  L_0 = -log p(x_0 | x_1) where t == 0, L_t = KL elsewhere, in bits/dim
    return _per_dim(torch.where(first, -ll, kl)).to(torch.float64) / LN2


def vlb_terms(sched, denoise, x0, noise, prediction="eps", variance="fixed_small", clip_x0=False,
              decoder="discretized", progress=None, levels=LEVELS):
    """(L1, L8) The variational bound term by term, per example, in bits per dimension.

    ``denoise(xt, t) -> model_output``, t a LongTensor (N,) of 0-based indices on x0's device.
    ``noise``: (T, *x0.shape) tensor/array (eps for x_t at each index t), or a torch.Generator /
    np.random.Generator. terms[0] is the decoder -log p(x_0 | x_1) (L6, L9 on ``levels`` levels, or a
    Gaussian density for decoder="gaussian"); terms[t >= 1] = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) (L2).
    variance: "fixed_small" | "fixed_large" | "learned" (a 2C-channel network, V1).
    Returns {"prior": (N,), "terms": (T, N), "total": (N,)} float64 tensors in bits/dim (L7).
    """
    check_choice(decoder, DECODERS, "decoder")
    check_choice(prediction, PREDICTIONS, "prediction")
    check_choice(variance, ALL_VARIANCES, "variance")
    if decoder == "discretized":
        x0 = _check_on_levels(x0, check_levels(levels), validate=bool(getattr(sched, "validate", False)))
    else:
        x0 = _data(sched, x0, "x0")
    eps_at = _noise_source(sched, noise, sched.T, x0)
    N = x0.shape[0]
    terms = []
    for t in check_progress(progress)(range(sched.T)):
        tt = torch.full((N,), t, dtype=torch.long, device=x0.device)
        xt = q_sample(sched, x0, tt, eps_at(t))                                 # (F3)
        p = p_mean_variance(sched, denoise(xt, tt), xt, tt, prediction, variance, clip_x0)
        if t == 0:
            log_scale = 0.5 * p.log_variance                                    # sigma of p(x_0 | x_1)
            if decoder == "discretized":
                ll = discretized_gaussian_log_likelihood(x0, p.mean, log_scale, levels=levels)  # (L6, L9)
            else:
                ll = gaussian_log_likelihood(x0, p.mean, log_scale)
            terms.append(-_per_dim(ll).to(torch.float64) / LN2)                # (L1, L7)  L_0 in bits/dim
        else:
            q_mean, _, q_log_var = q_posterior(sched, x0, xt, tt)               # (P2, P3)
            kl = normal_kl(q_mean, q_log_var, p.mean, p.log_variance)           # (L2)
            terms.append(_per_dim(kl).to(torch.float64) / LN2)                 # (L1, L7)  L_t in bits/dim
    terms = torch.stack(terms)                                                  # (T, N)
    prior = _per_dim(prior_kl(sched, x0.to(torch.float64))) / LN2               # (L8)
    # (L1)  -ELBO = L_T + sum_{t>=1} L_t + L_0
    return {"prior": prior, "terms": terms, "total": prior + terms.sum(dim=0)}


def bits_per_dim(sched, denoise, x0, noise, prediction="eps", variance="fixed_small", clip_x0=False,
                 decoder="discretized", progress=None, levels=LEVELS):
    """(L7) The bound's total averaged over the batch, in bits per dimension -> float (``levels``: see vlb_terms)."""
    out = vlb_terms(sched, denoise, x0, noise, prediction, variance, clip_x0, decoder, progress, levels)
    return float(out["total"].mean())
