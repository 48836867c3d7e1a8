"""`convert` of ADM's options against diffusers' own code (the independent route): norm="scale-shift" (B13) is
UNet2DModel's resnet_time_scale_shift="scale_shift" and num_heads (B14) its attention_head_dim = channels / heads,
both ways; what UNet2DModel cannot hold (heads of different widths) is refused naming num_heads."""
import numpy as np
import pytest
from gradcheck import rel_max_error
from tolerances import TOL

from lab import checkpoint
from lab.cli import main

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffusers import DDPMPipeline, DDPMScheduler  # noqa: E402
from interop import SMALL, diffusers_output, random_unet  # noqa: E402

from lab import convert  # noqa: E402
from lab.config import make_config  # noqa: E402
from reference.errors import InputError  # noqa: E402
from reference.unet import UNet as RefUNet  # noqa: E402
from torch_port.unet import UNet as PortUNet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NET = dict(base_channels=8, channel_mults=(1, 2), groups=4)  # digits' recipe levels: attention at 16 channels + mid


def _checkpoint(path, **model):
    c = make_config("digits", steps=3, model=dict(NET, **model))
    net, rng = RefUNet(in_channels=1, **c.model), np.random.default_rng(2)
    params = {k: (0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in net.params.items()}
    checkpoint.save(path, params, ema=params, config=c, step=3, extra={"backend": "reference", "item_shape": [1, 8, 8]})
    return checkpoint.load(path)


def _ours(params, kw, x, t):
    ref, port = RefUNet(**kw), PortUNet(**kw).eval()
    ref.load_params(params)
    port.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    with torch.no_grad():
        return ref.forward(x, t)[0], port(torch.from_numpy(x), torch.from_numpy(t)).numpy()


def test_B13_B14_a_scale_shift_multi_head_diffusers_model_converts_and_computes_diffusers_outputs(tmp_path):
    """attention_head_dim 8 at 32 channels: 4 heads at the attended level and the middle (attn_norm_num_groups: with
    scale_shift diffusers' middle attention has a GroupNorm only when it is given)."""
    model = random_unet(tmp_path / "unet", **dict(SMALL, resnet_time_scale_shift="scale_shift", attention_head_dim=8,
                                                   attn_norm_num_groups=8))
    DDPMScheduler().save_config(tmp_path / "unet")
    ck = convert.from_diffusers(tmp_path / "unet", data="cifar10")
    assert (ck.config["model"]["norm"], ck.config["model"]["num_heads"]) == ("scale-shift", 4)
    x, t = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32), np.array([0, 500, 999])
    want = diffusers_output(model, x, t)
    ref, port = _ours(ck.params, convert.full_kwargs(ck.config["model"], 3), x, t)
    assert rel_max_error(ref, want) <= TOL["net32"] and rel_max_error(port, want) <= TOL["net32"]
    one_head = _ours(ck.params, convert.full_kwargs(dict(ck.config["model"], num_heads=1), 3), x, t)[0]
    assert rel_max_error(one_head, want) > 1e2 * TOL["net32"]  # the heads change the function: they are used


def test_B13_B14_a_scale_shift_two_head_checkpoint_converts_to_diffusers_and_back(tmp_path, capsys):
    ck = _checkpoint(tmp_path / "c.npz", norm="scale-shift", num_heads=2)
    assert main(["convert", "--ckpt", str(tmp_path / "c.npz"), "--to-diffusers", str(tmp_path / "hf")],
                backend="reference") == 0
    unet = DDPMPipeline.from_pretrained(tmp_path / "hf", local_files_only=True, low_cpu_mem_usage=False).unet
    assert (unet.config.resnet_time_scale_shift, unet.config.attention_head_dim) == ("scale_shift", 8)
    x, t = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32), np.array([0, 400, 999])
    want = diffusers_output(unet, x, t)
    ref, port = _ours(ck.ema, convert.full_kwargs(ck.config["model"], 1), x, t)
    assert rel_max_error(ref, want) <= TOL["net32"] and rel_max_error(port, want) <= TOL["net32"]
    back = convert.from_diffusers(tmp_path / "hf")
    assert back.config == ck.config and all(np.array_equal(back.params[k], ck.ema[k]) for k in ck.ema)


def test_heads_of_different_widths_are_refused_naming_num_heads(tmp_path):
    """Attention at 8 and 16 channels with 2 heads: widths 4 and 8, while UNet2DModel has one attention_head_dim."""
    _checkpoint(tmp_path / "c.npz", attention=(True, True), num_heads=2)
    with pytest.raises(InputError, match=r"num_heads=2 gives heads of widths \[4, 8\]"):
        convert.to_diffusers(tmp_path / "c.npz", tmp_path / "hf")


def test_a_scale_shift_diffusers_model_whose_middle_attention_has_no_norm_is_refused_naming_the_field(tmp_path):
    random_unet(tmp_path / "unet", **dict(SMALL, resnet_time_scale_shift="scale_shift"))
    with pytest.raises(InputError, match="attn_norm_num_groups=None: its middle attention has no GroupNorm"):
        convert.from_diffusers(tmp_path / "unet", data="cifar10")
