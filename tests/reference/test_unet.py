"""Whole-network backward of reference/unet.py against finite differences, shapes, dtypes, loading.

Gradient checks run in float64 with randomised parameters (the default init zeroes the final layer,
which would make every earlier gradient trivially zero): for the input and for every parameter
tensor, the directional derivative along a random direction, by central differences, must match
<grad, direction> within TOL["fd64_dir"].
"""
import numpy as np
import pytest
from gradcheck import directional_derivative, rel_error, same, snapshot
from tolerances import TOL

from reference.errors import InputError
from reference.unet import MLP, UNet

SMALL_UNET = dict(in_channels=2, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4)


def randomise(model, rng):
    """Random parameters everywhere (GroupNorm scales around 1), loaded through load_params."""
    model.load_params({k: rng.uniform(-0.5, 0.5, v.shape) + (1.0 if k.endswith("norm1.weight") else 0.0)
                       for k, v in model.params.items()})


def check_directional(model, x, t, rng):
    """Worst relative error over the input and every parameter tensor (one random direction each)."""
    out, cache = model.forward(x, t)
    R = rng.standard_normal(out.shape)
    dx, grads = model.backward(R, cache)
    f = lambda: float(np.sum(model.forward(x, t)[0] * R))
    worst = {}
    for name, arr, g in [("x", x, dx)] + [(k, model.params[k], grads[k]) for k in model.params]:
        d = rng.standard_normal(arr.shape)
        worst[name] = rel_error(directional_derivative(f, [arr], [d]), np.sum(g * d))
    return max(worst.values()), max(worst, key=worst.get)


@pytest.mark.parametrize("config,size", [
    (SMALL_UNET, 8),
    (dict(SMALL_UNET, num_res_blocks=2, attention=(True, False)), 4),
], ids=["attention_low_and_mid", "two_blocks_attention_top"])
def test_B1_to_B9_unet_gradients_match_directional_finite_differences(config, size, rng):
    model = UNet(**config, dtype=np.float64, seed=3)
    randomise(model, rng)
    x = rng.standard_normal((2, 2, size, size))
    err, name = check_directional(model, x, np.array([0, 917]), rng)
    assert err <= TOL["fd64_dir"], f"worst gradient: {name} ({err:.2e})"


def test_B11_same_padding_unet_gradients_match_directional_finite_differences(rng):
    """DDPM's checkpoints' options: "same" downsampling (pad, then a stride-2 conv with padding 0) at two levels,
    and GroupNorm's eps 1e-6 everywhere."""
    model = UNet(**dict(SMALL_UNET, channel_mults=(1, 2, 2), attention=(False, True, False)),
                 downsample_padding="same", norm_eps=1e-6, dtype=np.float64, seed=3)
    assert [s.op for s in model.plan].count("pad") == 2
    randomise(model, rng)
    err, name = check_directional(model, rng.standard_normal((2, 2, 8, 8)), np.array([0, 917]), rng)
    assert err <= TOL["fd64_dir"], f"worst gradient: {name} ({err:.2e})"


@pytest.mark.parametrize("out_dim", [None, 4])
def test_B4_B7_B8_mlp_gradients_match_directional_finite_differences(out_dim, rng):
    model = MLP(in_dim=2, hidden=16, num_layers=3, time_dim=8, out_dim=out_dim, dtype=np.float64, seed=1)
    randomise(model, rng)
    x = rng.standard_normal((5, 2))
    assert model.forward(x, np.arange(5))[0].shape == (5, out_dim or 2)
    err, name = check_directional(model, x, np.array([0, 1, 10, 500, 999]), rng)
    assert err <= TOL["fd64_dir"], f"worst gradient: {name} ({err:.2e})"


@pytest.mark.parametrize("net", ["unet", "mlp"])
def test_B8_backward_mutates_neither_dout_nor_cache(net, rng):
    model, shape = ((UNet(**SMALL_UNET, dtype=np.float64), (2, 2, 8, 8)) if net == "unet" else
                    (MLP(hidden=16, num_layers=2, time_dim=8, dtype=np.float64), (2, 2)))
    randomise(model, rng)
    out, cache = model.forward(rng.standard_normal(shape), np.array([1, 2]))
    dout = rng.standard_normal(out.shape)
    dout0, cache0 = dout.copy(), snapshot(cache)
    dx1, g1 = model.backward(dout, cache)
    assert np.array_equal(dout, dout0) and same(cache, cache0)
    dx2, g2 = model.backward(dout, cache)  # a second backward from the same cache gives the same answer
    assert np.array_equal(dx1, dx2) and same(g1, g2)


