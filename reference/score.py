"""The continuous-time view: noise levels, the score, the VP SDE and the probability-flow ODE.

Derivations: derivations/continuous_time.md (K1-K8).

Three names for one noise level (no new schedule, just coordinates):
  alpha_bar  the VP signal fraction, x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps          (F3)
  sigma      sqrt((1 - abar) / abar): the noise scale of x~ = x / sqrt(abar) = x_0 + sigma eps
             (k-diffusion's and EDM's sigma; not DDIM's sigma_t(eta) of (A3))
  lambda     log(sqrt(abar) / sqrt(1 - abar)) = -log sigma = half the log-SNR (S7)
A model trained on the discrete 0-based steps t (paper t+1) knows the T levels ``trained_sigmas``;
``sigma_to_t`` maps a level back to its step (K8) and refuses a level that is not a trained one.

The VP SDE lives on s in [0, 1] with beta(s) = T beta_t on [t/T, (t+1)/T): the sample after code step
t (the paper's x_{t+1}) sits at s = (t+1)/T. All tables float64; ``s`` a float or an array (N,).
"""
from __future__ import annotations

import numpy as np

from .diffusion import _col, _data
from .errors import InputError, check_number


# ---- noise-level coordinates (K6, K8) -------------------------------------------------------------

def sigma_from_alpha_bar(alpha_bar):
    """(K6) sigma = sqrt((1 - abar) / abar); inf at abar = 0 (zero terminal SNR)."""
    a = np.asarray(alpha_bar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        # (K6)  sigma = sqrt((1 - abar) / abar)
        return np.sqrt((1.0 - a) / a)


def alpha_bar_from_sigma(sigma):
    """(K6) abar = 1 / (1 + sigma^2), the inverse of ``sigma_from_alpha_bar``."""
    s = np.asarray(sigma, dtype=np.float64)
    # (K6)  abar = 1 / (1 + sigma^2)
    return 1.0 / (1.0 + s**2)


def lambda_from_sigma(sigma):
    """(N3) lambda = log(sqrt(abar) / sqrt(1 - abar)) = -log sigma (DPM-Solver's time variable)."""
    s = np.asarray(sigma, dtype=np.float64)
    with np.errstate(divide="ignore"):
        # (N3)  lambda = -log sigma
        return -np.log(s)


def trained_sigmas(sched):
    """(K8) sigma_t of every trained step, (T,) float64, increasing in the 0-based t."""
    # (K8)  sigma_t = sqrt((1 - abar_t) / abar_t), from the table's own sqrt(1 - abar) and sqrt(abar)
    with np.errstate(divide="ignore"):
        return sched.sqrt_one_minus_alpha_bar / sched.sqrt_alpha_bar


def sigma_to_t(sched, sigma, rtol=1e-9):
    """(K8) The 0-based step t whose trained sigma_t is ``sigma`` (relative tolerance rtol) -> int.

    A network trained on the discrete steps is called only at its trained levels: a sigma between two
    of them is refused (snap the grid with solvers.snap_sigmas / solvers.sigma_grid first).
    """
    sigma = check_number(sigma, "sigma", lo=0.0, lo_open=True)
    table = trained_sigmas(sched)
    t = int(np.clip(np.searchsorted(table, sigma), 1, sched.T - 1)) if sched.T > 1 else 0
    t = t - 1 if abs(table[t - 1] - sigma) < abs(table[t] - sigma) else t   # the nearer neighbour
    if not abs(table[t] - sigma) <= rtol * sigma:
        raise InputError(f"sigma={sigma!r} is not a trained noise level (nearest: step t={t}, sigma_t="
                         f"{float(table[t])!r}); a model trained on discrete steps is called only at its trained "
                         "sigmas: build the grid with solvers.sigma_grid or snap it with solvers.snap_sigmas")
    return t


# ---- the score (K1) -----------------------------------------------------------------------------

def _abar_col(alpha_bar, x):
    a = np.asarray(alpha_bar, dtype=np.float64)
    if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != x.shape[0]):
        raise InputError(f"alpha_bar must be a number or shape ({x.shape[0]},), got shape {a.shape}")
    if np.any(~(a >= 0) | (a > 1)):
        raise InputError("alpha_bar must lie in [0, 1]")
    return _col(a, x)


def score_from_eps(eps, alpha_bar):
    """(K1) grad log q_t(x_t) = -E[eps | x_t] / sqrt(1 - abar) (Tweedie): the score of an eps-model."""
    eps = _data(eps, "eps")
    a = _abar_col(alpha_bar, eps)
    # (K1)  score = -eps_hat / sqrt(1 - abar)
    return -eps / np.sqrt(1.0 - a)


def eps_from_score(score, alpha_bar):
    """(K1) eps_hat = -sqrt(1 - abar) grad log q_t(x_t), the inverse of ``score_from_eps``."""
    score = _data(score, "score")
    # (K1)  eps_hat = -sqrt(1 - abar) score
    return -np.sqrt(1.0 - _abar_col(alpha_bar, score)) * score


