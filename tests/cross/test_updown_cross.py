"""ADM's residual resampling (resblock_updown, B15) in NumPy (hand-written backward) and torch (autograd) with the
same parameters: outputs, the input's gradient and every parameter's gradient agree in float64 within TOL["net64"]
(float32 within TOL["net32"]), alone and with the other ADM options; the two pools agree to float64 rounding."""
import numpy as np
import pytest
from gradcheck import rel_max_error
from tolerances import TOL

torch = pytest.importorskip("torch")

from reference import unet as R  # noqa: E402
from reference import updown as RU  # noqa: E402
from torch_port import unet as T  # noqa: E402
from torch_port import updown as TU  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(in_channels=2, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4,
             resblock_updown=True)
OPTIONS = {"additive": dict(), "adm_three_levels": dict(norm="scale-shift", num_heads=2, channel_mults=(1, 2, 2),
                                                        attention=(False, True, False), num_res_blocks=2,
                                                        num_classes=3)}


def test_B15_the_two_pools_agree(rng):
    x = rng.standard_normal((2, 3, 4, 6))  # NCHW for torch; the reference's NHWC is its transpose
    ref = RU.avg_pool2x_forward(x.transpose(0, 2, 3, 1))[0].transpose(0, 3, 1, 2)
    assert rel_max_error(ref, TU.avg_pool2x(torch.from_numpy(x)).numpy()) <= TOL["exact64"]


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("dtype,tol", [(np.float64, TOL["net64"]), (np.float32, TOL["net32"])], ids=["f64", "f32"])
def test_B15_outputs_and_every_gradient_agree_with_torch(name, dtype, tol, rng):
    kw = dict(SMALL, **OPTIONS[name])
    ref = R.UNet(**kw, dtype=dtype)
    ref.load_params({k: rng.uniform(-0.3, 0.3, v.shape) + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
                     for k, v in ref.params.items()})
    port = T.UNet(**kw, dtype=dtype)
    assert list(port.state_dict()) == list(ref.params)  # the same plan: the same names in the same order
    port.load_state_dict({k: torch.from_numpy(v) for k, v in ref.params.items()})
    x, t = rng.standard_normal((3, 2, 8, 8)).astype(dtype), rng.integers(0, 1000, size=3)
    y = np.array([2, 0, 3]) if "num_classes" in kw else None
    out, cache = ref.forward(x, t, y)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, grads = ref.backward(dout, cache)
    xt = torch.from_numpy(x).requires_grad_()
    out_t = port(xt, torch.from_numpy(t), None if y is None else torch.from_numpy(y))
    out_t.backward(torch.from_numpy(dout))
    assert rel_max_error(out, out_t.detach().numpy()) <= tol and rel_max_error(dx, xt.grad.numpy()) <= tol
    bad = {k: e for k, p in port.named_parameters() if (e := rel_max_error(grads[k], p.grad.numpy())) > tol}
    assert not bad, f"gradients that differ: {bad}"
