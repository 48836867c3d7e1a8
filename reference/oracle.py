"""Gaussian data: the exact optimal denoiser and the exact likelihood — derivations/gaussian_oracle.md (G1, G2).

For data x_0 ~ N(mu, Sigma) every quantity of the diffusion is Gaussian and known in closed form,
so tests can run the samplers and the bound with a perfect network. The forward process adds
isotropic noise, so it commutes with rotations: in the eigenbasis of Sigma = U diag(lam) U^T every
dimension diffuses on its own. Each formula below is per eigen-dimension with variance lam.

Two covariance forms:
  diagonal   ``var`` of the same (or a broadcastable) shape as one example (data (N, ...)), and
  full       ``cov`` a (D, D) matrix for data (N, D): we rotate to the eigenbasis and back.

Time index ``t`` is 0-based (paper step t+1); abar = alpha_bar[t].
"""
from __future__ import annotations

import math

import numpy as np

from .diffusion import PREDICTIONS, VARIANCES
from .errors import InputError, check_choice, check_timesteps

LN2 = math.log(2.0)


class GaussianOracle:
    """x_0 ~ N(mean, Sigma): ``var`` per-dimension variances (diagonal) or ``cov`` a (D, D) matrix.

    Shapes: diagonal: ``mean`` and ``var`` broadcast to one example's shape (e.g. (2,) or (C, H, W));
    full: ``mean`` (D,), ``cov`` (D, D), data (N, D).
    """

    def __init__(self, mean, var=None, cov=None):
        if (var is None) == (cov is None):
            raise InputError("give exactly one of var (per-dimension variances) or cov (a (D, D) covariance)")
        mean = np.asarray(mean, dtype=np.float64)
        if cov is not None:
            cov = np.asarray(cov, dtype=np.float64)
            if mean.ndim != 1 or cov.shape != (mean.size, mean.size):
                raise InputError(f"shape mismatch: cov must be (D, D) for mean (D,), got {cov.shape} and {mean.shape}")
            if not np.allclose(cov, cov.T):
                raise InputError("cov must be symmetric")
            lam, U = np.linalg.eigh(cov)  # Sigma = U diag(lam) U^T
            self.U, self.lam = U, lam
            self.m = mean @ U  # the mean in the eigenbasis (rows are examples: z = x U)
        else:
            var = np.asarray(var, dtype=np.float64)
            shape = np.broadcast_shapes(mean.shape, var.shape)
            self.U, self.lam, self.m = None, np.broadcast_to(var, shape).copy(), np.broadcast_to(mean, shape).copy()
        if not np.all(self.lam > 0):
            raise InputError("the data covariance must be positive definite (every variance > 0)")

    # ---- rotations (identity for the diagonal form) ---------------------------------------------

    def _to_eig(self, x):
        return x if self.U is None else x @ self.U  # z = U^T x for each row x

    def _from_eig(self, z):
        return z if self.U is None else z @ self.U.T

    def _abar(self, sched, t, x):
        tt = check_timesteps(t, sched.T, n=x.shape[0])
        a = sched.alpha_bar[tt]
        return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))

    # ---- (G1) the optimal predictors -----------------------------------------------------------

    def x0_mean(self, sched, xt, t):
        """(G1) E[x_0 | x_t] = mu + lam sqrt(abar) (x_t - sqrt(abar) mu) / (abar lam + 1 - abar)."""
        xt = np.asarray(xt, dtype=np.float64)
        a, z = self._abar(sched, t, xt), self._to_eig(xt)
        # (G1)  Gaussian conditioning: Cov(x_0, x_t) / Var(x_t) times the innovation
        z0 = self.m + self.lam * np.sqrt(a) * (z - np.sqrt(a) * self.m) / (a * self.lam + 1.0 - a)
        return self._from_eig(z0)

    def x0_var(self, sched, t):
        """(G1) Var[x_0 | x_t] per eigen-dimension, (T or N, D...): lam (1 - abar) / (abar lam + 1 - abar)."""
        a = np.asarray(sched.alpha_bar[t], dtype=np.float64)
        a = a.reshape(a.shape + (1,) * self.lam.ndim)
        return self.lam * (1.0 - a) / (a * self.lam + 1.0 - a)

    def predict(self, sched, xt, t, prediction="eps"):
        """The optimal network output: E[x_0 | x_t], E[eps | x_t] or E[v | x_t] (all linear in x_0, eps)."""
        check_choice(prediction, PREDICTIONS, "prediction")
        x0 = self.x0_mean(sched, xt, t)
        if prediction == "x0":
            return x0
        a = self._abar(sched, t, x0)
        # (R2, G1)  E[eps | x_t] = (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar)
        eps = (np.asarray(xt, dtype=np.float64) - np.sqrt(a) * x0) / np.sqrt(1.0 - a)
        if prediction == "eps":
            return eps
        # (R3, G1)  E[v | x_t] = sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x_0 | x_t]
        return np.sqrt(a) * eps - np.sqrt(1.0 - a) * x0

    def denoiser(self, sched, prediction="eps"):
        """A ``denoise(xt, t) -> model_output`` callable for the samplers and the bound."""
        check_choice(prediction, PREDICTIONS, "prediction")
        return lambda xt, t: self.predict(sched, xt, t, prediction).astype(np.asarray(xt).dtype, copy=False)

    # ---- data and its exact likelihood (G2) ----------------------------------------------------

    def sample(self, rng, n):
        """n draws of x_0, shape (n, *example_shape)."""
        z = self.m + np.sqrt(self.lam) * rng.standard_normal((n,) + self.lam.shape)
        return self._from_eig(z)

    @property
    def mean(self):
        return self._from_eig(self.m)

    @property
    def cov(self):
        """The full (D, D) covariance, or the per-dimension variances for the diagonal form."""
        return self.lam if self.U is None else (self.U * self.lam) @ self.U.T

    def nll_bpd(self, x0):
        """(G2) -log N(x_0; mu, Sigma) per example, in bits per dimension: (N,)."""
        z = self._to_eig(np.asarray(x0, dtype=np.float64))
        # (G2)  -log p = 1/2 sum_d [log(2 pi lam_d) + (z_d - m_d)^2 / lam_d]
        nats = 0.5 * (np.log(2.0 * math.pi * self.lam) + (z - self.m) ** 2 / self.lam)
        return nats.reshape(nats.shape[0], -1).mean(axis=1) / LN2

    def entropy_bpd(self):
        """(G2) The differential entropy E[-log p(x_0)] = 1/2 log(2 pi e lam), averaged over dimensions, in bits."""
        return float(np.mean(0.5 * np.log(2.0 * math.pi * math.e * self.lam)) / LN2)

    # ---- the bound in closed form (gaussian decoder) ---------------------------------------------

    @staticmethod
    def _model_log_var(sched, variance):
        """(M2) log sigma_t^2 of p_theta(x_{t-1} | x_t), shape (T,), as diffusion.p_mean_variance defines it."""
        check_choice(variance, VARIANCES, "variance")
        if variance == "fixed_small":
            return sched.posterior_log_variance_clipped  # (P4) log beta~, entry 0 -> log beta~_1
        return sched.fixed_large_log_variance  # beta_t, entry 0 -> beta~_1

    def _prior_nats(self, sched):
        """(L8) E KL(N(sqrt(abar_T) x_0, 1 - abar_T) || N(0, 1)) per dimension."""
        a = sched.alpha_bar[-1]
        return 0.5 * (-math.log1p(-a) + (1.0 - a) + a * (self.m**2 + self.lam) - 1.0)

    def expected_vlb_bpd(self, sched, variance="fixed_small"):
        """E over x_0 and the noise of ``losses.vlb_terms`` (decoder "gaussian", this oracle as the network).

        Forward decomposition, term by term (bits/dim): {"prior": float, "terms": (T,), "total": float}.
          t >= 1: E KL(N(mu~(x0, xt), beta~) || N(mu~(x0_hat, xt), s2))
                   = 1/2 (beta~/s2 - 1 - log(beta~/s2)) + c0^2 Var[x0 | xt] / (2 s2),  c0 = coef of x0 (P2)
          t == 0: E -log N(x0; x0_hat, s2) = 1/2 log(2 pi s2) + Var[x0 | x_t=0] / (2 s2).
        """
        log_s2 = self._model_log_var(sched, variance)[:, None]  # (T, 1)
        s2 = np.exp(log_s2)
        V = self.x0_var(sched, np.arange(sched.T)).reshape(sched.T, -1)  # (T, D)
        bt = sched.posterior_variance[:, None]
        c0 = sched.posterior_mean_coef_x0[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):  # beta~_0 = 0: row 0 is replaced below
            ratio = bt / s2
            kl = 0.5 * (ratio - 1.0 - np.log(ratio)) + c0**2 * V / (2.0 * s2)
        kl[0] = 0.5 * (math.log(2.0 * math.pi) + log_s2[0]) + V[0] / (2.0 * s2[0])
        terms = kl.mean(axis=1) / LN2
        prior = float(np.mean(self._prior_nats(sched)) / LN2)
        return {"prior": prior, "terms": terms, "total": prior + float(terms.sum())}

    def vlb_gap_bpd(self, sched, variance="fixed_small"):
        """E[-ELBO] - H(x_0) by the reverse decomposition (L1), in bits/dim -> float >= 0.

        E[-ELBO] = H(x_0) + KL(q(x_T) || N(0, I)) + sum_t E_{q(x_t)} KL(q(x_{t-1} | x_t) || p(x_{t-1} | x_t)),
        with x_{-1} = x_0. For Gaussian data q(x_{t-1} | x_t) is Gaussian with the model's mean (the
        oracle) and variance beta~_t + c0_t^2 Var[x0 | x_t], so each KL is 1/2 (r - 1 - log r),
        r = (beta~_t + c0_t^2 V_t) / sigma_t^2: the whole gap is the variance mismatch plus the prior.
        """
        s2 = np.exp(self._model_log_var(sched, variance))[:, None]
        V = self.x0_var(sched, np.arange(sched.T)).reshape(sched.T, -1)
        r = (sched.posterior_variance[:, None] + sched.posterior_mean_coef_x0[:, None] ** 2 * V) / s2
        kl = 0.5 * (r - 1.0 - np.log(r))  # (L2)  equal means, variances in ratio r
        a = sched.alpha_bar[-1]
        lam_T = a * self.lam + 1.0 - a  # q(x_T) = N(sqrt(abar_T) m, abar_T lam + 1 - abar_T)
        prior = 0.5 * (lam_T + a * self.m**2 - 1.0 - np.log(lam_T))
        return float((kl.sum(axis=0).mean() + np.mean(prior)) / LN2)
