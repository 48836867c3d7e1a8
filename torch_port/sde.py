"""Stochastic samplers over a grid of noise levels, in torch: mirror of reference/sde.py (see its docstring).

Same names, signatures, settings, noise order and errors; derivations/sde_samplers.md (Q1-Q12). The grid is host
data read once into Python floats; ``noise(k)`` returns a tensor (or an array, moved to x's device and dtype).
"""
from __future__ import annotations

import math

import torch

from common import sampler_table as table
from reference.errors import InputError, check_choice, check_int, check_number, check_progress

from .diffusion import _data
from .samplers import Sampled
from .solvers import _recorder, check_sigmas

# EDM's published stochastic settings: NVlabs/edm's README command for ImageNet-64 (Algorithm 2 at 256 steps);
# S_churn counts over the whole grid (gamma = S_churn / n), so on short grids gamma hits its cap sqrt(2) - 1.
EDM_CHURN = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}
SNR = 0.16              # score_sde's Langevin corrector for VE models (configs/ve: sampling.snr)
LANGEVIN_STEPS, LANGEVIN_EPS = 100, 2e-5   # Song & Ermon 2019, Section 4.2: T = 100, epsilon = 2e-5
# ... on their ladder down to sigma_L = 0.01: only eps / sigma_L^2 is free of the data's scale (Q13), so the
# default step is that ratio times the grid's sigma_L^2
LANGEVIN_RATIO = LANGEVIN_EPS / 0.01 ** 2


def _draws(noise, x):
    """noise(k) checked against the state: a callable giving arrays shaped like x."""
    if not callable(noise):
        raise InputError(f"noise must be a callable noise(k) -> a standard-normal array shaped like x, got {noise!r}")

    def draw(k):
        z = torch.as_tensor(noise(k))
        if tuple(z.shape) != tuple(x.shape):
            raise InputError(f"noise({k}) has shape {tuple(z.shape)} but the state x has shape {tuple(x.shape)}: "
                             "each draw must be shaped like x")
        return z.to(device=x.device, dtype=x.dtype)

    return draw


def _eta(eta):
    return check_number(eta, "eta", lo=0.0, hi=1.0)


def euler_maruyama(D, x, sigmas, noise, callback=None, progress=None):
    """(Q2) Euler-Maruyama steps of the reverse SDE dx~ = -2 sigma score dsigma + sqrt(-2 sigma dsigma) z.

    The step to sigma = 0 returns D (Q3): no noise there. NFE = n, noise draws n - 1 (grid ending at 0).
    """
    s, draw, k = check_sigmas(sigmas), _draws(noise, x), 0
    for i in check_progress(progress)(range(len(s) - 1)):
        x0 = D(x, s[i])
        if callback is not None:
            callback(i, s[i], x, x0)
        if s[i + 1] == 0:
            x = x0                                                     # (Q3)  Tweedie: E[x0 | x~]
            continue
        # (Q2)  x~' = x~ + 2 sigma (sigma - sigma') score + sqrt(2 sigma (sigma - sigma')) z
        g2 = 2.0 * s[i] * (s[i] - s[i + 1])
        x = x + g2 * (x0 - x) / s[i] ** 2 + math.sqrt(g2) * draw(k)
        k += 1
    return x


def ancestral_levels(sigma, sigma_next, eta=1.0):
    """(Q4) k-diffusion's get_ancestral_step: (sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = sigma'^2."""
    # (Q4)  sigma_up = eta sigma' sqrt(1 - sigma'^2 / sigma^2)  (<= sigma' for eta <= 1)
    up = eta * sigma_next * math.sqrt(max(1.0 - sigma_next ** 2 / sigma ** 2, 0.0))
    return math.sqrt(max(sigma_next ** 2 - up ** 2, 0.0)), up


