"""Same parameters in the NumPy reference (hand-written backward) and the torch port (autograd).

The reference's params are loaded into the torch model with load_state_dict; outputs, input
gradients and EVERY parameter gradient must agree (max-abs relative error per tensor):
float64 within TOL["net64"], float32 within TOL["net32"] (TF32 off).
"""
import numpy as np
import pytest
from gradcheck import rel_max_error
from tolerances import TOL

torch = pytest.importorskip("torch")

from reference import layers as RL  # noqa: E402
from reference import unet as R  # noqa: E402
from reference.errors import InputError  # noqa: E402
from torch_port import layers as TL  # noqa: E402
from torch_port import unet as T  # noqa: E402

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

SMALL_UNET = dict(in_channels=2, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4)
CONFIGS = {
    "unet_small": (R.UNet, T.UNet, SMALL_UNET, (3, 2, 8, 8)),
    "unet_two_blocks_three_levels": (R.UNet, T.UNet, dict(SMALL_UNET, channel_mults=(1, 2, 2), num_res_blocks=2,
                                                          attention=(True, False, True)), (2, 2, 8, 8)),
    "unet_default_8x8": (R.UNet, T.UNet, dict(), (2, 1, 8, 8)),
    "unet_three_blocks_no_mid_attention": (R.UNet, T.UNet, dict(SMALL_UNET, num_res_blocks=3, attention=(True, False),
                                                                mid_attention=False), (2, 2, 8, 8)),
    "unet_same_padding_eps_1e-6": (R.UNet, T.UNet, dict(SMALL_UNET, channel_mults=(1, 2, 2),
                                                        attention=(False, True, False), downsample_padding="same",
                                                        norm_eps=1e-6), (2, 2, 8, 8)),
    "mlp": (R.MLP, T.MLP, dict(hidden=32, num_layers=3, time_dim=16), (7, 2)),
    "mlp_out_dim_4": (R.MLP, T.MLP, dict(hidden=32, num_layers=2, time_dim=16, out_dim=4), (7, 2)),
}


def twin_models(config_name, dtype, rng):
    """Reference and torch models of one configuration holding the same random parameters."""
    ref_cls, torch_cls, kw, shape = CONFIGS[config_name]
    ref = ref_cls(**kw, dtype=dtype)
    ref.load_params({k: rng.uniform(-0.3, 0.3, v.shape) + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
                     for k, v in ref.params.items()})  # random everywhere: the final layer too
    port = torch_cls(**kw, dtype=dtype)
    port.load_state_dict({k: torch.from_numpy(v) for k, v in ref.params.items()})
    return ref, port, shape


def run_both(ref, port, x, t, dout):
    out, cache = ref.forward(x, t)
    dx, grads = ref.backward(dout, cache)
    port.zero_grad(set_to_none=True)
    xt = torch.from_numpy(x).requires_grad_()
    out_t = port(xt, torch.from_numpy(t))
    out_t.backward(torch.from_numpy(dout))
    grads_t = {k: p.grad.numpy() for k, p in port.named_parameters()}
    return (out, dx, grads), (out_t.detach().numpy(), xt.grad.numpy(), grads_t)


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("dtype,tol", [(np.float64, TOL["net64"]), (np.float32, TOL["net32"])], ids=["f64", "f32"])
def test_B1_to_B9_outputs_and_every_gradient_agree_with_torch(config_name, dtype, tol, rng):
    ref, port, shape = twin_models(config_name, dtype, rng)
    x = rng.standard_normal(shape).astype(dtype)
    t = rng.integers(0, 1000, size=shape[0])
    dout = rng.standard_normal(ref.forward(x, t)[0].shape).astype(dtype)  # (N, out_channels or out_dim, ...)
    (out, dx, grads), (out_t, dx_t, grads_t) = run_both(ref, port, x, t, dout)
    assert out.dtype == out_t.dtype == dx.dtype == dtype
    assert rel_max_error(out, out_t) <= tol
    assert rel_max_error(dx, dx_t) <= tol
    assert grads.keys() == grads_t.keys()
    errors = {k: rel_max_error(grads[k], grads_t[k]) for k in grads}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, f"worst parameter gradient {worst}: {errors[worst]:.2e}"


@pytest.mark.parametrize("kw", [dict(), SMALL_UNET, dict(in_channels=3, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                                                           attention=(False, True, False, True), out_channels=6)])
def test_param_names_and_shapes_equal_state_dict(kw):
    ref, port = R.UNet(**kw), T.UNet(**kw)
    sd = port.state_dict()
    assert list(ref.params) == list(sd)
    assert all(ref.params[k].shape == tuple(sd[k].shape) for k in sd)
    mlp_ref, mlp_port = R.MLP(num_layers=4, out_dim=6), T.MLP(num_layers=4, out_dim=6)
    mlp_sd = mlp_port.state_dict()
    assert list(mlp_ref.params) == list(mlp_sd)
    assert all(mlp_ref.params[k].shape == tuple(mlp_sd[k].shape) for k in mlp_sd)


