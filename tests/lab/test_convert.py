"""lab/convert.py and `convert`: the round trips, a model trained here handed to diffusers, what sample does with a
converted checkpoint, and every refusal (a field our UNet cannot express, a missing, extra or misshapen weight,
a schedule the configuration cannot name, diffusers missing). No download: models are built here."""
import json

import numpy as np
import pytest
from gradcheck import rel_max_error
from tolerances import TOL

from lab import checkpoint
from lab.cli import main
from reference.errors import InputError


pytest.importorskip("diffusers")  # tests/lab/test_convert_cli.py runs without it
torch = pytest.importorskip("torch")

from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402
from interop import SMALL, diffusers_output, random_unet  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from lab import convert  # noqa: E402
from lab.config import make_config  # noqa: E402
from reference.unet import UNet as RefUNet  # noqa: E402
from torch_port.unet import UNet as PortUNet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture
def folder(tmp_path):
    """A random SMALL UNet2DModel saved with DDPM's scheduler config; 3x8x8 items, so --data cifar10."""
    random_unet(tmp_path / "unet")
    DDPMScheduler(clip_sample=True).save_config(tmp_path / "unet")
    return tmp_path / "unet"


def edit_json(path, **fields):
    d = json.loads(path.read_text())
    d.update(fields)
    path.write_text(json.dumps(d))


def _project_checkpoint(path, **model):
    """A reference UNet checkpoint with random params and a different EMA, as train writes one (digits, 1x8x8)."""
    cfg = make_config("digits", steps=3, model=dict(base_channels=8, channel_mults=(1, 2), groups=4, **model))
    net, rng = RefUNet(in_channels=1, **cfg.model), np.random.default_rng(1)
    params = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in net.params.items()}
    ema = {k: (v * 0.5).astype(np.float32) for k, v in params.items()}
    checkpoint.save(path, params, ema=ema, config=cfg, step=3, extra={"backend": "reference", "item_shape": [1, 8, 8]})
    return checkpoint.load(path)


@pytest.mark.parametrize("model", [dict(), dict(downsample_padding="same", norm_eps=1e-6, mid_attention=False)])
def test_ours_to_diffusers_and_back_is_bit_exact(model, tmp_path):
    ck = _project_checkpoint(tmp_path / "ckpt.npz", **model)
    convert.to_diffusers(tmp_path / "ckpt.npz", tmp_path / "hf")
    back = convert.from_diffusers(tmp_path / "hf")
    assert back.params.keys() == ck.ema.keys()  # the EMA weights went (what samples use)
    assert all(back.params[k].dtype == ck.ema[k].dtype and np.array_equal(back.params[k], ck.ema[k]) for k in ck.ema)
    assert back.config == ck.config and back.step == ck.step == 3
    convert.to_diffusers(tmp_path / "ckpt.npz", tmp_path / "raw", use_ema=False)
    raw = convert.from_diffusers(tmp_path / "raw")
    assert all(np.array_equal(raw.params[k], ck.params[k]) for k in ck.params)


