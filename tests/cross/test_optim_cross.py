"""reference/optim.py vs torch (torch.optim.AdamW, torch.nn.utils.clip_grad_norm_) and torch_port/optim.py.

All in float64: the two sides run the same update with different op order, so TOL["cross64"].
Gradients are drawn once in NumPy and fed to both sides.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from reference import optim as ref  # noqa: E402
from reference.errors import InputError  # noqa: E402
from torch_port import optim as port  # noqa: E402
from tolerances import TOL  # noqa: E402

SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "lin.weight": (6, 5)}


def _draw(rng, scale=1.0):
    return {k: scale * rng.standard_normal(s) for k, s in SHAPES.items()}


def _to_torch(d, parameter=False):
    make = torch.nn.Parameter if parameter else (lambda x: x)
    return {k: make(torch.tensor(v, dtype=torch.float64)) for k, v in d.items()}


def _assert_close(np_dict, torch_dict, tol=TOL["cross64"]):
    for k, a in np_dict.items():
        b = torch_dict[k].detach().cpu().numpy()
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.max(np.abs(a)), err_msg=k)


def _set_grads(tparams, grads):
    for k, p in tparams.items():
        p.grad = torch.tensor(grads[k], dtype=torch.float64)


@pytest.mark.parametrize("impl", ["torch-single", "torch-foreach", "torch-fused", "port"])
def test_O1_reference_adamw_matches_torch_adamw_float64(rng, impl):
    params = _draw(rng)
    tparams = _to_torch(params, parameter=True)
    hyper = {"betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.05}
    opt = ref.AdamW(params, lr=1e-2, **hyper)
    if impl == "port":
        topt = port.AdamW(tparams, lr=1e-2, **hyper)
    else:
        kernel = {"torch-single": {"foreach": False}, "torch-foreach": {"foreach": True},
                  "torch-fused": {"fused": True}}[impl]
        try:
            topt = torch.optim.AdamW(list(tparams.values()), lr=1e-2, **hyper, **kernel)
        except RuntimeError as err:  # fused kernels are not built for every device/dtype
            pytest.skip(f"fused AdamW unavailable here: {err}")
    for step in range(20):
        lr = ref.lr_at(step, 1e-2, warmup_steps=5, total_steps=20, schedule="cosine")
        grads = _draw(rng, scale=10.0 ** rng.uniform(-3, 1))  # gradient scales over 4 decades
        opt.step(grads, lr=lr)
        _set_grads(tparams, grads)
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
    _assert_close(params, tparams)
    if impl == "port":
        assert topt.step_count == opt.step_count == 20


def test_O1_port_step_lr_argument_and_counter(rng):
    tparams = _to_torch(_draw(rng), parameter=True)
    topt = port.AdamW(tparams, lr=1e-3)
    _set_grads(tparams, _draw(rng))
    topt.step(lr=5e-3)
    topt.step()  # lr persists, as in the reference
    assert topt.param_groups[0]["lr"] == 5e-3 and topt.step_count == 2
    assert isinstance(topt, torch.optim.AdamW)
    assert topt.defaults["weight_decay"] == 0.0  # the reference's default, not torch's 1e-2


def test_O1_flat_state_dict_resumes_across_sides(rng):
    # 4 steps in NumPy, checkpoint, then 4 more on each side from that checkpoint: both agree.
    params = _draw(rng)
    opt = ref.AdamW(params, lr=3e-3, weight_decay=0.1)
    grads_seq = [_draw(rng) for _ in range(8)]
    for g in grads_seq[:4]:
        opt.step(g)
    tparams = _to_torch(params, parameter=True)
    topt = port.AdamW(tparams, lr=3e-3, weight_decay=0.1)
    topt.load_flat_state_dict(opt.state_dict())  # NumPy arrays into the torch optimiser
    assert topt.step_count == 4
    for g in grads_seq[4:]:
        opt.step(g)
        _set_grads(tparams, g)
        topt.step()
    _assert_close(params, tparams)
    # and back: the port's flat state loads into the reference and matches its own moments
    back = ref.AdamW({k: p.copy() for k, p in params.items()})
    back.load_state_dict({k: v.numpy() for k, v in topt.flat_state_dict().items()})
    assert back.step_count == 8
    _assert_close(back.m, {k: torch.tensor(v) for k, v in opt.m.items()})
    _assert_close(back.v, {k: torch.tensor(v) for k, v in opt.v.items()})


def test_O1_port_load_state_dict_errors_name_the_key(rng):
    tparams = _to_torch(_draw(rng), parameter=True)
    topt = port.AdamW(tparams)
    good = topt.flat_state_dict()
    with pytest.raises(InputError, match="missing.*'m/conv.bias'"):
        topt.load_flat_state_dict({k: v for k, v in good.items() if k != "m/conv.bias"})
    with pytest.raises(InputError, match=r"'v/lin.weight'.*shape \(2,\)"):
        topt.load_flat_state_dict({**good, "v/lin.weight": np.zeros(2)})


def test_O1_port_keeps_torch_state_dict_and_counts_steps_on_load(rng):
    tparams = _to_torch(_draw(rng), parameter=True)
    topt = port.AdamW(tparams, lr=1e-3)
    for _ in range(3):
        _set_grads(tparams, _draw(rng))
        topt.step()
    nested = topt.state_dict()
    assert set(nested) == {"state", "param_groups"}  # torch's own format, untouched
    other = port.AdamW(_to_torch(_draw(rng), parameter=True), lr=1e-3)
    other.load_state_dict(nested)
    assert other.step_count == 3


@pytest.mark.parametrize("warmup", [False, True])
def test_O2_reference_ema_matches_port_ema(rng, warmup):
    params = _draw(rng)
    ema = ref.EMA(params, decay=0.95, warmup=warmup)
    tema = port.EMA(_to_torch(params, parameter=True), decay=0.95, warmup=warmup)
    for _ in range(15):
        x = _draw(rng)
        ema.update(x)
        tema.update(_to_torch(x))
    assert tema.num_updates == ema.num_updates == 15
    _assert_close(ema.params, tema.params)
    # state dicts cross-load: the reference's arrays into the port
    other = port.EMA(_to_torch(_draw(rng)), decay=0.95, warmup=warmup)
    other.load_state_dict(ema.state_dict(), num_updates=ema.num_updates)
    assert other.current_decay() == ema.current_decay()
    _assert_close(ema.params, other.params)
    assert set(tema.state_dict()) == set(ema.state_dict()) == set(SHAPES)  # same keys both sides


def test_O2_port_ema_copy_to_module_and_no_grad(rng):
    module = torch.nn.Linear(5, 6).double()
    ema = port.EMA(module, decay=0.5)
    start = {k: p.detach().clone() for k, p in module.named_parameters()}
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    ema.update(module)  # shadow = (start + (start + 1))/2 = start + 0.5
    assert all(not s.requires_grad for s in ema.params.values())
    ema.copy_to(module)
    for k, p in module.named_parameters():
        np.testing.assert_allclose(p.detach().numpy(), (start[k] + 0.5).numpy(), rtol=0, atol=TOL["exact64"])


@pytest.mark.parametrize("scale, max_norm", [(3.0, 1.0), (0.01, 10.0)], ids=["clips", "below"])
def test_O3_clip_matches_torch_clip_grad_norm_and_port(rng, scale, max_norm):
    grads = _draw(rng, scale)
    clipped, total = ref.clip_grad_norm(grads, max_norm)
    # torch itself, in place on parameters' .grad
    tparams = _to_torch(_draw(rng), parameter=True)
    _set_grads(tparams, grads)
    ttotal = torch.nn.utils.clip_grad_norm_(list(tparams.values()), max_norm)
    assert abs(total - ttotal.item()) <= TOL["cross64"] * total
    _assert_close(clipped, {k: p.grad for k, p in tparams.items()})
    # the port, on a dict of gradients: new tensors, inputs untouched, norm a tensor
    tgrads = _to_torch(grads)
    pclipped, ptotal = port.clip_grad_norm(tgrads, max_norm)
    assert isinstance(ptotal, torch.Tensor) and ptotal.ndim == 0
    assert abs(total - ptotal.item()) <= TOL["cross64"] * total
    _assert_close(clipped, pclipped)
    _assert_close(grads, tgrads, tol=0.0)
    # the port, on parameters: in place, like clip_grad_norm_, returning the norm alone
    tparams2 = _to_torch(_draw(rng), parameter=True)
    _set_grads(tparams2, grads)
    ptotal2 = port.clip_grad_norm(tparams2.values(), max_norm)
    assert isinstance(ptotal2, torch.Tensor) and abs(total - ptotal2.item()) <= TOL["cross64"] * total
    _assert_close(clipped, {k: p.grad for k, p in tparams2.items()})


def test_O4_lr_at_identical_on_both_sides():
    for kw in [dict(), dict(warmup_steps=7), dict(warmup_steps=7, total_steps=50, schedule="cosine"),
               dict(total_steps=30, schedule="cosine")]:
        for step in range(60):
            assert port.lr_at(step, 2e-4, **kw) == ref.lr_at(step, 2e-4, **kw), (kw, step)


def test_O4_lr_at_matches_torch_lambdalr(rng):
    # torch's LambdaLR with min(1, (s + 1)/W) gives the lr used by update s (scheduler.step() after).
    W, base = 5, 1e-3
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / W))
    for step in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref.lr_at(step, base, W), rel=TOL["exact64"])
        opt.step()
        sched.step()