def test_B8_backward_reads_its_own_cache_not_state_kept_on_the_model(rng):
    """The tape is the cache: a backward after another forward (other x, t) still gives its own gradients."""
    model = UNet(**SMALL_UNET, dtype=np.float64)
    randomise(model, rng)
    x1, x2 = rng.standard_normal((2, 2, 2, 8, 8))
    out1, cache1 = model.forward(x1, np.array([1, 2]))
    dout = rng.standard_normal(out1.shape)
    dx1, g1 = model.backward(dout, cache1)
    model.forward(x2, np.array([700, 3]))
    dx1_later, g1_later = model.backward(dout, cache1)
    assert np.array_equal(dx1, dx1_later) and same(g1, g1_later)


def test_plan_keeps_and_joins_balance_and_its_channels_chain():
    """Every step's input channels are the previous step's output (an add's, the kept x's), every kept
    output is joined exactly once, and conv_in comes first (backward's input_grad applies to it). The
    in-place rule of the steps holds: temb and add follow a conv or linear (they write into its fresh
    output), and a keep is followed by a norm, silu, conv, pad or keep (its backward writes into that dx)."""
    for kw in [dict(), SMALL_UNET, dict(SMALL_UNET, num_res_blocks=3, attention=(True, False), mid_attention=False),
               dict(SMALL_UNET, downsample_padding="same")]:
        plan, kept = UNet(**kw).plan, []
        assert plan[0].name == "conv_in" and plan[-1].name == "conv_out"
        for prev, step in zip(plan, plan[1:]):
            assert prev.op in ("conv", "linear") if step.op in ("temb", "add") else True, (prev, step)
            assert step.op in ("norm", "silu", "conv", "pad", "keep") if prev.op == "keep" else True, (prev, step)
        for prev, step in zip(plan, plan[1:]):
            if step.op == "add":
                assert step.c_in == kept.pop() and step.c_out == prev.c_out
            else:
                assert step.c_in == prev.c_out
            if step.op == "concat":
                assert step.c_out == step.c_in + kept.pop()
            kept += [step.c_in] if step.op == "keep" else []
        assert kept == []
    mlp = MLP(num_layers=3).plan
    for prev, step in zip(mlp, mlp[1:]):
        assert prev.op in ("conv", "linear") if step.op in ("temb", "add") else True, (prev, step)
        assert step.op in ("norm", "silu", "conv", "keep") if prev.op == "keep" else True, (prev, step)


def test_the_default_plan_is_the_one_every_existing_checkpoint_was_trained_with():
    """downsample_padding "symmetric" and norm_eps 1e-5 by default: no pad step, every conv padded k // 2 (the
    stride-2 ones by 1), so a checkpoint whose configuration names neither option computes as it did."""
    for kw in [dict(), SMALL_UNET, dict(SMALL_UNET, num_res_blocks=2, channel_mults=(1, 2, 2), attention=(1, 0, 1))]:
        model = UNet(**kw)
        assert "pad" not in [s.op for s in model.plan] and all(s.padding is None for s in model.plan)
        assert model.norm_eps == 1e-5 and model.config["downsample_padding"] == "symmetric"
        assert [tuple(s) for s in model.plan] == [tuple(s) for s in UNet(**kw, downsample_padding="symmetric",
                                                                         norm_eps=1e-5).plan]
    same = UNet(**SMALL_UNET, downsample_padding="same").plan
    down = [i for i, s in enumerate(same) if s.stride == 2]
    assert [(same[i - 1].op, same[i].padding) for i in down] == [("pad", 0)]


