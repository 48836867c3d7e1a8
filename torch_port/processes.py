"""The noise processes x_t = alpha(t) x0 + sigma(t) eps in continuous time, in torch.

Mirror of reference/processes.py (see its docstring): same classes, methods, meaning and errors; the math in
torch. Derivations: derivations/design_space.md (D1-D4). Times and levels come back as float64 tensors on the
input's device (CPU for numbers and NumPy arrays); range checks read the values on the host.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from common.choices import PROCESSES
from reference.errors import InputError, check_choice, check_number

VP_LINEAR = {"beta_min": 0.1, "beta_max": 20.0}
COSINE_S = 0.008
VE_DEFAULTS = {"sigma_min": 0.01, "sigma_max": 50.0}
EDM_SIGMA_MAX = 80.0
SOLVE_STEPS = 200
_F64 = torch.float64


def _f64(v):
    return v.to(_F64) if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v, dtype=np.float64))


class Process:
    """Derived quantities from alpha, sigma and their t-derivatives (the subclasses)."""

    name, t_max = None, 1.0

    def _t(self, t):
        t = _f64(t)
        if t.ndim > 1 or bool(torch.any(~(t >= 0) | (t > self.t_max))):
            raise InputError(f"t must be a number or an array (N,) in [0, {self.t_max:g}] for the {self.name} "
                             f"process (t = 0 data, t = {self.t_max:g} noise)")
        return t

    def log_snr(self, t):
        """(D2) lambda = log(alpha^2 / sigma^2)."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def dlambda_dt(self, t):
        """(D2) 2 (alpha'/alpha - sigma'/sigma)."""
        return 2.0 * (self.dalpha_dt(t) / self.alpha(t) - self.dsigma_dt(t) / self.sigma(t))

    def drift(self, t):
        """(D1) f = d log alpha / dt."""
        return self.dalpha_dt(t) / self.alpha(t)

    def dsigma2_dt(self, t):
        return 2.0 * self.sigma(t) * self.dsigma_dt(t)

    def g2(self, t):
        """(D1) g^2 = d sigma^2/dt - 2 f sigma^2."""
        return self.dsigma2_dt(t) - 2.0 * self.drift(t) * self.sigma(t) ** 2

    def sigma_tilde(self, t):
        """(D3) sigma / alpha."""
        return self.sigma(t) / self.alpha(t)

    def _sigma_tilde_arg(self, s):
        s = _f64(s)
        lo, hi = self.sigma_tilde(torch.tensor([0.0, self.t_max], dtype=_F64)).tolist()
        if s.ndim > 1 or bool(torch.any(~(s >= lo * (1 - 1e-12)) | (s > hi * (1 + 1e-12)))):
            raise InputError(f"sigma~ must lie in [{lo:g}, {hi:g}], the range of the {self.name} process")
        return s.clamp(lo, hi)

    def t_of_sigma_tilde(self, s):
        """(D3) Bisection on [0, t_max]."""
        return self.solve_t(s)

    def solve_t(self, s):
        s = self._sigma_tilde_arg(s)
        lo, hi = torch.zeros_like(s), torch.full_like(s, self.t_max)
        for _ in range(SOLVE_STEPS):
            mid = 0.5 * (lo + hi)
            below = self.sigma_tilde(mid) < s
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)


