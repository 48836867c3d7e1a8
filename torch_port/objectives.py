"""The continuous objectives (EDM, flow matching, NCSN) in torch.

Mirror of reference/objectives.py (see its docstring): same functions, arguments, meaning and errors; the math in
torch. Derivations: derivations/design_space.md (D5-D16), derivations/ncsn.md (J1-J7). Tensors stay on the data's
device: levels from ``level`` follow u's device, ``training_target`` returns everything on x0's device with time_in
float64; ``loss`` is the training loss for autograd. Grids come back as float64 CPU tensors (host data, as
torch_port.solvers' grids).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

from common.choices import CONTINUOUS_GRIDS, EDM_DEFAULTS, WEIGHTINGS
from reference.errors import InputError, check_choice, check_int, check_number

from common.rules import continuous_settings as settings   # the settings check is not math: written once

from . import processes
from .solvers import karras_sigmas

TIME_SCALE = 1000.0  # why 1000: reference/objectives.py (the embedding B6 resolves the DDPM index range)
_F64 = torch.float64


def _tensor(x, name):
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if x.dtype == torch.bool or x.is_complex():
        raise InputError(f"{name} must be a numeric array")
    return x if x.is_floating_point() else x.to(_F64)


def _levels(level, n=None, device=None):
    a = _tensor(level, "level").to(_F64)
    a = a if device is None else a.to(device)
    if a.ndim > 1 or (n is not None and a.ndim == 1 and a.shape[0] != n) or not bool(torch.isfinite(a).all()):
        raise InputError(f"level must be a finite number or an array (N,){'' if n is None else f' with N={n}'}, "
                         f"got shape {tuple(a.shape)}")
    return a


def _col(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def edm_precond(sigma, sigma_data):
    """(D6) Karras et al. 2022, Table 1: (c_skip, c_out, c_in, c_noise), float64 tensors like sigma."""
    sd = check_number(sigma_data, "--sigma-data (the data's standard deviation)", lo_open=True)
    s = _levels(sigma)
    if bool(torch.any(s <= 0)):
        raise InputError(f"sigma must be > 0 for EDM's preconditioning (c_noise = ln(sigma) / 4), got {s.min()!r}")
    r = torch.sqrt(s * s + sd * sd)
    return sd * sd / (r * r), s * sd / r, 1.0 / r, torch.log(s) / 4.0


class _Continuous:
    """The shared pieces of a continuous objective's torch math (reference/objectives.py's classes, same methods);
    ``s`` is the checked settings namespace, levels float64 tensors."""
    name = None

    def weighting(self, lam, **kw):
        """(D16) w(lambda) of this objective at the settings ``kw``."""
        return self.weighting_of(settings(SimpleNamespace(objective=self.name, **kw)), lam)

    def sigma_range(self, s):
        return float(EDM_DEFAULTS["sigma_min"]), float(EDM_DEFAULTS["sigma_max"])


class EDM(_Continuous):
    """Karras et al. 2022's preconditioned denoiser on x = x0 + sigma eps (D5-D8)."""
    name = "edm"

    def network_time(self, s, lv):
        return edm_precond(lv, s.sigma_data)[3]

    def level(self, s, u):
        return torch.exp(s.p_mean + s.p_std * torch.special.ndtri(u))          # (D7)

    def target(self, s, x64, e64, lv, x0):
        c_skip, c_out, c_in, _ = edm_precond(lv, s.sigma_data)
        x = x64 + _col(lv, x0) * e64                                           # (D5)
        target = (x64 - _col(c_skip, x0) * x) / _col(c_out, x0)                # (D6)
        weight = (lv * lv + s.sigma_data ** 2) / (lv * s.sigma_data) ** 2 * c_out ** 2   # (D8)
        return _col(c_in, x0) * x, target, weight

    def denoise(self, s, net, x, sg):
        n, dt = x.shape[0], x.dtype
        r = math.sqrt(sg * sg + s.sigma_data ** 2)
        c_skip, c_out, c_in = s.sigma_data ** 2 / (r * r), sg * s.sigma_data / r, 1.0 / r  # (D6)
        tt = torch.full((n,), TIME_SCALE * math.log(sg) / 4.0, dtype=_F64, device=x.device)
        return c_skip * x + c_out * net((c_in * x).to(dt), tt)

    def sigma_grid_linspace(self, lo, hi, ramp):
        return hi * ramp

    def weighting_of(self, cfg, lam):
        m, sd = -2.0 * cfg.p_mean, 2.0 * cfg.p_std                             # (D7)
        p = torch.exp(-0.5 * ((lam - m) / sd) ** 2) / (sd * math.sqrt(2.0 * math.pi))
        return 2.0 * p * (torch.exp(-lam) + cfg.sigma_data ** 2) / cfg.sigma_data ** 2   # (D8)


