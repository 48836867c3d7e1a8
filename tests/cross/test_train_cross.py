"""One whole training step, NumPy reference (hand-written backward) vs the torch port (autograd).

reference.train.train_step and torch_port.train.train_step get the same parameters, the same x0,
t and eps, and run forward (F3, L4), backward, global-norm clipping (O3), AdamW (O1) and the EMA (O2)
three times in a row (so the Adam moments and bias corrections are exercised past step 1).
Loss, gradient norm (before clipping), the updated parameters, the Adam moments and the EMA must agree
per tensor relative to the tensor's scale: float64 within TOL["net64"] (two independent whole-network
routes, different op order), float32 within TOL["net32"] (TF32 off; rounding through a network).

One exception, and why: the key bias of an attention block (the middle third of ``attn.*.qkv.bias``)
has an identically zero gradient (it adds q.b_k to a whole row of scores, and softmax ignores a
constant per row, B5). Its computed gradient is pure rounding, and Adam divides it by its own size,
so in float32 (rounding ~1e-9 against eps = 1e-8) each side moves those entries by an arbitrary
fraction of lr. There the test asserts only Adam's bound: |change| <= lr per step, on both sides.
"""
import re

import numpy as np
import pytest
from tolerances import TOL

torch = pytest.importorskip("torch")

from reference import optim as RO  # noqa: E402
from reference import train as RT  # noqa: E402
from reference import unet as RU  # noqa: E402
from reference.schedules import Schedule, make_betas  # noqa: E402
from torch_port import optim as PO  # noqa: E402
from torch_port import train as PT  # noqa: E402
from torch_port import unet as PU  # noqa: E402
from torch_port.schedules import Schedule as TSchedule  # noqa: E402
from torch_port.schedules import make_betas as t_make_betas  # noqa: E402

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

MODELS = {
    "unet_small": (RU.UNet, PU.UNet, dict(in_channels=2, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                          attention=(False, True), groups=4), (4, 2, 8, 8)),
    "mlp": (RU.MLP, PU.MLP, dict(hidden=32, num_layers=2, time_dim=16), (16, 2)),
}
HYPER = dict(lr=3e-3, weight_decay=0.01)
T = 1000


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _twins(name, dtype, rng, **extra):
    """Reference and port models holding the same random parameters (the zero final layer too)."""
    ref_cls, port_cls, kw, shape = MODELS[name]
    kw = {**kw, **extra}
    ref = ref_cls(**kw, dtype=dtype)
    ref.load_params({k: rng.uniform(-0.3, 0.3, v.shape) + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
                     for k, v in ref.params.items()})
    port = port_cls(**kw, dtype=dtype)
    port.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ref.params.items()})
    return ref, port, shape


def _assert_close(a, b, tol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(a))), 1e-30)
    np.testing.assert_allclose(b, a, rtol=tol, atol=tol * scale, err_msg=what)


