"""Gaussian data and Gaussian mixtures, in torch: GaussianOracle (G1, G2), GaussianMixtureOracle (G3, G4).

Mirror of reference/oracle.py (see its docstring): for x_0 ~ N(mu, Sigma) every quantity of the
diffusion is Gaussian and known in closed form, so the port's samplers and bound can run with a
perfect network on any device. Per eigen-dimension of Sigma = U diag(lam) U^T with variance lam.
Time index ``t`` is 0-based (paper step t+1); abar = alpha_bar[t]. All oracle tensors are float64.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from reference.errors import InputError, check_choice, check_labels

from .diffusion import PREDICTIONS, VARIANCES, _timesteps

LN2 = math.log(2.0)
_F64 = torch.float64

__all__ = ["GaussianOracle", "GaussianMixtureOracle"]


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


class GaussianMixtureOracle:
    """x_0 ~ sum_k w_k N(mu_k, Sigma_k): exact denoisers, score and density at every noise level (G3, G4).

    Mirror of reference.oracle.GaussianMixtureOracle (see its docstring): ``weights`` (K,), ``means``
    (K, *shape), one of ``var`` (diagonal) or ``cov`` (K, D, D). Tensors float64 on the oracle's device
    (``to(device)``); ``alpha_bar`` a number or a tensor (N,); x (N, *shape). Value checks (alpha_bar in
    range, a density at alpha_bar = 1 with a point mass) run on CPU inputs only, so nothing syncs on a device.
    Classes as the reference's (W5): ``labels`` (N,) in 0..K-1 condition on component k, K (the null class)
    and None give the mixture.
    """

    def __init__(self, weights, means, var=None, cov=None):
        if (var is None) == (cov is None):
            raise InputError("give exactly one of var (diagonal covariances) or cov ((K, D, D) covariances)")
        w = torch.as_tensor(weights, dtype=_F64)
        means = torch.as_tensor(means, dtype=_F64)
        if w.ndim != 1 or means.ndim < 2 or means.shape[0] != w.numel() or \
                not bool((torch.isfinite(w) & (w > 0)).all()):
            raise InputError(f"weights must be (K,) positive and means (K, *shape); got {tuple(w.shape)} and "
                             f"{tuple(means.shape)}")
        self.log_w, self.shape = torch.log(w / w.sum()), tuple(means.shape[1:])
        K, D = w.numel(), int(np.prod(self.shape))
        self.m = means.reshape(K, D)
        if cov is not None:
            cov = torch.as_tensor(cov, dtype=_F64)
            if means.ndim != 2 or tuple(cov.shape) != (K, D, D) or not torch.allclose(cov, cov.transpose(1, 2)):
                raise InputError(f"cov must be symmetric (K, D, D) = {(K, D, D)} for means (K, D), "
                                 f"got {tuple(cov.shape)}")
            lam, self.U = torch.linalg.eigh(cov)  # Sigma_k = U_k diag(lam_k) U_k^T
        else:
            lam, self.U = torch.as_tensor(var, dtype=_F64).expand(means.shape).reshape(K, D), None
        if not bool((lam >= -1e-12 * max(float(lam.abs().max()), 1.0)).all()):
            raise InputError("every component covariance must be positive semi-definite (variances >= 0)")
        self.lam = torch.clamp(lam, min=0.0)

    def to(self, device):
        new = object.__new__(GaussianMixtureOracle)
        new.__dict__ = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return new

    def _abar(self, alpha_bar, n):
        """alpha_bar as a float64 tensor shaped (1, N, 1) or (), on the oracle's device, checked on the host."""
        a = alpha_bar.to(_F64) if isinstance(alpha_bar, torch.Tensor) else torch.as_tensor(float(alpha_bar), dtype=_F64)
        if a.ndim > 1 or (a.ndim == 1 and a.numel() != n) or \
                (a.device.type == "cpu" and bool(((a < 0) | (a > 1) | torch.isnan(a)).any())):
            raise InputError(f"alpha_bar must be a number or shape ({n},), in [0, 1]")
        a = a.to(self.m.device)
        return a.reshape(1, -1, 1) if a.ndim else a

    def _parts(self, x, alpha_bar):
        """Per component: innovation z in the eigenbasis (K, N, D), its variances d, and log w_k N_k(x) (K, N)."""
        x = torch.as_tensor(x).to(_F64)
        if x.ndim < 1 or tuple(x.shape[1:]) != self.shape:
            raise InputError(f"x must have shape (N, *{self.shape}), got {tuple(x.shape)}")
        x = x.reshape(x.shape[0], -1)
        a = self._abar(alpha_bar, x.shape[0])
        diff = x[None] - torch.sqrt(a) * self.m[:, None, :]              # (K, N, D)
        z = diff if self.U is None else diff @ self.U                    # z = U_k^T (x - sqrt(abar) mu_k)
        # (G3)  Cov_k(x_t) = abar Sigma_k + (1 - abar) I: eigenvalues abar lam + 1 - abar
        d = a * self.lam[:, None, :] + (1.0 - a)                         # (K, N or 1, D)
        if d.device.type == "cpu" and bool((d == 0).any()):
            raise InputError("a point-mass component (variance 0) has no density at alpha_bar = 1")
        # (G3)  log w_k N(x; sqrt(abar) mu_k, abar Sigma_k + (1 - abar) I)
        logp = self.log_w[:, None] - 0.5 * torch.sum(z**2 / d + torch.log(2.0 * math.pi * d), dim=-1)
        return z, d, logp

    def _back(self, zk):
        return zk if self.U is None else zk @ self.U.transpose(1, 2)

    @property
    def num_classes(self):
        """K, the components as classes; label K is the null class (the mixture)."""
        return self.log_w.numel()

    def _labels(self, labels, n):
        """Labels as a long tensor (n,) on the oracle's device, values checked on the host (CPU) only."""
        if not torch.is_tensor(labels) or labels.device.type == "cpu":
            labels = torch.from_numpy(check_labels(np.asarray(labels), self.num_classes, n))
        return labels.to(device=self.m.device, dtype=torch.long).expand(n)

    def log_prob(self, x, alpha_bar, labels=None):
        """(G3) log q(x_t) at alpha_bar, (N,): log-sum-exp over the components; with ``labels``, log q(x_t | c)."""
        logp = self._parts(x, alpha_bar)[2]
        # (G3)  log sum_k exp(l_k)
        total = torch.logsumexp(logp, dim=0)
        if labels is None:
            return total
        y = self._labels(labels, logp.shape[1])
        k = torch.clamp(y, max=self.num_classes - 1)                     # any component on the null rows
        # (W3)  log q(x_t | c) = log w_c N_c(x_t) - log w_c
        own = logp[k, torch.arange(y.numel(), device=y.device)] - self.log_w[k]
        return torch.where(y == self.num_classes, total, own)

    def responsibilities(self, x, alpha_bar):
        """(G4) r_k(x_t) = P(component k | x_t), (N, K), a softmax of the log-joints."""
        return torch.softmax(self._parts(x, alpha_bar)[2], dim=0).T

    def _weighted(self, x, alpha_bar, per_component, labels=None):
        z, d, logp = self._parts(x, alpha_bar)
        r = torch.softmax(logp, dim=0)                                   # (G4) responsibilities (K, N)
        if labels is not None:
            y = self._labels(labels, logp.shape[1])
            onehot = (torch.arange(self.num_classes, device=y.device)[:, None] == y[None]).to(r.dtype)
            # (W5)  given class c the component is known: r = onehot(c); the null class K keeps the mixture's r
            r = torch.where(y[None] == self.num_classes, r, onehot)
        return torch.sum(r[:, :, None] * per_component(z, d), dim=0).reshape((-1,) + self.shape)

    def x0_mean(self, x, alpha_bar, labels=None):
        """(G4) E[x_0 | x_t] = sum_k r_k (mu_k + sqrt(abar) Sigma_k C_k^{-1} (x_t - sqrt(abar) mu_k))."""
        ra = torch.sqrt(self._abar(alpha_bar, torch.as_tensor(x).shape[0]))
        # (G4, G1)  per component the Gaussian denoiser in its eigenbasis: sqrt(abar) lam / d times z
        lam, m = self.lam[:, None, :], self.m[:, None, :]
        return self._weighted(x, alpha_bar, lambda z, d: m + self._back(ra * lam / d * z), labels)

    def score(self, x, alpha_bar, labels=None):
        """(G4) grad log q(x_t) = -sum_k r_k C_k^{-1} (x_t - sqrt(abar) mu_k)."""
        # (G4)  sum_k r_k grad log N_k
        return self._weighted(x, alpha_bar, lambda z, d: -self._back(z / d), labels)

    def eps_mean(self, x, alpha_bar, labels=None):
        """(G4, R2) E[eps | x_t] = (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar); alpha_bar < 1."""
        x = torch.as_tensor(x).to(_F64)
        a = self._abar(alpha_bar, x.shape[0])
        if a.device.type == "cpu" and bool((a >= 1).any()):
            raise InputError("E[eps | x_t] needs alpha_bar < 1 (there is no noise at alpha_bar = 1)")
        a = a.reshape((-1,) + (1,) * len(self.shape)) if a.ndim else a
        # (R2, G4)
        return (x.to(a.device) - torch.sqrt(a) * self.x0_mean(x, alpha_bar, labels)) / torch.sqrt(1.0 - a)

    def predict(self, sched, xt, t, prediction="eps", labels=None):
        """The optimal network output at the discrete 0-based step t (float64)."""
        check_choice(prediction, PREDICTIONS, "prediction")
        xt = torch.as_tensor(xt).to(_F64)
        a = sched.alpha_bar.to(xt.device)[_timesteps(sched, t, xt)]
        x0 = self.x0_mean(xt, a, labels)
        if prediction == "x0":
            return x0
        eps = self.eps_mean(xt, a, labels)
        if prediction == "eps":
            return eps
        ac = a.reshape((-1,) + (1,) * len(self.shape)) if a.ndim else a
        # (R3, G4)  E[v | x_t] = sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x_0 | x_t]
        return torch.sqrt(ac) * eps - torch.sqrt(1.0 - ac) * x0

    def denoiser(self, sched, prediction="eps"):
        """A ``denoise(xt, t, y=None) -> model_output`` callable (output in xt's dtype) for the samplers: the exact
        conditional network (W1, W5)."""
        check_choice(prediction, PREDICTIONS, "prediction")
        return lambda xt, t, y=None: self.predict(sched, xt, t, prediction, y).to(torch.as_tensor(xt).dtype)

    def denoise_sigma(self, x, sigma, labels=None):
        """(K6) The solvers' denoiser D(x~, sigma) = E[x_0 | x~(, c)] at any sigma >= 0 (sigma a Python number)."""
        a = 1.0 / (1.0 + float(sigma) ** 2)                            # (K6)  abar = 1 / (1 + sigma^2)
        # (K6)  x_t = sqrt(abar) x~ has the same posterior over x_0
        return self.x0_mean(x * math.sqrt(a), a, labels).to(x.dtype)

    def sample(self, generator, n):
        """n draws -> (x_0 (n, *shape), labels (n,) int64), from a torch.Generator on the oracle's device."""
        labels = torch.multinomial(torch.exp(self.log_w), n, replacement=True, generator=generator)
        e = torch.randn((n, self.m.shape[1]), generator=generator, dtype=_F64, device=self.m.device)
        z = torch.sqrt(self.lam[labels]) * e                             # eigen coordinates
        x = self.m[labels] + (z if self.U is None else (self.U[labels] @ z[:, :, None])[:, :, 0])
        return x.reshape((n,) + self.shape), labels

    @property
    def mean(self):
        """E[x_0] = sum_k w_k mu_k, shape ``shape``."""
        return (torch.exp(self.log_w) @ self.m).reshape(self.shape)

    @property
    def cov(self):
        """Cov[x_0] (D, D) = sum_k w_k (Sigma_k + mu_k mu_k^T) - E[x_0] E[x_0]^T."""
        S = torch.diag_embed(self.lam) if self.U is None else (self.U * self.lam[:, None, :]) @ self.U.transpose(1, 2)
        w, mu = torch.exp(self.log_w), self.mean.reshape(-1)
        return torch.einsum("k,kde->de", w, S + self.m[:, :, None] * self.m[:, None, :]) - torch.outer(mu, mu)
