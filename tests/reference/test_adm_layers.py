"""ADM's layers (Dhariwal & Nichol 2021) in the NumPy reference: scale-shift norm (B13) and multi-head attention
(B14), each against central finite differences in float64 and an independent route for its forward; the UNet with
each option against directional finite differences; the defaults leave DDPM's network as it was."""
import numpy as np
import pytest
from gradcheck import H_DIR, directional_derivative, numeric_grad, rel_error, same, snapshot
from tolerances import TOL

from reference import layers as L
from reference import unet as U
from reference.errors import InputError

SMALL = dict(in_channels=2, base_channels=8, channel_mults=(1, 2), attention=(True, True), groups=4)


def test_B13_scale_shift_gradients_match_finite_differences(rng):
    """Every input's gradient (h, scale, shift) against central differences of <R, out>; backward writes nothing."""
    h, scale, shift = rng.standard_normal((3, 4, 5, 6)), rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    R = rng.standard_normal((3, 4, 5, 6))
    out, cache = L.scale_shift_forward(h, scale, shift)
    before = snapshot((R, cache))
    dh, dscale, dshift = L.scale_shift_backward(R, cache)
    assert same(before, (R, cache))
    f = lambda: float(np.sum(L.scale_shift_forward(h, scale, shift)[0] * R))  # noqa: E731
    for arr, g in [(h, dh), (scale, dscale), (shift, dshift)]:
        assert rel_error(numeric_grad(f, arr), g) <= TOL["fd64"]
    # the forward, one pixel at a time: GN's output scaled by 1 + s and shifted by b of its own sample and channel
    n, y, x, c = 2, 3, 1, 4
    assert abs(out[n, y, x, c] - (h[n, y, x, c] * (1 + scale[n, c]) + shift[n, c])) <= TOL["exact64"]