def _key_bias(k, n):
    """The key-bias slice of an attention qkv bias of length n = 3C, else None."""
    return slice(n // 3, 2 * n // 3) if re.search(r"attn\.(\d+\.)?qkv\.bias$", k) else None


def _assert_params_close(ref0, r, p, tol, what, bound):
    """Per-tensor closeness; for float32 key biases (zero true gradient) Adam's bound on the change."""
    for k in r:
        ks = _key_bias(k, r[k].shape[0]) if bound is not None else None
        if ks is None:
            _assert_close(r[k], p[k], tol, f"{what} {k}")
            continue
        keep = np.ones(r[k].shape[0], bool)
        keep[ks] = False
        _assert_close(r[k][keep], p[k][keep], tol, f"{what} {k} (query and value biases)")
        for side in (r[k], p[k]):
            assert np.all(np.abs(side[ks] - ref0[k][ks]) <= bound), f"{what} {k}: key bias moved more than Adam allows"


def _run_steps(name, dtype, tol, rng, prediction="eps", weighting="none", grad_clip=1.0, n_steps=3, bound=None):
    """bound: None (L_simple), or (loss, weighted) for learned variances with "hybrid" / "vlb" (V4, I2)."""
    learned = bound is not None
    ref, port, shape = _twins(name, dtype, rng, **({} if not learned else
                                                   {"out_dim" if name == "mlp" else "out_channels": 4}))
    levels = None if name == "mlp" else 17
    kw = {} if not learned else dict(loss=bound[0], variance="learned", levels=levels)
    start = {k: v.copy() for k, v in ref.params.items()}
    np_sched = Schedule(make_betas("cosine", T))
    t_sched = TSchedule(t_make_betas("cosine", T))
    r_opt, r_ema = RO.AdamW(ref.params, **HYPER), RO.EMA(ref.params, decay=0.9)
    p_opt, p_ema = PO.AdamW(port, **HYPER), PO.EMA(port, decay=0.9)
    for step in range(n_steps):
        x0 = rng.uniform(-1, 1, shape).astype(dtype)
        if learned and levels:
            x0 = (np.round((x0 + 1) * 8) / 8 - 1).astype(dtype)        # onto the 17-level grid
        t = rng.integers(0, T, shape[0])
        if learned:
            t[0] = 0                                                     # the decoder term, every step
        eps = rng.standard_normal(shape).astype(dtype)
        lr = RO.lr_at(step, HYPER["lr"], warmup_steps=2)
        w = rng.uniform(0.2, 3.0, shape[0]) if learned and bound[1] else None
        r_loss, r_norm = RT.train_step(ref, r_opt, r_ema, np_sched, x0, t, eps, prediction, lr, grad_clip, weighting,
                                       weights=w, **kw)
        p_loss, p_norm = PT.train_step(port, p_opt, p_ema, t_sched, torch.from_numpy(x0), torch.from_numpy(t),
                                       torch.from_numpy(eps), prediction, lr, grad_clip, weighting,
                                       weights=None if w is None else torch.from_numpy(w), **kw)
        _assert_close(r_loss, p_loss.item(), tol, f"loss at step {step}")
        _assert_close(r_norm, p_norm.item(), tol, f"gradient norm at step {step}")
    p_params = {k: v.detach().numpy() for k, v in port.state_dict().items()}
    p_state = {k: v.numpy() for k, v in p_opt.flat_state_dict().items()}
    r_state = r_opt.state_dict()
    assert int(p_state["step"]) == int(r_state["step"]) == n_steps
    # Adam moves a parameter by at most ~lr per step (|m_hat| <= sqrt(v_hat)), plus the decay lr*wd*|theta|
    bound = None if dtype == np.float64 else n_steps * HYPER["lr"] * 1.01
    _assert_params_close(start, ref.params, p_params, tol, "parameter after AdamW (O1)", bound)
    _assert_params_close(start, r_ema.params, {k: v.numpy() for k, v in p_ema.params.items()}, tol, "EMA (O2)", bound)
    for k in ref.params:
        _assert_close(r_state[f"m/{k}"], p_state[f"m/{k}"], tol, f"Adam first moment of {k}")
        _assert_close(r_state[f"v/{k}"], p_state[f"v/{k}"], tol, f"Adam second moment of {k}")
    return r_norm


@pytest.mark.parametrize("name", sorted(MODELS))
def test_O1_O2_O3_L4_train_step_reference_vs_port_float64(name, rng):
    _run_steps(name, np.float64, TOL["net64"], rng)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_O1_O2_O3_L4_train_step_reference_vs_port_float32(name, rng):
    _run_steps(name, np.float32, TOL["net32"], rng)


def test_L5_R6_O3_train_step_v_prediction_min_snr_with_active_clipping_float64(rng):
    """v-prediction with min-SNR weights (L5, R6), and a clip far below the gradient norm (O3 active)."""
    norm = _run_steps("unet_small", np.float64, TOL["net64"], rng, prediction="v", weighting="min_snr",
                      grad_clip=1e-3)
    assert norm > 1e-3  # the clip did act: the norm before clipping exceeds it


@pytest.mark.parametrize("bound", [("hybrid", False), ("vlb", True)], ids=["hybrid", "vlb_weighted"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_V4_I2_O1_learned_variance_train_step_reference_vs_port_float64(name, bound, rng):
    """2C outputs, L_hybrid (the reference's hand-written stop-gradient against the port's detach) and the
    importance-weighted L_vlb, decoder on 17 levels (UNet) or a density (MLP): three whole steps agree."""
    _run_steps(name, np.float64, TOL["net64"], rng, prediction="v" if bound[0] == "vlb" else "eps", bound=bound)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_V4_O1_learned_variance_train_step_reference_vs_port_float32(name, rng):
    _run_steps(name, np.float32, TOL["net32"], rng, bound=("hybrid", False))
