"""The exact likelihood of the probability-flow ODE in torch — derivations/likelihood.md (E1-E9).

Mirror of reference/likelihood.py (see its docstring): same names, signatures and meaning. What differs:

  * the solver (E8) is this file's own Dormand-Prince 5(4) with scipy's RK45 controller, step for step
    (same stages, error norm, first step and step-size rule), on a float64 state on the data's device.
    Time, step size and every branch are host floats; the one host-device sync per attempted step is the
    error norm the controller must compare with 1 (three more, once, to choose the first step). A step
    costs 6 field evaluations (dozens of network kernels each), so the sync costs the idle gap of one
    launch queue per 6 evaluations.
  * vector-Jacobian products by autograd: ``denoiser_field(D)`` makes a field of any differentiable
    D(x~, sigma); ``network_field`` is that of the blended network (E5), ``mixture_field`` that of the
    torch mixture oracle (E6 holds by autograd, not by its formula), ``objective_field`` that of a network
    of a continuous objective through the port's own objectives.denoiser (E9 holds by autograd).
  * noise: ``probes`` / ``dequant_noise`` tensors, or a ``generator`` (torch.Generator on the data's device)
    that draws them (probes first, then the dequantisation noise).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from reference.errors import InputError, check_choice, check_int, check_number, check_progress

from . import objectives
from .diffusion import PREDICTIONS, _data
from .score import trained_sigmas

DIVERGENCES = ("exact", "hutchinson")
VARIANCES = ("fixed_small", "fixed_large", "learned")
RTOL = ATOL = 1e-5
MIN_RTOL = 100 * float(np.finfo(np.float64).eps)
LN2 = math.log(2.0)
_F64 = torch.float64

__all__ = ["DIVERGENCES", "VARIANCES", "RTOL", "ATOL", "ODENLL", "bin_width", "bpd_offset", "nats_to_bpd",
           "check_levels", "dequantize", "level_blend", "x0_coefficients", "sigma_range", "denoiser_field",
           "network_field", "mixture_field", "objective_field", "make_probes", "pf_ode_rhs", "rk45", "ode_nll",
           "model_nll", "objective_nll", "trainer_model"]


class ODENLL(NamedTuple):
    """What ``ode_nll`` returns; per-example tensors (N,) float64 on the data's device (see the reference)."""
    nats: torch.Tensor
    bpd: torch.Tensor
    prior_nats: torch.Tensor
    x_T: torch.Tensor
    nfe: int
    steps: int
    rtol: float
    atol: float
    sigma_min: float
    sigma_max: float
    divergence: str
    n_probes: int


# ---- dequantisation and bits/dim (E7) -----------------------------------------------------------

def bin_width(levels):
    """(E7) Delta = 2 / (L - 1)."""
    L = check_int(levels, "levels (number of discrete values per dimension)", lo=2)
    return 2.0 / (L - 1)


def bpd_offset(levels):
    """(E7) log2((L - 1) / 2) = -log2 Delta."""
    return -math.log2(bin_width(levels))


def nats_to_bpd(nats, dims, levels=None):
    """(E7, L7) nats / (d ln 2), plus ``bpd_offset(levels)`` for L-level data."""
    dims = check_int(dims, "dims (dimensions per example)", lo=1)
    # (E7)  bpd = -log p / (d ln 2) - log2 Delta
    return torch.as_tensor(nats).to(_F64) / (dims * LN2) + (0.0 if levels is None else bpd_offset(levels))


def check_levels(x, levels):
    """x on the grid of L levels in [-1, 1] -> float64 (checked on the host: once, before the solve)."""
    x = _data(None, x, "x0").to(_F64)
    delta, xc = bin_width(levels), x.detach().cpu()
    if xc.numel() and (float(xc.min()) < -1 - 1e-6 or float(xc.max()) > 1 + 1e-6):
        raise InputError(f"x0 out of range: values {float(xc.min()):.4g}..{float(xc.max()):.4g}; data with "
                         f"levels={levels} lie in [-1, 1] (images in model space)")
    k = (xc + 1.0) / delta
    off = float((k - torch.round(k)).abs().max()) if xc.numel() else 0.0
    if off > 1e-3:
        raise InputError(f"x0 is not on the grid of {levels} levels 2 k / {levels - 1} - 1 (off by {off:.3g} of a "
                         "bin): pass the levels the data has, or levels=None for continuous data")
    return x


