"""The noise processes x_t = alpha(t) x0 + sigma(t) eps in continuous time, and their conversions at equal lambda.

Derivations: derivations/design_space.md (D1-D4). Time t in [0, 1], t = 0 the data and t = 1 the noise, for
every process but one: EDM's own time is sigma itself (alpha = 1, sigma = t in [0, sigma_max]). lambda(t) =
log(alpha^2 / sigma^2) is the log-SNR; sigma~ = sigma / alpha = e^{-lambda/2} is the solvers' noise level and
x~ = x / alpha their state (reference/solvers.py), so two processes at equal lambda are one point of the
solvers' ODE (D3). Each process gives alpha, sigma and their t-derivatives; the base class derives the rest:
lambda, dlambda/dt, the SDE's drift coefficient f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2 (D1),
sigma~ and its inverse (closed form per process; the base class's bracketed monotone solve otherwise).

The trained discrete chain is a view, ``chain_process(sched)``: its levels at the steps t_k = (k + 1) / T
(0-based k, as reference.score.VPSDE's knots) and t = 0; it has no t-derivatives, and nothing about it changes.
Arrays are float64; t a number or (N,).
"""
from __future__ import annotations

import math

import numpy as np

from common.choices import PROCESSES
from .diffusion import _data
from .errors import InputError, check_choice, check_number

VP_LINEAR = {"beta_min": 0.1, "beta_max": 20.0}        # score_sde's VP SDE
COSINE_S = 0.008                                       # Nichol & Dhariwal's offset
VE_DEFAULTS = {"sigma_min": 0.01, "sigma_max": 50.0}   # score_sde's NCSN++ (VE) defaults
EDM_SIGMA_MAX = 80.0                                   # EDM's own time runs over [0, sigma_max]
SOLVE_STEPS = 200                                      # bisection halvings: far past float64's 2^-52


class Process:
    """A process's alpha(t), sigma(t) and their derivatives (subclasses), and what follows from them (here)."""

    name, t_max = None, 1.0

    def _t(self, t):
        t = np.asarray(t, dtype=np.float64)
        if t.ndim > 1 or np.any(~(t >= 0) | (t > self.t_max)):
            raise InputError(f"t must be a number or an array (N,) in [0, {self.t_max:g}] for the {self.name} "
                             f"process (t = 0 data, t = {self.t_max:g} noise)")
        return t

    def log_snr(self, t):
        """(D2) lambda(t) = log(alpha^2 / sigma^2); +inf where sigma = 0, -inf where alpha = 0."""
        with np.errstate(divide="ignore"):
            return 2.0 * (np.log(self.alpha(t)) - np.log(self.sigma(t)))

    def dlambda_dt(self, t):
        """(D2) dlambda/dt = 2 (alpha'/alpha - sigma'/sigma) < 0: lambda decreases from data to noise."""
        return 2.0 * (self.dalpha_dt(t) / self.alpha(t) - self.dsigma_dt(t) / self.sigma(t))

    def drift(self, t):
        """(D1) f(t) = d log alpha / dt, the SDE dx = f x dt + g dW."""
        return self.dalpha_dt(t) / self.alpha(t)

    def dsigma2_dt(self, t):
        """d sigma^2 / dt = 2 sigma sigma' (a VP process writes it without sigma' = inf at sigma = 0)."""
        return 2.0 * self.sigma(t) * self.dsigma_dt(t)

    def g2(self, t):
        """(D1) g(t)^2 = d sigma^2/dt - 2 f sigma^2."""
        return self.dsigma2_dt(t) - 2.0 * self.drift(t) * self.sigma(t) ** 2

    def sigma_tilde(self, t):
        """(D3) sigma~ = sigma / alpha = e^{-lambda/2}."""
        with np.errstate(divide="ignore"):
            return self.sigma(t) / self.alpha(t)

    def _sigma_tilde_arg(self, s):
        s = np.asarray(s, dtype=np.float64)
        lo, hi = (float(v) for v in self.sigma_tilde(np.array([0.0, self.t_max])))
        if s.ndim > 1 or np.any(~(s >= lo * (1 - 1e-12)) | (s > hi * (1 + 1e-12))):
            raise InputError(f"sigma~ must lie in [{lo:g}, {hi:g}], the range of the {self.name} process")
        return np.clip(s, lo, hi)

    def t_of_sigma_tilde(self, s):
        """(D3) The t with sigma~(t) = s: a bracketed bisection on [0, t_max] (sigma~ increases with t)."""
        return self.solve_t(s)

    def solve_t(self, s):
        """The monotone solve alone (tests check each closed form against it)."""
        s = self._sigma_tilde_arg(s)
        lo, hi = np.zeros_like(s), np.full_like(s, self.t_max)
        for _ in range(SOLVE_STEPS):
            mid = 0.5 * (lo + hi)
            below = self.sigma_tilde(mid) < s
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return 0.5 * (lo + hi)


