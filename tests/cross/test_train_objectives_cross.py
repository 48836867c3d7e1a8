"""One whole training step of each continuous objective (edm, flow), NumPy reference (hand-written backward)
against the torch port (autograd), in float64 and float32.

reference.train.objective_step and torch_port.train.objective_step get the same parameters, x0, uniforms u and
eps (a reflow pair's z stands where eps does: the same argument), and run the level (D7, D14, D15), the
objective's input, time input, target and weight (D5, D6, D8, D10), the network with its float time input, the
weighted MSE and its gradient, clipping (O3), AdamW (O1) and the EMA (O2), three times in a row. Loss, gradient
norm, parameters, Adam moments and EMA agree per tensor as in tests/cross/test_train_cross.py (its helpers and
the same tolerances and exception for the attention key bias). The Trainers draw u, then eps, then the labels'
drops from their own streams; the last test holds both Trainers to that order through objective_step.
"""
import numpy as np
import pytest
from cross.test_train_cross import HYPER, _assert_close, _assert_params_close
from tolerances import TOL

torch = pytest.importorskip("torch")

from lab.config import TrainConfig  # noqa: E402
from reference import optim as RO  # noqa: E402
from reference import train as RT  # noqa: E402
from reference import unet as RU  # noqa: E402
from torch_port import optim as PO  # noqa: E402
from torch_port import train as PT  # noqa: E402
from torch_port import unet as PU  # noqa: E402

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = {
    "unet_small": (RU.UNet, PU.UNet, dict(in_channels=2, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                          attention=(False, True), groups=4), (4, 2, 8, 8)),
    "mlp": (RU.MLP, PU.MLP, dict(hidden=32, num_layers=2, time_dim=16), (16, 2)),
}
SETTINGS = {
    "edm": dict(objective="edm", sigma_data=0.75, p_mean=-1.0, p_std=1.4),
    "flow": dict(objective="flow"),
    "flow_logit_normal_shift": dict(objective="flow", t_sampling="logit-normal", logit_mean=0.3, logit_std=0.8,
                                    shift=3.0),
}


def _twins(name, dtype, rng, **extra):
    ref_cls, port_cls, kw, shape = MODELS[name]
    kw = {**kw, **extra, "continuous_time": True}
    ref = ref_cls(**kw, dtype=dtype)
    ref.load_params({k: rng.uniform(-0.3, 0.3, v.shape) + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
                     for k, v in ref.params.items()})
    port = port_cls(**kw, dtype=dtype)
    port.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ref.params.items()})
    return ref, port, shape


def _run_steps(name, setting, dtype, tol, rng, grad_clip=1.0, classes=None, n_steps=3):
    cfg = TrainConfig(data="moons", **SETTINGS[setting]).validate()
    ref, port, shape = _twins(name, dtype, rng, **({} if classes is None else {"num_classes": classes}))
    start = {k: v.copy() for k, v in ref.params.items()}
    r_opt, r_ema = RO.AdamW(ref.params, **HYPER), RO.EMA(ref.params, decay=0.9)
    p_opt, p_ema = PO.AdamW(port, **HYPER), PO.EMA(port, decay=0.9)
    for step in range(n_steps):
        x0 = rng.uniform(-1, 1, shape).astype(dtype)
        u = RT.uniforms(rng, shape[0])
        eps = rng.standard_normal(shape).astype(dtype)
        y = None if classes is None else rng.integers(0, classes + 1, shape[0])   # the null class among them
        lr = RO.lr_at(step, HYPER["lr"], warmup_steps=2)
        r_loss, r_norm = RT.objective_step(ref, r_opt, r_ema, cfg, x0, u, eps, lr, grad_clip, y=y)
        p_loss, p_norm = PT.objective_step(port, p_opt, p_ema, cfg, torch.from_numpy(x0), torch.from_numpy(u),
                                           torch.from_numpy(eps), lr, grad_clip,
                                           y=None if y is None else torch.from_numpy(y))
        _assert_close(r_loss, p_loss.item(), tol, f"loss at step {step}")
        _assert_close(r_norm, p_norm.item(), tol, f"gradient norm at step {step}")
    p_params = {k: v.detach().numpy() for k, v in port.state_dict().items()}
    p_state = {k: v.numpy() for k, v in p_opt.flat_state_dict().items()}
    r_state = r_opt.state_dict()
    assert int(p_state["step"]) == int(r_state["step"]) == n_steps
    bound = None if dtype == np.float64 else n_steps * HYPER["lr"] * 1.01
    _assert_params_close(start, ref.params, p_params, tol, "parameter after AdamW (O1)", bound)
    _assert_params_close(start, r_ema.params, {k: v.numpy() for k, v in p_ema.params.items()}, tol, "EMA (O2)", bound)
    for k in ref.params:
        _assert_close(r_state[f"m/{k}"], p_state[f"m/{k}"], tol, f"Adam first moment of {k}")
        _assert_close(r_state[f"v/{k}"], p_state[f"v/{k}"], tol, f"Adam second moment of {k}")
    return r_norm


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_D5_D8_D10_D14_D15_objective_step_reference_vs_port_float64(name, setting, rng):
    _run_steps(name, setting, np.float64, TOL["net64"], rng)