def dequantize(x, levels, u):
    """(E7) y = x + Delta (u - 1/2), u uniform in [0, 1) of x's shape."""
    x = check_levels(x, levels)
    u = torch.as_tensor(u).to(device=x.device, dtype=_F64)
    uc = u.detach().cpu()
    if tuple(u.shape) != tuple(x.shape) or not bool(((uc >= 0) & (uc < 1)).all()):
        raise InputError(f"dequant_noise must be uniform draws in [0, 1) of the data's shape {tuple(x.shape)}, "
                         f"got shape {tuple(u.shape)}")
    # (E7)  y = x + Delta (u - 1/2)
    return x + bin_width(levels) * (u - 0.5)


# ---- fields (E5, E6) ----------------------------------------------------------------------------

def level_blend(log_sigmas, sigma):
    """(E5) [(t, weight), ...]: the trained levels whose blend, linear in log sigma, gives D at sigma (host)."""
    ls, T = math.log(sigma), len(log_sigmas)
    if not log_sigmas[0] - 1e-9 <= ls <= log_sigmas[-1] + 1e-9:
        raise InputError(f"sigma={sigma!r} is outside the trained levels [{math.exp(log_sigmas[0]):.6g}, "
                         f"{math.exp(log_sigmas[-1]):.6g}]: a network trained on discrete steps is known only there")
    # (E5)  u(sigma) = t + (log sigma - log sigma_t) / (log sigma_{t+1} - log sigma_t)
    u = float(np.interp(ls, log_sigmas, np.arange(T, dtype=np.float64)))
    t = min(int(math.floor(u)), T - 2)
    w = u - t
    return [(t, 1.0)] if w <= 0 else [(t + 1, 1.0)] if w >= 1 else [(t, 1.0 - w), (t + 1, w)]


def _finite_log_sigmas(sched):
    table = trained_sigmas(sched).numpy()
    if not np.all(np.isfinite(table)) or sched.T < 2:
        raise InputError("the ODE likelihood needs T >= 2 trained levels with a finite sigma_max: a schedule with "
                         "zero terminal SNR (sigma_{T-1} = inf) has no finite top level; use the bound (vlb_terms)")
    return np.log(table)


def sigma_range(sched):
    """(sigma_min, sigma_max) = (sigma_0, sigma_{T-1}) as Python floats."""
    ls = _finite_log_sigmas(sched)
    return float(np.exp(ls[0])), float(np.exp(ls[-1]))


def denoiser_field(D):
    """A field from a differentiable D(x~, sigma) -> x0_hat: (D, (dD/dx~)^T probes_k) by autograd."""
    def field(x, sigma, probes):
        with torch.enable_grad():
            xl = x.detach().requires_grad_(True)
            x0 = D(xl, sigma).to(_F64)
            vjps = [torch.autograd.grad(x0, xl, v, retain_graph=True)[0] for v in probes]
        return x0.detach(), torch.stack(vjps) if vjps else x.new_zeros((0,) + tuple(x.shape))
    return field


def x0_coefficients(alpha_bar, prediction):
    """(E5; R1, R4 at a continuous abar) (c_x, c_out) with x0_hat = c_x x + c_out out (host floats)."""
    check_choice(prediction, PREDICTIONS, "prediction")
    ra, rb = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    # (R1)  x0 = (x - sqrt(1 - abar) eps) / sqrt(abar);  (R4)  x0 = sqrt(abar) x - sqrt(1 - abar) v
    return {"eps": (1.0 / ra, -rb / ra), "x0": (0.0, 1.0), "v": (ra, -rb)}[prediction]


