"""Gaussian data: the exact optimal denoiser and the exact likelihood, in torch — (G1, G2).

Mirror of reference/oracle.py (see its docstring): for x_0 ~ N(mu, Sigma) every quantity of the
diffusion is Gaussian and known in closed form, so the port's samplers and bound can run with a
perfect network on any device. Per eigen-dimension of Sigma = U diag(lam) U^T with variance lam.
Time index ``t`` is 0-based (paper step t+1); abar = alpha_bar[t]. All oracle tensors are float64.
"""
from __future__ import annotations

import math

import torch

from reference.errors import InputError, check_choice

from .diffusion import PREDICTIONS, VARIANCES, _timesteps

LN2 = math.log(2.0)
_F64 = torch.float64

__all__ = ["GaussianOracle"]


class GaussianOracle:
    """x_0 ~ N(mean, Sigma): ``var`` per-dimension variances (diagonal) or ``cov`` a (D, D) matrix.

    Shapes: diagonal: ``mean`` and ``var`` broadcast to one example's shape; full: ``mean`` (D,),
    ``cov`` (D, D), data (N, D). ``to(device)`` moves the oracle.
    """

    def __init__(self, mean, var=None, cov=None):
        if (var is None) == (cov is None):
            raise InputError("give exactly one of var (per-dimension variances) or cov (a (D, D) covariance)")
        mean = torch.as_tensor(mean, dtype=_F64)
        if cov is not None:
            cov = torch.as_tensor(cov, dtype=_F64, device=mean.device)
            if mean.ndim != 1 or tuple(cov.shape) != (mean.numel(), mean.numel()):
                raise InputError(f"shape mismatch: cov must be (D, D) for mean (D,), got {tuple(cov.shape)} "
                                 f"and {tuple(mean.shape)}")
            if not torch.allclose(cov, cov.T):
                raise InputError("cov must be symmetric")
            lam, U = torch.linalg.eigh(cov)  # Sigma = U diag(lam) U^T
            self.U, self.lam = U, lam
            self.m = mean @ U  # the mean in the eigenbasis (rows are examples: z = x U)
        else:
            var = torch.as_tensor(var, dtype=_F64, device=mean.device)
            shape = torch.broadcast_shapes(mean.shape, var.shape)
            self.U, self.lam, self.m = None, var.expand(shape).clone(), mean.expand(shape).clone()
        if not bool((self.lam > 0).all()):
            raise InputError("the data covariance must be positive definite (every variance > 0)")

    def to(self, device):
        new = object.__new__(GaussianOracle)
        new.__dict__ = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return new

    # ---- rotations (identity for the diagonal form) ---------------------------------------------

    def _to_eig(self, x):
        return x if self.U is None else x @ self.U  # z = U^T x for each row x

    def _from_eig(self, z):
        return z if self.U is None else z @ self.U.T

    def _abar(self, sched, t, x):
        tt = _timesteps(sched, t, x)
        a = sched.alpha_bar.to(x.device)[tt]
        return a.reshape(tuple(a.shape) + (1,) * (x.ndim - a.ndim))

    # ---- (G1) the optimal predictors -----------------------------------------------------------

    def x0_mean(self, sched, xt, t):
        """(G1) E[x_0 | x_t] = mu + lam sqrt(abar) (x_t - sqrt(abar) mu) / (abar lam + 1 - abar)."""
        xt = torch.as_tensor(xt).to(_F64)
        a, z = self._abar(sched, t, xt), self._to_eig(xt)
        # (G1)  Gaussian conditioning: Cov(x_0, x_t) / Var(x_t) times the innovation
        z0 = self.m + self.lam * torch.sqrt(a) * (z - torch.sqrt(a) * self.m) / (a * self.lam + 1.0 - a)
        return self._from_eig(z0)

    def x0_var(self, sched, t):
        """(G1) Var[x_0 | x_t] per eigen-dimension, (T or N, D...): lam (1 - abar) / (abar lam + 1 - abar)."""
        a = sched.alpha_bar.to(self.lam.device)[torch.as_tensor(t, device=self.lam.device)]
        a = a.reshape(tuple(a.shape) + (1,) * self.lam.ndim)
        # (G1)
        return self.lam * (1.0 - a) / (a * self.lam + 1.0 - a)

    def predict(self, sched, xt, t, prediction="eps"):
        """The optimal network output: E[x_0 | x_t], E[eps | x_t] or E[v | x_t] (float64)."""
        check_choice(prediction, PREDICTIONS, "prediction")
        x0 = self.x0_mean(sched, xt, t)
        if prediction == "x0":
            return x0
        a = self._abar(sched, t, x0)
        # (R2, G1)  E[eps | x_t] = (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar)
        eps = (torch.as_tensor(xt).to(_F64) - torch.sqrt(a) * x0) / torch.sqrt(1.0 - a)
        if prediction == "eps":
            return eps
        # (R3, G1)  E[v | x_t] = sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x_0 | x_t]
        return torch.sqrt(a) * eps - torch.sqrt(1.0 - a) * x0

    def denoiser(self, sched, prediction="eps"):
        """A ``denoise(xt, t) -> model_output`` callable (output in xt's dtype) for the samplers and the bound."""
        check_choice(prediction, PREDICTIONS, "prediction")
        return lambda xt, t: self.predict(sched, xt, t, prediction).to(torch.as_tensor(xt).dtype)

    # ---- data and its exact likelihood (G2) ----------------------------------------------------

    def sample(self, generator, n):
        """n draws of x_0, shape (n, *example_shape), from a torch.Generator on the oracle's device."""
        e = torch.randn((n,) + tuple(self.lam.shape), generator=generator, dtype=_F64, device=self.lam.device)
        return self._from_eig(self.m + torch.sqrt(self.lam) * e)

    @property
    def mean(self):
        return self._from_eig(self.m)

    @property
    def cov(self):
        """The full (D, D) covariance, or the per-dimension variances for the diagonal form."""
        return self.lam if self.U is None else (self.U * self.lam) @ self.U.T

    def nll_bpd(self, x0):
        """(G2) -log N(x_0; mu, Sigma) per example, in bits per dimension: (N,)."""
        z = self._to_eig(torch.as_tensor(x0).to(_F64))
        # (G2)  -log p = 1/2 sum_d [log(2 pi lam_d) + (z_d - m_d)^2 / lam_d]
        nats = 0.5 * (torch.log(2.0 * math.pi * self.lam) + (z - self.m) ** 2 / self.lam)
        return nats.reshape(nats.shape[0], -1).mean(dim=1) / LN2

    def entropy_bpd(self):
        """(G2) Differential entropy 1/2 log(2 pi e lam), averaged over dimensions, in bits -> float."""
        return float(torch.mean(0.5 * torch.log(2.0 * math.pi * math.e * self.lam)) / LN2)

    # ---- the bound in closed form (gaussian decoder) ---------------------------------------------

    @staticmethod
    def _model_log_var(sched, variance):
        """(M2) log sigma_t^2 of p_theta(x_{t-1} | x_t), shape (T,), as diffusion.p_mean_variance defines it."""
        check_choice(variance, VARIANCES, "variance")
        if variance == "fixed_small":
            return sched.posterior_log_variance_clipped  # (P4)
        return sched.fixed_large_log_variance  # (M2) beta_t, entry 0 -> beta~_1

    def _prior_nats(self, sched):
        """(L8) E KL(N(sqrt(abar_T) x_0, 1 - abar_T) || N(0, 1)) per dimension."""
        a = sched.alpha_bar[-1].to(self.lam.device)
        return 0.5 * (-torch.log1p(-a) + (1.0 - a) + a * (self.m**2 + self.lam) - 1.0)

    def expected_vlb_bpd(self, sched, variance="fixed_small"):
        """E of ``losses.vlb_terms`` (decoder "gaussian", this oracle as the network), term by term, bits/dim.

        Returns {"prior": float, "terms": (T,) tensor, "total": float}; formulas as in the reference.
        """
        dev = self.lam.device
        log_s2 = self._model_log_var(sched, variance).to(dev)[:, None]            # (T, 1)
        s2 = torch.exp(log_s2)
        V = self.x0_var(sched, torch.arange(sched.T, device=dev)).reshape(sched.T, -1)   # (T, D)
        bt = sched.posterior_variance.to(dev)[:, None]
        c0 = sched.posterior_mean_coef_x0.to(dev)[:, None]
        ratio = bt / s2
        # (L2, P2)  E KL = 1/2 (beta~/s2 - 1 - log(beta~/s2)) + c0^2 Var[x0 | xt] / (2 s2); row 0 replaced below
        kl = 0.5 * (ratio - 1.0 - torch.log(ratio)) + c0**2 * V / (2.0 * s2)
        # (L6, gaussian decoder)  E -log N(x0; x0_hat, s2) = 1/2 log(2 pi s2) + Var[x0 | x_0] / (2 s2)
        kl[0] = 0.5 * (math.log(2.0 * math.pi) + log_s2[0]) + V[0] / (2.0 * s2[0])
        terms = kl.mean(dim=1) / LN2
        prior = float(torch.mean(self._prior_nats(sched)) / LN2)
        return {"prior": prior, "terms": terms, "total": prior + float(terms.sum())}

    def vlb_gap_bpd(self, sched, variance="fixed_small"):
        """E[-ELBO] - H(x_0) by the reverse decomposition (L1), in bits/dim -> float >= 0."""
        dev = self.lam.device
        s2 = torch.exp(self._model_log_var(sched, variance).to(dev))[:, None]
        V = self.x0_var(sched, torch.arange(sched.T, device=dev)).reshape(sched.T, -1)
        # variance ratio r = (beta~_t + c0_t^2 V_t) / sigma_t^2
        r = (sched.posterior_variance.to(dev)[:, None] + sched.posterior_mean_coef_x0.to(dev)[:, None] ** 2 * V) / s2
        kl = 0.5 * (r - 1.0 - torch.log(r))  # (L2)  equal means, variances in ratio r
        a = sched.alpha_bar[-1].to(dev)
        lam_T = a * self.lam + 1.0 - a  # q(x_T) = N(sqrt(abar_T) m, abar_T lam + 1 - abar_T)
        # (L8)  KL(q(x_T) || N(0, I))
        prior = 0.5 * (lam_T + a * self.m**2 - 1.0 - torch.log(lam_T))
        return float((kl.sum(dim=0).mean() + torch.mean(prior)) / LN2)