class VPLinear(Process):
    name = "vp-linear"

    def __init__(self, beta_min=VP_LINEAR["beta_min"], beta_max=VP_LINEAR["beta_max"]):
        self.b0 = check_number(beta_min, "beta_min", lo_open=True)
        self.b1 = check_number(beta_max, "beta_max", lo=self.b0)

    def beta(self, t):
        return self.b0 + self._t(t) * (self.b1 - self.b0)

    def _B(self, t):
        t = self._t(t)
        # (D1)  B(t) = beta_min t + (beta_max - beta_min) t^2 / 2
        return self.b0 * t + 0.5 * (self.b1 - self.b0) * t * t

    def alpha(self, t):
        return torch.exp(-0.5 * self._B(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._B(t)))

    def dalpha_dt(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def dsigma_dt(self, t):
        return 0.5 * self.beta(t) * torch.exp(-self._B(t)) / self.sigma(t)

    def dsigma2_dt(self, t):
        return self.beta(t) * torch.exp(-self._B(t))     # (D1)  d(1 - e^-B)/dt

    def t_of_sigma_tilde(self, s):
        # (D3)  B = log1p(sigma~^2), the positive root of the quadratic in t
        B = torch.log1p(self._sigma_tilde_arg(s) ** 2)
        d = self.b1 - self.b0
        if d == 0:
            return B / self.b0
        return 2.0 * B / (self.b0 + torch.sqrt(self.b0 ** 2 + 2.0 * d * B))


class VPCosine(Process):
    name = "vp-cosine"

    def __init__(self, s=COSINE_S):
        self.s = check_number(s, "s (cosine offset)")
        self.c0 = math.cos(0.5 * math.pi * self.s / (1.0 + self.s))

    def _phi(self, t):
        return 0.5 * math.pi * (self._t(t) + self.s) / (1.0 + self.s)

    def alpha(self, t):
        return torch.clamp(torch.cos(self._phi(t)), min=0.0) / self.c0

    def sigma(self, t):
        a = self.alpha(t)
        return torch.sqrt((1.0 - a) * (1.0 + a))

    def dalpha_dt(self, t):
        return -0.5 * math.pi / (1.0 + self.s) * torch.sin(self._phi(t)) / self.c0

    def dsigma_dt(self, t):
        return -self.alpha(t) * self.dalpha_dt(t) / self.sigma(t)

    def dsigma2_dt(self, t):
        return -2.0 * self.alpha(t) * self.dalpha_dt(t)   # (D1)  sigma^2 = 1 - alpha^2

    def t_of_sigma_tilde(self, s):
        # (D3)  cos(phi) = cos(phi_0) / sqrt(1 + sigma~^2)
        phi = torch.arccos(self.c0 / torch.sqrt(1.0 + self._sigma_tilde_arg(s) ** 2))
        return torch.clamp(phi * 2.0 * (1.0 + self.s) / math.pi - self.s, 0.0, 1.0)


class VE(Process):
    name = "ve"

    def __init__(self, sigma_min=VE_DEFAULTS["sigma_min"], sigma_max=VE_DEFAULTS["sigma_max"]):
        self.lo = check_number(sigma_min, "sigma_min", lo_open=True)
        self.hi = check_number(sigma_max, "sigma_max", lo=self.lo)
        self.r = math.log(self.hi / self.lo)

    def alpha(self, t):
        return torch.ones_like(self._t(t))

    def sigma(self, t):
        return self.lo * torch.exp(self.r * self._t(t))

    def dalpha_dt(self, t):
        return torch.zeros_like(self._t(t))

    def dsigma_dt(self, t):
        return self.r * self.sigma(t)

    def t_of_sigma_tilde(self, s):
        s = self._sigma_tilde_arg(s)
        return torch.log(s / self.lo) / self.r if self.r > 0 else torch.zeros_like(s)


class EDM(Process):
    name = "edm"

    def __init__(self, sigma_max=EDM_SIGMA_MAX):
        self.t_max = check_number(sigma_max, "sigma_max", lo_open=True)

    def alpha(self, t):
        return torch.ones_like(self._t(t))

    def sigma(self, t):
        return self._t(t).clone()

    def dalpha_dt(self, t):
        return torch.zeros_like(self._t(t))

    def dsigma_dt(self, t):
        return torch.ones_like(self._t(t))

    def t_of_sigma_tilde(self, s):
        return self._sigma_tilde_arg(s).clone()


class Flow(Process):
    name = "flow"

    def alpha(self, t):
        return 1.0 - self._t(t)

    def sigma(self, t):
        return self._t(t).clone()

    def dalpha_dt(self, t):
        return -torch.ones_like(self._t(t))

    def dsigma_dt(self, t):
        return torch.ones_like(self._t(t))

    def t_of_sigma_tilde(self, s):
        return flow_t_of_sigma_tilde(self._sigma_tilde_arg(s))


def flow_t_of_sigma_tilde(s):
    """(D3, D12) t = sigma~ / (1 + sigma~); 1 at sigma~ = inf. A Python number stays a float."""
    if isinstance(s, (int, float)):
        return 1.0 if math.isinf(s) else s / (1.0 + s)
    s = _f64(s)
    return torch.where(torch.isinf(s), torch.ones_like(s), s / (1.0 + s))


class Chain(Process):
    """A trained Schedule's levels at t_k = (k + 1) / T and t = 0: a view (no t-derivatives)."""

    name = "chain"

    def __init__(self, sched):
        self.sched, self.T = sched, sched.T
        one, zero = torch.ones(1, dtype=_F64), torch.zeros(1, dtype=_F64)
        self._alpha = torch.cat([one, _f64(sched.sqrt_alpha_bar).cpu()])
        self._sigma = torch.cat([zero, _f64(sched.sqrt_one_minus_alpha_bar).cpu()])

    def step(self, t):
        """The 0-based step of t = (k + 1) / T (-1 at t = 0), int64."""
        tt = self._t(t)
        k = torch.round(tt * self.T)
        if bool(torch.any(torch.abs(k - tt * self.T) > 1e-9 * self.T)):
            raise InputError(f"the chain has levels only at t = k / T (T = {self.T}); snap t to its steps")
        return k.to(torch.int64) - 1

    def alpha(self, t):
        k = self.step(t)
        return self._alpha.to(k.device)[k + 1]

    def sigma(self, t):
        k = self.step(t)
        return self._sigma.to(k.device)[k + 1]

    def _no_derivative(self, t):
        raise InputError("the trained chain is discrete: it has no t-derivative (use the vp-linear or vp-cosine "
                         "process for its continuous-time limit)")

    dalpha_dt = dsigma_dt = _no_derivative

    def t_of_sigma_tilde(self, s):
        s = _f64(s).cpu()
        table = self._sigma / self._alpha
        k = torch.clamp(torch.searchsorted(table, s), 0, self.T)
        prev = torch.clamp(k - 1, min=0)
        k = torch.where((k > 0) & ((table[prev] - s).abs() < (table[k] - s).abs()), k - 1, k)
        if s.ndim > 1 or not bool(torch.all((table[k] - s).abs() <= 1e-9 * s)):
            raise InputError("sigma~ is not a level of the trained chain: a discrete chain has only its steps' "
                             "levels (snap the grid with solvers.snap_sigmas)")
        return k.to(_F64) / self.T


CLASSES = {"vp-linear": VPLinear, "vp-cosine": VPCosine, "ve": VE, "edm": EDM, "flow": Flow}


def make_process(name, **kw):
    """The process ``name`` (common.choices.PROCESSES) with its settings."""
    check_choice(name, PROCESSES, "process")
    try:
        return CLASSES[name](**kw)
    except TypeError as e:
        raise InputError(f"process {name!r} got a setting it does not take: {e}") from None


def chain_process(sched):
    return Chain(sched)


def _x(x, name):
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not x.is_floating_point():
        x = x.to(_F64)
    if x.ndim < 1:
        raise InputError(f"{name} must be a batch with the batch dimension first, (N, ...), got a scalar")
    return x


def _col(a, x):
    a = a.to(x.device)
    return a.reshape((-1,) + (1,) * (x.ndim - 1)) if a.ndim else a


def to_tilde(proc, x, t):
    """(D3) (x, t) -> (x / alpha(t), sigma~(t))."""
    x = _x(x, "x")
    a = proc.alpha(t)
    if bool(torch.any(a <= 0)):
        raise InputError("alpha(t) = 0 (the pure-noise end): x~ = x / alpha is infinite there")
    return (x.to(_F64) / _col(a, x)).to(x.dtype), proc.sigma_tilde(t)


def from_tilde(proc, x_tilde, sigma_tilde):
    """(D3) (x~, sigma~) -> (alpha(t) x~, t) at equal lambda."""
    x_tilde = _x(x_tilde, "x_tilde")
    t = proc.t_of_sigma_tilde(sigma_tilde)
    return (x_tilde.to(_F64) * _col(proc.alpha(t), x_tilde)).to(x_tilde.dtype), t
