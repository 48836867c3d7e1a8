"""The project's two networks against diffusers' UNet2DModel, the independent route: a published DDPM's code.

Each model is a UNet2DModel of DDPM's layout with random weights, saved with save_pretrained into a temporary
folder (no download) and converted by lab/convert.py. The port and the NumPy reference must compute what
diffusers computes: float32 within TOL["net32"] (diffusers' time embedding is float32 whatever the model's
dtype), float64 within TOL["cross64"] with diffusers' own embedding code run in float64 (interop.py). The
schedule a scheduler config names gives diffusers' betas; one DDPM and one DDIM step of the converted model
on both sides equal diffusers' DDPMScheduler.step / DDIMScheduler.step on diffusers' model with the same noise.
"""
import numpy as np
import pytest
from gradcheck import rel_max_error
from tolerances import TOL

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402
from interop import DDPM_CIFAR10, SMALL, diffusers_output, float64_scheduler, random_unet  # noqa: E402

from lab import convert  # noqa: E402
from reference import samplers as RS  # noqa: E402
from reference import schedules as RSch  # noqa: E402
from reference.unet import UNet as RefUNet  # noqa: E402
from torch_port import samplers as TS  # noqa: E402
from torch_port import schedules as TSch  # noqa: E402
from torch_port.unet import UNet as PortUNet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
torch.backends.cudnn.allow_tf32 = False

