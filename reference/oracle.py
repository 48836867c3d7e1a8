"""Gaussian data and Gaussian mixtures: exact denoisers, scores and likelihoods — derivations/gaussian_oracle.md.

GaussianOracle (G1, G2): one Gaussian, at the schedule's steps. GaussianMixtureOracle (G3, G4): a mixture,
at every continuous alpha_bar (density, responsibilities, E[x_0 | x_t], E[eps | x_t], the score), the
exact route for the continuous-time solvers (derivations/solvers.md).

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
from .errors import InputError, check_choice, check_labels, check_timesteps

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


class GaussianMixtureOracle:
    """x_0 ~ sum_k w_k N(mu_k, Sigma_k): exact denoisers, score and density at every noise level (G3, G4).

    ``weights`` (K,) > 0 (normalised here), ``means`` (K, *shape), and exactly one of ``var`` (diagonal
    covariances, broadcastable to means' shape) or ``cov`` ((K, D, D) for shape (D,)). Variances may be 0
    (point masses: a mixture of deltas is the ideal denoiser of a finite data set) except where a density
    or an eps at alpha_bar = 1 is asked for. Each component is rotated to its eigenbasis
    Sigma_k = U_k diag(lam_k) U_k^T, where the forward process keeps it diagonal (F4).

    Every method takes x (N, *shape) and a CONTINUOUS alpha_bar in [0, 1] (a number or (N,)): the
    mixture's marginal exists in closed form at any noise level, not only at the trained steps.
    ``predict``/``denoiser`` take the discrete 0-based t of a schedule (the samplers' interface);
    ``denoise_sigma`` is the solvers' D(x~, sigma) (K6).

    Classes (derivations/guidance.md, W5): component k is class k, and ``labels`` (N,) in 0..K-1 condition on
    it (the responsibilities become one-hot); label K (``num_classes``), the null class, and labels=None
    give the whole mixture. So ``denoiser``'s ``(xt, t, y)`` is the exact conditional network of (W1).
    """

    def __init__(self, weights, means, var=None, cov=None):
        if (var is None) == (cov is None):
            raise InputError("give exactly one of var (diagonal covariances) or cov ((K, D, D) covariances)")
        w = np.asarray(weights, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        if w.ndim != 1 or means.ndim < 2 or means.shape[0] != w.size or not np.all(np.isfinite(w) & (w > 0)):
            raise InputError(f"weights must be (K,) positive and means (K, *shape); got {w.shape} and {means.shape}")
        self.log_w, self.shape = np.log(w / w.sum()), means.shape[1:]
        K, D = w.size, int(np.prod(self.shape))
        self.m = means.reshape(K, D)
        if cov is not None:
            cov = np.asarray(cov, dtype=np.float64)
            if means.ndim != 2 or cov.shape != (K, D, D) or not np.allclose(cov, np.swapaxes(cov, 1, 2)):
                raise InputError(f"cov must be symmetric (K, D, D) = {(K, D, D)} for means (K, D), got {cov.shape}")
            lam, self.U = np.linalg.eigh(cov)  # Sigma_k = U_k diag(lam_k) U_k^T
        else:
            lam, self.U = np.broadcast_to(np.asarray(var, dtype=np.float64), means.shape).reshape(K, D), None
        if not np.all(lam >= -1e-12 * np.max(np.abs(lam), initial=1.0)):
            raise InputError("every component covariance must be positive semi-definite (variances >= 0)")
        self.lam = np.maximum(lam, 0.0)

    def _parts(self, x, alpha_bar):
        """Per component: innovation z in the eigenbasis (K, N, D), its variances d, and log w_k N_k(x) (K, N)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 1 or x.shape[1:] != self.shape:
            raise InputError(f"x must have shape (N, *{self.shape}), got {x.shape}")
        x = x.reshape(x.shape[0], -1)
        a = np.asarray(alpha_bar, dtype=np.float64)
        if a.ndim > 1 or (a.ndim == 1 and a.size != x.shape[0]) or np.any(~(a >= 0) | (a > 1)):
            raise InputError(f"alpha_bar must be a number or shape ({x.shape[0]},), in [0, 1]")
        a = a.reshape(1, -1, 1) if a.ndim else a
        diff = x[None] - np.sqrt(a) * self.m[:, None, :]                # (K, N, D)
        z = diff if self.U is None else diff @ self.U                    # z = U_k^T (x - sqrt(abar) mu_k)
        # (G3)  Cov_k(x_t) = abar Sigma_k + (1 - abar) I: eigenvalues abar lam + 1 - abar
        d = a * self.lam[:, None, :] + (1.0 - a)                         # (K, N or 1, D)
        if np.any(d == 0):
            raise InputError("a point-mass component (variance 0) has no density at alpha_bar = 1")
        # (G3)  log w_k N(x; sqrt(abar) mu_k, abar Sigma_k + (1 - abar) I)
        logp = self.log_w[:, None] - 0.5 * np.sum(z**2 / d + np.log(2.0 * math.pi * d), axis=-1)
        return z, d, logp

    def _back(self, zk):
        """Eigen coordinates (K, N, D) -> data coordinates."""
        return zk if self.U is None else zk @ np.swapaxes(self.U, 1, 2)

    @property
    def num_classes(self):
        """K, the components as classes; label K is the null class (the mixture)."""
        return self.log_w.size

    def log_prob(self, x, alpha_bar, labels=None):
        """(G3) log q(x_t) at alpha_bar (alpha_bar = 1: the data's log-density), (N,); with ``labels`` (N,),
        log q(x_t | c) = log N_c(x_t) (the null class K: log q(x_t))."""
        logp = self._parts(x, alpha_bar)[2]
        mx = logp.max(axis=0)
        # (G3)  log sum_k exp(l_k), shifted by the max so nothing under- or overflows
        total = mx + np.log(np.sum(np.exp(logp - mx), axis=0))
        if labels is None:
            return total
        y = check_labels(labels, self.num_classes, logp.shape[1])
        # (W3)  log q(x_t | c) = log w_c N_c(x_t) - log w_c
        k = np.minimum(y, self.num_classes - 1)                          # any component on the null rows
        own = logp[k, np.arange(y.size)] - self.log_w[k]
        return np.where(y == self.num_classes, total, own)

    def responsibilities(self, x, alpha_bar):
        """(G4) r_k(x_t) = P(component k | x_t), (N, K): a softmax of the log-joints (log-sum-exp stable)."""
        return self._softmax(self._parts(x, alpha_bar)[2]).T

    @staticmethod
    def _softmax(logp):
        e = np.exp(logp - logp.max(axis=0))
        return e / e.sum(axis=0)

    def _weighted(self, x, alpha_bar, per_component, labels=None):
        z, d, logp = self._parts(x, alpha_bar)
        r = self._softmax(logp)                                          # (G4) responsibilities (K, N)
        if labels is not None:
            y = check_labels(labels, self.num_classes, logp.shape[1])
            # (W5)  given class c the component is known: r = onehot(c); the null class K keeps the mixture's r
            r = np.where(y[None] == self.num_classes, r, np.arange(self.num_classes)[:, None] == y[None])
        return np.sum(r[:, :, None] * per_component(z, d), axis=0).reshape((-1,) + self.shape)

    def x0_mean(self, x, alpha_bar, labels=None):
        """(G4) E[x_0 | x_t] = sum_k r_k (mu_k + sqrt(abar) Sigma_k C_k^{-1} (x_t - sqrt(abar) mu_k))."""
        ra = np.sqrt(np.asarray(alpha_bar, dtype=np.float64))
        ra = ra.reshape(1, -1, 1) if ra.ndim else ra
        # (G4, G1)  per component the Gaussian denoiser, in its eigenbasis: sqrt(abar) lam / d times z
        lam, m = self.lam[:, None, :], self.m[:, None, :]
        return self._weighted(x, alpha_bar, lambda z, d: m + self._back(ra * lam / d * z), labels)

    def score(self, x, alpha_bar, labels=None):
        """(G4) grad log q(x_t) = -sum_k r_k C_k^{-1} (x_t - sqrt(abar) mu_k), from the density directly."""
        # (G4)  grad of log sum_k w_k N_k = sum_k r_k grad log N_k
        return self._weighted(x, alpha_bar, lambda z, d: -self._back(z / d), labels)

    def eps_mean(self, x, alpha_bar, labels=None):
        """(G4, R2) E[eps | x_t] = (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar); alpha_bar < 1."""
        a = np.asarray(alpha_bar, dtype=np.float64)
        if np.any(a >= 1):
            raise InputError("E[eps | x_t] needs alpha_bar < 1 (there is no noise at alpha_bar = 1)")
        a = a.reshape((-1,) + (1,) * len(self.shape)) if a.ndim else a
        # (R2, G4)
        return (np.asarray(x, dtype=np.float64) - np.sqrt(a) * self.x0_mean(x, alpha_bar, labels)) / np.sqrt(1.0 - a)

    def predict(self, sched, xt, t, prediction="eps", labels=None):
        """The optimal network output at the discrete 0-based step t (as GaussianOracle.predict), given the class."""
        check_choice(prediction, PREDICTIONS, "prediction")
        xt = np.asarray(xt, dtype=np.float64)
        a = sched.alpha_bar[check_timesteps(t, sched.T, n=xt.shape[0] if xt.ndim else None)]
        x0 = self.x0_mean(xt, a, labels)
        if prediction == "x0":
            return x0
        eps = self.eps_mean(xt, a, labels)
        if prediction == "eps":
            return eps
        ac = a.reshape((-1,) + (1,) * len(self.shape)) if a.ndim else a
        # (R3, G4)  E[v | x_t] = sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x_0 | x_t]
        return np.sqrt(ac) * eps - np.sqrt(1.0 - ac) * x0

    def denoiser(self, sched, prediction="eps"):
        """A ``denoise(xt, t, y=None) -> model_output`` callable for the samplers (discrete 0-based t): the exact
        conditional network (W1, W5), y the labels (None or K: the mixture)."""
        check_choice(prediction, PREDICTIONS, "prediction")
        return lambda xt, t, y=None: self.predict(sched, xt, t, prediction, y).astype(np.asarray(xt).dtype, copy=False)

    def denoise_sigma(self, x, sigma, labels=None):
        """(K6) The solvers' denoiser D(x~, sigma) = E[x_0 | x~(, c)], x~ = x_0 + sigma eps, at any sigma >= 0."""
        a = 1.0 / (1.0 + float(sigma) ** 2)                           # (K6)  abar = 1 / (1 + sigma^2)
        # (K6)  x_t = sqrt(abar) x~ has the same posterior over x_0
        return self.x0_mean(np.asarray(x) * math.sqrt(a), a, labels).astype(np.asarray(x).dtype, copy=False)

    def sample(self, rng, n):
        """n draws -> (x_0 (n, *shape), labels (n,) int64): the component first, then its Gaussian."""
        labels = rng.choice(self.log_w.size, size=n, p=np.exp(self.log_w))
        z = np.sqrt(self.lam[labels]) * rng.standard_normal((n, self.m.shape[1]))  # eigen coordinates
        x = self.m[labels] + (z if self.U is None else (self.U[labels] @ z[:, :, None])[:, :, 0])
        return x.reshape((n,) + self.shape), labels.astype(np.int64)

    @property
    def mean(self):
        """E[x_0] = sum_k w_k mu_k, shape ``shape``."""
        return (np.exp(self.log_w) @ self.m).reshape(self.shape)

    @property
    def cov(self):
        """Cov[x_0] (D, D) = sum_k w_k (Sigma_k + mu_k mu_k^T) - E[x_0] E[x_0]^T (total variance)."""
        S = np.stack([np.diag(l) for l in self.lam]) if self.U is None else (self.U * self.lam[:, None, :]) @ \
            np.swapaxes(self.U, 1, 2)
        w, mu = np.exp(self.log_w), self.mean.reshape(-1)
        return np.einsum("k,kde->de", w, S + self.m[:, :, None] * self.m[:, None, :]) - np.outer(mu, mu)