class Flow(_Continuous):
    """Flow matching on x_t = (1 - t) x0 + t eps, the network predicting u = eps - x0 (D10-D15)."""
    name = "flow"

    def network_time(self, s, lv):
        return lv

    def level(self, s, u):
        z = torch.special.ndtri(u)
        t = u.clone() if s.t_sampling == "uniform" else torch.sigmoid(s.logit_mean + s.logit_std * z)  # (D14)
        return shift_t(t, s.shift)

    def target(self, s, x64, e64, lv, x0):
        if bool(torch.any((lv <= 0) | (lv >= 1))):
            raise InputError("flow matching's t must lie strictly inside (0, 1)")
        t = _col(lv, x0)
        net_in = (1.0 - t) * x64 + t * e64                                     # (D10)
        return net_in, e64 - x64, torch.ones_like(lv)

    def denoise(self, s, net, x, sg):
        t = processes.flow_t_of_sigma_tilde(sg)                                # (D12)
        xt = ((1.0 - t) * x).to(x.dtype)                                       # (D3)
        return xt - t * net(xt, torch.full((x.shape[0],), TIME_SCALE * t, dtype=_F64, device=x.device))   # (D10)

    def sigma_grid_linspace(self, lo, hi, ramp):
        t = processes.flow_t_of_sigma_tilde(hi) * ramp                         # (D12)
        return t / (1.0 - t)

    def weighting_of(self, cfg, lam):
        base = lam + 2.0 * math.log(cfg.shift)                                 # (D15)
        if cfg.t_sampling == "uniform":
            t = torch.sigmoid(-0.5 * base)                                     # (D13)
            p = 0.5 * t * (1.0 - t)
        else:
            z = (-0.5 * base - cfg.logit_mean) / cfg.logit_std                 # (D14)
            p = 0.5 * torch.exp(-0.5 * z * z) / (cfg.logit_std * math.sqrt(2.0 * math.pi))
        return 2.0 * p / torch.sigmoid(0.5 * lam) ** 2                         # (D13)


