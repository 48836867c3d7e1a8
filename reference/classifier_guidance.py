"""Classifier guidance (Dhariwal & Nichol 2021) — derivations/classifier_guidance.md (H1-H6).

A classifier's gradient g = grad log p(y | x) steers every sampler; ``grad_fn`` supplies it, in the variable
the sampler speaks:

    chain (DDPM, DDIM):   grad_fn(x_t, t, y)     grad_{x_t} log p_t(y | x_t), t the 0-based step (N,)
    solvers (x~, sigma):  grad_fn(x~, sigma, y)  grad_{x~} log p(y | x~ at sigma) = sqrt(abar) grad_{x_t}   (H4)

``classifier.Classifier.grad_log_prob`` is a chain grad_fn; ``sigma_grad(sched, grad_fn)`` turns one into the
solvers' form at the trained levels (K8); ``mixture_classifier(oracle)`` is the exact classifier of the labelled
mixture at every noise level, in both forms. y: an int or (N,) in 0..K-1 (checked by the classifier).

    x_prev, x0 = classifier_guided_ddpm_step(sched, out, x_t, t, noise, grad_fn, y, s)     # Algorithm 1 (H1)
    den = classifier_guided_model(sched, model, grad_fn, y, s)        # eps_s (Algorithm 2, H3): sample_loop
    D_s = classifier_guided_denoiser(D, sigma_grad_fn, s, y)          # D + s sigma^2 g (H4): every ODE solver

The gradient is taken at x_t, the sample the step starts from, at the network's level t: that is where the exact
conditional chain needs it (H2), not at the step's mean (openai/guided-diffusion #51). s is the classifier scale
(guided-diffusion's ``classifier_scale``); s = 0 is the unconditional sampler.
"""
from __future__ import annotations

import math

import numpy as np

from common.classifier import check_classifier_scale

from . import samplers
from .diffusion import PREDICTIONS, _col, _data, p_mean_variance, predict_eps
from .errors import InputError, check_choice, check_labels, check_same_shape, check_timesteps
from .samplers import Sampled
from .score import sigma_to_t

__all__ = ["MixtureClassifier", "check_classifier_scale", "classifier_guided_ddpm_step", "classifier_guided_denoiser",
           "classifier_guided_eps", "classifier_guided_model", "classifier_guided_sample_loop", "mixture_classifier",
           "sigma_grad"]


def _grad(grad_fn, x, level, y):
    g = np.asarray(grad_fn(x, level, y))
    check_same_shape(g, x, "the classifier gradient", "x")
    return g


# ---- the chain: Algorithm 1 (H1, H2) and Algorithm 2 (H3) ------------------------------------------------------

def classifier_guided_ddpm_step(sched, model_output, xt, t, noise, grad_fn, y, scale, prediction="eps",
                                variance="fixed_small", clip_x0=False, level=None):
    """(H1) One ancestral step of Dhariwal & Nichol's Algorithm 1 -> (x_prev, x0_hat):

    x_{t-1} = mu + s Sigma grad_{x_t} log p(y | x_t) + sqrt(Sigma) z, with samplers.ddpm_step's mean mu and
    variance Sigma (diffusion.p_mean_variance; no noise at t = 0, A1). ``grad_fn(x_t, level, y)`` is called once,
    at x_t (H2); ``level`` is the classifier's 0-based step, t by default (on a respaced schedule, the original
    index, as classifier_guided_sample_loop passes). Shapes as ddpm_step's."""
    s = check_classifier_scale(scale)
    xt = _data(xt, "xt")
    tt = check_timesteps(t, sched.T, n=xt.shape[0])
    noise = samplers._noise(noise, xt, needed=bool(np.any(tt != 0)))
    p = p_mean_variance(sched, model_output, xt, tt, prediction, variance, clip_x0)
    # (H2)  the gradient at x_t, the point the network read: the exact conditional mean needs it there, not at mu
    g = _grad(grad_fn, xt, tt if level is None else level, y) if s else 0.0
    # (H1)  mu_s = mu + s Sigma grad log p(y | x_t)
    mean = p.mean + s * p.variance * g
    # (H1, A1)  x_{t-1} = mu_s + sqrt(Sigma) z, z = 0 at t = 0
    return (mean + _col(tt != 0, xt) * np.sqrt(p.variance) * noise).astype(xt.dtype, copy=False), p.x0


