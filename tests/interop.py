"""What the diffusers interop tests share: UNet2DModel configurations of DDPM's layout, a model with random
weights saved into a folder, and diffusers' time embedding run in float64.

Tests import this module only after ``pytest.importorskip("diffusers")``.
"""
import contextlib
import inspect
from unittest import mock

import numpy as np
import torch

# google/ddpm-cifar10-32's UNet2DModel configuration (35,746,307 parameters), every field that matters stated
DDPM_CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                    layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32,
                    norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None,
                    mid_block_scale_factor=1, center_input_sample=False, time_embedding_type="positional",
                    act_fn="silu", resnet_time_scale_shift="default")
# the same layout, small: three levels, attention at the middle one, a 1x1 shortcut where channels change
SMALL = dict(DDPM_CIFAR10, sample_size=8, block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
             down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def random_unet(folder=None, seed=0, scale=0.2, **config):
    """A UNet2DModel of ``config`` (default SMALL) with every weight N(0, scale^2) (GroupNorm scales around 1),
    in eval mode; saved with save_pretrained into ``folder`` when given."""
    import diffusers
    import pytest

    config = config or SMALL
    unknown = sorted(set(config) - set(inspect.signature(diffusers.UNet2DModel.__init__).parameters))
    if unknown:
        pytest.skip(f"diffusers {diffusers.__version__}'s UNet2DModel has no argument {unknown}")
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, scale)
    if folder is not None:
        model.save_pretrained(folder)
    return model


@contextlib.contextmanager
def _float32_read_as_float64():
    """While it runs, torch.float32 is torch.float64 and the default dtype is float64."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with mock.patch.object(torch, "float32", torch.float64):
            yield
    finally:
        torch.set_default_dtype(default)


@contextlib.contextmanager
def float64_time_embedding():
    """diffusers' own get_timestep_embedding in float64: it builds its frequencies with dtype=torch.float32 and
    casts t with .float() (exact: t is an integer); with torch.float32 read as float64 while it runs, the
    frequencies are float64 and the product promotes. Without this, diffusers' embedding is float32 whatever
    the model's dtype (sin(999 f) then carries ~1e-4 of rounding), and no float64 comparison can pass."""
    import diffusers.models.embeddings as E

    original = E.get_timestep_embedding

    def in_float64(*args, **kwargs):
        with _float32_read_as_float64():
            return original(*args, **kwargs)

    with mock.patch.object(E, "get_timestep_embedding", in_float64):
        yield


def float64_scheduler(cls, **config):
    """A diffusers scheduler whose tables (betas, alphas_cumprod, ...) its own code computes in float64: it
    asks for torch.float32 (or the default dtype), read as float64 while it is built. Its float32 tables
    carry ~eps32 / (1 - alpha_bar_t) of rounding (3e-4 relative at t = 1 of the linear schedule), so only
    float64 tables test the step's formula itself."""
    with _float32_read_as_float64():
        return cls(**config)


def diffusers_output(model, x, t, dtype=torch.float32, class_labels=None):
    """model(x, t, class_labels).sample as NumPy, the model cast to ``dtype`` (float64: with
    float64_time_embedding); ``class_labels`` (N,) ints for a model with num_class_embeds."""
    model = model.to(dtype)
    labels = None if class_labels is None else torch.from_numpy(np.asarray(class_labels, dtype=np.int64))
    with torch.no_grad(), (float64_time_embedding() if dtype == torch.float64 else contextlib.nullcontext()):
        return model(torch.from_numpy(np.asarray(x)).to(dtype), torch.from_numpy(np.asarray(t)),
                     class_labels=labels).sample.numpy()