class NCSN(_Continuous):
    """Song & Ermon's score network s = F / sigma on x = x0 + sigma eps over a geometric ladder (J1-J7)."""
    name = "ncsn"

    def sigma_range(self, s):
        if s.sigma_max is None:
            raise InputError("--sigma-max is not set: the recipe measures it for a named dataset (the largest pairwise "
                             "distance, reference.ladder.max_pairwise_distance); give --sigma-max for this data")
        return s.sigma_min, s.sigma_max

    def network_time(self, s, lv):
        lo, hi = self.sigma_range(s)
        return torch.log(lv / lo) / math.log(hi / lo)                          # (J5)  VE's own t(sigma)

    def level(self, s, u):
        lo, hi = self.sigma_range(s)
        n = s.num_levels
        i = torch.clamp(torch.floor(u * n), max=n - 1)                         # (J5)  i ~ U{0 .. L-1}
        return hi * (lo / hi) ** (i / (n - 1))                                 # (J2)  sigma_i

    def target(self, s, x64, e64, lv, x0):
        sig = _col(lv, x0)
        x = x64 + sig * e64                                                    # (J1)
        score_target = -(x - x64) / sig ** 2                                   # (J1)  grad log q(x~ | x0)
        lam = lv ** 2                                                          # (J1)  lambda(sigma) = sigma^2
        return x, sig * score_target, lam / lv ** 2                            # (J4)  F = sigma s

    def denoise(self, s, net, x, sg):
        lo, hi = self.sigma_range(s)
        tau = TIME_SCALE * math.log(sg / lo) / math.log(hi / lo)               # (J5)
        F = net(x, torch.full((x.shape[0],), tau, dtype=_F64, device=x.device))
        score = F / sg                                                         # (J4)  s = F / sigma
        return x + sg ** 2 * score                                             # (J6)

    def sigma_grid_linspace(self, lo, hi, ramp):
        k = torch.arange(ramp.numel(), dtype=_F64) / max(ramp.numel() - 2, 1)  # (J5)  the ladder's spacing
        return hi * (lo / hi) ** k

    def weighting_of(self, cfg, lam):
        lo, hi = self.sigma_range(cfg)
        d = 2.0 * math.log(hi / lo) / (cfg.num_levels - 1)                     # (J7)  cell width in lambda
        inside = (lam >= -2.0 * math.log(hi) - d / 2) & (lam <= -2.0 * math.log(lo) + d / 2)
        return torch.where(inside, torch.full_like(lam, 2.0 / (cfg.num_levels * d)), torch.zeros_like(lam))


class ChainWeighting:
    """The discrete chain's weighting on a VP process (D16)."""
    name = "ddpm"

    def weighting(self, lam, **kw):
        return _ddpm_weighting(lam, **kw)


OBJECTIVE_MATH = {m.name: m for m in (EDM(), Flow(), NCSN())}
WEIGHTING_MATH = {**OBJECTIVE_MATH, ChainWeighting.name: ChainWeighting()}


def network_time(cfg, level):
    """edm: 250 ln sigma; flow: 1000 t; ncsn: 1000 t of the VE process (J5). float64."""
    s, lv = settings(cfg), _levels(level)
    return TIME_SCALE * OBJECTIVE_MATH[s.objective].network_time(s, lv)


def shift_t(t, shift):
    """(D15) t' = s t / (1 + (s - 1) t), once."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def level(cfg, u):
    """(D7, D14, D15) Per-example levels from uniforms u (N,) in (0, 1): float64 on u's device."""
    s = settings(cfg)
    u = _tensor(u, "u").to(_F64)
    if u.ndim != 1 or not bool(torch.all((u > 0) & (u < 1))):
        raise InputError(f"u must be uniforms of shape (N,) strictly inside (0, 1), got shape {tuple(u.shape)}"
                         + (f", range {float(u.min()):g}..{float(u.max()):g}" if u.numel() else ""))
    return OBJECTIVE_MATH[s.objective].level(s, u)


def training_target(cfg, x0, eps, level):
    """(D5-D8, D10) (net_in, time_in, target, weight) as the reference's."""
    s = settings(cfg)
    x0, eps = _tensor(x0, "x0"), _tensor(eps, "eps")
    if x0.ndim < 1 or tuple(x0.shape) != tuple(eps.shape):
        raise InputError(f"shape mismatch: x0 has shape {tuple(x0.shape)} but eps has shape {tuple(eps.shape)}")
    n, dt = x0.shape[0], x0.dtype
    lv = _levels(level, n, x0.device).expand(n)
    x64, e64 = x0.to(_F64), eps.to(x0.device, _F64)
    net_in, target, weight = OBJECTIVE_MATH[s.objective].target(s, x64, e64, lv, x0)
    return net_in.to(dt), network_time(cfg, lv), target.to(dt), weight.to(dt)


