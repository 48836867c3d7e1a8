"""The continuous objectives of the design space: EDM's preconditioned denoiser, flow matching and NCSN.

Derivations: derivations/design_space.md (D1-D16), derivations/ncsn.md (J1-J7). Each trains a network
``net(net_in, time_in) -> output`` on a per-example noise level drawn from one uniform per example, and each becomes a denoiser D(x~, sigma~) for the
existing ODE solvers (reference/solvers.py), whose state is x~ = x / alpha at the noise level sigma~ = sigma /
alpha. The "level" of an example is the process's own time: EDM's sigma (alpha = 1, sigma = t, the one stated
exception to t in [0, 1]), flow matching's t in (0, 1) with x_t = (1 - t) x0 + t eps (t = 0 data, t = 1 noise),
NCSN's sigma on its ladder (alpha = 1, sigma = sigma~).

``cfg`` is anything with the fields of the continuous rows' settings (lab.config.TrainConfig); a field it lacks
takes its row's default (common/objective_table.py). The objective "ddpm" is the discrete chain
(reference/losses.py): these functions take the continuous objectives only, except ``weighting``.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from scipy.special import expit, ndtri

from common.choices import CONTINUOUS_GRIDS, EDM_DEFAULTS, WEIGHTINGS
from common.rules import continuous_settings as settings   # the settings check is not math: written once

from . import processes
from .diffusion import _data
from .ladder import sigma_ladder
from .errors import InputError, check_choice, check_int, check_number, check_same_shape
from .solvers import karras_sigmas

# The network's sinusoidal embedding (B6) has frequencies from 1 down to 1e-4 per unit of its input, chosen for
# the DDPM index range 0..999: an input confined to a range of width ~1 (c_noise = ln(sigma) / 4 spans about
# -1.6..1.1, flow's t 0..1) would leave all but the fastest features nearly constant, so both continuous
# objectives hand the network 1000 times their own noise coordinate, a spread like the chain's integer steps.
TIME_SCALE = 1000.0


def _col(v, x):
    """A per-example (N,) value as a column that broadcasts against x (N, ...)."""
    return np.asarray(v).reshape((-1,) + (1,) * (np.ndim(x) - 1))


def _levels(level, n=None):
    a = np.asarray(level, dtype=np.float64)
    if a.ndim > 1 or (n is not None and a.ndim == 1 and a.shape[0] != n) or not np.all(np.isfinite(a)):
        raise InputError(f"level must be a finite number or an array (N,){'' if n is None else f' with N={n}'}, "
                         f"got shape {a.shape}")
    return a


def edm_precond(sigma, sigma_data):
    """(D6) Karras et al. 2022, Table 1: (c_skip, c_out, c_in, c_noise) at sigma > 0, float64 like sigma."""
    sd = check_number(sigma_data, "--sigma-data (the data's standard deviation)", lo_open=True)
    s = _levels(sigma)
    if np.any(s <= 0):
        raise InputError(f"sigma must be > 0 for EDM's preconditioning (c_noise = ln(sigma) / 4), got {s.min()!r}")
    # (D6)  c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(...)
    r = np.sqrt(s * s + sd * sd)
    return sd * sd / (r * r), s * sd / r, 1.0 / r, np.log(s) / 4.0


class _Continuous:
    """The shared pieces of a continuous objective's math; a subclass holds one objective's formulas as methods.

    ``s`` is the checked settings namespace (settings(cfg)); levels are float64 arrays. The module's public
    functions validate once and dispatch through OBJECTIVE_MATH, so a method trusts its inputs. A subclass
    gives: network_time, level, target, coefficients (likelihood.py's E9), denoise, sigma_grid_linspace and
    weighting_of (D16)."""
    name = None

    def network_time(self, s, lv):
        """The process's own noise coordinate the network embeds, before TIME_SCALE."""
        raise NotImplementedError

    def sigma_grid_linspace(self, lo, hi, ramp):
        """sigma~ at a ramp 1 .. 0 uniform in the process's own time between t(sigma~_max) and t(sigma~_min)."""
        raise NotImplementedError

    def sigma_range(self, s):
        """(sigma~_min, sigma~_max) it samples between: EDM's (0.002, 80) unless the objective has its own."""
        return float(EDM_DEFAULTS["sigma_min"]), float(EDM_DEFAULTS["sigma_max"])

    def weighting(self, lam, **kw):
        """(D16) w(lambda) of this objective at the settings ``kw`` (checked as a cfg would be)."""
        return self.weighting_of(settings(SimpleNamespace(objective=self.name, **kw)), lam)


class EDM(_Continuous):
    """Karras et al. 2022: x = x0 + sigma eps (alpha = 1, sigma = t), the preconditioned denoiser (D5-D8)."""
    name = "edm"

    def network_time(self, s, lv):
        return edm_precond(lv, s.sigma_data)[3]                                # c_noise = ln(sigma) / 4

    def level(self, s, u):
        # (D7)  ln sigma ~ N(P_mean, P_std^2) by the inverse CDF
        return np.exp(s.p_mean + s.p_std * ndtri(u))

    def target(self, s, x064, e64, lv, x0):
        """(net_in, target, weight) in float64."""
        c_skip, c_out, c_in, _ = edm_precond(lv, s.sigma_data)
        x = x064 + _col(lv, x0) * e64                                          # (D5)  alpha = 1, sigma = t
        target = (x064 - _col(c_skip, x0) * x) / _col(c_out, x0)               # (D6)  F's effective target
        # (D8)  lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, so that lambda c_out^2 = 1
        weight = (lv * lv + s.sigma_data ** 2) / (lv * s.sigma_data) ** 2 * c_out ** 2
        return _col(c_in, x0) * x, target, weight

    def coefficients(self, s, sigma):
        """(E9) (a, b, c, tau) with D(x~, sigma~) = a x~ + b f(c x~, tau): (c_skip, c_out, c_in, 250 ln sigma~)."""
        c_skip, c_out, c_in, c_noise = (float(c) for c in edm_precond(sigma, s.sigma_data))
        return c_skip, c_out, c_in, float(TIME_SCALE * c_noise)

    def denoise(self, s, net, x, sg):
        c_skip, c_out, c_in, tau = self.coefficients(s, sg)
        F = net((c_in * x).astype(x.dtype), np.full(x.shape[0], tau))
        return c_skip * x + c_out * np.asarray(F)                              # (D6)

    def sigma_grid_linspace(self, lo, hi, ramp):
        return hi * ramp                                                       # own time t = sigma = sigma~

    def weighting_of(self, cfg, lam):
        # (D7)  lambda = -2 ln sigma ~ N(-2 P_mean, (2 P_std)^2);  (D8)  omega = (e^-lambda + sd^2) / sd^2
        m, sd = -2.0 * cfg.p_mean, 2.0 * cfg.p_std
        p = np.exp(-0.5 * ((lam - m) / sd) ** 2) / (sd * math.sqrt(2.0 * math.pi))
        return 2.0 * p * (np.exp(-lam) + cfg.sigma_data ** 2) / cfg.sigma_data ** 2


class Flow(_Continuous):
    """Flow matching / rectified flow: x_t = (1 - t) x0 + t eps, the network predicting u = eps - x0 (D10-D15)."""
    name = "flow"

    def network_time(self, s, lv):
        return lv                                                              # t itself

    def level(self, s, u):
        # (D14)  t = sigmoid(m + s z), z = ndtri(u): logit(t) ~ N(m, s^2)
        t = u.copy() if s.t_sampling == "uniform" else expit(s.logit_mean + s.logit_std * ndtri(u))
        return shift_t(t, s.shift)

    def target(self, s, x064, e64, lv, x0):
        if np.any((lv <= 0) | (lv >= 1)):
            raise InputError("flow matching's t must lie strictly inside (0, 1)")
        t = _col(lv, x0)
        net_in = (1.0 - t) * x064 + t * e64                                    # (D10)  x_t
        target = e64 - x064                                                    # (D10)  u = dx_t/dt
        return net_in, target, np.ones_like(lv)

    def coefficients(self, s, sigma):
        """(E9) at t = sigma~ / (1 + sigma~): (1 - t, -t, 1 - t, 1000 t), since x_t = (1 - t) x~, D = x_t - t u."""
        t = processes.flow_t_of_sigma_tilde(sigma)                             # (D12)  sigma~ = t / (1 - t)
        return 1.0 - t, -t, 1.0 - t, float(TIME_SCALE * np.asarray(t, dtype=np.float64))

    def denoise(self, s, net, x, sg):
        t = processes.flow_t_of_sigma_tilde(sg)                                # (D12)  sigma~ = t / (1 - t)
        xt = ((1.0 - t) * x).astype(x.dtype)                                   # (D3)  x_t = alpha x~
        return xt - t * np.asarray(net(xt, np.full(x.shape[0], TIME_SCALE * t)))   # (D10)  x0 = x_t - t u

    def sigma_grid_linspace(self, lo, hi, ramp):
        t = processes.flow_t_of_sigma_tilde(hi) * ramp                         # (D12)  own t, then sigma~
        return t / (1.0 - t)

    def weighting_of(self, cfg, lam):
        # (D15)  the shift moves every lambda by -2 ln s: the density of lambda' is the base density at lambda' + 2 ln s
        base = lam + 2.0 * math.log(cfg.shift)
        if cfg.t_sampling == "uniform":
            t = expit(-0.5 * base)                                             # (D13)  t = sigmoid(-lambda / 2)
            p = 0.5 * t * (1.0 - t)                                            # |dt/dlambda|
        else:
            # (D14)  logit t = -lambda / 2 ~ N(m, s^2)
            z = (-0.5 * base - cfg.logit_mean) / cfg.logit_std
            p = 0.5 * np.exp(-0.5 * z * z) / (cfg.logit_std * math.sqrt(2.0 * math.pi))
        # (D13)  ||u_hat - u||^2 = ||eps_hat - eps||^2 / alpha^2, alpha = sigmoid(lambda / 2)
        return 2.0 * p / expit(0.5 * lam) ** 2


class NCSN(_Continuous):
    """Song & Ermon 2019, 2020: x = x0 + sigma eps (alpha = 1) on a geometric ladder sigma_max .. sigma_min, the
    score s(x, sigma) = F(x, tau) / sigma trained by denoising score matching with lambda(sigma) = sigma^2 (J1-J7).
    The network's time tau is 1000 t of the VE process sigma = sigma_min (sigma_max / sigma_min)^t (J5)."""
    name = "ncsn"

    def sigma_range(self, s):
        if s.sigma_max is None:
            raise InputError("--sigma-max is not set: the recipe measures it for a named dataset (the largest pairwise "
                             "distance, reference.ladder.max_pairwise_distance); give --sigma-max for this data")
        return s.sigma_min, s.sigma_max

    def ladder(self, s):
        return sigma_ladder(*self.sigma_range(s)[::-1], s.num_levels)        # (J2)  ladder[0] = sigma_max

    def network_time(self, s, lv):
        lo, hi = self.sigma_range(s)
        return np.log(lv / lo) / math.log(hi / lo)                             # (J5)  VE's own t(sigma)

    def level(self, s, u):
        # (J5)  i ~ U{0 .. L-1} from one uniform each: floor(u L), then sigma_i of the ladder
        return self.ladder(s)[np.minimum((u * s.num_levels).astype(np.int64), s.num_levels - 1)]

    def target(self, s, x064, e64, lv, x0):
        sig = _col(lv, x0)
        x = x064 + sig * e64                                                   # (J1)  x~ = x0 + sigma eps
        score_target = -(x - x064) / sig ** 2                                  # (J1)  grad log q(x~ | x0)
        # (J4)  s = F / sigma: F's target is sigma s*
        # (J1)  lambda(sigma) ||s - s*||^2 = (lambda / sigma^2) ||F - F*||^2
        lam = lv ** 2                                                          # (J1)  lambda(sigma) = sigma^2
        return x, sig * score_target, lam / lv ** 2

    def coefficients(self, s, sigma):
        """(E9, J6) D = x~ + sigma F(x~, tau): (1, sigma, 1, tau)."""
        return 1.0, float(sigma), 1.0, float(TIME_SCALE * self.network_time(s, float(sigma)))

    def denoise(self, s, net, x, sg):
        F = np.asarray(net(x, np.full(x.shape[0], TIME_SCALE * self.network_time(s, sg))))
        score = F / sg                                                         # (J4)  s = F / sigma
        return x + sg ** 2 * score                                             # (J6)  Tweedie: D = x~ + sigma^2 s

    def sigma_grid_linspace(self, lo, hi, ramp):
        # (J5)  uniform in VE's t over the n levels, from sigma_max to sigma_min: geometric, the ladder at n = L
        k = np.arange(ramp.size, dtype=np.float64) / max(ramp.size - 2, 1)
        return hi * (lo / hi) ** k

    def weighting_of(self, cfg, lam):
        # (J7)  the L levels equally spaced in lambda = -2 ln sigma, each 1/L over its cell of width d: p = 1 / (L d)
        lo, hi = self.sigma_range(cfg)
        d = 2.0 * math.log(hi / lo) / (cfg.num_levels - 1)
        inside = (lam >= -2.0 * math.log(hi) - d / 2) & (lam <= -2.0 * math.log(lo) + d / 2)
        # (J7)  omega = 1: ||F - F*||^2 = ||eps_hat - eps||^2 (F = -eps_hat)
        return np.where(inside, 2.0 / (cfg.num_levels * d), 0.0)


class ChainWeighting:
    """The discrete chain's weighting on a VP process (D16); the chain's training math is reference/losses.py."""
    name = "ddpm"

    def weighting(self, lam, **kw):
        return _ddpm_weighting(lam, **kw)


# One instance per continuous objective, keyed by its common.objective_table name; WEIGHTING_MATH adds the chain's.
OBJECTIVE_MATH = {m.name: m for m in (EDM(), Flow(), NCSN())}
WEIGHTING_MATH = {**OBJECTIVE_MATH, ChainWeighting.name: ChainWeighting()}


def network_time(cfg, level):
    """The float the network's time embedding receives: edm 1000 c_noise = 250 ln sigma; flow 1000 t; ncsn 1000 t of
    the VE process (J5). float64."""
    s, lv = settings(cfg), _levels(level)
    return TIME_SCALE * OBJECTIVE_MATH[s.objective].network_time(s, lv)


def shift_t(t, shift):
    """(D15) SD3's shift t' = s t / (1 + (s - 1) t), applied once (s = 1 is the identity): lambda' = lambda - 2 ln s."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def level(cfg, u):
    """(D7, D14, D15) The noise level of each example from uniforms u (N,) in (0, 1): float64 (N,).

    edm: sigma = exp(P_mean + P_std ndtri(u)) (lognormal); flow: t = u ("uniform") or sigmoid(logit_mean +
    logit_std ndtri(u)) ("logit-normal"), then the shift (once). One uniform per example on every objective.
    """
    s = settings(cfg)
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 1 or not np.all((u > 0) & (u < 1)):
        raise InputError(f"u must be uniforms of shape (N,) strictly inside (0, 1), got shape {u.shape}"
                         + (f", range {u.min():g}..{u.max():g}" if u.size else ""))
    return OBJECTIVE_MATH[s.objective].level(s, u)


def training_target(cfg, x0, eps, level):
    """(D5-D8, D10) One batch's (net_in, time_in, target, weight) at per-example levels (N,).

    edm: x = x0 + sigma eps, net_in = c_in x, target = (x0 - c_skip x) / c_out, weight = lambda(sigma) c_out^2 (= 1).
    flow: x_t = (1 - t) x0 + t eps, net_in = x_t, target = u = eps - x0, weight = 1.
    net_in, target in x0's dtype (N, ...); time_in float64 (N,); weight (N,) in x0's dtype.
    """
    s = settings(cfg)
    x0, eps = _data(x0, "x0"), _data(eps, "eps")
    check_same_shape(x0, eps, "x0", "eps")
    lv = _levels(level, x0.shape[0])
    lv = np.broadcast_to(lv, (x0.shape[0],))
    x064, e64, dt = x0.astype(np.float64), eps.astype(np.float64), x0.dtype
    net_in, target, weight = OBJECTIVE_MATH[s.objective].target(s, x064, e64, lv, x0)
    return net_in.astype(dt), network_time(cfg, lv), target.astype(dt), weight.astype(dt)


def loss_and_grad(out, target, weight):
    """mean_n weight_n mean_d (out - target)^2 -> (float, dloss/dout in out's dtype)."""
    out, target = _data(out, "out"), _data(target, "target")
    check_same_shape(out, target, "out", "target")
    w = _levels(weight, out.shape[0])
    r = out.astype(np.float64) - target.astype(np.float64)
    n, d = out.shape[0], max(1, out[0].size)
    per = (r * r).reshape(n, -1).mean(axis=1)                                  # (N,)
    grad = 2.0 * _col(np.broadcast_to(w, (n,)), r) * r / (n * d)
    return float(np.mean(w * per)), grad.astype(out.dtype)


def loss(out, target, weight):
    """The value of loss_and_grad alone."""
    return loss_and_grad(out, target, weight)[0]


def denoiser(cfg, net, clip_x0=False):
    """(D6, D12) D(x~, sigma~) -> x0_hat for the ODE solvers from ``net(net_in, time_in (N,)) -> output``.

    edm: x = x~, D = c_skip x + c_out F(c_in x, 250 ln sigma); flow: t = sigma~ / (1 + sigma~), x_t = (1 - t) x~,
    D = x_t - t u. sigma~ a Python float > 0; clipped to [-1, 1] with ``clip_x0`` (images). Output in x~'s dtype.
    """
    s = settings(cfg)
    math_ = OBJECTIVE_MATH[s.objective]

    def D(x, sigma):
        sg = check_number(sigma, "sigma~ (the denoiser's noise level)", lo_open=True)
        x0 = math_.denoise(s, net, x, sg)
        return (np.clip(x0, -1.0, 1.0) if clip_x0 else x0).astype(x.dtype, copy=False)

    return D


def sigma_range(cfg):
    """(sigma~_min, sigma~_max) for sampling: EDM's (0.002, 80) for edm and flow (flow: t_max = 80 / 81, D12);
    ncsn its ladder's (sigma_min, sigma_max)."""
    s = settings(cfg)
    return OBJECTIVE_MATH[s.objective].sigma_range(s)


def sigma_grid(cfg, n, grid):
    """(N5, D12) n levels of sigma~, strictly decreasing, then 0: (n + 1,) float64.

    "karras": rho = 7 over sigma_range; "linspace": uniform in the process's own time (edm: sigma, flow: t)
    between t(sigma~_max) and 0; ncsn: n levels uniform in VE's t from sigma_max to sigma_min (J5).
    """
    s = settings(cfg)
    check_choice(grid, CONTINUOUS_GRIDS, "grid (a continuous model samples on)")
    n = check_int(n, "n (number of sampling steps)", lo=1)
    lo, hi = sigma_range(cfg)
    if grid == "karras":
        return karras_sigmas(n, lo, hi)
    ramp = 1.0 - np.arange(n + 1, dtype=np.float64) / n                        # 1 .. 0
    out = OBJECTIVE_MATH[s.objective].sigma_grid_linspace(lo, hi, ramp)
    out[0], out[-1] = hi, 0.0
    return out


def weighting(objective, lam, **kw):
    """(D16) w(lambda): loss = 1/2 int w(lambda) E[mean_d (eps_hat - eps)^2] dlambda, float64 like lam.

    w = 2 p(lambda) omega(lambda): p the density of the training lambda, omega the weight the loss puts on the
    eps-MSE at that lambda. objective in common.choices.WEIGHTINGS:
      "ddpm"  process "vp-cosine" | "vp-linear" (t uniform), prediction "eps" | "x0" | "v", loss_weighting
              None | "snr" | "min_snr" (gamma, default 5) as reference/losses.py's snr_weights; other keywords
              are the process's settings (make_process);
      "edm"   sigma_data, p_mean, p_std;   "flow"  t_sampling, logit_mean, logit_std, shift;
      "ncsn"  sigma_min, sigma_max, num_levels (J7: the ladder's cells, uniform over its indices).
    """
    check_choice(objective, WEIGHTINGS, "objective")
    return WEIGHTING_MATH[objective].weighting(np.asarray(lam, dtype=np.float64), **kw)


def _ddpm_weighting(lam, process="vp-cosine", prediction="eps", loss_weighting=None, gamma=5.0, **process_kw):
    """(D16) L_simple and its weightings on a VP process with t uniform: 2 omega / |dlambda/dt| at t(lambda)."""
    check_choice(process, ("vp-cosine", "vp-linear"), "process (of the ddpm weighting)")
    check_choice(prediction, ("eps", "x0", "v"), "prediction")
    if loss_weighting is not None:
        check_choice(loss_weighting, ("snr", "min_snr"), "loss_weighting (None is L_simple)")
    proc = processes.make_process(process, **process_kw)
    # (D2)  sigma~ = e^{-lambda/2}; a lambda beyond the process's end (vp-linear's lambda(1) is finite) has density 0
    s_end = float(proc.sigma_tilde(1.0))
    s_tilde = np.exp(-0.5 * lam)
    t = proc.t_of_sigma_tilde(np.minimum(s_tilde, s_end))
    p = np.where(s_tilde <= s_end, 1.0 / np.abs(proc.dlambda_dt(t)), 0.0)
    snr = np.exp(lam)
    if loss_weighting == "min_snr":
        g = check_number(gamma, "gamma (min-SNR clip)", lo_open=True)
        omega = np.minimum(snr, g) / snr                                       # (L5, R6)  w_x0 min(snr, g) on x0-MSE
    elif loss_weighting == "snr":
        omega = np.ones_like(lam)                                              # (R6)  w_x0 = snr: the eps-MSE
    else:
        # (R6)  the parameterisation's own MSE in eps units: eps 1, x0 1/snr, v (snr + 1)/snr
        omega = {"eps": np.ones_like(lam), "x0": 1.0 / snr, "v": 1.0 + 1.0 / snr}[prediction]
    return 2.0 * p * omega