def ancestral(D, x, sigmas, noise, callback=None, progress=None, eta=1.0):
    """(Q4, Q5) Euler down to sigma_down, then noise of std sigma_up (k-diffusion's euler_ancestral).

    On a VP chain's levels it is DDIM with the same eta, step for step (Q5); eta = 1 is DDPM's beta~.
    NFE = n, noise draws n - 1 (none at the step to 0).
    """
    eta, s, draw, k = _eta(eta), check_sigmas(sigmas), _draws(noise, x), 0
    for i in check_progress(progress)(range(len(s) - 1)):
        x0 = D(x, s[i])
        if callback is not None:
            callback(i, s[i], x, x0)
        down, up = ancestral_levels(s[i], s[i + 1], eta)
        # (Q4)  x~' = x0_hat + sigma_down (x~ - x0_hat) / sigma + sigma_up z
        x = x0 + (down / s[i]) * (x - x0)
        if s[i + 1] > 0:
            x = x + up * draw(k)
            k += 1
    return x


def _corrector_step(x, score, z, snr):
    """(Q7) score_sde's Langevin step: eps = 2 (snr ||z|| / ||score||)^2, norms per example averaged over the batch."""
    n = x.shape[0]
    g = torch.linalg.vector_norm(score.reshape(n, -1), dim=1).mean()
    zn = torch.linalg.vector_norm(z.reshape(n, -1), dim=1).mean()
    # a zero score (x~ on a mode) gives step 0, as the reference, without a host sync
    eps = torch.where(g > 0, 2.0 * (snr * zn / torch.where(g > 0, g, torch.ones_like(g))) ** 2, torch.zeros_like(g))
    # (Q7)  x~ <- x~ + eps score + sqrt(2 eps) z
    return x + eps * score + torch.sqrt(2.0 * eps) * z


def pc(D, x, sigmas, noise, callback=None, progress=None, snr=SNR, corrector_steps=1):
    """(Q6, Q7) Song et al. 2021's predictor-corrector: at each level ``corrector_steps`` Langevin steps, then the
    reverse-diffusion predictor (Q6) to the next level (score_sde's order). The step to 0 returns D.

    NFE = (corrector_steps + 1) n; noise draws corrector_steps n + n - 1, each level's corrector draws first.
    """
    snr = check_number(snr, "snr", lo=0.0, lo_open=True)
    m = check_int(corrector_steps, "corrector_steps", lo=0)
    s, draw, k = check_sigmas(sigmas), _draws(noise, x), 0
    for i in check_progress(progress)(range(len(s) - 1)):
        for _ in range(m):
            x = _corrector_step(x, (D(x, s[i]) - x) / s[i] ** 2, draw(k), snr)
            k += 1
        x0 = D(x, s[i])
        if callback is not None:
            callback(i, s[i], x, x0)
        if s[i + 1] == 0:
            x = x0                                                     # (Q3)
            continue
        # (Q6)  x~' = x~ + (sigma^2 - sigma'^2) score + sqrt(sigma^2 - sigma'^2) z
        g2 = s[i] ** 2 - s[i + 1] ** 2
        x = x + g2 * (x0 - x) / s[i] ** 2 + math.sqrt(g2) * draw(k)
        k += 1
    return x


def _churn_settings(s_churn, s_tmin, s_tmax, s_noise):
    churn = check_number(s_churn, "s_churn (S_churn)", lo=0.0)
    lo = check_number(s_tmin, "s_tmin (S_tmin)", lo=0.0)
    hi = s_tmax if s_tmax == math.inf else check_number(s_tmax, "s_tmax (S_tmax)", lo=lo)
    return churn, lo, hi, check_number(s_noise, "s_noise (S_noise)", lo=0.0, lo_open=True)


def edm_gamma(sigma, n, s_churn, s_tmin, s_tmax):
    """(Q8) gamma_i = min(S_churn / n, sqrt(2) - 1) on levels in [S_tmin, S_tmax], else 0."""
    return min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0


