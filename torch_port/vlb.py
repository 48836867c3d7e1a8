"""The bound as a training loss: L_vlb, L_hybrid (Nichol & Dhariwal 2021), written again in torch.

Mirror of reference/vlb.py: same names and meaning. Derivations: derivations/learned_variance.md (V*),
derivations/elbo.md (L1, L2, L6, L9). The gradients come from autograd (the reference writes them by hand;
the cross-tests compare the two): the stop-gradient of L_hybrid is a ``detach()`` of the mean channels.

  loss "simple"  L_simple (L4) on the mean channels.
  loss "hybrid"  L_simple + lambda T L_t with the mean frozen inside L_t (V4), lambda = 0.001.
  loss "vlb"     w T L_t, the whole gradient; w = 1/(T p_t) under importance sampling (I2), else 1.
"""
from __future__ import annotations

import math

import torch

from common import rules
from common.choices import LOSSES, TRAIN_VARIANCES  # noqa: F401  (torch_port.vlb's names)
from common.rules import HYBRID_LAMBDA, loss_settings  # noqa: F401  (the rule, written once; torch_port.vlb's names)
from reference.errors import InputError, check_choice

from .diffusion import ALL_VARIANCES, LEARNED, PREDICTIONS, _data, split_output
from .losses import LEVELS, LN2, simple_loss, vlb_term

__all__ = ["LOSSES", "TRAIN_VARIANCES", "HYBRID_LAMBDA", "check_loss", "loss_settings", "vlb_term_and_grad",
           "training_loss", "training_loss_and_grad", "best_step_variance"]


def check_loss(loss, variance, hybrid_lambda=HYBRID_LAMBDA):
    """The loss against the variance (common.rules.check_loss, in the arguments' words), as the reference's."""
    check_choice(variance, ALL_VARIANCES, "variance")
    rules.check_loss(loss, variance, hybrid_lambda)


def _term(sched, model_output, x0, xt, t, prediction, variance, levels):
    """(L1) L_t per example in bits/dim: the L-level decoder (L9) for images, a density when levels is None."""
    decoder = "gaussian" if levels is None else "discretized"
    return vlb_term(sched, model_output, x0, xt, t, prediction, variance, False, decoder, levels or LEVELS)


def vlb_term_and_grad(sched, model_output, x0, xt, t, prediction="eps", variance=LEARNED, levels=LEVELS,
                      stop_mean=False):
    """(L1, V2-V4) L_t per example in bits/dim (N,) and d(sum of the terms)/d model_output, by autograd.

    stop_mean=True: the mean channels are detached (L_hybrid's stop-gradient), so their gradient is 0.
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    out = _data(sched, model_output, "model_output").detach().requires_grad_(True)
    with torch.enable_grad():
        net = out
        if stop_mean:
            mean_out, u = split_output(out, variance)
            net = mean_out.detach() if u is None else torch.cat([mean_out.detach(), u], dim=1)
        terms = _term(sched, net, x0, xt, t, prediction, variance, levels)
        if not terms.requires_grad:  # a fixed variance with the mean frozen: nothing depends on the output
            return terms.detach(), torch.zeros_like(out)
        (grad,) = torch.autograd.grad(terms.sum(), out)
    return terms.detach(), grad


def _weights(weights, n, like):
    if weights is None:
        return None
    w = weights if isinstance(weights, torch.Tensor) else torch.as_tensor(weights)
    w = w.to(device=like.device, dtype=torch.float64)
    if tuple(w.shape) != (n,):
        raise InputError(f"weights must be {n} finite numbers >= 0 (one per example), got shape {tuple(w.shape)}")
    return w


def training_loss(sched, model_output, x0, xt, t, eps, prediction="eps", loss="simple", variance="fixed_small",
                  hybrid_lambda=HYBRID_LAMBDA, weights=None, weighting=None, gamma=5.0, levels=LEVELS):
    """(L4, V4, I2) The training loss of one batch -> (0-d tensor, differentiable; terms (N,) float64 detached,
    None for "simple"). Same meaning as reference.vlb.training_loss_and_grad."""
    check_loss(loss, variance, hybrid_lambda)
    if loss == "simple":
        return simple_loss(sched, model_output, x0, t, eps, prediction, weighting, gamma), None
    T = sched.T
    mean_out, u = split_output(model_output, variance)
    if loss == "vlb":
        terms = _term(sched, model_output, x0, xt, t, prediction, variance, levels)
        w = _weights(weights, terms.shape[0], terms)
        # (V4, I2)  L = mean_n w_n T L_t
        value = torch.mean((T * terms) if w is None else (w * T * terms))
        return value.to(model_output.dtype), terms.detach()
    if weights is not None:
        raise InputError("weights (importance sampling) apply to loss 'vlb' only")
    # (V4)  the mean frozen inside L_t: only the variance channels learn from the bound
    terms = _term(sched, torch.cat([mean_out.detach(), u], dim=1), x0, xt, t, prediction, variance, levels)
    simple = simple_loss(sched, mean_out, x0, t, eps, prediction, weighting, gamma)
    # (V4)  L_hybrid = L_simple + lambda T mean_n L_t
    value = simple + (hybrid_lambda * T * torch.mean(terms)).to(simple.dtype)
    return value, terms.detach()


def training_loss_and_grad(sched, model_output, x0, xt, t, eps, prediction="eps", loss="simple",
                           variance="fixed_small", hybrid_lambda=HYBRID_LAMBDA, weights=None, weighting=None,
                           gamma=5.0, levels=LEVELS):
    """``training_loss`` and d loss / d model_output by autograd -> (0-d tensor, gradient, terms or None)."""
    out = _data(sched, model_output, "model_output").detach().requires_grad_(True)
    with torch.enable_grad():
        value, terms = training_loss(sched, out, x0, xt, t, eps, prediction, loss, variance, hybrid_lambda,
                                     weights, weighting, gamma, levels)
        (grad,) = torch.autograd.grad(value, out)
    return value.detach(), grad, terms


def best_step_variance(sched, small_terms):
    """(V6) The bound's step terms with the best single variance at every step t >= 1, given the mean: from the
    fixed_small terms (T,) in bits/dim (mean over items) -> (terms (T,), variances (T,)) float64 tensors; t = 0
    kept, its variance nan. As the reference's."""
    small = torch.as_tensor(small_terms, dtype=torch.float64)
    if small.shape != (sched.T,) or not bool(torch.isfinite(small).all()) or bool((small < 0).any()):
        raise InputError(f"small_terms must be {sched.T} finite terms >= 0 (bits/dim, one per step t), "
                         f"got shape {tuple(small.shape)}")
    # (V6)  e_t / beta~_t = 2 ln 2 L_t(fixed_small)
    ratio = 2.0 * LN2 * small[1:]
    # (V6)  KL* = 1/2 log(1 + e_t / beta~_t), sigma*^2 = beta~_t (1 + e_t / beta~_t)
    terms = torch.cat([small[:1], 0.5 * torch.log1p(ratio) / LN2])
    beta_tilde = torch.as_tensor(sched.posterior_variance, dtype=torch.float64, device=small.device)
    variances = torch.cat([small.new_full((1,), math.nan), beta_tilde[1:] * (1.0 + ratio)])
    return terms, variances
