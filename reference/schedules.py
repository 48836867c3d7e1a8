"""Noise schedules and the table of every coefficient derived from them.

Derivations: derivations/schedules.md (S*), derivations/forward.md (F*),
derivations/posterior.md (P*).

Time index: code ``t`` is 0-based, ``t in {0, ..., T-1}``; the paper's step is ``t + 1``.
So ``betas[0]`` is the paper's beta_1 and ``alpha_bar[T-1]`` is the paper's bar-alpha_T.
All tables are float64 NumPy arrays of shape (T,).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .errors import InputError, check_betas, check_choice, check_rescaled, check_T

SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")

# A prior term L_T above this many bits per dimension means q(x_T | x_0) is visibly not N(0, I):
# sampling from N(0, I) then starts from the wrong distribution. (Linear 1e-4..0.02 at T=1000
# gives ~3e-5 bits/dim; at T=50 it gives ~0.66.)
PRIOR_BPD_WARN = 1e-2


class PriorMismatchWarning(UserWarning):
    """q(x_T | x_0) is far from N(0, I): the schedule does not destroy the signal by step T."""


def warn_late_start(alpha_bar_start, t_start, T):
    """Warn when sampling from N(0, I) starts at a kept step t_start < T-1 that still holds signal
    (alpha_bar_start, e.g. "leading" spacing skips the noisiest steps): the prior mismatch (L8) of a
    too-short schedule. Scalar Python, shared by both sides' sample_loop. Returns the prior term's bound."""
    bpd = -0.5 * math.log1p(-alpha_bar_start) / math.log(2.0) if alpha_bar_start < 1 else math.inf
    if t_start < T - 1 and bpd > PRIOR_BPD_WARN:
        warnings.warn(f"sampling starts at t={t_start} (not T-1={T - 1}) where alpha_bar = {alpha_bar_start:.3g}: "
                      f"x_t there is not N(0, I) (prior term up to {bpd:.3g} bits/dim). Leading spacing with n "
                      "steps starts at (n-1) floor(T/n), T - T/n where n divides T (t=900 for 10 of 1000 steps; "
                      "not later for every larger n: 600 of 1000 start at t=599). A spacing that starts at T-1 "
                      "(trailing, linspace) removes the mismatch but divides an eps-model's error by "
                      "sqrt(alpha_bar_{T-1}) in x0_hat: harmful where that is tiny (the cosine schedule's clipped "
                      "last step, alpha_bar ~ 2.4e-9) unless x0_hat is clipped.", PriorMismatchWarning, stacklevel=3)
    return bpd


def make_betas(name, T, **kw):
    """Betas of shape (T,) for a named schedule (or pass an array as ``name`` for custom betas).

    linear     (S1)  linspace(beta_start, beta_end, T); Ho et al. use 1e-4 .. 0.02 at T=1000.
                     Not rescaled with T: at small T this leaves signal at step T (see Schedule).
    cosine     (S2, S3)  Nichol & Dhariwal: alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2),
                     s = 0.008, beta_t = min(1 - alpha_bar(t+1)/alpha_bar(t), max_beta=0.999).
    quadratic  (S4)  linspace(sqrt(beta_start), sqrt(beta_end), T)**2 (diffusers' "scaled_linear").
    sigmoid    (S5)  variant="beta" (default; GeoDiff, diffusers' "sigmoid"):
                         beta = sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start.
                     variant="alpha_bar" (Jabri et al. 2022): alpha_bar from a sigmoid in time with
                         start=-3, end=3, tau=1, betas clipped at max_beta=0.999 like the cosine.
    """
    if not isinstance(name, str):
        return check_betas(name).copy()
    check_choice(name, SCHEDULES, "schedule")
    T = check_T(T)
    variant = kw.pop("variant", "beta") if name == "sigmoid" else None
    if name in ("linear", "quadratic") or variant == "beta":
        start, end = float(kw.pop("beta_start", 1e-4)), float(kw.pop("beta_end", 0.02))
    if name == "linear":
        # (S1)
        betas = np.linspace(start, end, T, dtype=np.float64)
    elif name == "quadratic":
        # (S4)  beta_t = (sqrt(b_0) + t/(T-1) (sqrt(b_1) - sqrt(b_0)))^2
        betas = np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2
    elif name == "cosine":
        s, max_beta = float(kw.pop("s", 0.008)), float(kw.pop("max_beta", 0.999))

        def f(u):  # u = t / T in [0, 1]
            return np.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = _betas_from_alpha_bar_fn(f, T, max_beta)
    else:  # sigmoid
        check_choice(variant, ("beta", "alpha_bar"), "sigmoid variant")
        if variant == "beta":
            # (S5)
            betas = _sigmoid(np.linspace(-6, 6, T)) * (end - start) + start
        else:
            lo, hi, tau = float(kw.pop("start", -3.0)), float(kw.pop("end", 3.0)), float(kw.pop("tau", 1.0))
            max_beta = float(kw.pop("max_beta", 0.999))
            v_lo, v_hi = _sigmoid(lo / tau), _sigmoid(hi / tau)

            def f(u):
                return (v_hi - _sigmoid((u * (hi - lo) + lo) / tau)) / (v_hi - v_lo)

            betas = _betas_from_alpha_bar_fn(f, T, max_beta)
    if kw:
        raise InputError(f"unknown option(s) for schedule {name!r}: {', '.join(sorted(kw))}")
    return check_betas(betas)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _betas_from_alpha_bar_fn(f, T, max_beta):
    """(S3)  beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta), with abar(u) = f(u) / f(0)."""
    u = np.arange(T + 1, dtype=np.float64) / T
    abar = f(u) / f(0.0)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def rescale_zero_terminal_snr(betas):
    """(S6) Lin et al. 2023: shift and scale sqrt(alpha_bar) so that alpha_bar[T-1] = 0 exactly.

    sqrt(abar) -> (sqrt(abar) - sqrt(abar_T)) * sqrt(abar_1) / (sqrt(abar_1) - sqrt(abar_T)):
    the first step keeps its value, the last has SNR 0, so betas[T-1] = 1. Such a schedule
    needs the "v" (or "x0") prediction: x0 cannot be recovered from eps at SNR 0.
    """
    b = check_betas(betas)
    if b.size < 2:
        raise InputError("rescale_zero_terminal_snr needs T >= 2 (it pins the first and the last step)")
    sqrt_abar = np.sqrt(np.cumprod(1.0 - b))
    if np.any(sqrt_abar[:-1] == 0):
        k = int(np.flatnonzero(sqrt_abar == 0)[0])
        raise InputError(f"rescale_zero_terminal_snr: alpha_bar already reaches 0 at step {k} of {b.size} "
                         "(a beta of 1 before the last step); there is nothing left to rescale")
    first, last = sqrt_abar[0], sqrt_abar[-1]
    if not first > last:
        raise InputError("rescale_zero_terminal_snr: alpha_bar must decrease from the first to the last step")
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    if np.any(sqrt_abar[:-1] <= 0):
        k = int(np.flatnonzero(sqrt_abar[:-1] <= 0)[0])
        raise InputError(f"rescale_zero_terminal_snr: the rescaled schedule leaves no signal at step {k} (of {b.size}): "
                         "only the last step may lose all signal. The last betas are below float64's resolution "
                         "relative to the earlier ones.")
    abar = sqrt_abar**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return check_rescaled(check_betas(1.0 - alphas))


class ScheduleDiagnostics:
    """Diagnostics shared by both sides' Schedule (scalar Python on ``alpha_bar_T``, ``T`` and ``snr``):
    the prior term, the prior-mismatch warning and the repr. Not math that the port mirrors."""

    _repr_extra = ""

    def prior_bpd(self, x0_sq=1.0):
        """(L8) The prior term L_T = KL(q(x_T | x_0) || N(0, I)) per dimension, in bits.

        Depends on x_0 only through x0**2; the default 1 is the worst case for data in [-1, 1].
        KL = 1/2 (abar x0^2 + (1 - abar) - 1 - log(1 - abar)).
        """
        a = self.alpha_bar_T
        nats = 0.5 * (a * x0_sq - a - math.log1p(-a)) if a < 1 else math.inf
        return nats / math.log(2.0)

    def diagnostics(self):
        return {"T": self.T, "alpha_bar_T": self.alpha_bar_T, "prior_bpd": self.prior_bpd(),
                "snr_first": float(self.snr[0]), "snr_last": float(self.snr[-1])}

    def warn_if_prior_mismatched(self):
        bpd = self.prior_bpd()
        if bpd > PRIOR_BPD_WARN:
            warnings.warn(
                f"schedule leaves alpha_bar_T = {self.alpha_bar_T:.3g} at its last step (T={self.T}): "
                f"q(x_T|x_0) is far from N(0, I) (prior term L_T up to {bpd:.3g} bits/dim), so sampling "
                "from N(0, I) starts from the wrong distribution. Use a larger T, a cosine schedule, or "
                "rescale_zero_terminal_snr.", PriorMismatchWarning, stacklevel=3)
        return bpd

    def __repr__(self):
        d = self.diagnostics()
        return (f"Schedule(T={d['T']}, alpha_bar_T={d['alpha_bar_T']:.3e}, prior L_T<={d['prior_bpd']:.2e} bits/dim, "
                f"snr {d['snr_first']:.3g} -> {d['snr_last']:.3g}{self._repr_extra})")


class Schedule(ScheduleDiagnostics):
    """Every coefficient the forward process, the posterior and the samplers use, in float64.

    Built from betas of shape (T,) with each beta in (0, 1]. Index ``t`` is 0-based (paper t+1).

    Tables (all shape (T,)):
      betas, alphas                 alpha_t = 1 - beta_t                                     (F1)
      alpha_bar                     prod_{s<=t} alpha_s                                      (F2)
      alpha_bar_prev                alpha_bar[t-1], with alpha_bar_prev[0] = 1 (empty product)
      sqrt_alpha_bar, sqrt_one_minus_alpha_bar, sqrt_recip_alpha_bar, sqrt_recipm1_alpha_bar
      posterior_variance            beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t         (P3)
      posterior_log_variance_clipped  log beta~_t, with entry 0 replaced by log beta~[1]     (P4)
      fixed_large_variance          beta_t, with entry 0 replaced by beta~[1] (the decoder)   (M2, P4)
      fixed_large_log_variance      its log
      posterior_mean_coef_x0        sqrt(abar_{t-1}) beta_t / (1 - abar_t)                   (P2)
      posterior_mean_coef_xt        sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)            (P2)
      snr, log_snr                  abar_t / (1 - abar_t)                                    (S7)
    """

    def __init__(self, betas, warn=True):
        b = check_betas(betas)
        self.T = int(b.size)
        self.betas = b
        # (F1)
        self.alphas = 1.0 - b
        # (F2)  abar_t = prod_{s=0}^{t} alpha_s, summed in log space: 1 - abar_t = -expm1(log abar_t)
        #       stays accurate (and non-zero) even when every beta is tiny; a beta of 1 gives log 0 = -inf.
        with np.errstate(divide="ignore"):
            log_abar = np.cumsum(np.log1p(-b))
        self.alpha_bar = np.exp(log_abar)
        one_minus = -np.expm1(log_abar)
        self.alpha_bar_prev = np.concatenate([[1.0], self.alpha_bar[:-1]])
        one_minus_prev = np.concatenate([[0.0], one_minus[:-1]])
        self.sqrt_alpha_bar = np.sqrt(self.alpha_bar)
        self.sqrt_one_minus_alpha_bar = np.sqrt(one_minus)
        with np.errstate(divide="ignore"):
            # Infinite only where alpha_bar = 0 (zero terminal SNR); diffusion.predict_x0 refuses those
            # steps. Written as 1/sqrt and a ratio of roots so a subnormal alpha_bar does not overflow.
            self.sqrt_recip_alpha_bar = 1.0 / self.sqrt_alpha_bar
            self.sqrt_recipm1_alpha_bar = self.sqrt_one_minus_alpha_bar / self.sqrt_alpha_bar
        # (P3)  beta~_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t ; beta~_0 = 0 since abar_{-1} = 1
        self.posterior_variance = b * one_minus_prev / one_minus
        # (P4)  log beta~_0 = log 0 = -inf: replace it by log beta~_1 (as Ho et al.'s code does).
        #       With T = 1 there is no beta~_1; the only step then uses log beta_0.
        first = self.posterior_variance[1] if self.T > 1 else b[0]
        self.posterior_log_variance_clipped = np.log(np.concatenate([[first], self.posterior_variance[1:]]))
        # (M2, P4)  "fixed_large" sigma_t^2 = beta_t, except at t = 0 where beta~_1 keeps the decoder's
        #           variance small and finite (Ho et al.'s code); beta_0 when T = 1.
        self.fixed_large_variance = np.concatenate([[first], b[1:]])
        self.fixed_large_log_variance = np.log(self.fixed_large_variance)
        # (P2)
        self.posterior_mean_coef_x0 = b * np.sqrt(self.alpha_bar_prev) / one_minus
        self.posterior_mean_coef_xt = one_minus_prev * np.sqrt(self.alphas) / one_minus
        # (S7)
        self.snr = self.alpha_bar / one_minus
        with np.errstate(divide="ignore"):
            self.log_snr = np.log(self.alpha_bar) - np.log(one_minus)
        if warn:
            self.warn_if_prior_mismatched()

    # ---- diagnostics ---------------------------------------------------------------------

    @property
    def alpha_bar_T(self):
        """bar-alpha at the last step: the signal fraction left in x_T. Near 0 for a good schedule."""
        return float(self.alpha_bar[-1])