def test_diffusers_to_ours_and_back_is_bit_exact(folder, tmp_path):
    ck = convert.from_diffusers(folder, data="cifar10")
    checkpoint.save(tmp_path / "c.npz", ck.params, config=ck.config, extra=ck.extra)
    convert.to_diffusers(tmp_path / "c.npz", tmp_path / "back")
    a, b = load_file(str(folder / WEIGHTS)), load_file(str(tmp_path / "back" / "unet" / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kept = {"block_out_channels", "down_block_types", "up_block_types", "norm_eps", "downsample_padding"}
    assert {k: v for k, v in UNet2DModel.load_config(tmp_path / "back" / "unet").items() if k in kept} == \
        {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items() if k in kept}


def test_legacy_attention_names_and_bin_weights_convert_to_the_same_parameters(folder, tmp_path):
    """Early diffusers saved attention as query/key/value/proj_attn (its deprecated AttentionBlock; diffusers
    still renames them on load, for checkpoints such as the hub's first DDPM uploads); .bin files are read with
    torch.load(weights_only=True)."""
    want = convert.from_diffusers(folder, data="cifar10").params
    sd = load_file(str(folder / WEIGHTS))
    legacy = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
              .replace(".to_out.0.", ".proj_attn."): v for k, v in sd.items()}
    assert any(".query." in k for k in legacy)
    (folder / WEIGHTS).unlink()
    torch.save(legacy, folder / "diffusion_pytorch_model.bin")
    got = convert.from_diffusers(folder, data="cifar10").params
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_a_pipeline_folder_converts_from_its_unet_and_scheduler_subfolders(folder, tmp_path):
    """DDPMPipeline.save_pretrained's layout (unet/, scheduler/, model_index.json), as the hub's DDPM repositories."""
    from diffusers import DDPMPipeline

    unet = UNet2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2")).save_pretrained(tmp_path / "p")
    ck, want = convert.from_diffusers(tmp_path / "p", data="cifar10"), convert.from_diffusers(folder, data="cifar10")
    assert ck.config["schedule"] == "cosine" and all(np.array_equal(ck.params[k], want.params[k]) for k in want.params)


def test_a_model_trained_here_loads_in_diffusers_and_gives_the_same_outputs(tmp_path, capsys):
    """--to-diffusers writes a pipeline folder: DDPMPipeline.from_pretrained loads it, from disk."""
    from diffusers import DDPMPipeline

    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "4", "--base-channels", "8",
                 "--channel-mults", "1,2", "--groups", "4", "--batch-size", "8", "--sample-every", "0",
                 "--no-final-samples", "--device", "cpu", "--quiet"], backend="torch") == 0
    assert main(["convert", "--ckpt", str(run / "ckpt.npz"), "--to-diffusers", str(tmp_path / "hf")],
                backend="torch") == 0
    assert "check: the torch port" in capsys.readouterr().out
    pipe = DDPMPipeline.from_pretrained(tmp_path / "hf", local_files_only=True, low_cpu_mem_usage=False)
    model, sched = pipe.unet, pipe.scheduler
    assert type(model).__name__ == "UNet2DModel" and type(sched).__name__ == "DDPMScheduler"
    ck = checkpoint.load(run / "ckpt.npz")
    kw = convert.full_kwargs(ck.config["model"], 1)
    port, ref = PortUNet(**kw), RefUNet(**kw)
    port.load_state_dict({k: torch.from_numpy(v) for k, v in ck.ema.items()})  # what convert wrote: the EMA
    ref.load_params(ck.ema)
    x, t = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32), np.array([0, 400, 999])
    want = diffusers_output(model, x, t)
    with torch.no_grad():
        got = port(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert np.abs(want).max() > 0  # 4 steps from a zero last layer: small outputs, compared relative to their size
    assert rel_max_error(got, want) <= TOL["net32"] and rel_max_error(ref.forward(x, t)[0], want) <= TOL["net32"]
    assert (sched.config.beta_schedule, sched.config.num_train_timesteps) == ("squaredcos_cap_v2", ck.config["T"])


def test_converted_checkpoint_samples_on_both_sides_with_the_same_numbers(folder, tmp_path, capsys):
    out = tmp_path / "c.npz"
    assert main(["convert", "--from-diffusers", str(folder), "--out", str(out), "--data", "cifar10"],
                backend="reference") == 0
    assert "check: the NumPy reference" in capsys.readouterr().out
    for backend in ("reference", "torch"):
        assert main(["sample", "--ckpt", str(out), "--n", "2", "--out", str(tmp_path / f"{backend}.npy"),
                     "--sampler", "ddim", "--sample-steps", "3"], backend=backend) == 0
    a, b = np.load(tmp_path / "reference.npy"), np.load(tmp_path / "torch.npy")
    assert a.shape == (2, 3, 8, 8) and rel_max_error(a, b) <= TOL["net32"]


@pytest.mark.parametrize("field,value,words", [
    ("attention_head_dim", 12, "attention_head_dim=12"),  # 32 channels: no whole number of heads (B14)
    ("resnet_time_scale_shift", "ada_group", "resnet_time_scale_shift='ada_group'"),  # default, scale_shift convert
    ("mid_block_scale_factor", 2, "mid_block_scale_factor=2"),
    ("flip_sin_to_cos", True, "flip_sin_to_cos=True"),
    ("freq_shift", 0, "freq_shift=0"),
    ("time_embedding_type", "fourier", "time_embedding_type='fourier'"),
    ("center_input_sample", True, "center_input_sample=True"),
    ("num_class_embeds", 1, "num_class_embeds=1"),  # K + 1 >= 2: a class and the null class
    ("class_embed_type", "timestep", "class_embed_type='timestep'"),
    ("down_block_types", ["DownBlock2D", "SkipDownBlock2D", "DownBlock2D"], "down_block_types[1]='SkipDownBlock2D'"),
    ("up_block_types", ["UpBlock2D", "UpBlock2D", "UpBlock2D"], "up_block_types="),
    ("block_out_channels", [16, 24, 32], "block_out_channels=[16, 24, 32]"),
    ("downsample_padding", 2, "downsample_padding=2"),
    ("attn_norm_num_groups", 4, "attn_norm_num_groups=4"),
    ("_class_name", "UNet2DConditionModel", "UNet2DModel config.json"),
])
def test_a_configuration_our_unet_cannot_express_is_refused_naming_the_field(folder, field, value, words):
    edit_json(folder / "config.json", **{field: value})
    with pytest.raises(InputError, match=words.replace("[", "\\[").replace("(", "\\(")):
        convert.from_diffusers(folder, data="cifar10")


@pytest.mark.parametrize("field,value,words", [
    ("beta_schedule", "exponential", "beta_schedule='exponential'"),
    ("beta_start", 0.00085, "beta_start=0.00085"),
    ("beta_end", 0.012, "beta_end=0.012"),
    ("trained_betas", [0.1, 0.2], "trained_betas"),
    ("prediction_type", "flow", "prediction_type='flow'"),
    ("variance_type", "learned", "variance_type='learned'"),  # the raw log-variance: not V1's learned_range
    ("thresholding", True, "thresholding"),
    ("clip_sample_range", 2.0, "clip_sample_range=2.0"),
])
def test_a_schedule_the_configuration_cannot_name_is_refused_naming_the_field(folder, field, value, words):
    edit_json(folder / "scheduler_config.json", **{field: value})
    with pytest.raises(InputError, match=words.replace("[", "\\[")):
        convert.from_diffusers(folder, data="cifar10")


def test_scheduler_settings_map_to_the_project_s_names(folder):
    edit_json(folder / "scheduler_config.json", beta_schedule="scaled_linear", prediction_type="v_prediction",
              num_train_timesteps=500, variance_type="fixed_large", clip_sample=False, timestep_spacing="trailing")
    ck = convert.from_diffusers(folder, data="cifar10")
    assert (ck.config["T"], ck.config["schedule"], ck.config["prediction"]) == (500, "quadratic", "v")
    assert ck.extra["sampling"] == dict(variance="fixed_large", clip_x0=False, spacing="trailing")
    (folder / "scheduler_config.json").unlink()
    with pytest.warns(UserWarning, match="DDPMScheduler's defaults"):
        ck = convert.from_diffusers(folder, data="cifar10")
    assert (ck.config["T"], ck.config["schedule"], ck.config["prediction"]) == (1000, "linear", "eps")


def test_missing_extra_and_misshapen_weights_are_refused_naming_them(folder):
    sd = load_file(str(folder / WEIGHTS))
    save_file({k: v for k, v in sd.items() if k != "mid_block.attentions.0.to_k.bias"}, str(folder / WEIGHTS))
    with pytest.raises(InputError, match=r"missing \[mid_block.attentions.0.to_k.bias\], unexpected \[\]"):
        convert.from_diffusers(folder, data="cifar10")
    save_file(dict(sd, **{"extra.weight": torch.zeros(3)}), str(folder / WEIGHTS))
    with pytest.raises(InputError, match=r"missing \[\], unexpected \[extra.weight\]"):
        convert.from_diffusers(folder, data="cifar10")
    save_file(dict(sd, **{"conv_in.weight": torch.zeros(16, 3, 1, 1)}), str(folder / WEIGHTS))
    with pytest.raises(InputError, match=r"'conv_in.weight' has shape \(16, 3, 1, 1\), the configuration gives "
                                         r"\(16, 3, 3, 3\)"):
        convert.from_diffusers(folder, data="cifar10")
    (folder / WEIGHTS).unlink()
    with pytest.raises(InputError, match="has no diffusion_pytorch_model.safetensors or"):
        convert.from_diffusers(folder, data="cifar10")


def test_the_command_refuses_bad_flags_and_inputs(folder, tmp_path, capsys):
    def fails(argv, words):
        assert main(["convert"] + argv, backend="torch") == 2
        assert words in capsys.readouterr().err
    fails(["--from-diffusers", str(folder)], "needs --out FILE.npz")
    fails(["--from-diffusers", str(folder), "--out", str(tmp_path / "x.png")],
          "--out must name the .npz checkpoint to write, got")
    fails(["--from-diffusers", str(folder), "--out", str(tmp_path / "c.npz"), "--no-ema"],
          "--no-ema goes with --ckpt, not --from-diffusers")
    fails(["--ckpt", str(tmp_path / "c.npz"), "--to-diffusers", str(tmp_path / "hf"), "--data", "digits"],
          "--data goes with --from-diffusers, not --ckpt")
    fails(["--ckpt", str(tmp_path / "nothing.npz"), "--to-diffusers", str(tmp_path / "hf")], "no such file")
    (tmp_path / "file").write_text("")
    fails(["--ckpt", str(tmp_path / "nothing.npz"), "--to-diffusers", str(tmp_path / "file")], "is a file")
    fails(["--from-diffusers", str(folder), "--out", str(tmp_path / "c.npz"), "--data", "mnist"], "has items of shape")
    fails(["--from-diffusers", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.npz")], "no such folder")
    fails(["--ckpt", str(tmp_path / "c.npz")], "needs --to-diffusers DIR")
    cfg = make_config("moons", steps=2)
    checkpoint.save(tmp_path / "mlp.npz", {"w": np.zeros(2)}, config=cfg, extra={"item_shape": [2]})
    fails(["--ckpt", str(tmp_path / "mlp.npz"), "--to-diffusers", str(tmp_path / "hf")], "only UNets convert")