@pytest.mark.parametrize("setting", ["edm", "flow"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_objective_step_reference_vs_port_float32(name, setting, rng):
    _run_steps(name, setting, np.float32, TOL["net32"], rng)


@pytest.mark.parametrize("setting", ["edm", "flow"])
def test_W1_O3_class_conditional_objective_step_with_active_clipping_float64(setting, rng):
    """A conditional network (labels and the null class) and a clip far below the gradient norm (O3 active)."""
    norm = _run_steps("unet_small", setting, np.float64, TOL["net64"], rng, grad_clip=1e-3, classes=3)
    assert norm > 1e-3


@pytest.mark.parametrize("setting", ["edm", "flow"])
def test_both_trainers_draw_u_then_eps_then_the_drops_and_hand_them_to_objective_step(setting, rng, monkeypatch):
    """Each Trainer's step: u (N,) strictly inside (0, 1) and of the form (k + 1/2) / 2^52, eps of x0's shape, the
    labels' drops, then objective_step with them; a reflow batch's z is passed in place of eps."""
    cfg = TrainConfig(data="moons", **SETTINGS[setting], class_cond=True, p_uncond=0.5,
                      model=dict(hidden=8, num_layers=1, num_classes=2)).validate()
    x0, z, y = rng.standard_normal((32, 2)), rng.standard_normal((32, 2)), rng.integers(0, 2, 32)
    for mod, kw in ((RT, {}), (PT, {"device": "cpu"})):
        seen = []
        monkeypatch.setattr(mod, "objective_step", lambda *a, **k: seen.append((a, k)) or (0.0, 0.0))
        trainer = mod.Trainer(cfg, (2,), **kw)
        trainer.step(x0, 0, y=y)
        trainer.step(x0, 1, y=y, z=z)
        (a0, k0), (a1, _) = seen
        u = np.asarray(a0[5], np.float64)
        if mod is RT:   # the run's noise stream: u first, then eps
            stream = np.random.default_rng([cfg.seed, 1])
            assert np.array_equal(u, RT.uniforms(stream, 32))
            assert np.array_equal(a0[6], stream.standard_normal((32, 2)).astype(np.float32))
        else:           # the generator of (seed, rank, step): u first, then eps
            gen = torch.Generator().manual_seed(PT.noise_seed(cfg.seed, 0, 0))
            assert np.array_equal(u, PT.uniforms(gen, 32, "cpu").numpy())
            assert torch.equal(a0[6], torch.randn((32, 2), generator=gen, dtype=torch.float32))
        assert u.shape == (32,) and np.all((u > 0) & (u < 1))
        assert np.array_equal(u * 2.0 ** 52 - 0.5, np.round(u * 2.0 ** 52 - 0.5))
        assert np.asarray(a0[6]).shape == (32, 2) and not np.allclose(np.asarray(a0[6]), z)
        assert np.allclose(np.asarray(a1[6]), z)                       # D11: the pair's noise end
        dropped = np.asarray(k0["y"]) == 2                               # the null class K = 2
        assert 0 < dropped.sum() < 32 and np.array_equal(np.asarray(k0["y"])[~dropped], y[~dropped])
