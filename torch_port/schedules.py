"""Noise schedules and the table of every derived coefficient, written again in torch.

Mirror of reference/schedules.py: same names, same signatures, same meaning; the math is
computed here in torch (float64), not imported. Derivations: derivations/schedules.md (S*),
derivations/forward.md (F*), derivations/posterior.md (P*).

Time index: code ``t`` is 0-based, ``t in {0, ..., T-1}``; the paper's step is ``t + 1``.
All tables are torch float64 tensors of shape (T,), on the CPU unless moved with
``Schedule.to(device)``.

Validation: the betas are checked once, at construction (a host copy is cheap there, and the
messages are the reference's own, from reference.errors). Per-call checks in the port's math
modules check shapes and dtypes always, and values (t in range, data finite, ...) when the tensor
is on the CPU, or on any device when the schedule was built with ``validate=True``. The default
``validate=False`` keeps training and sampling loops on an accelerator free of host syncs (a value
check there reads the device's memory from the host: a sync per call).
"""
from __future__ import annotations

import math

import torch

from reference.errors import InputError, check_betas, check_choice, check_rescaled, check_T
from reference.schedules import (PRIOR_BPD_WARN, SCHEDULES, PriorMismatchWarning,  # non-math constants
                                 ScheduleDiagnostics)  # prior term, warning, repr (scalar Python)

__all__ = ["SCHEDULES", "PRIOR_BPD_WARN", "PriorMismatchWarning", "make_betas", "rescale_zero_terminal_snr",
           "Schedule"]

_F64 = torch.float64


def _checked(betas):
    """Betas as a float64 tensor, checked by the shared reference.errors.check_betas (same messages)."""
    if isinstance(betas, torch.Tensor):
        b = betas.detach().to(_F64).clone()
        check_betas(b.cpu().numpy())  # construction time only: the host copy is not in a hot path
        return b
    return torch.as_tensor(check_betas(betas), dtype=_F64).clone()


def make_betas(name, T, **kw):
    """Betas of shape (T,) as a float64 tensor for a named schedule (or an array/tensor ``name``).

    Same schedules and options as reference.schedules.make_betas:
    linear (S1), cosine (S2, S3), quadratic (S4), sigmoid (S5; variant="beta" | "alpha_bar").
    """
    if not isinstance(name, str):
        return _checked(name)
    check_choice(name, SCHEDULES, "schedule")
    T = check_T(T)
    variant = kw.pop("variant", "beta") if name == "sigmoid" else None
    if name in ("linear", "quadratic") or variant == "beta":
        start, end = float(kw.pop("beta_start", 1e-4)), float(kw.pop("beta_end", 0.02))
    if name == "linear":
        # (S1)  beta_t = b_0 + t/(T-1) (b_1 - b_0)
        betas = torch.linspace(start, end, T, dtype=_F64)
    elif name == "quadratic":
        # (S4)  beta_t = (sqrt(b_0) + t/(T-1) (sqrt(b_1) - sqrt(b_0)))^2
        betas = torch.linspace(start**0.5, end**0.5, T, dtype=_F64) ** 2
    elif name == "cosine":
        s, max_beta = float(kw.pop("s", 0.008)), float(kw.pop("max_beta", 0.999))

        def f(u):  # (S2)  f(u) = cos^2((u + s)/(1 + s) pi/2), u = t/T in [0, 1]
            return torch.cos((u + s) / (1 + s) * (math.pi / 2)) ** 2

        betas = _betas_from_alpha_bar_fn(f, T, max_beta)
    else:  # sigmoid
        check_choice(variant, ("beta", "alpha_bar"), "sigmoid variant")
        if variant == "beta":
            # (S5)  beta_t = sigmoid(-6 + 12 t/(T-1)) (b_1 - b_0) + b_0
            betas = torch.sigmoid(torch.linspace(-6.0, 6.0, T, dtype=_F64)) * (end - start) + start
        else:
            lo, hi, tau = float(kw.pop("start", -3.0)), float(kw.pop("end", 3.0)), float(kw.pop("tau", 1.0))
            max_beta = float(kw.pop("max_beta", 0.999))
            v_lo = torch.sigmoid(torch.tensor(lo / tau, dtype=_F64))
            v_hi = torch.sigmoid(torch.tensor(hi / tau, dtype=_F64))

            # (S5, alpha_bar variant)  f(u) = (sig(hi/tau) - sig((lo + u (hi - lo))/tau)) / (sig(hi/tau) - sig(lo/tau))
            def f(u):
                return (v_hi - torch.sigmoid((u * (hi - lo) + lo) / tau)) / (v_hi - v_lo)

            betas = _betas_from_alpha_bar_fn(f, T, max_beta)
    if kw:
        raise InputError(f"unknown option(s) for schedule {name!r}: {', '.join(sorted(kw))}")
    return _checked(betas)