def test_backward_without_input_grad_returns_the_same_parameter_gradients(rng):
    """input_grad=False (what training uses) changes which windows conv_in reads, not the gradients."""
    for model, x in ((UNet(**SMALL_UNET, dtype=np.float64), rng.standard_normal((2, 2, 8, 8))),
                     (MLP(in_dim=2, hidden=16, num_layers=2, time_dim=8, dtype=np.float64), rng.standard_normal((3, 2)))):
        randomise(model, rng)
        out, cache = model.forward(x, np.arange(len(x)))
        dout = rng.standard_normal(out.shape)
        _, g1 = model.backward(dout, cache)
        none, g2 = model.backward(dout, cache, input_grad=False)
        assert none is None and all(rel_error(g2[k], g1[k]) <= TOL["exact64"] for k in g1)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_unet_output_shapes_and_float32_default(size, rng):
    model = UNet(in_channels=3)
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    out, cache = model.forward(x, np.array([0, 999]))
    assert out.shape == x.shape and out.dtype == np.float32
    dx, grads = model.backward(np.ones_like(out), cache)
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert list(grads) == list(model.params)
    assert all(grads[k].shape == p.shape and grads[k].dtype == np.float32 for k, p in model.params.items())


def test_unet_out_channels_and_float64(rng):
    model = UNet(in_channels=1, out_channels=2, base_channels=8, channel_mults=(1, 2), attention=(False, True),
                 groups=4, dtype=np.float64)
    out, _ = model.forward(rng.standard_normal((1, 1, 8, 8)), np.array([5]))
    assert out.shape == (1, 2, 8, 8) and out.dtype == np.float64
    assert all(p.dtype == np.float64 for p in model.params.values())


def test_init_is_seeded_without_global_state_and_final_layer_is_zero(rng):
    state = np.random.get_state()[1].copy()
    a, b, c = UNet(**SMALL_UNET, seed=0), UNet(**SMALL_UNET, seed=0), UNet(**SMALL_UNET, seed=1)
    assert np.array_equal(np.random.get_state()[1], state)  # the global RNG was not touched
    assert same(a.params, b.params) and not same(a.params, c.params)
    # zero final conv: the untrained network predicts 0
    out, _ = a.forward(rng.standard_normal((2, 2, 8, 8)), np.array([3, 4]))
    assert not np.any(out) and not np.any(a.params["conv_out.weight"])
    out, _ = MLP(hidden=8, time_dim=8).forward(rng.standard_normal((3, 2)), np.array([0, 1, 2]))
    assert not np.any(out)


def test_param_names_follow_the_state_dict_scheme():
    names = list(UNet().params)
    for key in ["time_mlp.fc1.weight", "conv_in.weight", "down.0.res.0.norm1.weight", "down.0.res.0.conv1.weight",
                "down.0.res.0.temb_proj.weight", "down.0.downsample.weight", "down.1.res.0.skip.weight",
                "down.2.attn.0.qkv.weight", "mid.res1.conv2.weight", "mid.attn.proj.weight",
                "up.2.res.0.skip.weight", "up.1.upsample.weight", "norm_out.weight", "conv_out.bias"]:
        assert key in names
    assert "down.2.downsample.weight" not in names and "up.0.upsample.weight" not in names
    p = UNet().params
    assert p["down.0.res.0.conv1.weight"].shape == (32, 32, 3, 3)  # OIHW
    assert p["time_mlp.fc1.weight"].shape == (128, 32)  # linear (out, in)
    assert p["down.2.attn.0.qkv.weight"].shape == (192, 64, 1, 1)
    assert list(MLP(num_layers=2, out_dim=4).params) == list(MLP(num_layers=2).params)
    assert MLP(hidden=16, out_dim=4).params["out_proj.weight"].shape == (4, 16)
    assert list(MLP(num_layers=2).params) == [
        "time_mlp.fc1.weight", "time_mlp.fc1.bias", "time_mlp.fc2.weight", "time_mlp.fc2.bias",
        "in_proj.weight", "in_proj.bias", "layers.0.weight", "layers.0.bias", "layers.1.weight",
        "layers.1.bias", "out_proj.weight", "out_proj.bias"]