def _attend(qkv, heads):
    step = U.Step("attend", "", 3 * qkv.shape[-1] // 3, qkv.shape[-1] // 3, heads=heads)
    return U.STEPS["attend"][0](qkv, step, None)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_B14_multi_head_attention_is_each_head_s_single_head_attention_and_its_gradients_match(heads, rng):
    """The independent route: (B5) run once per head on that head's channel slice of q, k and v, written into
    the same channels; then the step's backward against central differences on the whole qkv input."""
    N, H, W, C = 2, 2, 3, 8
    qkv = rng.standard_normal((N, H, W, 3 * C))
    a, cache = _attend(qkv, heads)
    d, flat = C // heads, qkv.reshape(N, H * W, 3 * C)
    for j in range(heads):
        q, k, v = (flat[..., i * C + j * d:i * C + (j + 1) * d] for i in range(3))
        head, _ = L.attention_forward(q, k, v)  # scale 1/sqrt(d): attention_forward reads the width it is given
        assert rel_error(a.reshape(N, H * W, C)[..., j * d:(j + 1) * d], head) <= TOL["exact64"]
    R = rng.standard_normal(a.shape)
    before = snapshot((R, cache))
    dqkv = U.STEPS["attend"][1](R, cache, "", {}, None)
    assert same(before, (R, cache))
    f = lambda: float(np.sum(_attend(qkv, heads)[0] * R))  # noqa: E731
    assert rel_error(numeric_grad(f, qkv), dqkv) <= TOL["fd64"]


def _randomise(model, rng):
    model.load_params({k: rng.uniform(-0.5, 0.5, v.shape) + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
                       for k, v in model.params.items()})


@pytest.mark.parametrize("kw", [dict(norm="scale-shift"), dict(num_heads=2), dict(norm="scale-shift", num_heads=4),
                                dict(norm="scale-shift", num_classes=3)], ids=["scale_shift", "two_heads",
                                                                               "both", "scale_shift_conditional"])
def test_B13_B14_unet_gradients_match_directional_finite_differences(kw, rng):
    """The input's and every parameter tensor's gradient along a random direction (fourth-order stencil)."""
    model = U.UNet(**SMALL, **kw, dtype=np.float64, seed=3)
    _randomise(model, rng)
    x, t = rng.standard_normal((3, 2, 4, 4)), np.array([0, 400, 917])
    y = np.array([0, 3, 0]) if "num_classes" in kw else None  # 3: the null class
    out, cache = model.forward(x, t, y)
    R = rng.standard_normal(out.shape)
    dx, grads = model.backward(R, cache)
    f = lambda: float(np.sum(model.forward(x, t, y)[0] * R))  # noqa: E731
    worst = {}
    for name, arr, g in [("x", x, dx)] + [(k, model.params[k], grads[k]) for k in model.params]:
        dirn = rng.standard_normal(arr.shape)
        # h = H_DIR / 4: the scale 1 + s multiplies the curvature, and at H_DIR the stencil's h^4 truncation passed
        # TOL["fd64_dir"] (it fell 16-fold per halving of h: truncation, not a wrong gradient); rounding
        # ~eps |f| / h stays ~1e-11
        worst[name] = rel_error(directional_derivative(f, [arr], [dirn], h=H_DIR / 4), np.sum(g * dirn))
    name = max(worst, key=worst.get)
    assert worst[name] <= TOL["fd64_dir"], f"worst gradient: {name} ({worst[name]:.2e})"


def test_B13_with_a_zero_projection_scale_shift_is_the_additive_network_with_a_zero_projection(rng):
    """Independent route: with temb_proj zero both blocks reduce to GN(h), so the two networks, with every other
    parameter the same, compute the same function; the names are the same and only temb_proj has 2C rows."""
    add, ss = U.UNet(**SMALL, dtype=np.float64), U.UNet(**SMALL, norm="scale-shift", dtype=np.float64)
    assert list(add.params) != list(ss.params) and sorted(add.params) == sorted(ss.params)  # order: first use
    for k, v in add.params.items():
        assert ss.params[k].shape == ((2 * v.shape[0],) + v.shape[1:] if "temb_proj" in k else v.shape)
    p = {k: rng.uniform(-0.5, 0.5, v.shape) * ("temb_proj" not in k) for k, v in add.params.items()}
    add.load_params(p)
    ss.load_params({k: np.concatenate([v, v]) if "temb_proj" in k else v for k, v in p.items()})
    x, t = rng.standard_normal((2, 2, 4, 4)), np.array([3, 800])
    assert rel_error(add.forward(x, t)[0], ss.forward(x, t)[0]) <= TOL["exact64"]
    ss.params["down.0.res.0.temb_proj.bias"][:8] = 1.0  # scale 1 in the first block: the function changes
    assert rel_error(add.forward(x, t)[0], ss.forward(x, t)[0]) > 1e3 * TOL["exact64"]


def test_the_defaults_are_ddpm_s_network_and_record_nothing_new():
    """norm="additive", num_heads=1 build the plan, parameters and config of a UNet built without them."""
    a, b = U.UNet(**SMALL), U.UNet(**SMALL, norm="additive", num_heads=1)
    assert a.plan == b.plan and same(a.params, b.params) and a.config == b.config
    assert "norm" not in a.config and "num_heads" not in a.config
    c = U.UNet(**SMALL, norm="scale-shift", num_heads=2)
    assert (c.config["norm"], c.config["num_heads"]) == ("scale-shift", 2)
    assert [s.heads for s in c.plan if s.op == "attend"] == [2] * 7  # down 1 + 1, mid 1, up 2 + 2


@pytest.mark.parametrize("kw,words", [
    (dict(norm="adagn"), "norm"),
    (dict(num_heads=3), "num_heads=3 must divide the channels"),
    (dict(num_heads=0), "num_heads must be an integer >= 1"),
])
def test_bad_adm_arguments_raise_input_error_naming_them(kw, words):
    with pytest.raises(InputError, match=words):
        U.UNet(**SMALL, **kw)
