"""ADM's residual resampling (resblock_updown, B15) in the NumPy reference: the 2x2 average pool against an
independent route and central differences, the plan's transitions where ADM puts them, and the UNet's gradients
(input and every parameter) against directional finite differences; the default leaves DDPM's network."""
import numpy as np
import pytest
from gradcheck import H_DIR, directional_derivative, numeric_grad, rel_error, same, snapshot
from tolerances import TOL

from reference import unet as U
from reference import updown
from reference.errors import InputError

SMALL = dict(in_channels=2, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4)


def test_B15_average_pool_is_the_block_mean_and_its_backward_matches_finite_differences(rng):
    x, R = rng.standard_normal((2, 4, 6, 3)), rng.standard_normal((2, 2, 3, 3))
    out, cache = updown.avg_pool2x_forward(x)
    # the independent route: one output pixel, its four inputs added by hand
    n, y, w, c = 1, 1, 2, 2
    assert abs(out[n, y, w, c] - (x[n, 2, 4, c] + x[n, 3, 4, c] + x[n, 2, 5, c] + x[n, 3, 5, c]) / 4) <= TOL["exact64"]
    before = snapshot((R, cache))
    dx = updown.avg_pool2x_backward(R, cache)
    assert same(before, (R, cache)) and dx.flags.writeable
    f = lambda: float(np.sum(updown.avg_pool2x_forward(x)[0] * R))  # noqa: E731
    assert rel_error(numeric_grad(f, x), dx) <= TOL["fd64"]


def test_B15_transitions_are_residual_blocks_that_resample_after_the_first_silu_where_adm_puts_them():
    """Three levels: two down transitions after each level's blocks, two up ones before the next level's; each is
    keep, norm1, SiLU, resample, conv1, temb, norm2, SiLU, conv2, and the identity join (no stride-2 conv, no up2x)."""
    m = U.UNet(**dict(SMALL, channel_mults=(1, 2, 2), attention=(False, True, False)), resblock_updown=True)
    ops = [s.op for s in m.plan]
    assert "up2x" not in ops and "pad" not in ops and all(s.stride == 1 for s in m.plan)
    for op, pre, c in [("res_down", "down.0.downsample", 8), ("res_down", "down.1.downsample", 16),
                       ("res_up", "up.2.upsample", 16), ("res_up", "up.1.upsample", 16)]:
        i = next(i for i, s in enumerate(m.plan) if s.name == f"{pre}.norm1")
        got = [(s.op, s.name.replace(pre, "")) for s in m.plan[i - 1:i + 9]]
        assert got == [("keep", ""), ("norm", ".norm1"), ("silu", ""), (op, ""), ("conv", ".conv1"),
                       ("temb", ".temb_proj"), ("norm", ".norm2"), ("silu", ""), ("conv", ".conv2"), ("add", "")]
        assert m.plan[i].c_in == c and m.plan[i + 7].c_out == c
    names = [s.name for s in m.plan if s.name]
    assert names.index("down.0.downsample.conv2") < names.index("down.1.res.0.norm1")  # after level 0, before 1
    assert names.index("up.2.res.1.conv2") < names.index("up.2.upsample.norm1") < names.index("up.1.res.0.norm1")
    assert m.forward(np.zeros((2, 2, 8, 8)), np.array([0, 5]))[0].shape == (2, 2, 8, 8)
    with pytest.raises(InputError, match="divisible by 4"):
        m.forward(np.zeros((1, 2, 6, 6)), np.array([0]))


@pytest.mark.parametrize("kw", [dict(), dict(norm="scale-shift", num_heads=2)], ids=["additive", "adm"])
def test_B15_unet_gradients_match_directional_finite_differences(kw, rng):
    model = U.UNet(**SMALL, resblock_updown=True, **kw, dtype=np.float64, seed=3)
    model.load_params({k: rng.uniform(-0.5, 0.5, v.shape) + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
                       for k, v in model.params.items()})
    x, t = rng.standard_normal((2, 2, 4, 4)), np.array([0, 917])
    out, cache = model.forward(x, t)
    R = rng.standard_normal(out.shape)
    dx, grads = model.backward(R, cache)
    f = lambda: float(np.sum(model.forward(x, t)[0] * R))  # noqa: E731
    worst = {}
    for name, arr, g in [("x", x, dx)] + [(k, model.params[k], grads[k]) for k in model.params]:
        dirn = rng.standard_normal(arr.shape)
        worst[name] = rel_error(directional_derivative(f, [arr], [dirn], h=H_DIR / 4), np.sum(g * dirn))  # B13's h
    name = max(worst, key=worst.get)
    assert worst[name] <= TOL["fd64_dir"], f"worst gradient: {name} ({worst[name]:.2e})"
    assert any(k.startswith("down.0.downsample.") for k in grads) and any(k.startswith("up.1.upsample.") for k in grads)


def test_the_default_is_ddpm_s_transitions_and_records_nothing_new():
    a, b = U.UNet(**SMALL), U.UNet(**SMALL, resblock_updown=False)
    assert a.plan == b.plan and same(a.params, b.params) and "resblock_updown" not in a.config
    assert U.UNet(**SMALL, resblock_updown=True).config["resblock_updown"] is True


@pytest.mark.parametrize("kw,words", [
    (dict(resblock_updown="yes"), "resblock_updown must be True or False"),
    (dict(resblock_updown=True, channel_mults=(1,), attention=(True,)), "needs two levels"),
    (dict(resblock_updown=True, downsample_padding="same"), "downsample_padding='same'"),
])
def test_bad_resblock_updown_raises_input_error_naming_it(kw, words):
    with pytest.raises(InputError, match=words):
        U.UNet(**{**SMALL, **kw})