def ode_slope(x, sigma, x0_hat):
    """(K6) dx~/dsigma = (x~ - x0_hat) / sigma = eps_hat: the probability-flow ODE in (x~, sigma)."""
    # (K6)  d x~ / d sigma = (x~ - D(x~, sigma)) / sigma
    return (x - x0_hat) / sigma


# ---- the VP SDE (K2-K5) -------------------------------------------------------------------------

class VPSDE:
    """dx = -1/2 beta(s) x ds + sqrt(beta(s)) dW on s in [0, 1], beta(s) = T beta_t on [t/T, (t+1)/T) (K2).

    B(s) = int_0^s beta is piecewise linear through the cumulative sums of the betas, so the marginal
    signal fraction alpha_bar(s) = exp(-B(s)) (K3) is exact; at s = (t+1)/T it is exp(-sum beta), the
    chain's prod(1 - beta) up to O(sum beta^2). ``score`` arguments are grad log p_s at (x, s), (N, ...).
    """

    def __init__(self, sched):
        self.T = sched.T
        self.betas = np.asarray(sched.betas, dtype=np.float64)
        self._s_knots = np.arange(self.T + 1, dtype=np.float64) / self.T
        self._B_knots = np.concatenate([[0.0], np.cumsum(self.betas)])

    def _s(self, s):
        s = np.asarray(s, dtype=np.float64)
        if s.ndim > 1 or np.any(~(s >= 0) | (s > 1)):
            raise InputError("s (SDE time) must be a number or a 1-D array in [0, 1]")
        return s

    def beta(self, s):
        """(K2) beta(s) = T beta_t for s in [t/T, (t+1)/T) (the last interval closed at s = 1)."""
        s = self._s(s)
        t = np.minimum(np.floor(s * self.T).astype(np.int64), self.T - 1)
        return self.T * self.betas[t]

    def integral(self, s):
        """(K3) B(s) = int_0^s beta(u) du, piecewise linear between the knots (k/T, sum_{j<k} beta_j)."""
        return np.interp(self._s(s), self._s_knots, self._B_knots)

    def alpha_bar(self, s):
        """(K3) alpha_bar(s) = exp(-B(s))."""
        return np.exp(-self.integral(s))

    def s_of_alpha_bar(self, alpha_bar):
        """The SDE time where alpha_bar(s) = alpha_bar (inverse of the piecewise-linear B)."""
        a = np.asarray(alpha_bar, dtype=np.float64)
        B = -np.log(a)
        if np.any(~(a > 0) | (a > 1)) or np.any(B > self._B_knots[-1] * (1 + 1e-12)):
            raise InputError(f"alpha_bar must lie in [exp(-B(1)) = {np.exp(-self._B_knots[-1]):.3g}, 1]")
        return np.interp(B, self._B_knots, self._s_knots)

    def marginal(self, x0, s):
        """(K3) Mean and variance of x(s) | x(0) = x_0: exp(-B/2) x_0 and (1 - exp(-B)) I."""
        x0 = _data(x0, "x0")
        B = _col(self.integral(s), x0)
        # (K3)  mean = exp(-B(s)/2) x_0,  var = 1 - exp(-B(s))
        return np.exp(-0.5 * B) * x0, np.broadcast_to(-np.expm1(-B), x0.shape)

    def drift(self, x, s):
        """(K2) f(x, s) = -1/2 beta(s) x."""
        x = _data(x, "x")
        # (K2)  f = -1/2 beta(s) x
        return -0.5 * _col(self.beta(s), x) * x

    def diffusion(self, s):
        """(K2) g(s) = sqrt(beta(s))."""
        return np.sqrt(self.beta(s))

    def em_step(self, x, s, ds, noise):
        """(K2) One Euler-Maruyama step forwards: x + f(x, s) ds + g(s) sqrt(ds) z (noise z an argument)."""
        x = _data(x, "x")
        # (K2)  x_{s+ds} = x + f(x, s) ds + g(s) sqrt(ds) z
        return x + self.drift(x, s) * ds + _col(self.diffusion(s), x) * np.sqrt(ds) * noise

    def reverse_drift(self, x, s, score):
        """(K4) The reverse-time SDE's drift, dx = [f - g^2 score] ds + g dW-bar (run with ds < 0)."""
        x, score = _data(x, "x"), _data(score, "score")
        # (K4)  f(x, s) - g(s)^2 grad log p_s(x)
        return self.drift(x, s) - _col(self.beta(s), x) * score

    def pf_ode_drift(self, x, s, score):
        """(K5) The probability-flow ODE dx/ds = f - 1/2 g^2 score = -1/2 beta(s) (x + score)."""
        x, score = _data(x, "x"), _data(score, "score")
        # (K5)  dx/ds = f(x, s) - 1/2 g(s)^2 grad log p_s(x)
        return self.drift(x, s) - 0.5 * _col(self.beta(s), x) * score
