"""Classifier guidance (Dhariwal & Nichol 2021) in torch — derivations/classifier_guidance.md (H1-H6).

Mirror of reference/classifier_guidance.py (see its docstring): the same functions, arguments and errors, its own
math in torch. ``grad_fn`` returns tensors: chain form grad_fn(x_t, t, y) (classifier.Classifier.grad_log_prob),
solvers' form grad_fn(x~, sigma, y) (``sigma_grad``, MixtureClassifier.sigma_grad). The mixture's exact classifier
takes its gradient by autograd through the oracle's log-densities, not the reference's closed form.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from common.classifier import check_classifier_scale
from reference.errors import InputError, check_choice, check_labels

from . import samplers
from .diffusion import PREDICTIONS, _bcast, _check_same_shape, _col, _data, _timesteps, p_mean_variance, predict_eps
from .samplers import Sampled
from .score import sigma_to_t

__all__ = ["MixtureClassifier", "check_classifier_scale", "classifier_guided_ddpm_step", "classifier_guided_denoiser",
           "classifier_guided_eps", "classifier_guided_model", "classifier_guided_sample_loop", "mixture_classifier",
           "sigma_grad"]


def _grad(grad_fn, x, level, y):
    g = grad_fn(x, level, y)
    _check_same_shape(g, x, "the classifier gradient", "x")
    return g.to(x.dtype)


# ---- the chain: Algorithm 1 (H1, H2) and Algorithm 2 (H3) ------------------------------------------------------

def classifier_guided_ddpm_step(sched, model_output, xt, t, noise, grad_fn, y, scale, prediction="eps",
                                variance="fixed_small", clip_x0=False, level=None):
    """(H1) Algorithm 1's ancestral step -> (x_prev, x0_hat): mu + s Sigma g(x_t) + sqrt(Sigma) z (A1 mask at t = 0),
    ``grad_fn(x_t, level, y)`` called once at x_t (H2), level t by default. As the reference's."""
    s = check_classifier_scale(scale)
    xt = _data(sched, xt, "xt")
    tt = _timesteps(sched, t, xt)
    nonzero = torch.as_tensor(tt, device=xt.device) != 0                  # (A1)  z = 0 at t = 0
    noise = samplers._noise(sched, noise, xt, needed=lambda: bool(nonzero.any()))
    p = p_mean_variance(sched, model_output, xt, tt, prediction, variance, clip_x0)
    # (H2)  the gradient at x_t, the point the network read, at its level
    g = _grad(grad_fn, xt, tt if level is None else level, y) if s else 0.0
    # (H1)  mu_s = mu + s Sigma grad log p(y | x_t);  x_{t-1} = mu_s + sqrt(Sigma) z
    return p.mean + s * p.variance * g + _col(nonzero, xt) * torch.sqrt(p.variance) * noise, p.x0


def classifier_guided_eps(sched, model_output, xt, t, grad_fn, y, scale, prediction="eps"):
    """(H3) eps_s = eps_hat - s sqrt(1 - abar_t) grad_{x_t} log p(y | x_t), gradient at x_t and level t."""
    s = check_classifier_scale(scale)
    check_choice(prediction, PREDICTIONS, "prediction")
    xt = _data(sched, xt, "xt")
    tt = _timesteps(sched, t, xt)
    eps = predict_eps(sched, xt, tt, model_output, prediction)
    if not s:
        return eps
    # (H3)  eps_s = eps - s sqrt(1 - abar_t) g(x_t)
    return eps - s * _bcast(sched.sqrt_one_minus_alpha_bar, tt, xt) * _grad(grad_fn, xt, tt, y)


def classifier_guided_model(sched, model, grad_fn, y, scale, prediction="eps"):
    """(H3) den(x_t, t) -> the guided eps of ``model(x_t, t)``: for samplers.sample_loop with prediction="eps"."""
    s = check_classifier_scale(scale)
    return lambda xt, t: classifier_guided_eps(sched, model(xt, t), xt, t, grad_fn, y, s, prediction)