def loss(out, target, weight):
    """mean_n weight_n mean_d (out - target)^2, a 0-d tensor (differentiable in out)."""
    if tuple(out.shape) != tuple(target.shape) or out.ndim < 1:
        raise InputError(f"shape mismatch: out has shape {tuple(out.shape)} but target has shape "
                         f"{tuple(target.shape)}")
    per = ((out - target.to(out.dtype)) ** 2).reshape(out.shape[0], -1).mean(dim=1)
    return (weight.to(per.device, per.dtype) * per).mean()


def loss_and_grad(out, target, weight):
    """(float, dloss/dout) by autograd on a detached copy of out (the reference's pair)."""
    o = _tensor(out, "out").detach().requires_grad_(True)
    value = loss(o, _tensor(target, "target"), _levels(weight, o.shape[0]))
    (grad,) = torch.autograd.grad(value, o)
    return float(value.detach()), grad


def denoiser(cfg, net, clip_x0=False):
    """(D6, D12) D(x~, sigma~) from ``net(net_in, time_in)``; time_in float64 (N,) on x~'s device."""
    s = settings(cfg)
    math_ = OBJECTIVE_MATH[s.objective]

    def D(x, sigma):
        sg = check_number(sigma, "sigma~ (the denoiser's noise level)", lo_open=True)
        x0 = math_.denoise(s, net, x, sg)
        return (x0.clamp(-1.0, 1.0) if clip_x0 else x0).to(x.dtype)

    return D


def sigma_range(cfg):
    """(sigma~_min, sigma~_max): EDM's (0.002, 80) for edm and flow; ncsn its ladder's."""
    s = settings(cfg)
    return OBJECTIVE_MATH[s.objective].sigma_range(s)


def sigma_grid(cfg, n, grid):
    """(N5, D12) (n + 1,) float64 CPU tensor: "karras" or "linspace" in the process's own time, then 0."""
    s = settings(cfg)
    check_choice(grid, CONTINUOUS_GRIDS, "grid (a continuous model samples on)")
    n = check_int(n, "n (number of sampling steps)", lo=1)
    lo, hi = sigma_range(cfg)
    if grid == "karras":
        return karras_sigmas(n, lo, hi)
    ramp = 1.0 - torch.arange(n + 1, dtype=_F64) / n
    out = OBJECTIVE_MATH[s.objective].sigma_grid_linspace(lo, hi, ramp)
    out[0], out[-1] = hi, 0.0
    return out


def weighting(objective, lam, **kw):
    """(D16) w(lambda) = 2 p(lambda) omega(lambda), float64 tensor: see reference/objectives.py."""
    check_choice(objective, WEIGHTINGS, "objective")
    return WEIGHTING_MATH[objective].weighting(_tensor(lam, "lam").to(_F64), **kw)


def _ddpm_weighting(lam, process="vp-cosine", prediction="eps", loss_weighting=None, gamma=5.0, **process_kw):
    check_choice(process, ("vp-cosine", "vp-linear"), "process (of the ddpm weighting)")
    check_choice(prediction, ("eps", "x0", "v"), "prediction")
    if loss_weighting is not None:
        check_choice(loss_weighting, ("snr", "min_snr"), "loss_weighting (None is L_simple)")
    proc = processes.make_process(process, **process_kw)
    s_end = float(proc.sigma_tilde(1.0))                                       # (D2)  density 0 past the end
    s_tilde = torch.exp(-0.5 * lam)
    t = proc.t_of_sigma_tilde(torch.clamp(s_tilde, max=s_end))
    p = torch.where(s_tilde <= s_end, 1.0 / torch.abs(proc.dlambda_dt(t)), torch.zeros_like(lam))
    snr = torch.exp(lam)
    if loss_weighting == "min_snr":
        g = check_number(gamma, "gamma (min-SNR clip)", lo_open=True)
        omega = torch.clamp(snr, max=g) / snr                                  # (L5)
    elif loss_weighting == "snr":
        omega = torch.ones_like(lam)                                           # (R6)
    else:
        omega = {"eps": torch.ones_like(lam), "x0": 1.0 / snr, "v": 1.0 + 1.0 / snr}[prediction]   # (R6)
    return 2.0 * p * omega