def edm_sde(D, x, sigmas, noise, callback=None, progress=None, s_churn=EDM_CHURN["s_churn"],
            s_tmin=EDM_CHURN["s_tmin"], s_tmax=EDM_CHURN["s_tmax"], s_noise=EDM_CHURN["s_noise"]):
    """(Q8) Karras et al. 2022 Algorithm 2: churn sigma up to sigma^ = (1 + gamma) sigma with fresh noise, then a
    Heun step from sigma^ to sigma' (Euler on the step to 0). NFE = 2n - 1, noise draws n (one per step, always).
    """
    churn, lo, hi, s_noise = _churn_settings(s_churn, s_tmin, s_tmax, s_noise)
    s, draw = check_sigmas(sigmas), _draws(noise, x)
    n = len(s) - 1
    for i in check_progress(progress)(range(n)):
        gamma = edm_gamma(s[i], n, churn, lo, hi)
        s_hat = s[i] * (1.0 + gamma)
        # (Q8)  x^ = x + sqrt(sigma^^2 - sigma^2) S_noise z
        x_hat = x + math.sqrt(max(s_hat ** 2 - s[i] ** 2, 0.0)) * s_noise * draw(i)
        x0 = D(x_hat, s_hat)
        if callback is not None:
            callback(i, s_hat, x_hat, x0)
        d = (x_hat - x0) / s_hat                                      # (K6)
        x = x_hat + (s[i + 1] - s_hat) * d                             # (N1)  Euler from sigma^
        if s[i + 1] > 0:
            d_next = (x - D(x, s[i + 1])) / s[i + 1]
            # (N2)  the trapezoid: x' = x^ + (sigma' - sigma^) (d + d') / 2
            x = x_hat + (s[i + 1] - s_hat) * 0.5 * (d + d_next)
    return x


def dpmpp_2m_sde(D, x, sigmas, noise, callback=None, progress=None, eta=1.0):
    """(Q9) DPM-Solver++(2M) SDE, midpoint variant (k-diffusion's sample_dpmpp_2m_sde, diffusers' sde-dpmsolver++).

    First step first order (no history), the step to 0 returns D. NFE = n, noise draws n - 1.
    """
    eta, s, draw, k = _eta(eta), check_sigmas(sigmas), _draws(noise, x), 0
    x0_old, h_old = None, None
    for i in check_progress(progress)(range(len(s) - 1)):
        x0 = D(x, s[i])
        if callback is not None:
            callback(i, s[i], x, x0)
        if s[i + 1] == 0:
            x = x0                                                     # (Q3)
        else:
            h = math.log(s[i] / s[i + 1])                              # (N3)  h = lambda' - lambda
            c = -math.expm1(-(1.0 + eta) * h)                          # 1 - e^{-(1 + eta) h}
            # (Q9)  x~' = (sigma'/sigma) e^{-eta h} x~ + c D_i [+ c/(2r) (D_i - D_{i-1})] + sigma' sqrt(1 - e^{-2 eta h}) z
            x = (s[i + 1] / s[i]) * math.exp(-eta * h) * x + c * x0
            if x0_old is not None:
                x = x + 0.5 * c * (h / h_old) * (x0 - x0_old)
            if eta > 0:
                x = x + s[i + 1] * math.sqrt(-math.expm1(-2.0 * eta * h)) * draw(k)
                k += 1
            h_old = h
        x0_old = x0
    return x


def langevin_bound(sigma_min):
    """(Q11) The largest stable langevin_eps: unadjusted Langevin at step alpha on a level whose curvature is at most
    1 / sigma^2 diverges unless alpha < 4 sigma^2; alpha_i = eps sigma_i^2 / sigma_L^2 makes that eps < 4 sigma_L^2."""
    return 4.0 * sigma_min ** 2


def langevin_default_eps(sigma_min):
    """(Q13) The default langevin_eps on a grid whose smallest nonzero level is sigma_min: Song & Ermon's step in
    units of sigma_L^2, eps = 0.2 sigma_L^2 (their 2e-5 at sigma_L = 0.01), so that the sampler commutes with a
    rescaling of the data and its ladder, and each step contracts a noise-dominated level alike on any data."""
    return LANGEVIN_RATIO * sigma_min ** 2