def network_field(sched, model, prediction="eps", variance="fixed_small"):
    """(E5) The field of an nn.Module ``model(x, t)`` trained on discrete steps: its output interpolated over
    the label between ``level_blend``'s levels (same VP input for both), converted at the continuous abar;
    one forward of the stacked levels (<= 2N items), VJPs by autograd; ``variance="learned"``: the mean's
    C of the 2C output channels."""
    check_choice(prediction, PREDICTIONS, "prediction")
    learned = check_choice(variance, VARIANCES, "variance") == "learned"
    log_sigmas = _finite_log_sigmas(sched)
    dtype = next(iter(model.parameters())).dtype

    def D(x, sigma):
        levels, n = level_blend(log_sigmas, sigma), x.shape[0]
        a = 1.0 / (1.0 + sigma**2)                                      # (K6)
        c_x, c_out = x0_coefficients(a, prediction)
        # (K6)  the VP input x = sqrt(abar) x~, the same for both levels
        xv = math.sqrt(a) * x
        tt = torch.cat([torch.full((n,), t, dtype=torch.long, device=x.device) for t, _ in levels])
        out = model(torch.cat([xv] * len(levels)).to(dtype), tt).to(_F64)
        out = out[:, : out.shape[1] // 2] if learned else out     # the mean's channels, as diffusion.split_output
        # (E5)  out(x, sigma) = sum_t w_t model(x, t)
        out = sum(w * out[i * n:(i + 1) * n] for i, (_, w) in enumerate(levels))
        # (E5)  D = c_x x + c_out out
        return c_x * xv + c_out * out

    return denoiser_field(D)


def mixture_field(oracle):
    """(E6) The exact field of a torch GaussianMixtureOracle: D = oracle.denoise_sigma, its VJPs by autograd."""
    return denoiser_field(oracle.denoise_sigma)


def objective_field(cfg, model):
    """(E9) The field of an nn.Module ``model(x, time_in (N,) float64)`` of a continuous objective (edm | flow):
    objectives.denoiser's D at every sigma~ (no interpolation), the network in its own dtype, VJPs by autograd."""
    dtype = next(iter(model.parameters())).dtype
    D = objectives.denoiser(cfg, lambda x, tau: model(x.to(dtype), tau).to(_F64))
    return denoiser_field(D)


# ---- probes (E4) --------------------------------------------------------------------------------

def make_probes(divergence, shape, n_probes=1, probes=None, generator=None, device="cpu"):
    """(E4) (probes (K, N, ...) float64 on ``device``, weight): exact = the d basis vectors, weight 1;
    hutchinson = ``probes`` or ``n_probes`` Rademacher draws from ``generator``, weight 1 / K."""
    check_choice(divergence, DIVERGENCES, "divergence method")
    shape = tuple(shape)
    d = int(np.prod(shape[1:]))
    if divergence == "exact":
        if probes is not None:
            raise InputError("probes are for divergence='hutchinson'; the exact divergence uses the basis vectors")
        eye = torch.eye(d, dtype=_F64, device=device).reshape((d, 1) + shape[1:])
        return eye.expand((d,) + shape), 1.0
    if probes is None:
        if not isinstance(generator, torch.Generator):
            raise InputError("divergence='hutchinson' needs probes (K, N, ...) or a torch.Generator to draw them")
        k = check_int(n_probes, "n_probes (Hutchinson probes per example)", lo=1)
        # (E4)  Rademacher probes: entries +-1 with probability 1/2
        probes = torch.randint(0, 2, (k,) + shape, generator=generator, device=device).to(_F64) * 2.0 - 1.0
    probes = torch.as_tensor(probes).to(device=device, dtype=_F64)
    if probes.ndim != len(shape) + 1 or tuple(probes.shape[1:]) != shape or probes.shape[0] < 1 \
            or not bool(torch.isfinite(probes.detach().cpu()).all()):
        raise InputError(f"probes must be finite, of shape (K, {', '.join(map(str, shape))}) with K >= 1, got "
                         f"shape {tuple(probes.shape)}")
    return probes, 1.0 / probes.shape[0]


# ---- the ODE and its solve (E2, E3, E8) ---------------------------------------------------------

def pf_ode_rhs(field, probes, weight, shape):
    """(E2) rhs(rho, y) of the joint state y = [x (VP, flattened), the divergence integral (N,)]."""
    shape = tuple(shape)
    n, d = shape[0], int(np.prod(shape[1:]))

    def rhs(rho, y):
        sigma = math.exp(rho)
        # (K6)  abar = 1 / (1 + sigma^2)
        a = 1.0 / (1.0 + sigma**2)
        x = y[: n * d].reshape(shape)
        x0, vjps = field(x / math.sqrt(a), sigma, probes)
        # (E2)  dx/drho = abar x - sqrt(abar) D(x / sqrt(abar), sigma)
        dx = a * x - math.sqrt(a) * x0
        # (E4)  tr dD/dx~ ~ weight sum_k probes_k . (dD/dx~)^T probes_k
        tr = weight * (probes * vjps).reshape(len(probes), n, d).sum(dim=(0, 2))
        # (E2)  div = d abar - tr dD/dx~
        return torch.cat([dx.reshape(-1), d * a - tr])

    return rhs


# Dormand-Prince 5(4) (scipy.integrate.RK45's tableau): stages C, A; the fifth-order weights B; E = the
# difference of the fifth- and fourth-order weights over the seven stages (the last is f at the new point).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
      (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
      (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656))
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0


def _rms(z):
    return torch.linalg.vector_norm(z) / math.sqrt(z.numel())


def _combine(coefs, K):
    return sum(c * k for c, k in zip(coefs, K) if c != 0.0)


def _first_step(fun, t0, y0, f0, t1, rtol, atol):
    """(E8) scipy's select_initial_step for an error estimator of order 4 (Hairer et al., II.4): 3 syncs."""
    scale = atol + y0.abs() * rtol
    d0, d1 = float(_rms(y0 / scale)), float(_rms(f0 / scale))
    h0 = min(1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1, t1 - t0)
    d2 = float(_rms((fun(t0 + h0, y0 + h0 * f0) - f0) / scale)) / h0
    h1 = max(1e-6, h0 * 1e-3) if d1 <= 1e-15 and d2 <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1, t1 - t0)


