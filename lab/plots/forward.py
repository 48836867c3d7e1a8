"""The forward process on one image, and the photo to try it on."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from reference.errors import InputError

from .common import DPI, PANEL_PX, check_images, grid_array, save

SAMPLE_IMAGE = "grace_hopper.jpg"


def forward_timesteps(T, frames):
    """``frames`` 0-based indices evenly spaced over (0, T-1], the last step T-1 included: x_0 itself is the
    first panel, so the first noise level shown is one stride in (t = 0 would look the same as x_0)."""
    return np.unique(np.round(np.linspace(0, T - 1, frames + 1)[1:]).astype(np.int64))


def forward_process_figure(image, sched, path, frames=8, seed=0, q_sample=None, title=None):
    """x_0 then x_t ~ q(x_t | x_0) (F3) at ``frames`` evenly spaced t, one noise draw shared by all t.

    image   (C, H, W) or (1, C, H, W) in [-1, 1]
    sched   a Schedule (anything with .T and a NumPy-convertible .alpha_bar)
    q_sample  function (x0, t, eps) -> x_t on NumPy arrays; default reference.diffusion.q_sample
              (the CLI passes the torch port's, wrapped, for the torch backend)
    title   the figure's title, e.g. the schedule and T (default: "forward process, T=...")
    Each panel is titled with t (0-based) and alpha_bar_t, the signal fraction left.
    Size: (len(ts) + 1) * PANEL_PX / 2 wide, PANEL_PX / 2 + 60 high.
    """
    x0 = check_images(image, "image")[:1].astype(np.float64)           # (1, C, H, W)
    if q_sample is None:
        from reference import diffusion
        q_sample = lambda x, t, e: diffusion.q_sample(sched, x, t, e)  # noqa: E731
    eps = np.random.default_rng(seed).standard_normal(x0.shape)   # (1, C, H, W)
    ts = forward_timesteps(int(sched.T), frames)
    alpha_bar = np.asarray(sched.alpha_bar, dtype=np.float64)
    panels = [("x_0 (data)", x0)] + [
        (f"t={t}\nabar={alpha_bar[t]:.4g}", np.asarray(q_sample(x0, int(t), eps))) for t in ts]
    k, side = len(panels), PANEL_PX / 2
    fig, axes = plt.subplots(1, k, figsize=(k * side / DPI, (side + 60) / DPI), dpi=DPI, squeeze=False)
    for ax, (label, x) in zip(axes[0], panels):
        ax.imshow(grid_array(x, pad=0, scale=1), interpolation="nearest")
        ax.set_title(label, fontsize=8), ax.axis("off")
    fig.suptitle(title or f"forward process q(x_t | x_0), T={int(sched.T)} (t is 0-based)", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 60 / (side + 60), wspace=0.05)
    return save(fig, path)


def sample_image(size=64, channels=3):
    """Matplotlib's bundled photo (Grace Hopper) as (C, size, size) float32 in [-1, 1], center-cropped."""
    from ..data import load_image
    try:
        import matplotlib.cbook as cbook
        src = Path(cbook.get_sample_data(SAMPLE_IMAGE, asfileobj=False))
    except (OSError, ValueError) as e:
        raise InputError(f"matplotlib's sample image {SAMPLE_IMAGE} is not available ({e}); pass an image file") from e
    return load_image(src, size=size, channels=channels)
