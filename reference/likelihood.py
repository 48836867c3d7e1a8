"""The exact likelihood of the probability-flow ODE — derivations/likelihood.md (E1-E9).

The instantaneous change of variables (E1) along the ODE (K6), written in the VP state x = sqrt(abar) x~
against the time rho = log sigma (E2), from the data x~(sigma_min) = x_0 up to sigma_max (E3):

    dx/drho = abar x - sqrt(abar) D(x / sqrt(abar), sigma),          div = d abar - tr dD/dx~        (E2)
    -log p(x_0) = -log N(x(rho_max); 0, I) - int_{rho_min}^{rho_max} div drho + d/2 log(1 + sigma_min^2)   (E3)

p is the density of x~ at sigma_min (the model's data blurred by N(0, sigma_min^2 I)), d the dimensions of
one example. One adaptive solve for the whole batch: scipy's RK45 (Dormand-Prince 5(4), E8) on the joint
state [x (N d values), the integral (N)], at ``rtol`` / ``atol`` (score_sde's 1e-5 by default).

A *field* is the denoiser with its vector-Jacobian products, written once per kind of model:

    field(x~, sigma, probes) -> (x0_hat (N, ...), vjps (K, N, ...)),   vjps[k] = (dD/dx~)^T probes[k]

  ``network_field``  a network trained on the discrete steps: its output at a continuous sigma
                     interpolated over the label, linearly in log sigma between the two neighbouring
                     trained levels, and converted to x0_hat at the continuous abar (E5); VJPs by its
                     hand-written backward (one forward of <= 2N items and K backwards per evaluation)
  ``mixture_field``  the Gaussian-mixture oracle, exact at every sigma; its Jacobian is the posterior
                     covariance over sigma^2 (E6)
  ``objective_field`` a network of a continuous objective (edm, flow), exact at every sigma~: D = a x~ + b f(c x~,
                     tau) with the objective's own coefficients, VJPs by its hand-written backward (E9)

The divergence (E4) is exact (probes: the d basis vectors, summed) or Hutchinson's estimate (K Rademacher
probes, averaged), the probes fixed for the whole solve. Discrete data of L levels in [-1, 1] is
dequantised uniformly within its bin of width 2 / (L - 1) (E7), and its bits/dim are bounded by the
continuous bits/dim plus log2((L - 1) / 2). Noise is an argument: ``probes`` and ``dequant_noise``, or a
generator ``rng`` that draws them (probes first, then the dequantisation noise).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.integrate import RK45

from . import objectives
from .diffusion import PREDICTIONS, _data
from .errors import InputError, check_choice, check_int, check_number, check_progress
from .score import trained_sigmas

DIVERGENCES = ("exact", "hutchinson")
VARIANCES = ("fixed_small", "fixed_large", "learned")   # only "learned" matters here: its 2C output channels
RTOL = ATOL = 1e-5   # score_sde's likelihood defaults (RK45, rtol = atol = 1e-5)
MIN_RTOL = 100 * np.finfo(np.float64).eps   # below this scipy silently raises rtol; refused instead
LN2 = math.log(2.0)


class ODENLL(NamedTuple):
    """What ``ode_nll`` returns. Per-example arrays are (N,) float64."""
    nats: np.ndarray        # -log p(y): y = x_0 (continuous data) or its dequantisation (discrete data), nats
    bpd: np.ndarray         # bits/dim: nats / (d ln 2), plus log2((L - 1) / 2) for L-level data (E7)
    prior_nats: np.ndarray  # -log N(x(sigma_max); 0, I): the prior's part of nats
    x_T: np.ndarray         # (N, ...) the VP latent at sigma_max
    nfe: int                # field evaluations (the initial one and the first-step probe included)
    steps: int              # accepted solver steps (each attempt costs 6 evaluations)
    rtol: float
    atol: float
    sigma_min: float
    sigma_max: float
    divergence: str
    n_probes: int           # probes per example: K (hutchinson) or d (exact)


# ---- dequantisation and bits/dim (E7) -----------------------------------------------------------

def bin_width(levels):
    """(E7) Delta = 2 / (L - 1): the spacing of L levels on [-1, 1] (level k at 2 k / (L - 1) - 1)."""
    L = check_int(levels, "levels (number of discrete values per dimension)", lo=2)
    return 2.0 / (L - 1)


def bpd_offset(levels):
    """(E7) log2((L - 1) / 2) = -log2 Delta: bits/dim of L-level data from the density of its dequantisation
    on [-1, 1]. 256 levels: log2 127.5 = 6.994 (score_sde's 7 is -log2 of its bins of 2/256, 8 on [0, 1]);
    17 levels (digits): 3."""
    return -math.log2(bin_width(levels))


def nats_to_bpd(nats, dims, levels=None):
    """(E7, L7) Per-example nats -> bits/dim: nats / (d ln 2), plus ``bpd_offset(levels)`` for L-level data."""
    dims = check_int(dims, "dims (dimensions per example)", lo=1)
    # (E7)  bpd = -log p / (d ln 2) - log2 Delta
    return np.asarray(nats, dtype=np.float64) / (dims * LN2) + (0.0 if levels is None else bpd_offset(levels))


def check_levels(x, levels):
    """x (N, ...) on the grid of L levels in [-1, 1] (to 1e-3 of a bin, float32 data included) -> float64."""
    x = np.asarray(_data(x, "x0"), dtype=np.float64)
    delta = bin_width(levels)
    if x.size and (x.min() < -1 - 1e-6 or x.max() > 1 + 1e-6):
        raise InputError(f"x0 out of range: values {x.min():.4g}..{x.max():.4g}; data with levels={levels} "
                         "lie in [-1, 1] (images in model space)")
    k = (x + 1.0) / delta
    off = float(np.max(np.abs(k - np.round(k)), initial=0.0))
    if off > 1e-3:
        raise InputError(f"x0 is not on the grid of {levels} levels 2 k / {levels - 1} - 1 (off by {off:.3g} of a "
                         "bin): pass the levels the data has, or levels=None for continuous data")
    return x


def dequantize(x, levels, u):
    """(E7) y = x + Delta (u - 1/2): uniform on x's bin [x - Delta/2, x + Delta/2); u in [0, 1), x's shape."""
    x = check_levels(x, levels)
    u = np.asarray(u, dtype=np.float64)
    if u.shape != x.shape or not np.all((u >= 0) & (u < 1)):
        raise InputError(f"dequant_noise must be uniform draws in [0, 1) of the data's shape {x.shape}, got shape "
                         f"{u.shape}")
    # (E7)  y = x + Delta (u - 1/2)
    return x + bin_width(levels) * (u - 0.5)


# ---- fields: the denoiser and its vector-Jacobian products (E5, E6) -----------------------------

def level_blend(log_sigmas, sigma):
    """(E5) [(t, weight), ...]: D at sigma is the blend of the trained levels t, linear in log sigma.

    ``log_sigmas`` (T,) increasing: log sigma_t of the trained steps. u = t + w is the piecewise-linear
    inverse of t -> log sigma_t (K8's u, not rounded); weights (1 - w, w) on steps t, t + 1, one pair at a
    trained level. sigma outside [sigma_0, sigma_{T-1}] (beyond 1e-9 in log) is refused.
    """
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
    table = trained_sigmas(sched)
    if not np.all(np.isfinite(table)) or sched.T < 2:
        raise InputError("the ODE likelihood needs T >= 2 trained levels with a finite sigma_max: a schedule with "
                         "zero terminal SNR (sigma_{T-1} = inf) has no finite top level; use the bound (vlb_terms)")
    return np.log(table)


def sigma_range(sched):
    """(sigma_min, sigma_max) = (sigma_0, sigma_{T-1}): the trained levels a network's ODE runs between."""
    ls = _finite_log_sigmas(sched)
    return float(np.exp(ls[0])), float(np.exp(ls[-1]))


def x0_coefficients(alpha_bar, prediction):
    """(E5; R1, R4 at a continuous abar) (c_x, c_out) with x0_hat = c_x x + c_out out for the VP input x:
    eps (1 / sqrt(abar), -sqrt(1 - abar) / sqrt(abar) = -sigma), x0 (0, 1), v (sqrt(abar), -sqrt(1 - abar))."""
    check_choice(prediction, PREDICTIONS, "prediction")
    ra, rb = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    # (R1)  x0 = (x - sqrt(1 - abar) eps) / sqrt(abar);  (R4)  x0 = sqrt(abar) x - sqrt(1 - abar) v
    return {"eps": (1.0 / ra, -rb / ra), "x0": (0.0, 1.0), "v": (ra, -rb)}[prediction]


def network_field(sched, model, prediction="eps", variance="fixed_small"):
    """(E5) The field of a network trained on discrete steps: ``model.forward(x, t) -> (out, cache)`` and
    ``model.backward(dout, cache) -> (dx, grads)`` (reference.unet's UNet / MLP).

    At a continuous sigma the network's output is interpolated over its label, linearly in log sigma between
    the trained levels of ``level_blend`` (out = sum_t w_t model(x, t), both levels fed the same VP input
    x = sqrt(abar) x~), and turned into x0_hat at the continuous abar = 1 / (1 + sigma^2) (R1, R4). At a
    trained level this is the network itself. One forward of the stacked levels (<= 2N items) and one
    backward per probe. ``variance="learned"``: the output's 2C channels are the mean's C, then the variance's
    C (diffusion.split_output); the ODE reads the mean's only.
    """
    check_choice(prediction, PREDICTIONS, "prediction")
    learned = check_choice(variance, VARIANCES, "variance") == "learned"
    log_sigmas = _finite_log_sigmas(sched)

    def field(x, sigma, probes):
        levels, n = level_blend(log_sigmas, sigma), x.shape[0]
        a = 1.0 / (1.0 + sigma**2)                                      # (K6)
        c_x, c_out = x0_coefficients(a, prediction)
        t = np.repeat([lv[0] for lv in levels], n)
        w = np.repeat([lv[1] for lv in levels], n).reshape((-1,) + (1,) * (x.ndim - 1))
        fold = lambda z: z.reshape((len(levels), n) + x.shape[1:]).sum(axis=0)  # noqa: E731
        # (K6)  the VP input x = sqrt(abar) x~, the same for both levels
        xv = math.sqrt(a) * x
        out, cache = model.forward(np.concatenate([xv] * len(levels)), t)
        out = np.asarray(out, dtype=np.float64)
        out = out[:, : out.shape[1] // 2] if learned else out     # the mean's channels, as diffusion.split_output
        # (E5)  out(x, sigma) = sum_t w_t model(x, t)
        out = fold(w * out)
        vjps = []
        for v in probes:
            dout = w * (c_out * np.concatenate([v] * len(levels)))
            dout = np.concatenate([dout, np.zeros_like(dout)], axis=1) if learned else dout
            dx = np.asarray(model.backward(dout, cache)[0], np.float64)
            # (E5)  (dD/dx~)^T v = sqrt(abar) (c_x v + sum_t w_t J_t^T (c_out v))
            vjps.append(math.sqrt(a) * (c_x * v + fold(dx)))
        # (E5)  D = c_x x + c_out out
        return c_x * xv + c_out * out, np.stack(vjps) if vjps else np.zeros((0,) + x.shape)

    return field


def mixture_field(oracle):
    """(E6) The exact field of a GaussianMixtureOracle: D = E[x_0 | x~] and dD/dx~ = Cov[x_0 | x~] / sigma^2.

    Per component k (in its eigenbasis Sigma_k = U diag(lam) U^T): the posterior mean
    m_k = mu_k + U diag(g) U^T (x~ - mu_k) and covariance V_k = sigma^2 U diag(g) U^T, g = lam / (lam + sigma^2);
    with the responsibilities r_k and m = sum_k r_k m_k, the total covariance sum_k r_k (V_k + (m_k - m)(m_k - m)^T)
    (no difference of large terms: at small sigma every part stays O(sigma^2)).
    """
    K, U = oracle.m.shape[0], oracle.U

    def rot(z, k, back):  # eigen coordinates of component k and back (identity for diagonal covariances)
        return z if U is None else z @ (U[k].T if back else U[k])

    def field(x, sigma, probes):
        s2, a = sigma**2, 1.0 / (1.0 + sigma**2)
        flat = x.reshape(x.shape[0], -1)
        r = oracle.responsibilities(x * math.sqrt(a), a)            # (G4) (N, K)
        g = oracle.lam / (oracle.lam + s2)                            # (K, D) posterior shrinkage
        # (E6, G1)  m_k = mu_k + Sigma_k (Sigma_k + sigma^2 I)^{-1} (x~ - mu_k)
        mk = np.stack([oracle.m[k] + rot(g[k] * rot(flat - oracle.m[k], k, False), k, True) for k in range(K)])
        m = np.einsum("nk,knd->nd", r, mk)
        vjps = []
        for v in probes:
            vf = v.reshape(flat.shape)
            # (E6)  J v = sum_k r_k (U diag(g_k) U^T v + (m_k - m) ((m_k - m) . v) / sigma^2)
            jv = sum(r[:, k:k + 1] * (rot(g[k] * rot(vf, k, False), k, True)
                                      + (mk[k] - m) * np.sum((mk[k] - m) * vf, axis=1, keepdims=True) / s2)
                     for k in range(K))
            vjps.append(jv.reshape(x.shape))
        return m.reshape(x.shape), np.stack(vjps) if vjps else np.zeros((0,) + x.shape)

    return field


def objective_coefficients(cfg, sigma):
    """(E9) (a, b, c, tau) with D(x~, sigma~) = a x~ + b f(c x~, tau) for a network f of ``cfg.objective``, from the
    objective's own functions: edm (c_skip, c_out, c_in, 250 ln sigma~); flow at t = sigma~ / (1 + sigma~)
    (1 - t, -t, 1 - t, 1000 t), since x_t = (1 - t) x~ and D = x_t - t u(x_t)."""
    s = objectives.settings(cfg)
    return objectives.OBJECTIVE_MATH[s.objective].coefficients(s, sigma)   # each objective's (E9) coefficients


def objective_field(cfg, model):
    """(E9) The field of a network of a continuous objective (cfg.objective edm | flow), exact at every sigma~:
    ``model.forward(x, time_in (N,) float) -> (out, cache)``, ``model.backward(dout, cache) -> (dx, grads)``
    (reference.unet's networks with continuous_time). One forward and one backward per probe per evaluation."""
    objectives.settings(cfg)

    def field(x, sigma, probes):
        a, b, c, tau = objective_coefficients(cfg, sigma)
        out, cache = model.forward(c * x, np.full(x.shape[0], tau))
        vjps = [a * v + c * np.asarray(model.backward(b * v, cache)[0], np.float64) for v in probes]
        # (E9)  D = a x~ + b f(c x~, tau),  (dD/dx~)^T v = a v + c J_f^T (b v)
        return a * x + b * np.asarray(out, np.float64), np.stack(vjps) if vjps else np.zeros((0,) + x.shape)

    return field


# ---- the divergence's probes (E4) ---------------------------------------------------------------

def make_probes(divergence, shape, n_probes=1, probes=None, rng=None):
    """(E4) (probes (K, N, ...), weight): tr J is estimated as weight * sum_k probes_k . J^T probes_k.

    "exact": the d basis vectors, weight 1 (K = d backward passes). "hutchinson": ``probes`` as given or
    ``n_probes`` Rademacher draws (+-1) from ``rng``, weight 1 / K: E[v^T J v] = tr J for E[v v^T] = I.
    """
    check_choice(divergence, DIVERGENCES, "divergence method")
    d = int(np.prod(shape[1:]))
    if divergence == "exact":
        if probes is not None:
            raise InputError("probes are for divergence='hutchinson'; the exact divergence uses the basis vectors")
        eye = np.eye(d).reshape((d, 1) + tuple(shape[1:]))
        return np.broadcast_to(eye, (d,) + tuple(shape)), 1.0
    if probes is None:
        if not isinstance(rng, np.random.Generator):
            raise InputError("divergence='hutchinson' needs probes (K, N, ...) or a generator rng "
                             "(np.random.default_rng(seed)) to draw them")
        k = check_int(n_probes, "n_probes (Hutchinson probes per example)", lo=1)
        # (E4)  Rademacher probes: entries +-1 with probability 1/2
        probes = rng.integers(0, 2, size=(k,) + tuple(shape)).astype(np.float64) * 2.0 - 1.0
    probes = np.asarray(probes, dtype=np.float64)
    if probes.ndim != len(shape) + 1 or probes.shape[1:] != tuple(shape) or probes.shape[0] < 1 \
            or not np.all(np.isfinite(probes)):
        raise InputError(f"probes must be finite, of shape (K, {', '.join(map(str, shape))}) with K >= 1, got "
                         f"shape {probes.shape}")
    return probes, 1.0 / probes.shape[0]


# ---- the ODE and its solve (E2, E3, E8) ---------------------------------------------------------

def pf_ode_rhs(field, probes, weight, shape):
    """(E2) rhs(rho, y) of the joint state y = [x (VP, flattened), the divergence integral (N,)]."""
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
        tr = weight * np.sum((probes * vjps).reshape(len(probes), n, d), axis=(0, 2))
        # (E2)  div = d abar - tr dD/dx~
        return np.concatenate([dx.reshape(-1), d * a - tr])

    return rhs


def rk45(fun, t0, y0, t1, rtol=RTOL, atol=ATOL, progress=None):
    """(E8) Dormand-Prince 5(4) from t0 to t1 > t0 by scipy's RK45 -> (y(t1), nfe, accepted steps).

    Error per attempt: RMS over every component of err / (atol + rtol max(|y|, |y_new|)); accepted below 1,
    the next step scaled by min(10, max(0.2, 0.9 err^(-1/5))) (at most 1 right after a rejection).
    ``progress`` wraps the iterable of accepted steps (their number is not known in advance).
    """
    solver = RK45(fun, t0, np.asarray(y0, dtype=np.float64), t1, rtol=rtol, atol=atol)

    def steps():
        while solver.status == "running":
            message = solver.step()
            if solver.status == "failed":
                raise FloatingPointError(f"the ODE solver failed at rho = {solver.t:.6g}: {message}")
            yield solver.t

    n = sum(1 for _ in check_progress(progress)(steps()))
    return solver.y, int(solver.nfev), n


def _check_tolerances(rtol, atol):
    rtol = check_number(rtol, "rtol (relative tolerance of the ODE solver)", lo=0.0, lo_open=True)
    if rtol < MIN_RTOL:
        raise InputError(f"rtol={rtol!r} is below what float64 can hold (100 eps = {MIN_RTOL:.3g})")
    return rtol, check_number(atol, "atol (absolute tolerance of the ODE solver)", lo=0.0, lo_open=True)


def ode_nll(field, x0, sigma_min, sigma_max, divergence=None, levels=None, rng=None, probes=None,
            dequant_noise=None, n_probes=1, rtol=RTOL, atol=ATOL, progress=None):
    """(E3) -log p(x_0) by the probability-flow ODE from x~(sigma_min) = x_0 up to sigma_max -> ODENLL.

    x0 (N, ...): continuous data (``levels=None``: bpd = nats / (d ln 2)) or L-level data in [-1, 1],
    dequantised first (E7) with ``dequant_noise`` or uniform draws from ``rng``; bpd is then the
    dequantisation bound on the discrete data. ``divergence``: "exact" | "hutchinson" (default: exact for
    (N, D) points, hutchinson for images). One adaptive solve of the whole batch at rtol / atol (E8).
    """
    x0 = np.asarray(_data(x0, "x0"), dtype=np.float64)
    rtol, atol = _check_tolerances(rtol, atol)
    sigma_min = check_number(sigma_min, "sigma_min", lo=0.0, lo_open=True)
    sigma_max = check_number(sigma_max, "sigma_max", lo=sigma_min, lo_open=True)
    divergence = ("exact" if x0.ndim == 2 else "hutchinson") if divergence is None else divergence
    V, weight = make_probes(divergence, x0.shape, n_probes, probes, rng)
    if levels is not None:
        if dequant_noise is None and not isinstance(rng, np.random.Generator):
            raise InputError("discrete data (levels given) is dequantised: pass dequant_noise or a generator rng")
        u = dequant_noise if dequant_noise is not None else rng.uniform(0.0, 1.0, size=x0.shape)
        x0 = dequantize(x0, levels, u)
    n, d = x0.shape[0], int(np.prod(x0.shape[1:]))
    rhs = pf_ode_rhs(field, V, weight, x0.shape)
    # (E3)  start: x(rho_min) = sqrt(abar_min) x~ with x~ = x_0, the divergence integral 0
    y0 = np.concatenate([(x0 / math.sqrt(1.0 + sigma_min**2)).reshape(-1), np.zeros(n)])
    y1, nfe, steps = rk45(rhs, math.log(sigma_min), y0, math.log(sigma_max), rtol, atol, progress)
    x_T, integral = y1[: n * d].reshape(x0.shape), y1[n * d:]
    # (E3)  -log N(x_T; 0, I) = 1/2 |x_T|^2 + d/2 log(2 pi)
    prior = 0.5 * np.sum(x_T.reshape(n, d) ** 2, axis=1) + 0.5 * d * math.log(2.0 * math.pi)
    # (E3)  -log p(x_0) = -log N(x_T) - int div drho - d/2 log abar_min,  -log abar_min = log(1 + sigma_min^2)
    nats = prior - integral + 0.5 * d * math.log1p(sigma_min**2)
    return ODENLL(nats, nats_to_bpd(nats, d, levels), prior, x_T, nfe, steps, rtol, atol, sigma_min, sigma_max,
                  divergence, len(V))


def model_nll(sched, model, x0, prediction="eps", variance="fixed_small", **kw):
    """(E3, E5) ``ode_nll`` of a network trained on ``sched``'s discrete steps, between its trained levels
    sigma_0 and sigma_{T-1}; ``kw`` as ode_nll (levels, rng, divergence, rtol, atol, progress, ...)."""
    return ode_nll(network_field(sched, model, prediction, variance), x0, *sigma_range(sched), **kw)


def objective_nll(cfg, model, x0, **kw):
    """(E3, E9) ``ode_nll`` of a network of a continuous objective between the objective's sigma_range (its
    sampling range, sigma~_min to sigma~_max); ``kw`` as ode_nll."""
    return ode_nll(objective_field(cfg, model), x0, *objectives.sigma_range(cfg), **kw)


def trainer_model(trainer, use_ema=True):
    """The network of a reference ``Trainer`` with its EMA (or raw) weights, for ``model_nll`` (as
    ``Trainer.denoiser`` builds it, but the model itself: its backward gives the VJPs)."""
    from .train import build_model   # train imports the optimiser and the UNet: only when asked for
    model = build_model(trainer.cfg, trainer.item_shape)
    model.load_params(trainer.ema.params if use_ema else trainer.model.params)
    return model
