"""NCSN (derivations/ncsn.md J1-J7), NumPy reference vs torch port in float64: the level, input, time input, target
and weight, the loss and its gradient, the denoiser, the grids, the weighting, and three whole training steps of each
network through objective_step (tests/cross/test_train_objectives_cross.py's runner, with NCSN's settings)."""
from types import SimpleNamespace as NS

import numpy as np
import pytest
from tolerances import TOL

torch = pytest.importorskip("torch")

from common.errors import InputError  # noqa: E402
from cross import test_train_objectives_cross as TOC  # noqa: E402
from reference import objectives as RO  # noqa: E402
from torch_port import objectives as TO  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFGS = {"small": NS(objective="ncsn", sigma_min=0.02, sigma_max=4.0, num_levels=6),
        "digits_like": NS(objective="ncsn", sigma_min=0.01, sigma_max=9.7, num_levels=24)}


def tt(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def close(got, want):
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    np.testing.assert_allclose(got, want, rtol=TOL["cross64"], atol=TOL["cross64"])


@pytest.mark.parametrize("key", sorted(CFGS))
def test_J1_J4_J5_J6_level_target_loss_denoiser_and_grids_match(key):
    cfg, rng = CFGS[key], np.random.default_rng(11)
    u = rng.uniform(size=40)
    x0, eps = rng.standard_normal((40, 1, 2, 2)), rng.standard_normal((40, 1, 2, 2))
    lv = RO.level(cfg, u)
    close(TO.level(cfg, tt(u)), lv)
    close(TO.network_time(cfg, tt(lv)), RO.network_time(cfg, lv))
    got, want = TO.training_target(cfg, tt(x0), tt(eps), tt(lv)), RO.training_target(cfg, x0, eps, lv)
    for g, w in zip(got, want):
        close(g, w)
    out = rng.standard_normal(x0.shape)
    lr, gr = RO.loss_and_grad(out, want[2], want[3])
    lt, gt = TO.loss_and_grad(tt(out), got[2], got[3])
    close(lt, lr)
    close(gt, gr)
    w = rng.standard_normal((1, 2, 2))

    def r_net(x, t):
        return np.tanh(x * w) + 1e-3 * t[:, None, None, None]

    def t_net(x, t):
        return torch.tanh(x * tt(w)) + 1e-3 * t[:, None, None, None]

    for sigma in (cfg.sigma_min, 0.7, cfg.sigma_max, 30.0):
        close(TO.denoiser(cfg, t_net)(tt(x0 * 3), sigma), RO.denoiser(cfg, r_net)(x0 * 3, sigma))
    assert TO.sigma_range(cfg) == RO.sigma_range(cfg)
    for grid in ("karras", "linspace"):
        for n in (1, 5, cfg.num_levels):
            close(TO.sigma_grid(cfg, n, grid), RO.sigma_grid(cfg, n, grid))
    lam = np.linspace(-10, 12, 301)
    kw = dict(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, num_levels=cfg.num_levels)
    close(TO.weighting("ncsn", tt(lam), **kw), RO.weighting("ncsn", lam, **kw))


@pytest.mark.parametrize("name", sorted(TOC.MODELS))
def test_J1_J4_J5_ncsn_objective_step_reference_vs_port_float64(name, rng, monkeypatch):
    monkeypatch.setitem(TOC.SETTINGS, "ncsn", dict(objective="ncsn", sigma_min=0.02, sigma_max=4.0, num_levels=7))
    TOC._run_steps(name, "ncsn", np.float64, TOL["net64"], rng)


def test_both_sides_refuse_an_unset_sigma_max_by_its_flag():
    cfg = NS(objective="ncsn", sigma_min=0.01, sigma_max=None, num_levels=5)
    for side, u in ((RO, np.array([0.5])), (TO, tt([0.5]))):
        with pytest.raises(InputError, match="--sigma-max"):
            side.level(cfg, u)


def test_J1_the_reference_loss_gradient_by_central_differences():
    """The hand-written dloss/dout of NCSN's batch (its target -eps and weight 1) along a random direction."""
    cfg, rng = CFGS["small"], np.random.default_rng(12)
    x0, eps = rng.standard_normal((8, 2)), rng.standard_normal((8, 2))
    _, _, target, weight = RO.training_target(cfg, x0, eps, RO.level(cfg, rng.uniform(size=8)))
    out, v, h = rng.standard_normal((8, 2)), rng.standard_normal((8, 2)), 1e-5
    _, grad = RO.loss_and_grad(out, target, weight)
    fd = (RO.loss(out + h * v, target, weight) - RO.loss(out - h * v, target, weight)) / (2 * h)
    assert abs(fd - float(np.sum(grad * v))) <= TOL["fd64"] * max(1.0, abs(fd))