def test_up_path_is_ddpm_s_one_more_block_per_level_each_taking_a_skip():
    """Ho et al.'s layout: skips = [conv_in, every down block, every downsample]; each up level has
    num_res_blocks + 1 blocks, each concatenating the newest unused skip. Input channels by hand for
    base 32, mults (1, 2, 2), one block down: skips are 32 | 32, 32 | 64, 64 | 64 (conv_in | level 0 |
    level 1 | level 2), and h arrives at 64 channels from the middle."""
    p = UNet().params
    c_in = {name[:-len(".norm1.weight")]: v.shape[0] for name, v in p.items() if name.endswith(".norm1.weight")}
    assert {k: v for k, v in c_in.items() if k.startswith("up.")} == {
        "up.2.res.0": 64 + 64, "up.2.res.1": 64 + 64,   # down.2.res.0, down.1.downsample
        "up.1.res.0": 64 + 64, "up.1.res.1": 64 + 32,   # down.1.res.0, down.0.downsample
        "up.0.res.0": 64 + 32, "up.0.res.1": 32 + 32}   # down.0.res.0, conv_in
    assert "up.2.attn.1.qkv.weight" in p and "up.2.attn.2.qkv.weight" not in p
    assert "mid.attn.qkv.weight" in p and "mid.attn.qkv.weight" not in UNet(mid_attention=False).params


def test_ddpm_cifar10_arguments_give_ddpm_s_35_7m_parameters():
    """google/ddpm-cifar10-32 (DDPM's CIFAR-10 model, as diffusers publishes it) has 35,746,307 parameters."""
    model = UNet(in_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                 attention=(False, True, False, False), groups=32)
    assert model.num_params() == 35_746_307


def test_load_params_casts_and_names_bad_keys(rng):
    model = UNet(**SMALL_UNET)
    good = {k: rng.standard_normal(v.shape) for k, v in model.params.items()}  # float64 values
    model.load_params(good)
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert np.array_equal(model.params["conv_in.weight"], good["conv_in.weight"].astype(np.float32))
    with pytest.raises(InputError, match="missing keys \\['conv_in.bias'\\]"):
        model.load_params({k: v for k, v in good.items() if k != "conv_in.bias"})
    with pytest.raises(InputError, match="unexpected keys \\['extra.weight'\\]"):
        model.load_params({**good, "extra.weight": np.zeros(1)})
    bad = dict(good, **{"mid.res1.conv1.weight": np.zeros((16, 16, 1, 1))})
    with pytest.raises(InputError, match="'mid.res1.conv1.weight' has shape \\(16, 16, 1, 1\\)"):
        model.load_params(bad)
    nan = dict(good, **{"norm_out.bias": np.full(8, np.nan)})
    with pytest.raises(InputError, match="norm_out.bias"):
        model.load_params(nan)


def test_bad_inputs_raise_input_error(rng):
    model = UNet(**SMALL_UNET)
    x = rng.standard_normal((2, 2, 8, 8))
    with pytest.raises(InputError, match="divisible by 2"):
        model.forward(rng.standard_normal((2, 2, 7, 8)), np.array([0, 1]))
    with pytest.raises(InputError, match="\\(N, 2, H, W\\)"):
        model.forward(rng.standard_normal((2, 3, 8, 8)), np.array([0, 1]))
    with pytest.raises(InputError, match="integer"):
        model.forward(x, np.array([0.5, 1.0]))
    with pytest.raises(InputError, match=">= 0"):
        model.forward(x, np.array([-1, 1]))
    with pytest.raises(InputError, match="shape \\(2,\\)"):
        model.forward(x, np.array([0, 1, 2]))
    with pytest.raises(InputError, match="groups"):
        UNet(base_channels=12, groups=8)
    with pytest.raises(InputError, match="one flag per level"):
        UNet(channel_mults=(1, 2), attention=(False,))
    for n in (0, 1.5, "2"):
        with pytest.raises(InputError, match="num_res_blocks must be an integer >= 1"):
            UNet(num_res_blocks=n)
    with pytest.raises(InputError, match="unknown downsample_padding 'valid'"):
        UNet(downsample_padding="valid")
    for eps in (0.0, -1e-6, float("nan"), "1e-6"):
        with pytest.raises(InputError, match="norm_eps must"):
            UNet(norm_eps=eps)
    with pytest.raises(InputError, match="\\(N, 2\\)"):
        MLP().forward(rng.standard_normal((3, 3)), np.array([0, 1, 2]))


# ---- class-conditional networks (W1, B12) ----------------------------------------------------------------


