"""The port's Trainer on the CPU: it runs, its checkpoints are the reference's, its samples are the reference's.

- checkpoint keys (params, EMA, optimiser) equal the reference Trainer's for a UNet and the MLP;
- a checkpoint written by either side's runner loads into the other side's Trainer, exactly;
- the same params and the same seed give the same samples on both sides (float64, TOL["net64"]:
  two independent whole-network routes through every sampling step);
- a resumed run equals the uninterrupted run bit for bit (noise seeded by (seed, rank, step));
- the GPU-path pieces that run on the CPU: channels_last (same numbers as NCHW within net64),
  bf16 autocast with fp32 master weights, the on-device refusal of a non-finite step by fused
  AdamW's found_inf, the per-rank slicing of a global batch (DeviceData).
"""
import json

import numpy as np
import pytest
from tolerances import TOL

torch = pytest.importorskip("torch")

from lab import checkpoint, runner  # noqa: E402
from lab.backend import Backend  # noqa: E402
from lab.config import make_config  # noqa: E402
from lab.sampling import draw, load_trainer  # noqa: E402
from reference import train as RT  # noqa: E402
from reference.errors import InputError  # noqa: E402
from torch_port import train as PT  # noqa: E402

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

SMALL_UNET = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=(False, True), groups=4)
CASES = {"unet": ("digits", SMALL_UNET, (1, 8, 8)), "mlp": ("moons", dict(hidden=16, num_layers=2), (2,))}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _cfg(case, **kw):
    data, model, _ = CASES[case]
    base = dict(steps=4, batch_size=8, log_every=2, save_every=0, sample_every=0, sample_steps=2, warmup=2,
                ema_decay=0.9, model=dict(model))
    return make_config(data, **{**base, **kw})


def _data(case, n=32, seed=0):
    shape = CASES[case][2]
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def _steps(trainer, x, n, start=0):
    data = trainer.prepare_data(x) if hasattr(trainer, "prepare_data") else x
    rng = np.random.default_rng(1)
    return [trainer.step(data[rng.integers(0, len(x), trainer.cfg.batch_size)], s) for s in range(start, start + n)]


def _np(sd):
    return {k: np.asarray(v) for k, v in sd.items()}


def _assert_same_state(a, b, tol=0.0):
    for group in ("params", "ema", "opt_state"):
        assert a[group].keys() == b[group].keys(), group
        for k in a[group]:
            np.testing.assert_allclose(np.asarray(b[group][k], np.float64), np.asarray(a[group][k], np.float64),
                                       rtol=tol, atol=0, err_msg=f"{group}/{k}")


