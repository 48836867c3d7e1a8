"""The continuous-time view in torch: noise levels, the score, the VP SDE and the probability-flow ODE.

Mirror of reference/score.py (see its docstring): same names, signatures and meaning. Derivations:
derivations/continuous_time.md (K1-K8). Noise-level conversions take numbers or tensors and return
float64 tensors; ``trained_sigmas`` and ``sigma_to_t`` read the schedule's host copy of alpha_bar
(``Schedule.alpha_bar_host``, the port's own table copied once), so looking a level up never waits on
the device. The VP SDE's time ``s`` is a number or a tensor (N,), on the data's device.
"""
from __future__ import annotations

import numpy as np
import torch

from reference.errors import InputError, check_number

from .diffusion import _col, _data

_F64 = torch.float64

__all__ = ["sigma_from_alpha_bar", "alpha_bar_from_sigma", "lambda_from_sigma", "trained_sigmas", "sigma_to_t",
           "score_from_eps", "eps_from_score", "ode_slope", "VPSDE"]


def _f64(x):
    return x.to(_F64) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))


# ---- noise-level coordinates (K6, K8) -------------------------------------------------------------

def sigma_from_alpha_bar(alpha_bar):
    """(K6) sigma = sqrt((1 - abar) / abar); inf at abar = 0."""
    a = _f64(alpha_bar)
    # (K6)  sigma = sqrt((1 - abar) / abar)
    return torch.sqrt((1.0 - a) / a)


def alpha_bar_from_sigma(sigma):
    """(K6) abar = 1 / (1 + sigma^2)."""
    s = _f64(sigma)
    # (K6)  abar = 1 / (1 + sigma^2)
    return 1.0 / (1.0 + s**2)


def lambda_from_sigma(sigma):
    """(N3) lambda = log(sqrt(abar) / sqrt(1 - abar)) = -log sigma."""
    # (N3)  lambda = -log sigma
    return -torch.log(_f64(sigma))


def trained_sigmas(sched):
    """(K8) sigma_t of every trained step, (T,) float64 CPU tensor, increasing in the 0-based t."""
    a = torch.as_tensor(sched.alpha_bar_host, dtype=_F64)
    # (K8)  sigma_t = sqrt(1 - abar_t) / sqrt(abar_t), with 1 - abar_t = -expm1(log abar_t) as the Schedule does
    return torch.sqrt(-torch.expm1(torch.log(a))) / torch.sqrt(a)


def sigma_to_t(sched, sigma, rtol=1e-9):
    """(K8) The 0-based step t whose trained sigma_t is ``sigma`` -> int (host arithmetic, no device sync).

    A sigma between two trained levels is refused: snap the grid with solvers.snap_sigmas / sigma_grid.
    """
    sigma = check_number(sigma, "sigma", lo=0.0, lo_open=True)
    table = trained_sigmas(sched).tolist()  # a CPU tensor: no device involved
    T = len(table)
    t = min(max(int(np.searchsorted(table, sigma)), 1), T - 1) if T > 1 else 0
    t = t - 1 if abs(table[t - 1] - sigma) < abs(table[t] - sigma) else t
    if not abs(table[t] - sigma) <= rtol * sigma:
        raise InputError(f"sigma={sigma!r} is not a trained noise level (nearest: step t={t}, sigma_t="
                         f"{table[t]!r}); a model trained on discrete steps is called only at its trained sigmas: "
                         "build the grid with solvers.sigma_grid or snap it with solvers.snap_sigmas")
    return t


# ---- the score (K1) -----------------------------------------------------------------------------

def _abar_col(alpha_bar, x):
    if not isinstance(alpha_bar, torch.Tensor):
        a = np.asarray(alpha_bar, dtype=np.float64)
        if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != x.shape[0]) or np.any(~(a >= 0) | (a > 1)):
            raise InputError(f"alpha_bar must be a number or shape ({x.shape[0]},), in [0, 1]")
        alpha_bar = torch.as_tensor(a)
    elif alpha_bar.ndim > 1 or (alpha_bar.ndim == 1 and alpha_bar.shape[0] != x.shape[0]):
        raise InputError(f"alpha_bar must be a number or shape ({x.shape[0]},), got shape {tuple(alpha_bar.shape)}")
    return _col(alpha_bar, x)


def score_from_eps(eps, alpha_bar):
    """(K1) grad log q_t(x_t) = -E[eps | x_t] / sqrt(1 - abar) (Tweedie)."""
    eps = _data(None, eps, "eps")
    # (K1)  score = -eps_hat / sqrt(1 - abar)
    return -eps / torch.sqrt(1.0 - _abar_col(alpha_bar, eps))


def eps_from_score(score, alpha_bar):
    """(K1) eps_hat = -sqrt(1 - abar) grad log q_t(x_t)."""
    score = _data(None, score, "score")
    # (K1)  eps_hat = -sqrt(1 - abar) score
    return -torch.sqrt(1.0 - _abar_col(alpha_bar, score)) * score


def ode_slope(x, sigma, x0_hat):
    """(K6) dx~/dsigma = (x~ - x0_hat) / sigma = eps_hat."""
    # (K6)  d x~ / d sigma = (x~ - D(x~, sigma)) / sigma
    return (x - x0_hat) / sigma