def classifier_guided_sample_loop(sched, denoise, grad_fn, y, scale, x_T, rng_or_noises, steps=None,
                                  spacing="leading", prediction="eps", variance="fixed_small", clip_x0=False):
    """(H1) Algorithm 1 from x_T -> Sampled(x, None), on ``respace(sched, kept)`` (A4), the network and the
    classifier at the original 0-based steps; ``rng_or_noises`` as samplers.sample_loop's."""
    check_classifier_scale(scale)
    x = _data(sched, x_T, "x_T")
    kept = torch.arange(sched.T) if steps is None else samplers.timesteps(sched.T, steps, spacing)
    kept_list = kept.tolist()
    step_sched = samplers.respace(sched, kept, warn=False) if len(kept_list) < sched.T else sched
    noise_at = samplers._noises(rng_or_noises, len(kept_list), x)
    for k in range(len(kept_list)):
        i = len(kept_list) - 1 - k                                          # the noisiest kept step first
        t = torch.full((x.shape[0],), kept_list[i], dtype=torch.long, device=x.device)
        ts = t if step_sched is sched else torch.full_like(t, i)            # the respaced schedule's index
        x, _ = classifier_guided_ddpm_step(step_sched, denoise(x, t), x, ts, noise_at(k), grad_fn, y, scale,
                                           prediction, variance, clip_x0, level=t)
    return Sampled(x, None)


# ---- the solvers: the denoiser form (H4) ---------------------------------------------------------------------

def classifier_guided_denoiser(D, grad_fn, scale, y):
    """(H4) D_s(x~, sigma) = D(x~, sigma) + s sigma^2 grad_{x~} log p(y | x~, sigma), sigma a Python float."""
    s = check_classifier_scale(scale)

    def D_s(x, sigma):
        x0 = D(x, sigma)
        # (H4)  D_s = D + s sigma^2 grad_{x~} log p(y | x~)
        return x0 + (s * sigma ** 2) * _grad(grad_fn, x, sigma, y) if s else x0

    return D_s


def sigma_grad(sched, grad_fn):
    """(H4, K8) grad_fn(x~, sigma, y) from a chain grad_fn(x_t, t, y): t the trained step of sigma (host lookup),
    x_t = sqrt(abar_t) x~, grad_{x~} = sqrt(abar_t) grad_{x_t}."""
    sqrt_abar = np.sqrt(np.asarray(sched.alpha_bar_host, dtype=np.float64)).tolist()

    def g(x, sigma, y):
        t = sigma_to_t(sched, sigma)
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        # (H4)  x_t = sqrt(abar) x~, so grad_{x~} f = sqrt(abar) grad_{x_t} f
        return sqrt_abar[t] * _grad(grad_fn, x * sqrt_abar[t], tt, y)

    return g


# ---- the exact classifier of the labelled mixture (H5) --------------------------------------------------------

class MixtureClassifier:
    """(H5) p_t(y | x) of oracle.GaussianMixtureOracle's components at every alpha_bar: log w_y + log q(x | y) -
    log q(x) (G3), its gradient by autograd. x (N, *shape) float64 tensors on the oracle's device."""

    def __init__(self, oracle):
        self.oracle, self.num_classes = oracle, oracle.num_classes

    def _y(self, y, n, device):
        if not torch.is_tensor(y) or y.device.type == "cpu":
            y = torch.from_numpy(check_labels(np.asarray(y), self.num_classes, n, allow_null=False))
        return y.to(device=device, dtype=torch.long).expand(n)

    def log_prob(self, x, alpha_bar, y):
        """(H5) log p_t(y | x) at alpha_bar (a number or a tensor (N,)), (N,)."""
        x = torch.as_tensor(x).to(torch.float64)
        y = self._y(y, x.shape[0], self.oracle.m.device)
        o = self.oracle
        return o.log_w[y] + o.log_prob(x, alpha_bar, y) - o.log_prob(x, alpha_bar)

    def grad_log_prob(self, x, alpha_bar, y):
        """(H5) grad_x log p_t(y | x) by autograd (examples independent: the gradient of the sum), like x."""
        with torch.enable_grad():
            x = torch.as_tensor(x).detach().to(torch.float64).requires_grad_(True)
            return torch.autograd.grad(self.log_prob(x, alpha_bar, y).sum(), x)[0]

    def chain_grad(self, sched):
        """grad_fn(x_t, t, y) at the schedule's 0-based steps t."""
        return lambda x, t, y: self.grad_log_prob(x, sched.alpha_bar.to(x.device)[_timesteps(sched, t, x)], y)

    def sigma_grad(self, x, sigma, y):
        """(H4) grad_{x~} log p(y | x~) at any sigma > 0: abar = 1 / (1 + sigma^2) (K6), x_t = sqrt(abar) x~."""
        a = 1.0 / (1.0 + float(sigma) ** 2)
        return math.sqrt(a) * self.grad_log_prob(x * math.sqrt(a), a, y)


def mixture_classifier(oracle):
    """(H5) The exact classifier of a labelled GaussianMixtureOracle (component k is class k): MixtureClassifier."""
    if not hasattr(oracle, "responsibilities") or oracle.num_classes < 2:
        raise InputError("mixture_classifier needs a GaussianMixtureOracle of at least 2 components (the classes)")
    return MixtureClassifier(oracle)