def _attempt(fun, t, y, f, h, rtol, atol):
    """(E8) One Dormand-Prince step of size h -> (y_new, f_new, error norm as a host float: the sync)."""
    K = [f]
    for c, a in zip(_C[1:], _A[1:]):
        K.append(fun(t + c * h, y + _combine(a, K) * h))
    y_new = y + h * _combine(_B, K)
    K.append(fun(t + h, y_new))
    scale = atol + torch.maximum(y.abs(), y_new.abs()) * rtol
    return y_new, K[-1], float(_rms(_combine(_E, K) * h / scale))


def rk45(fun, t0, y0, t1, rtol=RTOL, atol=ATOL, progress=None):
    """(E8) Dormand-Prince 5(4) from t0 to t1 > t0 with scipy's RK45 controller -> (y(t1), nfe, steps)."""
    y, t = y0.to(_F64), float(t0)
    f = fun(t, y)
    h_abs, nfe = _first_step(fun, t, y, f, t1, rtol, atol), 2

    def steps():
        nonlocal y, t, f, h_abs, nfe
        while t < t1:
            min_step = 10 * abs(np.nextafter(t, np.inf) - t)
            h_abs, rejected = max(h_abs, min_step), False
            while True:
                if h_abs < min_step:
                    raise FloatingPointError(f"the ODE solver failed at rho = {t:.6g}: required step size is less "
                                             "than spacing between numbers.")
                t_new = min(t + h_abs, t1)
                h = t_new - t
                y_new, f_new, err = _attempt(fun, t, y, f, h, rtol, atol)
                nfe += 6
                if err < 1:
                    factor = MAX_FACTOR if err == 0 else min(MAX_FACTOR, SAFETY * err ** -0.2)
                    h_abs = abs(h) * (min(1.0, factor) if rejected else factor)
                    break
                h_abs, rejected = abs(h) * max(MIN_FACTOR, SAFETY * err ** -0.2), True
            t, y, f = t_new, y_new, f_new
            yield t

    n = sum(1 for _ in check_progress(progress)(steps()))
    return y, nfe, n