# ---- the VP SDE (K2-K5) -------------------------------------------------------------------------

class VPSDE:
    """dx = -1/2 beta(s) x ds + sqrt(beta(s)) dW, beta(s) = T beta_t on [t/T, (t+1)/T) (K2); as the reference.

    B(s) = int_0^s beta is piecewise linear through the cumulative sums of the betas; alpha_bar(s) = exp(-B(s))
    (K3). Tables float64 on the schedule's device; ``s`` a number or a tensor (N,).
    """

    def __init__(self, sched):
        self.T = sched.T
        self.betas = sched.betas.to(_F64)
        self._B_knots = torch.cat([torch.zeros(1, dtype=_F64, device=self.betas.device), torch.cumsum(self.betas, 0)])

    def _s(self, s, device=None):
        s = s.to(_F64) if isinstance(s, torch.Tensor) else torch.as_tensor(float(s), dtype=_F64)
        if s.ndim > 1:
            raise InputError("s (SDE time) must be a number or a 1-D array in [0, 1]")
        if s.device.type == "cpu" and bool(((s < 0) | (s > 1) | torch.isnan(s)).any()):
            raise InputError("s (SDE time) must be a number or a 1-D array in [0, 1]")
        return s.to(device if device is not None else self.betas.device)

    def beta(self, s):
        """(K2) beta(s) = T beta_t for s in [t/T, (t+1)/T) (the last interval closed at s = 1)."""
        s = self._s(s)
        t = torch.clamp(torch.floor(s * self.T).to(torch.long), max=self.T - 1)
        return self.T * self.betas[t]

    def integral(self, s):
        """(K3) B(s) = int_0^s beta(u) du: the knot below plus the partial interval, beta constant on it."""
        s = self._s(s)
        k = torch.clamp(torch.floor(s * self.T).to(torch.long), max=self.T - 1)
        # (K3)  B(s) = sum_{j<k} beta_j + (s T - k) beta_k
        return self._B_knots[k] + (s * self.T - k) * self.betas[k]

    def alpha_bar(self, s):
        """(K3) alpha_bar(s) = exp(-B(s))."""
        return torch.exp(-self.integral(s))

    def s_of_alpha_bar(self, alpha_bar):
        """The SDE time where alpha_bar(s) = alpha_bar (inverse of the piecewise-linear B)."""
        B = -torch.log(_f64(alpha_bar).to(self.betas.device))
        if B.device.type == "cpu" and bool(((B < 0) | (B > self._B_knots[-1] * (1 + 1e-12)) | torch.isnan(B)).any()):
            raise InputError(f"alpha_bar must lie in [exp(-B(1)) = {float(torch.exp(-self._B_knots[-1])):.3g}, 1]")
        k = torch.clamp(torch.searchsorted(self._B_knots, B) - 1, 0, self.T - 1)
        # invert B(s) = B_k + (s T - k) beta_k on the interval k
        return (k + (B - self._B_knots[k]) / self.betas[k]) / self.T

    def marginal(self, x0, s):
        """(K3) Mean and variance of x(s) | x(0) = x_0: exp(-B/2) x_0 and (1 - exp(-B)) I."""
        x0 = _data(None, x0, "x0")
        B = _col(self.integral(s), x0)
        # (K3)  mean = exp(-B(s)/2) x_0,  var = 1 - exp(-B(s))
        return torch.exp(-0.5 * B) * x0, (-torch.expm1(-B)).expand(x0.shape)

    def drift(self, x, s):
        """(K2) f(x, s) = -1/2 beta(s) x."""
        x = _data(None, x, "x")
        # (K2)  f = -1/2 beta(s) x
        return -0.5 * _col(self.beta(s), x) * x

    def diffusion(self, s):
        """(K2) g(s) = sqrt(beta(s))."""
        return torch.sqrt(self.beta(s))

    def em_step(self, x, s, ds, noise):
        """(K2) One Euler-Maruyama step forwards: x + f(x, s) ds + g(s) sqrt(ds) z."""
        x = _data(None, x, "x")
        # (K2)  x_{s+ds} = x + f(x, s) ds + g(s) sqrt(ds) z
        return x + self.drift(x, s) * ds + _col(self.diffusion(s), x) * (float(ds) ** 0.5) * noise

    def reverse_drift(self, x, s, score):
        """(K4) The reverse-time SDE's drift f - g^2 score (run with ds < 0)."""
        x, score = _data(None, x, "x"), _data(None, score, "score")
        # (K4)  f(x, s) - g(s)^2 grad log p_s(x)
        return self.drift(x, s) - _col(self.beta(s), x) * score

    def pf_ode_drift(self, x, s, score):
        """(K5) The probability-flow ODE dx/ds = f - 1/2 g^2 score = -1/2 beta(s) (x + score)."""
        x, score = _data(None, x, "x"), _data(None, score, "score")
        # (K5)  dx/ds = f(x, s) - 1/2 g(s)^2 grad log p_s(x)
        return self.drift(x, s) - 0.5 * _col(self.beta(s), x) * score