LAYOUTS = {
    "ddpm_same_padding_eps_1e-6": SMALL,
    "symmetric_padding_eps_1e-5": dict(SMALL, downsample_padding=1, norm_eps=1e-5),
    "two_blocks_attention_at_the_ends_no_mid_attention": dict(
        SMALL, layers_per_block=2, down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"), add_attention=False),
    "time_dim_48_six_outputs_one_head_by_dim": dict(SMALL, time_embedding_dim=48, out_channels=6,
                                                     attention_head_dim=32),
}


def converted(tmp_path, layout, seed=0):
    """(diffusers' model, our Converted, our UNet's keyword arguments) for a random UNet2DModel of ``layout``."""
    model = random_unet(tmp_path / "unet", seed=seed, **layout)
    DDPMScheduler().save_config(tmp_path / "unet")  # linear 1e-4..0.02, T = 1000: DDPM's
    ck = convert.from_diffusers(tmp_path / "unet", data="cifar10")
    return model, ck, convert.full_kwargs(ck.config["model"], layout["in_channels"])


def both_sides(ck, kw, dtype):
    """The reference and the port holding the converted weights, in ``dtype``."""
    ref = RefUNet(**kw, dtype=dtype)
    ref.load_params(ck.params)
    port = PortUNet(**kw).to(getattr(torch, np.dtype(dtype).name))
    port.load_state_dict({k: torch.from_numpy(v) for k, v in ck.params.items()})
    return ref, port.eval()


def outputs(ref, port, x, t):
    with torch.no_grad():
        return ref.forward(x, t)[0], port(torch.from_numpy(x), torch.from_numpy(t)).numpy()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_converted_unet_computes_what_diffusers_computes_on_both_sides(layout, tmp_path, rng):
    model, ck, kw = converted(tmp_path, LAYOUTS[layout])
    x, t = rng.standard_normal((3, 3, 8, 8)), np.array([0, 17, 999])
    for dtype, tol in ((np.float32, TOL["net32"]), (np.float64, TOL["cross64"])):
        want = diffusers_output(model, x.astype(dtype), t, getattr(torch, np.dtype(dtype).name))
        ref_out, port_out = outputs(*both_sides(ck, kw, dtype), x.astype(dtype), t)
        assert np.abs(want).max() > 0.1  # random weights everywhere: a real function, not zeros
        errors = {"port": rel_max_error(port_out, want), "reference": rel_max_error(ref_out, want),
                  "reference vs port": rel_max_error(ref_out, port_out)}
        assert max(errors.values()) <= tol, (np.dtype(dtype).name, errors)


def test_the_two_options_are_what_makes_ddpm_s_checkpoints_agree(tmp_path, rng):
    """Without "same" downsampling padding the converted network is another function (its grid is shifted by
    a pixel: an O(1) change); with norm_eps 1e-5 instead of 1e-6 the output moves by ~3e-6 relative here
    (GroupNorm's inputs have variance ~1, so eps barely counts), below float32's tolerance but 10^4 times
    float64's: only the float64 comparison holds the converted norm_eps to diffusers'."""
    model, ck, kw = converted(tmp_path, SMALL)
    x, t = rng.standard_normal((2, 3, 8, 8)), np.array([5, 600])
    want = diffusers_output(model, x, t, torch.float64)
    for wrong, tol in ((dict(downsample_padding="symmetric"), TOL["net32"]), (dict(norm_eps=1e-5), TOL["cross64"])):
        ref, _ = both_sides(ck, dict(kw, **wrong), np.float64)
        assert rel_max_error(ref.forward(x, t)[0], want) > 1e3 * tol, wrong


@pytest.mark.parametrize("schedule,T", [("linear", 1000), ("scaled_linear", 1000), ("squaredcos_cap_v2", 1000),
                                        ("sigmoid", 1000), ("linear", 50), ("squaredcos_cap_v2", 4000)])
def test_the_schedule_a_scheduler_config_names_gives_diffusers_betas(schedule, T):
    fields, _ = convert.schedule_from_diffusers({"beta_schedule": schedule, "num_train_timesteps": T},
                                                convert._defaults(DDPMScheduler))
    ours = RSch.make_betas(fields["schedule"], fields["T"])
    # float64: diffusers' own code computing its tables in float64; float32: as diffusers ships it
    assert rel_max_error(ours, float64_scheduler(DDPMScheduler, beta_schedule=schedule, num_train_timesteps=T)
                         .betas.numpy()) <= TOL["exact64"]
    assert rel_max_error(ours, DDPMScheduler(beta_schedule=schedule, num_train_timesteps=T).betas.numpy()) <= TOL["op32"]
    assert rel_max_error(TSch.make_betas(fields["schedule"], T).numpy(), ours) <= TOL["cross64"]


def test_zero_terminal_snr_in_the_scheduler_config_is_the_project_s_rescaling():
    fields, _ = convert.schedule_from_diffusers({"beta_schedule": "linear", "rescale_betas_zero_snr": True},
                                                convert._defaults(DDPMScheduler))
    assert fields["zero_terminal_snr"] is True
    ours = RSch.rescale_zero_terminal_snr(RSch.make_betas(fields["schedule"], fields["T"]))
    theirs = float64_scheduler(DDPMScheduler, beta_schedule="linear", rescale_betas_zero_snr=True).betas.numpy()
    assert rel_max_error(ours, theirs) <= TOL["cross64"] and ours[-1] == theirs[-1] == 1.0


@pytest.mark.parametrize("n", [10, 50, 7])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_set_timesteps_keeps_the_project_s_steps(spacing, n):
    """diffusers' set_timesteps(n) with timestep_spacing (steps_offset 0) keeps our timesteps(T, n, spacing)."""
    ours = RS.timesteps(1000, n, spacing)
    for cls in (DDPMScheduler, DDIMScheduler):
        s = cls(timestep_spacing=spacing)
        s.set_timesteps(n)
        assert np.array_equal(np.sort(s.timesteps.numpy()), ours), cls.__name__


@pytest.fixture(scope="module")
def step_case(tmp_path_factory):
    """A converted eps-model, its diffusers twin in float64, an x_t and both sides' model outputs there."""
    folder = tmp_path_factory.mktemp("step")
    model, ck, kw = converted(folder, SMALL, seed=3)
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8))
    return model, ck, kw, x


def _ours_eps(ck, kw, x, t):
    ref, port = both_sides(ck, kw, np.float64)
    tt = np.full(len(x), t)
    ref_out, port_out = outputs(ref, port, x, tt)
    return ref_out, torch.from_numpy(port_out)


