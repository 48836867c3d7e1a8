"""NumPy reference vs torch port, float64: every function of processes.py (D1-D3) and objectives.py (D5-D16).

Noise and uniforms are drawn once in NumPy and fed to both sides. Tolerance TOL["cross64"] (same math, different
op order and libm); the bisection (solve_t) runs the same 200 halvings on both sides, so it agrees to cross64 too.
"""
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from common.choices import PROCESSES
from crosscheck import close, schedule_pair
from reference import objectives as RO
from reference import processes as RP
from reference.errors import InputError
from reference.schedules import make_betas
from torch_port import objectives as TO
from torch_port import processes as TP

pytestmark = pytest.mark.usefixtures("one_torch_thread")
tt = torch.from_numpy
CFGS = {"edm": NS(objective="edm", sigma_data=0.7, p_mean=-1.0, p_std=1.4),
        "flow": NS(objective="flow"),
        "flow-logit-shift": NS(objective="flow", t_sampling="logit-normal", logit_mean=0.3, logit_std=0.8, shift=3.0)}
WEIGHTINGS = [("ddpm", {}), ("ddpm", {"process": "vp-linear"}), ("ddpm", {"prediction": "v"}),
              ("ddpm", {"prediction": "x0"}), ("ddpm", {"loss_weighting": "snr"}),
              ("ddpm", {"loss_weighting": "min_snr", "gamma": 5.0}), ("edm", {}), ("flow", {}),
              ("flow", {"t_sampling": "logit-normal"}), ("flow", {"shift": 3.0})]


@pytest.mark.parametrize("name", PROCESSES)
def test_D1_D2_D3_every_process_function_matches(name):
    rp, tp = RP.make_process(name), TP.make_process(name)
    t = np.linspace(0.02, 0.98, 9) * rp.t_max
    for f in ("alpha", "sigma", "log_snr", "dalpha_dt", "dsigma_dt", "dlambda_dt", "drift", "g2", "sigma_tilde"):
        close(getattr(tp, f)(tt(t)), getattr(rp, f)(t))
    s = rp.sigma_tilde(t)
    close(tp.t_of_sigma_tilde(tt(s)), rp.t_of_sigma_tilde(s))
    close(tp.solve_t(tt(s)), rp.solve_t(s))
    x = np.random.default_rng(1).standard_normal((9, 3))
    for got, want in zip(TP.to_tilde(tp, tt(x), tt(t)), RP.to_tilde(rp, x, t)):
        close(got, want)
    for got, want in zip(TP.from_tilde(tp, tt(x), tt(s)), RP.from_tilde(rp, x, s)):
        close(got, want)


def test_D3_the_chain_view_matches():
    rs, ts = schedule_pair(make_betas("cosine", 50))
    rc, tc = RP.chain_process(rs), TP.chain_process(ts)
    t = np.arange(51) / 50.0
    for f in ("alpha", "sigma", "sigma_tilde", "step"):
        close(getattr(tc, f)(tt(t)), getattr(rc, f)(t))
    s = rc.sigma_tilde(t[1:])
    close(tc.t_of_sigma_tilde(tt(s)), rc.t_of_sigma_tilde(s))
    for side in (tc, rc):
        with pytest.raises(InputError, match="not a level"):
            side.t_of_sigma_tilde(np.array([0.123456]))


def test_D6_edm_precond_and_network_time_match():
    sigma = np.exp(np.random.default_rng(2).normal(-1.2, 1.2, 16))
    for got, want in zip(TO.edm_precond(tt(sigma), 0.5), RO.edm_precond(sigma, 0.5)):
        close(got, want)
    for cfg in CFGS.values():
        lv = sigma if cfg.objective == "edm" else sigma / (1 + sigma)
        close(TO.network_time(cfg, tt(lv)), RO.network_time(cfg, lv))


@pytest.mark.parametrize("key", sorted(CFGS))
def test_D5_D16_level_target_loss_denoiser_and_grids_match(key):
    cfg, rng = CFGS[key], np.random.default_rng(3)
    u = rng.uniform(size=12)
    x0, eps = rng.standard_normal((12, 1, 3, 3)), rng.standard_normal((12, 1, 3, 3))
    lv = RO.level(cfg, u)
    close(TO.level(cfg, tt(u)), lv)
    got, want = TO.training_target(cfg, tt(x0), tt(eps), tt(lv)), RO.training_target(cfg, x0, eps, lv)
    for g, w in zip(got, want):
        close(g, w)
    out = rng.standard_normal(x0.shape)
    lr, gr = RO.loss_and_grad(out, want[2], want[3])
    lt, gt = TO.loss_and_grad(tt(out), got[2], got[3])
    close(lt, lr)
    close(gt, gr)
    close(TO.loss(tt(out), got[2], got[3]), lr)
    w = rng.standard_normal((1, 3, 3))

    def r_net(x, t):
        return np.tanh(x * w) + 1e-3 * t[:, None, None, None]

    def t_net(x, t):
        return torch.tanh(x * tt(w)) + 1e-3 * t[:, None, None, None]

    for sigma in (0.01, 0.7, 30.0):
        for clip in (False, True):
            close(TO.denoiser(cfg, t_net, clip)(tt(x0 * 3), sigma), RO.denoiser(cfg, r_net, clip)(x0 * 3, sigma))
    assert TO.sigma_range(cfg) == RO.sigma_range(cfg)
    for grid in ("karras", "linspace"):
        close(TO.sigma_grid(cfg, 9, grid), RO.sigma_grid(cfg, 9, grid))


@pytest.mark.parametrize("objective, kw", WEIGHTINGS)
def test_D16_every_weighting_matches(objective, kw):
    lam = np.linspace(-12.0, 12.0, 49)
    close(TO.weighting(objective, tt(lam), **kw), RO.weighting(objective, lam, **kw))


def test_both_sides_refuse_alike():
    for mod in (RO, TO):
        with pytest.raises(InputError, match="--shift"):
            mod.level(NS(objective="flow", shift=-1.0), np.array([0.5]))
        with pytest.raises(InputError, match="--sigma-data"):
            mod.level(NS(objective="edm", sigma_data=0.0), np.array([0.5]))
        with pytest.raises(InputError, match="u must be"):
            mod.level(NS(objective="edm"), np.array([1.0]))
        with pytest.raises(InputError, match="'karras', 'linspace'"):
            mod.sigma_grid(NS(objective="flow"), 4, "trailing")
    for mod in (RP, TP):
        with pytest.raises(InputError, match="'vp-linear'"):
            mod.make_process("vpl")