def check_directional_with_labels(model, x, t, y, rng):
    """check_directional with the labels y held fixed (an integer input: no gradient)."""
    out, cache = model.forward(x, t, y)
    R = rng.standard_normal(out.shape)
    dx, grads = model.backward(R, cache)
    f = lambda: float(np.sum(model.forward(x, t, y)[0] * R))
    worst = {}
    for name, arr, g in [("x", x, dx)] + [(k, model.params[k], grads[k]) for k in model.params]:
        d = rng.standard_normal(arr.shape)
        worst[name] = rel_error(directional_derivative(f, [arr], [d]), np.sum(g * d))
    return max(worst.values()), max(worst, key=worst.get)


@pytest.mark.parametrize("net", ["unet", "mlp"])
def test_B12_W1_conditional_gradients_match_directional_finite_differences_with_repeated_labels(net, rng):
    """The class table's gradient through the whole network: labels repeat (class 1 three times), one class is
    absent (its row's gradient is exactly 0) and one example takes the null class."""
    model = UNet(**SMALL_UNET, num_classes=3, dtype=np.float64, seed=3) if net == "unet" else \
        MLP(hidden=16, num_layers=2, time_dim=8, num_classes=3, dtype=np.float64, seed=1)
    randomise(model, rng)
    x = rng.standard_normal((5, 2, 4, 4) if net == "unet" else (5, 2))
    y = np.array([1, 3, 1, 0, 1])  # 3 = the null class; class 2 absent
    err, name = check_directional_with_labels(model, x, np.array([0, 5, 500, 917, 999]), y, rng)
    assert err <= TOL["fd64_dir"], f"worst gradient: {name} ({err:.2e})"
    _, grads = model.backward(np.ones_like(model.forward(x, np.arange(5), y)[0]), model.forward(x, np.arange(5), y)[1])
    assert grads["class_embedding.weight"].shape == (4, model.time_plan[2].c_out)
    assert np.all(grads["class_embedding.weight"][2] == 0) and np.any(grads["class_embedding.weight"][1] != 0)


def test_W1_num_classes_none_keeps_every_name_and_value_and_a_conditional_model_adds_one_zero_table():
    """An unconditional model is exactly today's; a conditional one adds class_embedding.weight (K + 1 rows, the
    last the null class, time_dim wide) right after the time MLP in state_dict order, starts at zero and draws
    nothing, so every other parameter equals the unconditional model's of the same seed."""
    for make, kw in [(UNet, SMALL_UNET), (MLP, dict(hidden=16, num_layers=2))]:
        base, cond = make(**kw, seed=5), make(**kw, num_classes=10, seed=5)
        names = list(cond.params)
        assert [n for n in names if n != "class_embedding.weight"] == list(base.params)
        assert names.index("class_embedding.weight") == names.index("time_mlp.fc2.bias") + 1
        assert cond.params["class_embedding.weight"].shape == (11, cond.time_plan[2].c_out)
        assert not np.any(cond.params["class_embedding.weight"])
        assert all(np.array_equal(base.params[k], cond.params[k]) for k in base.params)
        assert "num_classes" not in base.config and cond.config["num_classes"] == 10


def test_W1_labels_are_checked_and_the_null_class_is_none(rng):
    model = MLP(hidden=16, num_layers=1, time_dim=8, num_classes=3, dtype=np.float64)
    randomise(model, rng)
    x, t = rng.standard_normal((4, 2)), np.array([0, 1, 2, 3])
    assert np.array_equal(model.forward(x, t)[0], model.forward(x, t, 3)[0])  # None is the null class K
    assert np.array_equal(model.forward(x, t, 1)[0], model.forward(x, t, np.full(4, 1))[0])
    for bad, match in [(np.array([0, 1, 4, 2]), "class 4 is out of range: the model has 3 classes, 0..2"),
                       (np.array([-1, 0, 0, 0]), "class -1 is out of range"), (np.array([0.0, 1, 2, 0]), "int"),
                       (np.array([0, 1]), "shape \\(4,\\)"), (np.array([True] * 4), "int")]:
        with pytest.raises(InputError, match=match):
            model.forward(x, t, bad)
    with pytest.raises(InputError, match="unconditional model"):
        MLP(hidden=16, num_layers=1, time_dim=8).forward(x, t, np.zeros(4, dtype=int))
    for k in (0, -2, 2.5, "3", True):
        with pytest.raises(InputError, match="num_classes must be an integer >= 1"):
            UNet(num_classes=k)