def _check_tolerances(rtol, atol):
    rtol = check_number(rtol, "rtol (relative tolerance of the ODE solver)", lo=0.0, lo_open=True)
    if rtol < MIN_RTOL:
        raise InputError(f"rtol={rtol!r} is below what float64 can hold (100 eps = {MIN_RTOL:.3g})")
    return rtol, check_number(atol, "atol (absolute tolerance of the ODE solver)", lo=0.0, lo_open=True)


def ode_nll(field, x0, sigma_min, sigma_max, divergence=None, levels=None, generator=None, probes=None,
            dequant_noise=None, n_probes=1, rtol=RTOL, atol=ATOL, progress=None):
    """(E3) -log p(x_0) by the probability-flow ODE from x~(sigma_min) = x_0 up to sigma_max -> ODENLL."""
    x0 = _data(None, x0, "x0").to(_F64)
    rtol, atol = _check_tolerances(rtol, atol)
    sigma_min = check_number(sigma_min, "sigma_min", lo=0.0, lo_open=True)
    sigma_max = check_number(sigma_max, "sigma_max", lo=sigma_min, lo_open=True)
    divergence = ("exact" if x0.ndim == 2 else "hutchinson") if divergence is None else divergence
    V, weight = make_probes(divergence, x0.shape, n_probes, probes, generator, x0.device)
    if levels is not None:
        if dequant_noise is None and not isinstance(generator, torch.Generator):
            raise InputError("discrete data (levels given) is dequantised: pass dequant_noise or a torch.Generator")
        u = dequant_noise if dequant_noise is not None else \
            torch.rand(x0.shape, generator=generator, device=x0.device, dtype=_F64)
        x0 = dequantize(x0, levels, u)
    n, d = x0.shape[0], int(np.prod(x0.shape[1:]))
    rhs = pf_ode_rhs(field, V, weight, x0.shape)
    # (E3)  start: x(rho_min) = sqrt(abar_min) x~ with x~ = x_0, the divergence integral 0
    y0 = torch.cat([(x0 / math.sqrt(1.0 + sigma_min**2)).reshape(-1), x0.new_zeros(n)])
    y1, nfe, steps = rk45(rhs, math.log(sigma_min), y0, math.log(sigma_max), rtol, atol, progress)
    x_T, integral = y1[: n * d].reshape(x0.shape), y1[n * d:]
    # (E3)  -log N(x_T; 0, I) = 1/2 |x_T|^2 + d/2 log(2 pi)
    prior = 0.5 * (x_T.reshape(n, d) ** 2).sum(dim=1) + 0.5 * d * math.log(2.0 * math.pi)
    # (E3)  -log p(x_0) = -log N(x_T) - int div drho - d/2 log abar_min,  -log abar_min = log(1 + sigma_min^2)
    nats = prior - integral + 0.5 * d * math.log1p(sigma_min**2)
    return ODENLL(nats, nats_to_bpd(nats, d, levels), prior, x_T, nfe, steps, rtol, atol, sigma_min, sigma_max,
                  divergence, len(V))


def model_nll(sched, model, x0, prediction="eps", variance="fixed_small", **kw):
    """(E3, E5) ``ode_nll`` of an nn.Module trained on ``sched``'s discrete steps, between sigma_0 and sigma_{T-1}."""
    return ode_nll(network_field(sched, model, prediction, variance), x0, *sigma_range(sched), **kw)


def objective_nll(cfg, model, x0, **kw):
    """(E3, E9) ``ode_nll`` of an nn.Module of a continuous objective between the objective's sigma_range."""
    return ode_nll(objective_field(cfg, model), x0, *objectives.sigma_range(cfg), **kw)


def trainer_model(trainer, use_ema=True):
    """The network of a port ``Trainer`` with its EMA (or raw) weights, in eval mode on the trainer's device,
    float32 without autocast (bf16 would put its rounding into the likelihood)."""
    from .train import build_model
    model = build_model(trainer.cfg, trainer.item_shape).to(trainer.device)
    if use_ema:
        trainer.ema.copy_to(model)
    else:
        model.load_state_dict(trainer.model.state_dict())
    return model.eval()