def langevin(D, x, sigmas, noise, callback=None, progress=None, langevin_steps=LANGEVIN_STEPS,
             langevin_eps=None, final_denoise=True):
    """(Q10-Q12) Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) over the grid's nonzero levels.

    T = langevin_steps steps per level, step alpha_i = eps sigma_i^2 / sigma_L^2, x~ <- x~ + alpha/2 score +
    sqrt(alpha) z; then, with final_denoise, x~ <- D(x~, sigma_L) (Q12, Tweedie). A step that diverges on the first
    level (eps >= 4 sigma_L^2, Q11) is refused. langevin_eps None: the grid's default, 0.2 sigma_L^2 (Q13).
    NFE = T L (+ 1), noise draws T L, L the nonzero levels.
    """
    T = check_int(langevin_steps, "langevin_steps", lo=0)
    levels = [v for v in check_sigmas(sigmas) if v > 0]
    eps = langevin_default_eps(levels[-1]) if langevin_eps is None else \
        check_number(langevin_eps, "langevin_eps", lo=0.0, lo_open=True)
    if eps >= langevin_bound(levels[-1]):
        raise InputError(f"langevin_eps {eps:g} diverges on the first level: its step eps sigma_1^2 / sigma_L^2 is not "
                         f"below 4 sigma_1^2 (Q11); the largest stable langevin_eps is 4 sigma_L^2 = "
                         f"{langevin_bound(levels[-1]):g} (sigma_L = {levels[-1]:g}), use a smaller one")
    draw, k = _draws(noise, x), 0
    for i in check_progress(progress)(range(len(levels))):
        alpha = eps * levels[i] ** 2 / levels[-1] ** 2                 # (Q10)
        for _ in range(T):
            x0 = D(x, levels[i])
            if callback is not None:
                callback(i, levels[i], x, x0)
            # (Q10)  x~ <- x~ + (alpha / 2) score + sqrt(alpha) z
            x = x + 0.5 * alpha * (x0 - x) / levels[i] ** 2 + math.sqrt(alpha) * draw(k)
            k += 1
    return D(x, levels[-1]) if final_denoise else x                   # (Q12)  E[x0 | x~] at sigma_L


SDE_SAMPLERS = {"euler-maruyama": euler_maruyama, "ancestral": ancestral, "pc": pc, "edm-sde": edm_sde,
                "dpm++2m-sde": dpmpp_2m_sde, "langevin": langevin}


# Noise draws of each sampler for n steps (grid of n + 1 levels), with its settings: what lab's generator must give.
# Bookkeeping, not math: the samplers' table counts them once for both sides (common.sampler_table Sampler.noise_draws).
NOISE_DRAWS = {name: (lambda n, st, ends_at_zero=True, _r=table.row(name): _r.noise_draws(n, ends_at_zero, **st))
               for name in SDE_SAMPLERS}


def sample(D, x_T, sigmas, sampler, noise, record=False, progress=None, **settings):
    """Run an SDE sampler from x_T (VP, at sigmas[0]) down the grid -> Sampled(x, trajectory), as solvers.sample.

    x~ = x_T sqrt(1 + sigma_0^2) (K6); x is the VP sample at sigmas[-1] (x_0 when the grid ends at 0).
    trajectory (record=True): (sigma, x_t, x0_hat) at each callback, x_t in VP variables.
    """
    check_choice(sampler, tuple(SDE_SAMPLERS), "sampler")
    s = check_sigmas(sigmas)
    x = _data(None, x_T, "x_T")
    trajectory, cb = _recorder(record)
    try:
        # (K6)  x~ = x / sqrt(abar) = x sqrt(1 + sigma^2)
        out = SDE_SAMPLERS[sampler](D, x * math.sqrt(1.0 + s[0] ** 2), s, noise, callback=cb, progress=progress,
                                    **settings)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise InputError(f"sampler {sampler!r} takes no setting named in {sorted(settings)}: {err}") from None
    return Sampled(out / math.sqrt(1.0 + s[-1] ** 2), trajectory)