class VPLinear(Process):
    """beta(t) = beta_min + t (beta_max - beta_min), alpha = exp(-B/2), sigma = sqrt(1 - exp(-B)) (score_sde)."""

    name = "vp-linear"

    def __init__(self, beta_min=VP_LINEAR["beta_min"], beta_max=VP_LINEAR["beta_max"]):
        self.b0 = check_number(beta_min, "beta_min", lo_open=True)
        self.b1 = check_number(beta_max, "beta_max", lo=self.b0)

    def beta(self, t):
        return self.b0 + self._t(t) * (self.b1 - self.b0)

    def _B(self, t):
        t = self._t(t)
        # (D1)  B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2
        return self.b0 * t + 0.5 * (self.b1 - self.b0) * t * t

    def alpha(self, t):
        return np.exp(-0.5 * self._B(t))

    def sigma(self, t):
        return np.sqrt(-np.expm1(-self._B(t)))

    def dalpha_dt(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def dsigma_dt(self, t):
        with np.errstate(divide="ignore"):
            return 0.5 * self.beta(t) * np.exp(-self._B(t)) / self.sigma(t)

    def dsigma2_dt(self, t):
        return self.beta(t) * np.exp(-self._B(t))     # (D1)  d(1 - e^-B)/dt

    def t_of_sigma_tilde(self, s):
        # (D3)  sigma~^2 = e^B - 1, so B = log1p(sigma~^2); then the quadratic in t
        B = np.log1p(self._sigma_tilde_arg(s) ** 2)
        d = self.b1 - self.b0
        if d == 0:
            return B / self.b0
        return 2.0 * B / (self.b0 + np.sqrt(self.b0 ** 2 + 2.0 * d * B))  # the root, without cancellation


class VPCosine(Process):
    """alpha^2 = cos^2(phi(t)) / cos^2(phi(0)), phi = (t + s) / (1 + s) pi/2 (Nichol & Dhariwal, continuous t)."""

    name = "vp-cosine"

    def __init__(self, s=COSINE_S):
        self.s = check_number(s, "s (cosine offset)")
        self.c0 = math.cos(0.5 * math.pi * self.s / (1.0 + self.s))

    def _phi(self, t):
        return 0.5 * math.pi * (self._t(t) + self.s) / (1.0 + self.s)

    def alpha(self, t):
        return np.maximum(np.cos(self._phi(t)), 0.0) / self.c0   # cos(pi/2) rounds to 6e-17: alpha(1) = 0

    def sigma(self, t):
        a = self.alpha(t)
        return np.sqrt((1.0 - a) * (1.0 + a))

    def dalpha_dt(self, t):
        return -0.5 * math.pi / (1.0 + self.s) * np.sin(self._phi(t)) / self.c0

    def dsigma_dt(self, t):
        with np.errstate(divide="ignore", invalid="ignore"):
            return -self.alpha(t) * self.dalpha_dt(t) / self.sigma(t)

    def dsigma2_dt(self, t):
        return -2.0 * self.alpha(t) * self.dalpha_dt(t)   # (D1)  sigma^2 = 1 - alpha^2

    def t_of_sigma_tilde(self, s):
        # (D3)  alpha = 1 / sqrt(1 + sigma~^2) = cos(phi) / cos(phi_0)
        phi = np.arccos(self.c0 / np.sqrt(1.0 + self._sigma_tilde_arg(s) ** 2))
        return np.clip(phi * 2.0 * (1.0 + self.s) / math.pi - self.s, 0.0, 1.0)


class VE(Process):
    """alpha = 1, sigma = sigma_min (sigma_max / sigma_min)^t (score_sde's VE SDE; sigma(0) = sigma_min > 0)."""

    name = "ve"

    def __init__(self, sigma_min=VE_DEFAULTS["sigma_min"], sigma_max=VE_DEFAULTS["sigma_max"]):
        self.lo = check_number(sigma_min, "sigma_min", lo_open=True)
        self.hi = check_number(sigma_max, "sigma_max", lo=self.lo)
        self.r = math.log(self.hi / self.lo)

    def alpha(self, t):
        return np.ones_like(self._t(t))

    def sigma(self, t):
        return self.lo * np.exp(self.r * self._t(t))

    def dalpha_dt(self, t):
        return np.zeros_like(self._t(t))

    def dsigma_dt(self, t):
        return self.r * self.sigma(t)

    def t_of_sigma_tilde(self, s):
        return np.log(self._sigma_tilde_arg(s) / self.lo) / self.r if self.r > 0 else np.zeros_like(s)


class EDM(Process):
    """alpha = 1, sigma = t on [0, sigma_max]: EDM's own time is sigma (the one exception to t in [0, 1])."""

    name = "edm"

    def __init__(self, sigma_max=EDM_SIGMA_MAX):
        self.t_max = check_number(sigma_max, "sigma_max", lo_open=True)

    def alpha(self, t):
        return np.ones_like(self._t(t))

    def sigma(self, t):
        return self._t(t).copy()

    def dalpha_dt(self, t):
        return np.zeros_like(self._t(t))

    def dsigma_dt(self, t):
        return np.ones_like(self._t(t))

    def t_of_sigma_tilde(self, s):
        return self._sigma_tilde_arg(s).copy()


class Flow(Process):
    """alpha = 1 - t, sigma = t (rectified flow / flow matching in SD3's direction: t = 1 is the noise)."""

    name = "flow"

    def alpha(self, t):
        return 1.0 - self._t(t)

    def sigma(self, t):
        return self._t(t).copy()

    def dalpha_dt(self, t):
        return -np.ones_like(self._t(t))

    def dsigma_dt(self, t):
        return np.ones_like(self._t(t))

    def t_of_sigma_tilde(self, s):
        return flow_t_of_sigma_tilde(self._sigma_tilde_arg(s))


def flow_t_of_sigma_tilde(s):
    """(D3, D12) sigma~ = t / (1 - t)  <=>  t = sigma~ / (1 + sigma~); 1 at sigma~ = inf. A number stays a float."""
    with np.errstate(invalid="ignore"):
        t = np.where(np.isinf(s), 1.0, np.asarray(s, dtype=np.float64) / (1.0 + np.asarray(s, dtype=np.float64)))
    return float(t) if np.ndim(s) == 0 and not isinstance(s, np.ndarray) else t


class Chain(Process):
    """A trained Schedule's levels at t_k = (k + 1) / T (0-based step k) and t = 0 (alpha = 1): a view, not a fit.

    Only those times exist (others are refused), and there are no t-derivatives: the chain is discrete.
    """

    name = "chain"

    def __init__(self, sched):
        self.sched, self.T = sched, sched.T
        self._alpha = np.concatenate([[1.0], np.asarray(sched.sqrt_alpha_bar, dtype=np.float64)])
        self._sigma = np.concatenate([[0.0], np.asarray(sched.sqrt_one_minus_alpha_bar, dtype=np.float64)])

    def step(self, t):
        """The 0-based step k of t = (k + 1) / T (-1 for t = 0, the data), int64."""
        k = np.round(self._t(t) * self.T)
        if np.any(np.abs(k - self._t(t) * self.T) > 1e-9 * self.T):
            raise InputError(f"the chain has levels only at t = k / T (T = {self.T}); snap t to its steps")
        return k.astype(np.int64) - 1

    def alpha(self, t):
        return self._alpha[self.step(t) + 1]

    def sigma(self, t):
        return self._sigma[self.step(t) + 1]

    def _no_derivative(self, t):
        raise InputError("the trained chain is discrete: it has no t-derivative (use the vp-linear or vp-cosine "
                         "process for its continuous-time limit)")

    dalpha_dt = dsigma_dt = _no_derivative

    def t_of_sigma_tilde(self, s):
        """The step time whose sigma~ is s exactly (relative 1e-9), as reference.score.sigma_to_t refuses others."""
        s = np.asarray(s, dtype=np.float64)
        with np.errstate(divide="ignore"):
            table = self._sigma / self._alpha                               # (T + 1,) increasing, 0 first
        k = np.clip(np.searchsorted(table, s), 0, self.T)
        k = np.where((k > 0) & (np.abs(table[np.maximum(k - 1, 0)] - s) < np.abs(table[k] - s)), k - 1, k)
        if s.ndim > 1 or not np.all(np.abs(table[k] - s) <= 1e-9 * s):
            raise InputError("sigma~ is not a level of the trained chain: a discrete chain has only its steps' "
                             "levels (snap the grid with solvers.snap_sigmas)")
        return k / self.T


CLASSES = {"vp-linear": VPLinear, "vp-cosine": VPCosine, "ve": VE, "edm": EDM, "flow": Flow}


def make_process(name, **kw):
    """The process ``name`` (one of common.choices.PROCESSES) with its settings ``kw`` (defaults as the papers')."""
    check_choice(name, PROCESSES, "process")
    try:
        return CLASSES[name](**kw)
    except TypeError as e:
        raise InputError(f"process {name!r} got a setting it does not take: {e}") from None


def chain_process(sched):
    """The trained discrete Schedule as a process, at its own levels only."""
    return Chain(sched)


def to_tilde(proc, x, t):
    """(D3) (x, t) -> (x~ = x / alpha(t), sigma~(t)); t a number or (N,)."""
    x = _data(x, "x")
    a = np.asarray(proc.alpha(t), dtype=np.float64)
    if np.any(a <= 0):
        raise InputError("alpha(t) = 0 (the pure-noise end): x~ = x / alpha is infinite there")
    x_tilde = x.astype(np.float64) / a.reshape((-1,) + (1,) * (x.ndim - 1)) if a.ndim else x / float(a)
    return x_tilde.astype(x.dtype, copy=False), proc.sigma_tilde(t)


def from_tilde(proc, x_tilde, sigma_tilde):
    """(D3) (x~, sigma~) -> (x = alpha(t) x~, t) at the t with the same lambda."""
    x_tilde = _data(x_tilde, "x_tilde")
    t = proc.t_of_sigma_tilde(sigma_tilde)
    a = np.asarray(proc.alpha(t), dtype=np.float64)
    x = x_tilde.astype(np.float64) * (a.reshape((-1,) + (1,) * (x_tilde.ndim - 1)) if a.ndim else float(a))
    return x.astype(x_tilde.dtype, copy=False), t
