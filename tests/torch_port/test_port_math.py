"""Torch-only checks of the port's math modules: devices, dtypes, autograd, and the validation policy.

The validation policy (torch_port/diffusion.py): shapes and dtypes always; values (t range, data
finite) on CPU tensors always and elsewhere only with ``Schedule(validate=True)``. The "meta" device
proves the no-sync half without a GPU: a meta tensor has no values, so any host sync
(``bool(t.max() > ...)``, ``.item()``) raises there.
"""
import warnings

import numpy as np
import pytest
import torch

from reference.errors import InputError
from torch_port import diffusion as TD
from torch_port import schedules as TS
from tolerances import TOL

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def sched():
    return TS.Schedule(TS.make_betas("linear", 1000))


def _batch(dtype=torch.float64, device="cpu", shape=(3, 2, 4, 4)):
    g = torch.Generator().manual_seed(0)
    x0, eps, out = (torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
                    for _ in range(3))
    return x0, eps, out, torch.tensor([0, 500, 999], device=device)


def _every_function(s, x0, eps, out, t):
    """Call every public function once; returns all outputs (tensors) in a flat list."""
    outs = [TD.q_sample(s, x0, t, eps), *TD.q_mean_variance(s, x0, t), TD.q_step(s, x0, t, eps),
            *TD.q_posterior(s, x0, eps, t), TD.v_target(s, x0, t, eps)]
    for pred in TD.PREDICTIONS:
        outs += [TD.predict_x0(s, eps, t, out, pred), TD.predict_eps(s, eps, t, out, pred)]
        for variance in TD.VARIANCES:
            outs += list(TD.p_mean_variance(s, out, eps, t, pred, variance, clip_x0=True))
    return outs


def test_tables_are_float64_and_move_with_to():
    s = TS.Schedule(TS.make_betas("cosine", 100))
    m = s.to("meta")
    assert m.device.type == "meta" and s.device.type == "cpu"  # a copy: the original stays put
    assert m.T == s.T and m.validate == s.validate
    for name in ("betas", "alpha_bar", "posterior_log_variance_clipped", "snr"):
        assert getattr(m, name).dtype == torch.float64 and getattr(m, name).device.type == "meta"


def test_validate_false_never_syncs_off_the_cpu():
    """Every function runs on meta tensors (no values at all) when the schedule does not validate."""
    s = TS.Schedule(TS.make_betas("linear", 1000), validate=False).to("meta")
    x0, eps, out, t = _batch(device="meta")
    for o in _every_function(s, x0, eps, out, t):
        assert o.device.type == "meta" and o.dtype == torch.float64
    assert TD.q_sample(s, x0, 7, eps).shape == x0.shape  # int t: no device gather of an index tensor
    # shape and dtype checks still run without values
    with pytest.raises(InputError, match="batch has N=3"):
        TD.q_sample(s, x0, t[:2], eps)
    with pytest.raises(InputError, match="shape mismatch"):
        TD.q_sample(s, x0, t, eps[:, :1])
    with pytest.raises(InputError, match="integer time index"):
        TD.q_sample(s, x0, torch.ones(3, dtype=torch.bool, device="meta"), eps)


def test_validate_true_checks_values_on_any_device():
    s = TS.Schedule(TS.make_betas("linear", 1000), validate=True).to("meta")
    x0, eps, _, t = _batch(device="meta")
    with pytest.raises((NotImplementedError, RuntimeError)):  # it tries to read values (a host sync)
        TD.q_sample(s, x0, t, eps)


