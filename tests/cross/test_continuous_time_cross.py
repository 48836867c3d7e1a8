"""The float time input (continuous_time=True) on both sides: the same parameters give the same outputs, input
gradients and every parameter gradient (float64 within TOL["net64"], float32 within TOL["net32"], TF32 off), and
both sides refuse the same bad time inputs with the same words. The model: tests/cross/test_network_cross.py.
"""
import numpy as np
import pytest
from gradcheck import rel_max_error
from tolerances import TOL

torch = pytest.importorskip("torch")

from reference import unet as R  # noqa: E402
from reference.errors import InputError  # noqa: E402
from torch_port import unet as T  # noqa: E402

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_UNET = dict(in_channels=2, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4)
CONFIGS = {
    "unet_small": (R.UNet, T.UNet, SMALL_UNET, (3, 2, 8, 8)),
    "unet_conditional": (R.UNet, T.UNet, dict(SMALL_UNET, num_classes=3), (3, 2, 8, 8)),
    "mlp": (R.MLP, T.MLP, dict(hidden=32, num_layers=3, time_dim=16), (7, 2)),
}


def _twins(name, dtype, rng):
    ref_cls, port_cls, kw, shape = CONFIGS[name]
    ref = ref_cls(**kw, continuous_time=True, dtype=dtype)
    ref.load_params({k: rng.uniform(-0.3, 0.3, v.shape) + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
                     for k, v in ref.params.items()})
    port = port_cls(**kw, continuous_time=True, dtype=dtype)
    port.load_state_dict({k: torch.from_numpy(v) for k, v in ref.params.items()})
    return ref, port, shape


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype,tol", [(np.float64, TOL["net64"]), (np.float32, TOL["net32"])], ids=["f64", "f32"])
def test_B1_to_B9_float_time_outputs_and_every_gradient_agree_with_torch(name, dtype, tol, rng):
    ref, port, shape = _twins(name, dtype, rng)
    x = rng.standard_normal(shape).astype(dtype)
    t = rng.uniform(-1550.0, 1100.0, shape[0])                          # EDM's 250 ln sigma, flow's 1000 t
    y = rng.integers(0, 4, shape[0]) if "conditional" in name else None  # 3: the null class
    out, cache = ref.forward(x, t, y)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, grads = ref.backward(dout, cache)
    xt = torch.from_numpy(x).requires_grad_()
    out_t = port(xt, torch.from_numpy(t), None if y is None else torch.from_numpy(y))
    out_t.backward(torch.from_numpy(dout))
    assert out_t.dtype == torch.from_numpy(x).dtype
    assert rel_max_error(out, out_t.detach().numpy()) <= tol
    assert rel_max_error(dx, xt.grad.numpy()) <= tol
    errors = {k: rel_max_error(grads[k], p.grad.numpy()) for k, p in port.named_parameters()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, f"worst parameter gradient {worst}: {errors[worst]:.2e}"


def test_float_time_names_no_parameter_and_takes_numbers_arrays_and_tensors(rng):
    ref, port, shape = _twins("mlp", np.float64, rng)
    assert set(port.state_dict()) == set(ref.params) == set(R.MLP(hidden=32, num_layers=3, time_dim=16).params)
    x = rng.standard_normal(shape)
    want = ref.forward(x, np.full(shape[0], 12.5))[0]
    for t in (12.5, np.full(shape[0], 12.5), torch.full((shape[0],), 12.5, dtype=torch.float32)):
        assert rel_max_error(want, port(torch.from_numpy(x), t).detach().numpy()) <= TOL["net64"]


@pytest.mark.parametrize("bad", ["nan", "bool", "shape"])
def test_both_sides_refuse_the_same_bad_time_input_with_the_same_words(bad, rng):
    ref, port, shape = _twins("mlp", np.float64, rng)
    n = shape[0]
    t = {"nan": np.full(n, np.nan), "bool": np.ones(n, bool), "shape": np.zeros(n + 2)}[bad]
    x = rng.standard_normal(shape)
    msgs = []
    for call in (lambda: ref.forward(x, t), lambda: port(torch.from_numpy(x), torch.from_numpy(t))):
        with pytest.raises(InputError) as e:
            call()
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
