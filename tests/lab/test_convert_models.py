"""`convert` of every kind of model a run trains, both ways, against diffusers' own code (the independent route):
a class-conditional UNet (K classes and the null class), learned variances (2C outputs, learned_range), a model
whose item shape no dataset has (converted, then sampled with no dataset); the --to-diffusers folder is a
DDPMPipeline folder, its files have the modes open() gives. No download: every model is built here."""
import json
import os
import stat

import numpy as np
import pytest
from gradcheck import rel_max_error
from tolerances import TOL

from lab import checkpoint
from lab.cli import main

pytest.importorskip("diffusers")  # tests/lab/test_convert_cli.py runs without it
torch = pytest.importorskip("torch")

from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402
from interop import SMALL, diffusers_output, random_unet  # noqa: E402

from lab import convert  # noqa: E402
from lab.config import make_config  # noqa: E402
from reference.unet import UNet as RefUNet  # noqa: E402
from torch_port.unet import UNet as PortUNet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NET = dict(base_channels=8, channel_mults=(1, 2), groups=4)  # a 2-level UNet on digits' 1x8x8 items


def _checkpoint(path, out_channels=None, **cfg):
    """A reference UNet checkpoint of digits (1x8x8) with random weights, as train writes one; ``cfg``: the
    TrainConfig fields (model extras under ``model``)."""
    model = dict(NET, **cfg.pop("model", {}))
    c = make_config("digits", steps=3, model=model, **cfg)
    net, rng = RefUNet(in_channels=1, out_channels=out_channels, **c.model), np.random.default_rng(2)
    params = {k: (0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in net.params.items()}
    checkpoint.save(path, params, ema=params, config=c, step=3, extra={"backend": "reference", "item_shape": [1, 8, 8]})
    return checkpoint.load(path)


def _both_sides(ck, kw):
    ref, port = RefUNet(**kw), PortUNet(**kw).eval()
    ref.load_params(ck.params if ck.ema is None else ck.ema)
    port.load_state_dict({k: torch.from_numpy(v) for k, v in (ck.ema or ck.params).items()})

    def run(x, t, y=None):
        with torch.no_grad():
            p = port(torch.from_numpy(x), torch.from_numpy(t), None if y is None else torch.from_numpy(y)).numpy()
        return ref.forward(x, t, y)[0], p
    return run


def test_a_class_conditional_checkpoint_converts_with_its_null_class_and_back(tmp_path, capsys):
    """Our table has K + 1 rows, the last the null class (W1); diffusers' class_embedding with num_class_embeds =
    K + 1 adds row y to the time embedding as ours does, so diffusers' label K is our null class: every label
    0..K gives our outputs. Back: the same weights and configuration."""
    ck = _checkpoint(tmp_path / "c.npz", class_cond=True, model=dict(num_classes=10))
    assert main(["convert", "--ckpt", str(tmp_path / "c.npz"), "--to-diffusers", str(tmp_path / "hf")],
                backend="torch") == 0
    assert "num_class_embeds=11" in capsys.readouterr().out
    unet = DDPMPipeline.from_pretrained(tmp_path / "hf", local_files_only=True, low_cpu_mem_usage=False).unet
    assert unet.config.num_class_embeds == 11 and unet.config.class_embed_type is None
    y = np.arange(11)  # the ten classes and the null class, 10
    x = np.random.default_rng(0).standard_normal((11, 1, 8, 8)).astype(np.float32)
    t = np.random.default_rng(1).integers(0, 1000, 11)
    want = diffusers_output(unet, x, t, class_labels=y)
    ref, port = _both_sides(ck, convert.full_kwargs(ck.config["model"], 1))(x, t, y)
    assert rel_max_error(ref, want) <= TOL["net32"] and rel_max_error(port, want) <= TOL["net32"]
    other = diffusers_output(unet, x, t, class_labels=(y + 1) % 11)  # the label changes the function: it is used
    assert rel_max_error(other, want) > 1e3 * TOL["net32"]
    back = convert.from_diffusers(tmp_path / "hf")
    assert back.config == ck.config and all(np.array_equal(back.params[k], ck.ema[k]) for k in ck.ema)


def test_a_class_conditional_diffusers_model_without_our_record_reads_its_last_embedding_as_null(tmp_path):
    model = random_unet(tmp_path / "unet", **dict(SMALL, num_class_embeds=4))
    DDPMScheduler().save_config(tmp_path / "unet")
    with pytest.warns(UserWarning, match="null class 3"):
        ck = convert.from_diffusers(tmp_path / "unet", data="cifar10")
    assert ck.config["class_cond"] is True and ck.config["model"]["num_classes"] == 3
    x, t, y = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32), np.array([0, 9, 500, 999]), \
        np.array([0, 1, 2, 3])
    ours = RefUNet(**convert.full_kwargs(ck.config["model"], 3))
    ours.load_params(ck.params)
    assert rel_max_error(ours.forward(x, t, y)[0], diffusers_output(model, x, t, class_labels=y)) <= TOL["net32"]