# ---- runs, keys ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_trainer_steps_on_cpu_return_finite_0d_tensors_and_move_the_weights(case):
    tr = PT.Trainer(_cfg(case), CASES[case][2], device="cpu")
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    out = _steps(tr, _data(case), 3)
    for loss, norm in out:
        assert loss.ndim == 0 and norm.ndim == 0 and torch.isfinite(loss) and torch.isfinite(norm)
    assert tr.opt.step_count == 3
    assert any(not torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpoint_keys_equal_the_reference_params_keys(case):
    cfg = _cfg(case)
    ref = RT.Trainer(cfg, CASES[case][2]).state_dict()
    port = PT.Trainer(cfg, CASES[case][2], device="cpu").state_dict()
    for group in ("params", "ema", "opt_state"):
        assert port[group].keys() == ref[group].keys(), group
        for k in ref[group]:
            assert np.shape(port[group][k]) == np.shape(ref[group][k]), f"{group}/{k}"
    assert set(ref["params"]) == set(RT.build_model(cfg, CASES[case][2]).params)


# ---- checkpoints across sides -------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_a_reference_checkpoint_loads_into_the_port_trainer_and_back(case, tmp_path):
    cfg = _cfg(case, dtype="float64")
    shape = CASES[case][2]
    ref = RT.Trainer(cfg, shape)
    _steps(ref, _data(case), 2)
    runner._save(ref, tmp_path / "ref.npz", 2, np.random.default_rng(0))
    ck = checkpoint.load(tmp_path / "ref.npz")
    port = PT.Trainer(cfg, shape, device="cpu")
    port.load_state_dict({"params": ck.params, "ema": ck.ema, "opt_state": ck.opt_state, "rng_state": ck.rng_state})
    _assert_same_state(ref.state_dict(), port.state_dict())
    assert port.opt.step_count == 2
    # the port writes it again; the reference reads what the port wrote
    runner._save(port, tmp_path / "port.npz", 2, np.random.default_rng(0))
    ck2 = checkpoint.load(tmp_path / "port.npz")
    assert ck2.extra["backend"] == "torch"
    ref2 = RT.Trainer(cfg, shape)
    ref2.load_state_dict({"params": ck2.params, "ema": ck2.ema, "opt_state": ck2.opt_state,
                          "rng_state": {"noise": ref2.rng.bit_generator.state}})  # see the report: no "noise"
    _assert_same_state(ref.state_dict(), ref2.state_dict())


def test_a_checkpoint_from_the_port_runner_loads_on_the_reference_sample_path(tmp_path):
    tr = PT.Trainer(_cfg("mlp"), (2,), device="cpu")
    res = runner.run(tr, _data("mlp"), tmp_path, progress=False)
    assert res["step"] == 4
    trainer, ck = load_trainer(Backend("reference"), tmp_path / "ckpt.npz")
    assert set(ck.params) == set(trainer.model.params)
    for k, v in ck.ema.items():
        np.testing.assert_array_equal(trainer.ema.params[k], v)
    assert [json.loads(ln)["step"] for ln in (tmp_path / "log.jsonl").read_text().splitlines()] == [2, 4]


# ---- same params, same seed, same samples ----------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::reference.schedules.PriorMismatchWarning")  # 8 "leading" DDPM steps
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_A1_A2_same_params_same_seed_same_samples_on_both_sides_float64(case, sampler):
    cfg = _cfg(case, dtype="float64")
    shape = CASES[case][2]
    ref = RT.Trainer(cfg, shape)
    _steps(ref, _data(case), 2)  # an EMA that differs from the raw weights, and a nonzero last layer
    port = PT.Trainer(cfg, shape, device="cpu")
    port.load_state_dict(ref.state_dict())
    a = draw(Backend("reference"), ref, 6, seed=11, sampler=sampler, steps=8)
    b = draw(Backend("torch"), port, 6, seed=11, sampler=sampler, steps=8)
    assert a.dtype == b.dtype == np.float64 and a.shape == b.shape == (6,) + shape
    np.testing.assert_allclose(b, a, rtol=TOL["net64"], atol=TOL["net64"] * np.max(np.abs(a)))
    assert not np.allclose(draw(Backend("torch"), port, 6, seed=12, sampler=sampler, steps=8), b)  # the seed matters


# ---- resume, noise seeding, data sharding ----------------------------------------------------------------

def test_a_resumed_run_equals_the_uninterrupted_run_bit_for_bit(tmp_path):
    x = _data("mlp")
    straight = PT.Trainer(_cfg("mlp", steps=6), (2,), device="cpu")
    runner.run(straight, x, tmp_path / "a", progress=False)
    first = PT.Trainer(_cfg("mlp", steps=3), (2,), device="cpu")
    runner.run(first, x, tmp_path / "b", progress=False)
    resumed = PT.Trainer(_cfg("mlp", steps=6), (2,), device="cpu")
    runner.run(resumed, x, tmp_path / "b", resume=True, progress=False)
    _assert_same_state(straight.state_dict(), resumed.state_dict())


def test_noise_seed_is_a_function_of_seed_rank_and_step_only():
    assert PT.noise_seed(0, 0, 5) == PT.noise_seed(0, 0, 5)
    seeds = {PT.noise_seed(s, r, k) for s in (0, 1) for r in (0, 1, 2) for k in (0, 1, 1000)}
    assert len(seeds) == 18 and all(0 <= s < 2**63 for s in seeds)


def test_device_data_gives_each_rank_its_contiguous_slice_of_the_global_batch():
    x = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    idx = np.array([9, 0, 3, 3, 7, 1])
    parts = [PT.DeviceData(x, torch.device("cpu"), rank=r, world=2)[idx] for r in range(2)]
    torch.testing.assert_close(torch.cat(parts), x[torch.from_numpy(idx)], rtol=0, atol=0)
    assert len(parts[0]) == 3 and len(PT.DeviceData(x, torch.device("cpu"))) == 10
    with pytest.raises(InputError, match="does not split over 2 processes"):
        PT.DeviceData(x, torch.device("cpu"), rank=0, world=2)[idx[:5]]


# ---- GPU-path pieces on the CPU ------------------------------------------------------------------------

def test_channels_last_gives_the_nchw_numbers_and_resumes_with_matching_strides():
    cfg = _cfg("unet", dtype="float64")
    nchw = PT.Trainer(cfg, (1, 8, 8), device="cpu", channels_last=False)
    nhwc = PT.Trainer(cfg, (1, 8, 8), device="cpu", channels_last=True)
    assert nhwc.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x = _data("unet")
    for (la, _), (lb, _) in zip(_steps(nchw, x, 2), _steps(nhwc, x, 2)):
        assert abs(la.item() - lb.item()) <= TOL["net64"] * abs(la.item())
    a, b = nchw.state_dict(), nhwc.state_dict()
    for group in ("params", "ema", "opt_state"):
        for k in a[group]:
            np.testing.assert_allclose(b[group][k], a[group][k], rtol=TOL["net64"],
                                       atol=TOL["net64"] * np.max(np.abs(a[group][k])), err_msg=f"{group}/{k}")
    again = PT.Trainer(cfg, (1, 8, 8), device="cpu", channels_last=True)
    again.load_state_dict(b)
    for p, st in again.opt.state.items():
        assert st["exp_avg"].stride() == p.stride() == st["exp_avg_sq"].stride()
    _steps(again, x, 1, start=2)  # foreach AdamW accepts the restored moments


def test_bf16_autocast_keeps_fp32_master_weights_and_an_fp32_loss():
    tr = PT.Trainer(_cfg("unet"), (1, 8, 8), device="cpu", amp=True)
    (loss, norm), = _steps(tr, _data("unet"), 1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(norm)
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    assert all(s.dtype == torch.float32 for s in tr.ema.params.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_autocast_computes_the_float32_network_within_bf16_rounding(seed):
    """`--amp` (the CPU's fast path too) changes the precision, not the function: the network's output and the
    gradient of a loss of it under bf16 autocast stay within TOL["bf16net"] of float32, norm-wise."""
    from torch_port.unet import UNet

    model = UNet(in_channels=1, **make_config("digits").model, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # nonzero output layer: a trained-like network, not the zero-initialised one
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    x, t = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 1000, (16,), generator=gen)
    params = list(model.parameters())
    out = model(x, t)
    g32 = torch.autograd.grad(out.square().mean(), params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = model(x, t)
    assert out16.dtype == torch.bfloat16
    g16 = torch.autograd.grad(out16.float().square().mean(), params)

    def rel(a, b):
        return float(torch.sqrt(sum(((u.float() - v) ** 2).sum() for u, v in zip(a, b)))
                     / torch.sqrt(sum((v ** 2).sum() for v in b)))
    assert rel([out16.detach()], [out.detach()]) <= TOL["bf16net"]
    assert rel(g16, g32) <= TOL["bf16net"]


def _broken_mlp(bias):
    """An MLP whose output has ``bias`` added: 1e30 gives a finite output and an infinite float32 loss."""
    from torch_port.optim import EMA
    from torch_port.schedules import Schedule, make_betas
    from torch_port.unet import MLP

    model = MLP(hidden=8, num_layers=1, time_dim=8)
    with torch.no_grad():
        model.out_proj.bias[0] = bias
    return model, EMA(model, decay=0.9), Schedule(make_betas("cosine", 1000))


@pytest.mark.parametrize("bias, what", [(1e30, "non-finite loss"), (float("nan"), "non-finite model output")])
def test_O1_a_non_finite_step_is_refused_before_the_update(bias, what):
    model, ema, sched = _broken_mlp(bias)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x0, t, eps = torch.zeros(4, 2), torch.arange(4), torch.ones(4, 2)
    with pytest.raises(PT.NonFiniteError, match=what):
        PT.train_step(model, opt, ema, sched, x0, t, eps, check_finite=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)


def test_O1_without_the_host_check_fused_adamw_refuses_a_non_finite_step_on_the_device():
    """The CUDA path (check_finite=False): no sync, fused AdamW's found_inf skips the update."""
    model, ema, sched = _broken_mlp(1e30)
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    except RuntimeError as err:  # pragma: no cover - fused kernels not built for this device
        pytest.skip(f"fused AdamW unavailable: {err}")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x0, t, eps = torch.zeros(4, 2), torch.arange(4), torch.ones(4, 2)
    loss, _ = PT.train_step(model, opt, ema, sched, x0, t, eps, check_finite=False)
    assert not torch.isfinite(loss)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)
    assert all(float(s["step"]) == 0.0 for s in opt.state.values())  # the step count was given back


def test_cuda_only_options_are_refused_on_the_cpu():
    with pytest.raises(InputError, match="--cuda-graphs needs a CUDA device"):
        PT.Trainer(_cfg("mlp"), (2,), device="cpu", cuda_graphs=True)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            PT.resolve_device("cuda")


@pytest.mark.slow
def test_torch_compile_on_the_cpu_gives_the_eager_numbers_and_plain_checkpoint_keys():
    """torch.compile (inductor, needs a C++ compiler) around the model: EMA and checkpoint see the plain module."""
    cfg = _cfg("unet", dtype="float64")
    eager = PT.Trainer(cfg, (1, 8, 8), device="cpu", compile=False)
    compiled = PT.Trainer(cfg, (1, 8, 8), device="cpu", compile=True)
    assert compiled.net is not compiled.model
    x = _data("unet")
    _steps(eager, x, 2)
    _steps(compiled, x, 2)
    a, b = eager.state_dict(), compiled.state_dict()
    assert a["params"].keys() == b["params"].keys()
    for group in ("params", "ema"):
        for k in a[group]:
            np.testing.assert_allclose(b[group][k], a[group][k], rtol=TOL["net64"],
                                       atol=TOL["net64"] * np.max(np.abs(a[group][k])), err_msg=f"{group}/{k}")


# ---- learned variances and importance sampling (issue 16) --------------------------------------------------

def _learned_cfg(case, **kw):
    return _cfg(case, variance="learned", loss="hybrid", dtype="float64", **kw)


@pytest.mark.filterwarnings("ignore::reference.schedules.PriorMismatchWarning")  # 8 "leading" DDPM steps
@pytest.mark.parametrize("case", sorted(CASES))
def test_V1_V5_learned_variance_checkpoints_load_across_sides_and_sample_alike(case):
    """2C outputs on both sides (the same state_dict names and shapes); the reference's trained weights in the
    port give the same ancestral samples with variance="learned" (all 2C channels) and the same DDIM samples
    from the default denoiser (the mean channels)."""
    cfg, shape = _learned_cfg(case), CASES[case][2]
    ref = RT.Trainer(cfg, shape, levels=17 if case == "unet" else None)
    _steps(ref, _data(case) if case == "mlp" else np.round((_data(case) + 1) * 8) / 8 - 1, 2)
    port = PT.Trainer(cfg, shape, device="cpu")
    port.load_state_dict(ref.state_dict())
    _assert_same_state(ref.state_dict(), port.state_dict())
    probe = np.zeros((1,) + shape)
    assert ref.model.forward(probe, np.zeros(1, np.int64))[0].shape[1] == 2 * shape[0]
    assert port.model(torch.from_numpy(probe), torch.zeros(1, dtype=torch.long)).shape[1] == 2 * shape[0]
    from reference import samplers as RS
    from torch_port import samplers as TS
    rng = np.random.default_rng(3)
    x_T = rng.standard_normal((5,) + shape)
    noises = [rng.standard_normal(x_T.shape) for _ in range(8)]
    a = RS.sample_loop(ref.sched, ref.denoiser(with_variance=True), x_T, noises, "ddpm", 8, variance="learned").x
    b = TS.sample_loop(port.sched, port.denoiser(with_variance=True), torch.from_numpy(x_T),
                       [torch.from_numpy(z) for z in noises], "ddpm", 8, variance="learned").x.numpy()
    np.testing.assert_allclose(b, a, rtol=TOL["net64"], atol=TOL["net64"] * np.max(np.abs(a)))
    a = draw(Backend("reference"), ref, 5, seed=4, sampler="ddim", steps=8)
    b = draw(Backend("torch"), port, 5, seed=4, sampler="ddim", steps=8)
    np.testing.assert_allclose(b, a, rtol=TOL["net64"], atol=TOL["net64"] * np.max(np.abs(a)))


def _is_cfg(steps):
    # a constant rate: a 15-step run resumed to 30 is then the 30-step run (a cosine decay is set by --steps)
    return make_config("moons", steps=steps, batch_size=32, T=20, log_every=3, save_every=0, sample_every=0,
                       lr_schedule="constant",
                       final_samples=False, warmup=2, ema_decay=0.9, variance="learned", loss="vlb",
                       importance_sampling=True, model=dict(hidden=16, num_layers=2))


@pytest.mark.parametrize("side", ["reference", "torch"])
def test_I1_importance_sampled_run_resumes_bit_for_bit_and_needs_its_history(side, tmp_path):
    """T = 20 warms up in ~10 steps, so importance sampling is on across the resume at step 15; the history is in
    the checkpoint (rng/loss_history) and a resumed run ends where the uninterrupted one ends, exactly. A resume
    that lost the history (p uniform again) ends elsewhere: the test has the power to see it."""
    make = (lambda cfg: RT.Trainer(cfg, (2,))) if side == "reference" else \
        (lambda cfg: PT.Trainer(cfg, (2,), device="cpu"))
    x = _data("mlp", n=64)
    straight = make(_is_cfg(30))
    runner.run(straight, x, tmp_path / "a", progress=False)
    first = make(_is_cfg(15))
    runner.run(first, x, tmp_path / "b", progress=False)
    assert first.resampler.warmed_up
    ck = checkpoint.load(tmp_path / "b" / "ckpt.npz")
    assert ck.rng_state["loss_history"].shape == (20, 10) and int(ck.rng_state["loss_counts"].min()) == 10
    resumed = make(_is_cfg(30))
    runner.run(resumed, x, tmp_path / "b", resume=True, progress=False)
    _assert_same_state(straight.state_dict(), resumed.state_dict())
    h = lambda tr: np.asarray(tr.state_dict()["rng_state"]["loss_history"])  # noqa: E731
    np.testing.assert_array_equal(h(resumed), h(straight))
    forgetful = make(_is_cfg(30))
    runner.run(make(_is_cfg(15)), x, tmp_path / "c", progress=False)
    ck = checkpoint.load(tmp_path / "c" / "ckpt.npz")
    ck.rng_state.pop("loss_history"), ck.rng_state.pop("loss_counts")
    checkpoint.save(tmp_path / "c" / "ckpt.npz", ck.params, ck.ema, ck.opt_state, ck.config, ck.step, ck.rng_state,
                    ck.extra)
    runner.run(forgetful, x, tmp_path / "c", resume=True, progress=False)
    assert not forgetful.resampler.warmed_up or not np.array_equal(h(forgetful), h(straight))
    lost, kept = forgetful.state_dict()["params"], straight.state_dict()["params"]
    assert any(not np.array_equal(lost[k], kept[k]) for k in kept)