def _betas_from_alpha_bar_fn(f, T, max_beta):
    """(S3)  beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta), with abar(u) = f(u) / f(0)."""
    u = torch.arange(T + 1, dtype=_F64) / T                        # (T+1,)
    abar = f(u) / f(torch.zeros((), dtype=_F64))                   # (T+1,)
    # (S3)
    return torch.clamp(1.0 - abar[1:] / abar[:-1], max=max_beta)   # (T,)


def rescale_zero_terminal_snr(betas):
    """(S6) Lin et al. 2023: shift and scale sqrt(alpha_bar) so that alpha_bar[T-1] = 0 exactly.

    Input (T,) betas (tensor or array), output a float64 tensor (T,) with betas[T-1] = 1.
    """
    b = _checked(betas)
    if b.numel() < 2:
        raise InputError("rescale_zero_terminal_snr needs T >= 2 (it pins the first and the last step)")
    # (F2)  sqrt(abar_t) = sqrt(prod_{s<=t} (1 - beta_s))
    sqrt_abar = torch.sqrt(torch.cumprod(1.0 - b, dim=0))
    if bool(torch.any(sqrt_abar[:-1] == 0)):
        k = int(torch.nonzero(sqrt_abar == 0)[0])
        raise InputError(f"rescale_zero_terminal_snr: alpha_bar already reaches 0 at step {k} of {b.numel()} "
                         "(a beta of 1 before the last step); there is nothing left to rescale")
    first, last = float(sqrt_abar[0]), float(sqrt_abar[-1])
    if not first > last:
        raise InputError("rescale_zero_terminal_snr: alpha_bar must decrease from the first to the last step")
    # (S6)  sqrt(abar) <- (sqrt(abar) - sqrt(abar_T)) sqrt(abar_1) / (sqrt(abar_1) - sqrt(abar_T))
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    if bool(torch.any(sqrt_abar[:-1] <= 0)):
        k = int(torch.nonzero(sqrt_abar[:-1] <= 0)[0])
        raise InputError(f"rescale_zero_terminal_snr: the rescaled schedule leaves no signal at step {k} (of {b.numel()}): "
                         "only the last step may lose all signal. The last betas are below float64's resolution "
                         "relative to the earlier ones.")
    abar = sqrt_abar**2
    # (F2)  alpha_t = abar_t / abar_{t-1}, alpha_0 = abar_0
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    betas = _checked(1.0 - alphas)
    check_rescaled(betas.detach().cpu().numpy())
    return betas