def test_a_learned_variance_checkpoint_is_out_channels_2c_with_learned_range_and_back(tmp_path):
    """V1's 2C outputs (the mean's C, then the interpolation's C) are the whole UNet2DModel output; the
    scheduler's learned_range is V1's interpolation (its step: tests/cross/test_diffusers_cross.py)."""
    ck = _checkpoint(tmp_path / "c.npz", out_channels=2, variance="learned", loss="hybrid")
    assert main(["convert", "--ckpt", str(tmp_path / "c.npz"), "--to-diffusers", str(tmp_path / "hf")],
                backend="reference") == 0
    pipe = DDPMPipeline.from_pretrained(tmp_path / "hf", local_files_only=True, low_cpu_mem_usage=False)
    assert (pipe.unet.config.in_channels, pipe.unet.config.out_channels) == (1, 2)
    assert pipe.scheduler.config.variance_type == "learned_range"
    x, t = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32), np.array([0, 400, 999])
    want = diffusers_output(pipe.unet, x, t)
    ref, port = _both_sides(ck, convert.full_kwargs(ck.config["model"], 1, "learned"))(x, t)
    assert want.shape == (3, 2, 8, 8) and rel_max_error(ref, want) <= TOL["net32"] and rel_max_error(port, want) <= \
        TOL["net32"]
    back = convert.from_diffusers(tmp_path / "hf")
    assert back.config == ck.config and back.extra["sampling"]["variance"] == "learned"
    assert all(np.array_equal(back.params[k], ck.ema[k]) for k in ck.ema)


def test_a_learned_range_diffusers_model_reads_as_learned_variances(tmp_path, capsys):
    random_unet(tmp_path / "unet", **dict(SMALL, out_channels=6))
    DDPMScheduler(variance_type="learned_range").save_config(tmp_path / "unet")
    ck = convert.from_diffusers(tmp_path / "unet", data="cifar10")
    assert (ck.config["variance"], ck.config["loss"]) == ("learned", "hybrid")  # the bound trains them (V4)
    assert "out_channels" not in ck.config["model"]  # 2C follows from the variance, as train's build_model does
    checkpoint.save(tmp_path / "c.npz", ck.params, config=ck.config, extra=ck.extra)
    assert main(["sample", "--ckpt", str(tmp_path / "c.npz"), "--n", "2", "--out", str(tmp_path / "s.npy"),
                 "--sampler", "ddpm", "--sample-steps", "3"], backend="reference") == 0
    assert np.load(tmp_path / "s.npy").shape == (2, 3, 8, 8)
    DDPMScheduler(variance_type="learned_range").save_config(tmp_path / "three")
    random_unet(tmp_path / "three", **SMALL)
    with pytest.raises(Exception, match="learned_range', which needs a network with 2 x in_channels = 6 outputs"):
        convert.from_diffusers(tmp_path / "three", data="cifar10")


def test_the_pipeline_folder_loads_in_diffusers_and_the_earlier_flat_layout_still_converts(tmp_path):
    """--to-diffusers writes DDPMPipeline.save_pretrained's layout; a folder in this project's earlier layout
    (config.json, weights, scheduler_config.json and ddpm_executable.json side by side) reads the same."""
    ck = _checkpoint(tmp_path / "c.npz")
    convert.to_diffusers(tmp_path / "c.npz", tmp_path / "hf")
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"model_index.json", "unet", "scheduler",
                                                            convert.SIDE_FILE}
    assert json.loads((tmp_path / "hf" / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in [*(tmp_path / "hf" / "unet").iterdir(), *(tmp_path / "hf" / "scheduler").iterdir(),
              tmp_path / "hf" / convert.SIDE_FILE]:
        (flat / f.name).write_bytes(f.read_bytes())
    for folder in (tmp_path / "hf", flat):
        back = convert.from_diffusers(folder)
        assert back.config == ck.config and all(np.array_equal(back.params[k], ck.ema[k]) for k in ck.ema)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_written_has_the_mode_open_gives(tmp_path, umask):
    _checkpoint(tmp_path / "c.npz")
    old = os.umask(umask)
    try:
        convert.to_diffusers(tmp_path / "c.npz", tmp_path / "hf")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").rglob("*")
             if p.is_file()}
    assert "hf/unet/diffusion_pytorch_model.safetensors" in modes
    assert modes == {k: 0o666 & ~umask for k in modes}, {k: oct(v) for k, v in modes.items()}


def test_a_model_of_a_shape_no_dataset_has_converts_and_samples_with_no_dataset(tmp_path, capsys):
    """3x12x12: no dataset's items. convert records the shape and no dataset; sample needs none (on both
    sides); eval asks for --data by name."""
    random_unet(tmp_path / "unet", **dict(SMALL, sample_size=12))
    DDPMScheduler().save_config(tmp_path / "unet")
    out = tmp_path / "c.npz"
    assert main(["convert", "--from-diffusers", str(tmp_path / "unet"), "--out", str(out)], backend="torch") == 0
    assert "no dataset recorded (no dataset has items of 3x12x12)" in capsys.readouterr().out
    ck = checkpoint.load(out)
    assert ck.config["data"] is None and ck.extra["item_shape"] == [3, 12, 12]
    for backend in ("reference", "torch"):
        s = tmp_path / f"{backend}.npy"
        assert main(["sample", "--ckpt", str(out), "--n", "2", "--out", str(s), "--sampler", "ddim",
                     "--sample-steps", "3"], backend=backend) == 0
        assert np.load(s).shape == (2, 3, 12, 12) and s.with_suffix(".png").is_file()
        assert "3x12x12 (no dataset) run" in capsys.readouterr().out
    assert rel_max_error(np.load(tmp_path / "reference.npy"), np.load(tmp_path / "torch.npy")) <= TOL["net32"]
    assert main(["eval", "--ckpt", str(out), "--n", "4"], backend="reference") == 2
    assert "records no dataset" in (err := capsys.readouterr().err) and "give --data NAME" in err, err
    convert.to_diffusers(out, tmp_path / "hf")  # and back to diffusers at its own size
    assert UNet2DModel.load_config(tmp_path / "hf" / "unet")["sample_size"] == 12