def _ddpm_step_both_ways(case, t, n, clip, variance_type, variance):
    """One DDPMScheduler.step (variance_type, clip_sample; set_timesteps(n) when n) and the same step on both sides
    (our ``variance``, respaced on timesteps(T, n, "leading") when n), with the noise diffusers draws from seed 7
    -> (diffusers' output, the reference's (x_prev, x0_hat), the port's, (our schedule, our index, our network's
    output, the noise))."""
    model, ck, kw, x = case
    sched = float64_scheduler(DDPMScheduler, beta_schedule="linear", variance_type=variance_type, clip_sample=clip)
    if n:
        sched.set_timesteps(n)
    out = diffusers_output(model, x, np.full(2, t), torch.float64)
    want = sched.step(torch.from_numpy(out), t, torch.from_numpy(x), generator=torch.Generator().manual_seed(7))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref_out, port_out = _ours_eps(ck, kw, x, t)
    ours = RSch.Schedule(RSch.make_betas("linear", 1000))
    kept = RS.timesteps(1000, n, "leading") if n else None
    step_sched, i = (RS.respace(ours, kept), int(np.searchsorted(kept, t))) if n else (ours, t)
    ref = RS.ddpm_step(step_sched, ref_out, x, np.full(2, i), noise.numpy(), variance=variance, clip_x0=clip)
    port_sched = TSch.Schedule(TSch.make_betas("linear", 1000))
    port_sched = TS.respace(port_sched, torch.from_numpy(kept)) if n else port_sched
    port = TS.ddpm_step(port_sched, port_out, torch.from_numpy(x), torch.full((2,), i), noise, variance=variance,
                        clip_x0=clip)
    return want, ref, port, (step_sched, i, ref_out, noise)


@pytest.mark.parametrize("t,n", [(999, None), (500, None), (1, None), (0, None), (900, 10), (100, 10), (0, 10)])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [True, False])
def test_one_ddpm_step_equals_diffusers_ddpm_scheduler_step(step_case, t, n, variance, clip):
    """Matched: t is the 0-based index on both sides (diffusers' too); n None is the full chain (t -> t-1), n = 10
    is set_timesteps(10) with timestep_spacing "leading" (steps_offset 0), which steps t -> t - 100 with
    beta = 1 - abar_t / abar_prev: our respaced schedule (A4) on timesteps(T, 10, "leading") at position i;
    variance_type and clip_sample map to variance and clip_x0; the noise is one torch.randn draw that diffusers
    makes from a generator of the same seed (no noise at t = 0 on either side)."""
    want, ref, port, _ = _ddpm_step_both_ways(step_case, t, n, clip, variance, variance)
    for side in (ref, [a.numpy() for a in port]):
        assert rel_max_error(side[0], want.prev_sample.numpy()) <= TOL["cross64"]
        assert rel_max_error(side[1], want.pred_original_sample.numpy()) <= TOL["cross64"]


@pytest.fixture(scope="module")
def learned_case(tmp_path_factory):
    """A converted learned-variance model (6 outputs on 3 channels, scheduler learned_range) and an x_t."""
    folder = tmp_path_factory.mktemp("learned") / "unet"
    model = random_unet(folder, seed=4, **dict(SMALL, out_channels=6))
    DDPMScheduler(variance_type="learned_range").save_config(folder)
    ck = convert.from_diffusers(folder, data="cifar10")
    assert ck.config["variance"] == "learned"
    return model, ck, convert.full_kwargs(ck.config["model"], 3, "learned"), np.random.default_rng(6).standard_normal(
        (2, 3, 8, 8))


@pytest.mark.parametrize("t,n", [(999, None), (1, None), (0, None), (900, 10), (100, 10), (0, 10)])
@pytest.mark.parametrize("clip", [True, False])
def test_one_learned_variance_ddpm_step_equals_diffusers_learned_range_step(learned_case, t, n, clip):
    """learned_range is V1: log sigma^2 = nu log beta_t + (1 - nu) log beta~_t, nu = (u + 1) / 2, on the output's
    last C channels; set_timesteps(10) interpolates between the respaced beta' and beta~' (V5), as ours does.
    Matched as the fixed-variance step above (the same noise draw; none at t = 0)."""
    want, ref, port, (step_sched, i, ref_out, noise) = _ddpm_step_both_ways(learned_case, t, n, clip,
                                                                            "learned_range", "learned")
    x = learned_case[3]
    assert ref_out.shape == (2, 6, 8, 8)
    # where beta_t and beta~_t (the interpolation's ends) differ by half, the variance channels must show: the
    # fixed_small step on the mean channels is another step (late in the full chain they nearly coincide)
    if t > 0 and step_sched.betas[i] > 1.5 * step_sched.posterior_variance[i]:
        small = RS.ddpm_step(step_sched, ref_out[:, :3], x, np.full(2, i), noise.numpy(), clip_x0=clip)[0]
        assert rel_max_error(small, want.prev_sample.numpy()) > 1e6 * TOL["cross64"]
    for side in (ref, [a.numpy() for a in port]):
        assert rel_max_error(side[0], want.prev_sample.numpy()) <= TOL["cross64"]
        assert rel_max_error(side[1], want.pred_original_sample.numpy()) <= TOL["cross64"]