@pytest.mark.parametrize("kw", [dict(), SMALL_UNET, dict(SMALL_UNET, channel_mults=(1, 2, 2), num_res_blocks=2,
                                                           attention=(True, False, True), mid_attention=False,
                                                           out_channels=3, downsample_padding="same")])
def test_both_sides_build_the_same_plan(kw):
    """The topology is written once on each side, the same way: equal plans (and time plans), step by step."""
    ref, port = R.UNet(**kw), T.UNet(**kw)
    assert [tuple(s) for s in ref.plan] == [tuple(s) for s in port.plan]
    assert [tuple(s) for s in ref.time_plan] == [tuple(s) for s in port.time_plan]
    mlp_ref, mlp_port = R.MLP(num_layers=3), T.MLP(num_layers=3)
    assert [tuple(s) for s in mlp_ref.plan + mlp_ref.time_plan] == [tuple(s) for s in mlp_port.plan + mlp_port.time_plan]


@pytest.mark.parametrize("bad", [
    dict(channel_mults=(1, 2), attention=(False,)),       # one attention flag per level
    dict(channel_mults=(1, 2, 2), attention=(False, True)),
    dict(base_channels=12, groups=8),                      # a level's channels not divisible by groups
    dict(base_channels=16, channel_mults=(1, 3), attention=(False, False), groups=32),
    dict(num_res_blocks=0),                                # num_res_blocks < 1
    dict(num_res_blocks=-2),
    dict(num_res_blocks=1.5),                              # not an integer
    dict(num_res_blocks=2.0),
    dict(num_res_blocks="2"),
    dict(downsample_padding="valid"),                      # "symmetric" or "same"
    dict(downsample_padding=0),
    dict(norm_eps=0.0),                                    # GroupNorm's eps in (0, 1]
    dict(norm_eps=-1e-6),
], ids=["attention_short", "attention_long", "groups_12_8", "groups_48_32", "blocks_0", "blocks_neg", "blocks_1.5",
        "blocks_2.0", "blocks_str", "padding_valid", "padding_0", "eps_0", "eps_neg"])
def test_both_sides_raise_the_same_input_error_for_bad_arguments(bad):
    with pytest.raises(InputError) as ref_error:
        R.UNet(**bad)
    with pytest.raises(InputError) as port_error:
        T.UNet(**bad)
    assert str(port_error.value) == str(ref_error.value)


def test_B11_pad_layer_matches_torch_pad(rng):
    x, d = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 6, 7, 3))
    out, cache = RL.pad_forward(x.transpose(0, 2, 3, 1), 1, 0, 2, 1)
    xt = torch.from_numpy(x).requires_grad_()
    out_t = TL.pad(xt, 1, 0, 2, 1)
    out_t.backward(torch.from_numpy(d.transpose(0, 3, 1, 2).copy()))
    assert np.array_equal(out.transpose(0, 3, 1, 2), out_t.detach().numpy())
    assert np.array_equal(RL.pad_backward(d, cache).transpose(0, 3, 1, 2), xt.grad.numpy())


def test_both_sides_hold_the_group_norm_eps_they_were_given():
    port = T.UNet(**SMALL_UNET, norm_eps=1e-6)
    assert {m.eps for m in port.modules() if isinstance(m, TL.GroupNorm)} == {1e-6}
    assert {m.eps for m in T.UNet(**SMALL_UNET).modules() if isinstance(m, TL.GroupNorm)} == {TL.GN_EPS} == {RL.GN_EPS}


def test_B6_time_embedding_is_the_same_formula_on_both_sides():
    t = np.array([0, 1, 17, 500, 999])
    for dim in (4, 32, 128):
        assert rel_max_error(TL.timestep_embedding(torch.from_numpy(t), dim).numpy(),
                             RL.timestep_embedding(t, dim)) <= TOL["cross64"]


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (3, 2, 0), (1, 1, 0), (1, 2, 0)])
def test_B1_B2_conv_layer_matches_torch_conv2d(k, stride, padding, rng):
    """Odd sizes: F.conv2d (NCHW) against conv2d_forward/backward (NHWC), float64."""
    x, w, b = rng.standard_normal((2, 3, 7, 5)), rng.standard_normal((4, 3, k, k)), rng.standard_normal(4)
    out, cache = RL.conv2d_forward(x.transpose(0, 2, 3, 1), w, b, stride, padding)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = RL.conv2d_backward(dout, cache)
    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    out_t = torch.nn.functional.conv2d(xt, wt, bt, stride, padding)
    out_t.backward(torch.from_numpy(dout.transpose(0, 3, 1, 2).copy()))
    assert rel_max_error(out.transpose(0, 3, 1, 2), out_t.detach().numpy()) <= TOL["net64"]
    assert rel_max_error(dx.transpose(0, 3, 1, 2), xt.grad.numpy()) <= TOL["net64"]
    assert rel_max_error(dw, wt.grad.numpy()) <= TOL["net64"]
    assert rel_max_error(db, bt.grad.numpy()) <= TOL["net64"]