class Schedule(ScheduleDiagnostics):
    """Every coefficient of the forward process, posterior and samplers, as float64 tensors (T,).

    Same attribute names and meanings as reference.schedules.Schedule (see its docstring):
    betas, alphas, alpha_bar, alpha_bar_prev, sqrt_alpha_bar, sqrt_one_minus_alpha_bar,
    sqrt_recip_alpha_bar, sqrt_recipm1_alpha_bar, posterior_variance,
    posterior_log_variance_clipped, fixed_large_variance, fixed_large_log_variance,
    posterior_mean_coef_x0, posterior_mean_coef_xt, snr, log_snr.
    Index ``t`` is 0-based (paper t+1).

    ``validate`` (default False): CPU tensors always get value checks; with ``validate=True``
    tensors on an accelerator get them too (each costs a host sync). Shapes and dtypes are
    always checked.
    ``to(device)`` returns a copy with every table on ``device`` (do this once, not per step:
    coefficients are gathered on the data's device).
    """

    def __init__(self, betas, warn=True, validate=False):
        b = _checked(betas)
        self.T = int(b.numel())
        self.validate = bool(validate)
        self.betas = b
        # (F1)  alpha_t = 1 - beta_t
        self.alphas = 1.0 - b
        # (F2)  abar_t = prod_{s=0}^{t} alpha_s
        #       in log space: 1 - abar_t = -expm1(log abar_t) stays accurate when every beta is tiny
        log_abar = torch.cumsum(torch.log1p(-b), dim=0)
        self.alpha_bar = torch.exp(log_abar)
        one_minus = -torch.expm1(log_abar)
        # a host copy for diagnostics and warnings, so reading one never waits on the device
        self.alpha_bar_host = self.alpha_bar.detach().cpu().numpy()
        # abar_{t-1}, with abar_{-1} = 1 (empty product)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=_F64, device=b.device), self.alpha_bar[:-1]])
        one_minus_prev = torch.cat([torch.zeros(1, dtype=_F64, device=b.device), one_minus[:-1]])
        self.sqrt_alpha_bar = torch.sqrt(self.alpha_bar)
        self.sqrt_one_minus_alpha_bar = torch.sqrt(one_minus)
        # Infinite only where abar = 0 (zero terminal SNR); diffusion.predict_x0 refuses those steps.
        # 1/sqrt and a ratio of roots, so a subnormal abar does not overflow.
        self.sqrt_recip_alpha_bar = 1.0 / self.sqrt_alpha_bar
        self.sqrt_recipm1_alpha_bar = self.sqrt_one_minus_alpha_bar / self.sqrt_alpha_bar
        # (P3)  beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t ; beta~_0 = 0 since abar_{-1} = 1
        self.posterior_variance = b * one_minus_prev / one_minus
        # (P4)  log beta~_0 = log 0 = -inf: use log beta~_1 there (log beta_0 when T = 1)
        first = self.posterior_variance[1:2] if self.T > 1 else b[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        # (M2, P4)  "fixed_large" sigma_t^2 = beta_t, with beta~_1 at t = 0 (beta_0 when T = 1)
        self.fixed_large_variance = torch.cat([first, b[1:]])
        self.fixed_large_log_variance = torch.log(self.fixed_large_variance)
        # (P2)  coef_x0 = sqrt(abar_{t-1}) beta_t / (1 - abar_t)
        self.posterior_mean_coef_x0 = b * torch.sqrt(self.alpha_bar_prev) / one_minus
        # (P2)  coef_xt = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)
        self.posterior_mean_coef_xt = one_minus_prev * torch.sqrt(self.alphas) / one_minus
        # (S7)  SNR_t = abar_t / (1 - abar_t)
        self.snr = self.alpha_bar / one_minus
        self.log_snr = torch.log(self.alpha_bar) - torch.log(one_minus)
        # First step with abar = 0 (abar is non-increasing), or None: lets predict_x0 skip its check.
        zero = torch.nonzero(self.alpha_bar == 0)
        self._first_zero_snr_step = int(zero[0, 0]) if zero.numel() else None
        if warn:
            self.warn_if_prior_mismatched()

    # ---- device --------------------------------------------------------------------------

    @property
    def device(self):
        return self.betas.device

    def to(self, device):
        """A copy with every table on ``device`` (tables stay float64)."""
        new = object.__new__(Schedule)
        new.__dict__ = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return new

    # ---- diagnostics ---------------------------------------------------------------------

    @property
    def alpha_bar_T(self):
        """bar-alpha at the last step: the signal fraction left in x_T. Near 0 for a good schedule."""
        return float(self.alpha_bar_host[-1])

    @property
    def _repr_extra(self):
        return f", device={self.device}"
