"""`convert` of ADM's resblock_updown (B15) against diffusers' own code (the independent route): it is UNet2DModel's
downsample_type / upsample_type "resnet" (AttnDown/UpBlock2D) with ResnetDownsample/UpsampleBlock2D at the levels
without attention, both ways, numerically in float64; transitions of both kinds are refused naming the fields."""
import numpy as np
import pytest
from gradcheck import rel_max_error
from tolerances import TOL

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffusers import DDPMPipeline, DDPMScheduler  # noqa: E402
from interop import SMALL, diffusers_output, random_unet  # noqa: E402

from lab import checkpoint, convert  # noqa: E402
from lab.cli import main  # noqa: E402
from lab.config import make_config  # noqa: E402
from reference.errors import InputError  # noqa: E402
from reference.unet import UNet as RefUNet  # noqa: E402
from torch_port.unet import UNet as PortUNet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RESNET = dict(SMALL, down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "DownBlock2D"),
              up_block_types=("ResnetUpsampleBlock2D", "AttnUpBlock2D", "UpBlock2D"), downsample_type="resnet",
              upsample_type="resnet", downsample_padding=1)


def _ours(params, kw, x, t):  # both sides in float64
    kw = dict(kw, dtype="float64")
    ref, port = RefUNet(**kw), PortUNet(**dict(kw, dtype=torch.float64)).eval()
    ref.load_params(params)
    port.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in params.items()})
    with torch.no_grad():
        return ref.forward(x, t)[0], port(torch.from_numpy(x), torch.from_numpy(t)).numpy()


def test_B15_a_resnet_updown_diffusers_model_converts_and_computes_diffusers_outputs_in_float64(tmp_path):
    model = random_unet(tmp_path / "unet", **RESNET)
    DDPMScheduler().save_config(tmp_path / "unet")
    ck = convert.from_diffusers(tmp_path / "unet", data="cifar10")
    assert ck.config["model"]["resblock_updown"] is True
    assert any(k.startswith("up.1.upsample.conv1") for k in ck.params)
    x, t = np.random.default_rng(0).standard_normal((2, 3, 8, 8)), np.array([0, 999])
    want = diffusers_output(model, x, t, dtype=torch.float64)
    ref, port = _ours(ck.params, convert.full_kwargs(ck.config["model"], 3), x, t)
    assert rel_max_error(ref, want) <= TOL["net64"] and rel_max_error(port, want) <= TOL["net64"]


def test_B15_a_resblock_updown_checkpoint_converts_to_diffusers_and_back(tmp_path):
    c = make_config("digits", steps=3, model=dict(base_channels=8, channel_mults=(1, 2, 2), groups=4,
                                                  attention=(False, True, False), resblock_updown=True))
    net, rng = RefUNet(in_channels=1, **c.model), np.random.default_rng(2)
    params = {k: (0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in net.params.items()}
    checkpoint.save(tmp_path / "c.npz", params, ema=params, config=c, step=3,
                    extra={"backend": "reference", "item_shape": [1, 8, 8]})
    ck = checkpoint.load(tmp_path / "c.npz")
    assert main(["convert", "--ckpt", str(tmp_path / "c.npz"), "--to-diffusers", str(tmp_path / "hf")],
                backend="reference") == 0
    unet = DDPMPipeline.from_pretrained(tmp_path / "hf", local_files_only=True, low_cpu_mem_usage=False).unet
    assert (unet.config.downsample_type, unet.config.upsample_type) == ("resnet", "resnet")
    assert list(unet.config.down_block_types) == ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"]
    x, t = np.random.default_rng(0).standard_normal((2, 1, 8, 8)), np.array([0, 400])
    want = diffusers_output(unet, x, t, dtype=torch.float64)
    ref, port = _ours(ck.ema, convert.full_kwargs(ck.config["model"], 1), x, t)
    assert rel_max_error(ref, want) <= TOL["net64"] and rel_max_error(port, want) <= TOL["net64"]
    back = convert.from_diffusers(tmp_path / "hf")
    assert back.config == ck.config and all(np.array_equal(back.params[k], ck.ema[k]) for k in ck.ema)


@pytest.mark.parametrize("edit", [dict(downsample_type="conv", upsample_type="conv"),  # resnet and conv levels
                                  dict(down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"))])
def test_transitions_of_both_kinds_are_refused_naming_the_fields(tmp_path, edit):
    random_unet(tmp_path / "unet", **dict(RESNET, **edit))
    with pytest.raises(InputError, match="level transitions are \\['conv', 'resnet'\\]"):
        convert.from_diffusers(tmp_path / "unet", data="cifar10")