def classifier_guided_eps(sched, model_output, xt, t, grad_fn, y, scale, prediction="eps"):
    """(H3) Algorithm 2's eps_s = eps_hat - s sqrt(1 - abar_t) grad_{x_t} log p(y | x_t), the gradient at x_t and
    level t. model_output in ``prediction`` ("eps" | "x0" | "v") is converted to eps_hat first (R2, R5)."""
    s = check_classifier_scale(scale)
    check_choice(prediction, PREDICTIONS, "prediction")
    xt = _data(xt, "xt")
    tt = check_timesteps(t, sched.T, n=xt.shape[0])
    eps = predict_eps(sched, xt, tt, model_output, prediction)
    if not s:
        return eps
    # (H3)  eps_s = eps - s sqrt(1 - abar_t) g(x_t)
    return (eps - s * _col(sched.sqrt_one_minus_alpha_bar[tt], xt) * _grad(grad_fn, xt, tt, y)).astype(
        xt.dtype, copy=False)


def classifier_guided_model(sched, model, grad_fn, y, scale, prediction="eps"):
    """(H3) den(x_t, t) -> the guided eps of ``model(x_t, t)`` (output in ``prediction``): for samplers.sample_loop
    with prediction="eps" ("ddim": Algorithm 2; "ddpm": the eps-form ancestral step, exact at s = 1, H2) and, through
    solvers.model_denoiser, the ODE solvers (the same D_s as classifier_guided_denoiser, H4)."""
    s = check_classifier_scale(scale)
    return lambda xt, t: classifier_guided_eps(sched, model(xt, t), xt, t, grad_fn, y, s, prediction)


def classifier_guided_sample_loop(sched, denoise, grad_fn, y, scale, x_T, rng_or_noises, steps=None,
                                  spacing="leading", prediction="eps", variance="fixed_small", clip_x0=False):
    """(H1) Algorithm 1 from x_T -> Sampled(x, None): ancestral steps on ``respace(sched, kept)`` (A4) as
    samplers.sample_loop's "ddpm", the network and the classifier called at the original 0-based steps t.
    ``rng_or_noises``: a Generator (one standard normal draw per step) or one noise array per step."""
    check_classifier_scale(scale)
    x = _data(x_T, "x_T")
    kept = np.arange(sched.T) if steps is None else samplers.timesteps(sched.T, steps, spacing)
    step_sched = samplers.respace(sched, kept, warn=False) if kept.size < sched.T else sched
    noise_at = samplers._noises(rng_or_noises, kept.size, x)
    for k in range(kept.size):
        i = kept.size - 1 - k                                             # the noisiest kept step first
        t = np.full(x.shape[0], kept[i], dtype=np.int64)
        ts = t if step_sched is sched else np.full_like(t, i)              # the respaced schedule's index
        x, _ = classifier_guided_ddpm_step(step_sched, denoise(x, t), x, ts, noise_at(k), grad_fn, y, scale,
                                           prediction, variance, clip_x0, level=t)
    return Sampled(x, None)


# ---- the solvers: the denoiser form (H4) ---------------------------------------------------------------------

def classifier_guided_denoiser(D, grad_fn, scale, y):
    """(H4) D_s(x~, sigma) = D(x~, sigma) + s sigma^2 grad_{x~} log p(y | x~, sigma) for every solver of solvers.py
    (Euler is DDIM, K7). ``grad_fn(x~, sigma, y)`` in the solvers' variable (sigma_grad, MixtureClassifier's)."""
    s = check_classifier_scale(scale)

    def D_s(x, sigma):
        x0 = D(x, sigma)
        if not s:
            return x0
        # (H4)  D_s = D + s sigma^2 grad_{x~} log p(y | x~)
        return (x0 + (s * sigma ** 2) * _grad(grad_fn, x, sigma, y)).astype(x.dtype, copy=False)

    return D_s


def sigma_grad(sched, grad_fn):
    """(H4, K8) grad_fn(x~, sigma, y) from a chain grad_fn(x_t, t, y) (a classifier trained on the discrete steps):
    t = the trained step of sigma (refused between steps, K8), x_t = sqrt(abar_t) x~, grad_{x~} = sqrt(abar_t) g."""
    def g(x, sigma, y):
        t = sigma_to_t(sched, sigma)
        ra = sched.sqrt_alpha_bar[t]
        # (H4)  x_t = sqrt(abar) x~, so grad_{x~} f = sqrt(abar) grad_{x_t} f
        return ra * _grad(grad_fn, x * ra, np.full(x.shape[0], t, dtype=np.int64), y)

    return g