def test_torch_unet_channels_last_gives_the_same_output(rng):
    port = T.UNet(**SMALL_UNET, dtype=torch.float64, seed=4)
    torch.nn.init.normal_(port.conv_out.weight)  # non-zero output
    x = torch.from_numpy(rng.standard_normal((2, 2, 8, 8)))
    t = torch.tensor([3, 800])
    out = port(x, t)
    port_cl = port.to(memory_format=torch.channels_last)
    out_cl = port_cl(x.contiguous(memory_format=torch.channels_last), t)
    assert rel_max_error(out_cl.detach().numpy(), out.detach().numpy()) <= TOL["net64"]


@pytest.mark.slow
def test_torch_unet_compiles_and_matches_eager(rng):
    port = T.UNet(**SMALL_UNET, seed=5)
    torch.nn.init.normal_(port.conv_out.weight)
    x, t = torch.from_numpy(rng.standard_normal((2, 2, 8, 8)).astype(np.float32)), torch.tensor([3, 800])
    compiled = torch.compile(port, fullgraph=True)
    assert rel_max_error(compiled(x, t).detach().numpy(), port(x, t).detach().numpy()) <= TOL["net32"]


# ---- class-conditional networks (W1, B12) ----------------------------------------------------------------

COND = {"unet_small_3_classes": (R.UNet, T.UNet, dict(SMALL_UNET, num_classes=3), (5, 2, 8, 8)),
        "mlp_10_classes": (R.MLP, T.MLP, dict(hidden=32, num_layers=2, time_dim=16, num_classes=10), (7, 2))}


@pytest.mark.parametrize("name", list(COND))
@pytest.mark.parametrize("dtype,tol", [(np.float64, TOL["net64"]), (np.float32, TOL["net32"])], ids=["f64", "f32"])
def test_B12_W1_conditional_outputs_and_every_gradient_agree_with_torch(name, dtype, tol, rng):
    """The hand-written scatter-add against autograd's embedding backward, labels repeated and the null class in."""
    ref_cls, torch_cls, kw, shape = COND[name]
    ref = ref_cls(**kw, dtype=dtype)
    ref.load_params({k: rng.uniform(-0.3, 0.3, v.shape) for k, v in ref.params.items()})
    port = torch_cls(**kw, dtype=dtype)
    port.load_state_dict({k: torch.from_numpy(v) for k, v in ref.params.items()})
    assert list(ref.params) == list(port.state_dict())
    x, t = rng.standard_normal(shape).astype(dtype), rng.integers(0, 1000, size=shape[0])
    y = np.resize([1, kw["num_classes"], 1, 0], shape[0])  # repeats and the null class
    out, cache = ref.forward(x, t, y)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, grads = ref.backward(dout, cache)
    xt = torch.from_numpy(x).requires_grad_()
    out_t = port(xt, torch.from_numpy(t), torch.from_numpy(y))
    out_t.backward(torch.from_numpy(dout))
    assert rel_max_error(out, out_t.detach().numpy()) <= tol and rel_max_error(dx, xt.grad.numpy()) <= tol
    errors = {k: rel_max_error(grads[k], p.grad.numpy()) for k, p in port.named_parameters()}
    assert max(errors.values()) <= tol, max(errors, key=errors.get)
    assert rel_max_error(ref.forward(x, t)[0], port(torch.from_numpy(x), torch.from_numpy(t)).detach().numpy()) <= tol


def test_W1_both_sides_make_the_same_conditional_plan_and_refuse_the_same_labels(rng):
    ref, port = R.UNet(**SMALL_UNET, num_classes=4), T.UNet(**SMALL_UNET, num_classes=4)
    assert [tuple(s) for s in ref.time_plan] == [tuple(s) for s in port.time_plan]
    assert not port.class_embedding.weight.detach().any()
    x, t = rng.standard_normal((2, 2, 8, 8)).astype(np.float32), np.array([1, 2])
    for bad in (np.array([0, 5]), np.array([-1, 0]), np.array([0, 1, 2]), np.array([0.5, 1.0])):
        with pytest.raises(InputError) as ref_error:
            ref.forward(x, t, bad)
        with pytest.raises(InputError) as port_error:
            port(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(bad))
        assert str(port_error.value) == str(ref_error.value)
    with pytest.raises(InputError, match="unconditional model"):
        T.UNet(**SMALL_UNET)(torch.from_numpy(x), torch.from_numpy(t), torch.tensor([0, 1]))


@pytest.mark.slow
def test_W1_conditional_torch_unet_compiles_and_matches_eager(rng):
    port = T.UNet(**SMALL_UNET, num_classes=3, seed=5)
    torch.nn.init.normal_(port.conv_out.weight)
    torch.nn.init.normal_(port.class_embedding.weight)
    x, t = torch.from_numpy(rng.standard_normal((2, 2, 8, 8)).astype(np.float32)), torch.tensor([3, 800])
    y = torch.tensor([2, 3])
    compiled = torch.compile(port, fullgraph=True)
    assert rel_max_error(compiled(x, t, y).detach().numpy(), port(x, t, y).detach().numpy()) <= TOL["net32"]