def test_cpu_tensors_are_value_checked_even_without_validate():
    s = TS.Schedule(TS.make_betas("linear", 1000), validate=False)
    x0, eps, _, _ = _batch()
    with pytest.raises(InputError, match="t out of range: got 1000"):
        TD.q_sample(s, x0, torch.tensor([0, 1, 1000]), eps)
    with pytest.raises(InputError, match="non-finite"):
        TD.q_sample(s, x0, 0, eps * float("inf"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_outputs_take_the_data_dtype(sched, dtype):
    x0, eps, out, t = _batch(dtype)
    for o in _every_function(sched, x0, eps, out, t):
        assert o.dtype == dtype


def test_integer_data_becomes_float64_and_t_may_be_zero_dim(sched):
    x0 = torch.arange(6).reshape(3, 2)
    got = TD.q_sample(sched, x0, torch.tensor(10), torch.zeros(3, 2, dtype=torch.int32))
    assert got.dtype == torch.float64
    # (F3) with eps = 0: x_t = sqrt(abar_10) x_0, abar from an independent product of scalars
    abar = float(np.prod([1 - b for b in np.linspace(1e-4, 0.02, 1000)[:11]]))
    np.testing.assert_allclose(got.numpy(), abar**0.5 * x0.numpy(), rtol=TOL["exact64"], atol=0)


def test_R1_autograd_through_predict_x0_gives_the_coefficient(sched):
    """d x0_hat / d eps_hat = -sqrt(1/abar_t - 1) (R1); checked through autograd, not the table."""
    xt = torch.zeros(2, 3, dtype=torch.float64)
    out = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([3, 700])
    TD.predict_x0(sched, xt, t, out, "eps").sum().backward()
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[[3, 700]]
    np.testing.assert_allclose(out.grad.numpy(), np.repeat(-np.sqrt(1 / abar - 1)[:, None], 3, 1),
                               rtol=TOL["cross64"], atol=0)


def test_schedule_accepts_a_float32_tensor_and_keeps_its_own_copy():
    b = torch.linspace(1e-4, 0.02, 10, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TS.PriorMismatchWarning)
        s = TS.Schedule(b)
    b.mul_(2)  # the caller's tensor changes; the schedule must not
    assert float(s.betas[-1]) == pytest.approx(0.02, rel=TOL["exact64"])


@pytest.mark.gpu
@cuda
def test_cuda_matches_cpu_and_stays_on_device(sched):
    g = sched.to("cuda")
    x0, eps, out, t = _batch()
    on_cpu = _every_function(sched, x0, eps, out, t)
    on_gpu = _every_function(g, *(a.cuda() for a in (x0, eps, out, t)))
    for c, d in zip(on_cpu, on_gpu):
        assert d.device.type == "cuda"
        np.testing.assert_allclose(d.cpu().numpy(), c.numpy(), rtol=TOL["cross64"], atol=TOL["cross64"])


@pytest.mark.gpu
@cuda
def test_cuda_no_validate_runs_without_syncs(sched):
    g = TS.Schedule(sched.betas, validate=False).to("cuda")
    x0, eps, out, t = (a.cuda() for a in _batch())
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host sync raises
    try:
        _every_function(g, x0, eps, out, t)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- losses and samplers (phase 2) --------------------------------------------------------------

from torch_port import losses as TL  # noqa: E402
from torch_port import oracle as TO  # noqa: E402
from torch_port import samplers as TSa  # noqa: E402


@pytest.mark.parametrize("weighting", [None, "snr", "min_snr"])
@pytest.mark.parametrize("pred", TD.PREDICTIONS)
def test_L4_written_out_gradient_equals_autograd(sched, pred, weighting):
    """simple_loss_and_grad's gradient is typed out; autograd of simple_loss is an independent route."""
    x0, eps, out, t = _batch()
    out = out.clone().requires_grad_(True)
    loss = TL.simple_loss(sched, out, x0, t, eps, pred, weighting)
    loss.backward()
    value, grad = TL.simple_loss_and_grad(sched, out.detach(), x0, t, eps, pred, weighting)
    assert float(value) == float(loss.detach())
    np.testing.assert_allclose(grad.numpy(), out.grad.numpy(), rtol=TOL["exact64"], atol=TOL["exact64"])


def test_L6_decoder_gradients_are_finite_in_the_edge_bins_and_far_tails():
    """torch.where evaluates both branches: the edge bins' +-inf must not leak NaN into gradients."""
    x = torch.tensor([-1.0, 1.0, 1 / 255, 2 / 255 - 1, 1 - 2 / 255] * 2, dtype=torch.float64)
    m = torch.tensor([-0.9, 0.95, 0.5, 5.0, -5.0, -30.0, 30.0, 0.0, 0.0, 0.1], dtype=torch.float64,
                     requires_grad=True)
    ls = torch.tensor([-3.0] * 5 + [-1.0, -1.0, -8.0, -8.0, 0.0], dtype=torch.float64, requires_grad=True)
    for approx in TL.APPROXES:
        m.grad = ls.grad = None
        ll = TL.discretized_gaussian_log_likelihood(x, m, ls, approx)
        ll.sum().backward()
        assert torch.isfinite(ll).all() and torch.isfinite(m.grad).all() and torch.isfinite(ls.grad).all()


def test_steps_and_loop_keep_the_data_dtype(sched):
    x0, eps, out, t = _batch(torch.float32)
    assert TSa.ddpm_step(sched, out, x0, t, eps)[0].dtype == torch.float32
    assert TSa.ddim_step(sched, out, x0, t, torch.clamp(t - 100, min=-1), eps, 0.5)[0].dtype == torch.float32
    oracle = TO.GaussianOracle(0.0, var=0.5)
    x = TSa.sample_loop(sched, oracle.denoiser(sched), x0, torch.Generator().manual_seed(0), "ddim", steps=5).x
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_sample_loop_with_a_torch_generator_is_reproducible(sched):
    oracle = TO.GaussianOracle(0.0, var=0.5)
    x_T = torch.zeros(4, 2, dtype=torch.float64)
    runs = [TSa.sample_loop(sched, oracle.denoiser(sched), x_T, torch.Generator().manual_seed(3), steps=10).x
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = TSa.sample_loop(sched, oracle.denoiser(sched), x_T, torch.Generator().manual_seed(4), steps=10).x
    assert not torch.equal(runs[0], other)


def test_validate_false_losses_and_samplers_never_sync_off_the_cpu():
    """The training loss, both steps, a DDIM loop with the oracle and the bound all run on meta tensors."""
    s = TS.Schedule(TS.make_betas("linear", 1000), validate=False).to("meta")
    x0, eps, out, t = _batch(device="meta")
    assert TL.simple_loss(s, out, x0, t, eps, "v", "min_snr").device.type == "meta"
    assert TSa.ddpm_step(s, out, x0, t, eps, "v", "fixed_large", True)[0].device.type == "meta"
    assert TSa.ddim_step(s, out, x0, t, t - 1, eps, 0.5, "x0", True)[0].device.type == "meta"
    oracle = TO.GaussianOracle(torch.zeros(2, 4, 4), var=torch.full((2, 4, 4), 0.3)).to("meta")
    noises = [torch.empty_like(x0) for _ in range(4)]
    assert TSa.sample_loop(s, oracle.denoiser(s, "v"), x0, noises, "ddim", steps=4, eta=1.0,
                           prediction="v").x.device.type == "meta"
    small = TS.Schedule(TS.make_betas("cosine", 5), validate=False).to("meta")
    out = TL.vlb_terms(small, oracle.denoiser(small), x0, torch.empty((5,) + x0.shape, device="meta"))
    assert out["terms"].shape == (5, 3) and out["terms"].device.type == "meta"