@pytest.mark.parametrize("t", [900, 400, 0])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [True, False])
def test_one_ddim_step_equals_diffusers_ddim_scheduler_step(step_case, t, eta, clip):
    """Matched: set_timesteps(10), timestep_spacing "leading", steps_offset 0, so diffusers steps t -> t - 100 and
    from t = 0 to alpha_bar 1 (set_alpha_to_one): our ddim_step to t_prev = t - 100, or -1 at the last step.
    With clip_sample our ddim_step takes eps from the clipped x0_hat: diffusers' use_clipped_model_output=True
    (its pipeline's default False keeps the network's eps). eta = 1 adds the same noise, given as variance_noise."""
    model, ck, kw, x = step_case
    sched = float64_scheduler(DDIMScheduler, beta_schedule="linear", clip_sample=clip, set_alpha_to_one=True)
    sched.set_timesteps(10)
    noise = np.random.default_rng(11).standard_normal(x.shape)
    eps = diffusers_output(model, x, np.full(2, t), torch.float64)
    want = sched.step(torch.from_numpy(eps), t, torch.from_numpy(x), eta=eta, use_clipped_model_output=clip,
                      variance_noise=torch.from_numpy(noise))
    ref_eps, port_eps = _ours_eps(ck, kw, x, t)
    t_prev = t - 100 if t >= 100 else -1
    ours = RSch.Schedule(RSch.make_betas("linear", 1000))
    ref = RS.ddim_step(ours, ref_eps, x, np.full(2, t), np.full(2, t_prev), noise, eta=eta, clip_x0=clip)
    port = TS.ddim_step(TSch.Schedule(TSch.make_betas("linear", 1000)), port_eps, torch.from_numpy(x),
                        torch.full((2,), t), torch.full((2,), t_prev), torch.from_numpy(noise), eta=eta, clip_x0=clip)
    for side in (ref, [a.numpy() for a in port]):
        assert rel_max_error(side[0], want.prev_sample.numpy()) <= TOL["cross64"]
        assert rel_max_error(side[1], want.pred_original_sample.numpy()) <= TOL["cross64"]


def test_ddpm_cifar10_layout_maps_every_weight_one_to_one():
    """google/ddpm-cifar10-32's configuration: diffusers' state dict (on the meta device: shapes, no memory) has
    exactly the keys and shapes our parameters convert to, 35,746,307 numbers on both sides."""
    with torch.device("meta"):
        model = UNet2DModel(**DDPM_CIFAR10)
    kw = convert.unet_kwargs(DDPM_CIFAR10, convert._defaults(UNet2DModel))
    assert (kw["downsample_padding"], kw["norm_eps"], kw["attention"]) == ("same", 1e-6, (False, True, False, False))
    ours = RefUNet(**{k: v for k, v in kw.items()}).params
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in convert.params_to_diffusers(ours, 4).items()} == theirs
    assert sum(v.size for v in ours.values()) == sum(p.numel() for p in model.parameters()) == 35_746_307


@pytest.mark.slow
def test_ddpm_cifar10_layout_converts_and_agrees_on_one_forward(tmp_path, rng):
    """The full 35.7M-parameter model (~15 s on one thread): convert, then one float32 forward on each side."""
    model = random_unet(tmp_path / "unet", scale=0.02, **DDPM_CIFAR10)
    DDPMScheduler(clip_sample=True).save_config(tmp_path / "unet")
    ck = convert.from_diffusers(tmp_path / "unet")
    assert ck.config["data"] == "cifar10" and ck.config["image_size"] is None
    kw = convert.full_kwargs(ck.config["model"], 3)
    x, t = rng.standard_normal((1, 3, 32, 32)).astype(np.float32), np.array([500])
    want = diffusers_output(model, x, t)
    ref_out, port_out = outputs(*both_sides(ck, kw, np.float32), x, t)
    assert np.abs(want).max() > 0.1
    assert rel_max_error(port_out, want) <= TOL["net32"] and rel_max_error(ref_out, want) <= TOL["net32"]