# ---- the exact classifier of the labelled mixture (H5) --------------------------------------------------------

class MixtureClassifier:
    """(H5) p_t(y | x) of oracle.GaussianMixtureOracle's components at every continuous alpha_bar, exactly.

    log p_t(y | x) = log w_y N_y(x) - log sum_k w_k N_k(x), the log of the oracle's responsibility r_y (G4), and
    grad = -C_y^{-1}(x - sqrt(abar) mu_y) + sum_k r_k C_k^{-1}(x - sqrt(abar) mu_k), C_k = abar Sigma_k + (1 - abar) I,
    from the responsibilities and the components' covariances solved directly. x (N, *shape) in VP variables."""

    def __init__(self, oracle):
        self.oracle, self.num_classes = oracle, oracle.num_classes
        lam, U, K = oracle.lam, oracle.U, oracle.num_classes
        # Sigma_k as matrices (K, D, D): the oracle keeps eigenvectors and eigenvalues
        self.cov = np.stack([np.diag(l) for l in lam]) if U is None else (U * lam[:, None, :]) @ np.swapaxes(U, 1, 2)
        self.means = oracle.m.reshape(K, -1)

    def _y(self, y, n):
        return check_labels(y, self.num_classes, n, allow_null=False)

    def log_prob(self, x, alpha_bar, y):
        """(H5) log p_t(y | x) at alpha_bar (a number or (N,)), (N,): log w_y + log q(x | y) - log q(x) (G3)."""
        x = np.asarray(x, dtype=np.float64)
        y = self._y(y, x.shape[0])
        o = self.oracle
        return o.log_w[y] + o.log_prob(x, alpha_bar, y) - o.log_prob(x, alpha_bar)

    def grad_log_prob(self, x, alpha_bar, y):
        """(H5) grad_x log p_t(y | x), like x: the class's Gaussian score minus the responsibility-weighted ones."""
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        y, r = self._y(y, n), self.oracle.responsibilities(x, alpha_bar)          # (N,), (N, K) (G4)
        a = np.broadcast_to(np.asarray(alpha_bar, dtype=np.float64), (n,))[None, :, None, None]   # (1, N, 1, 1)
        D = self.means.shape[1]
        # (G3)  C_k = abar Sigma_k + (1 - abar) I, per component and example (K, N, D, D)
        C = a * self.cov[:, None] + (1.0 - a) * np.eye(D)
        diff = x.reshape(1, n, D) - np.sqrt(a[..., 0]) * self.means[:, None, :]   # (K, N, D)
        # (H5)  grad log w_k N_k(x) = -C_k^{-1} (x - sqrt(abar) mu_k)
        gk = -np.linalg.solve(C, diff[..., None])[..., 0]                         # (K, N, D)
        # (H5)  grad log r_y = grad log w_y N_y - sum_k r_k grad log w_k N_k
        g = gk[y, np.arange(n)] - np.einsum("nk,knd->nd", r, gk)
        return g.reshape(x.shape)

    def chain_grad(self, sched):
        """grad_fn(x_t, t, y) at the schedule's 0-based steps t (alpha_bar = sched.alpha_bar[t])."""
        return lambda x, t, y: self.grad_log_prob(x, sched.alpha_bar[check_timesteps(t, sched.T, n=x.shape[0])], y)

    def sigma_grad(self, x, sigma, y):
        """(H4) grad_{x~} log p(y | x~) at any sigma > 0: abar = 1 / (1 + sigma^2) (K6), x_t = sqrt(abar) x~."""
        a = 1.0 / (1.0 + float(sigma) ** 2)
        return math.sqrt(a) * self.grad_log_prob(np.asarray(x) * math.sqrt(a), a, y)


def mixture_classifier(oracle):
    """(H5) The exact classifier of a labelled GaussianMixtureOracle (component k is class k): MixtureClassifier."""
    if not hasattr(oracle, "responsibilities") or oracle.num_classes < 2:
        raise InputError("mixture_classifier needs a GaussianMixtureOracle of at least 2 components (the classes)")
    return MixtureClassifier(oracle)
