"""Sample pictures: a grid of images or a scatter of 2-D points, each titled with what drew them; and an
inversion's data beside its reconstruction."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from reference.errors import InputError

from .common import (DPI, GRID_PAD, PANEL_PX, check_images, check_points, grid_array, limits, out_path, save,
                     scatter_panel, text_band, with_banner)


def image_grid(images, path, nrow=None, title=None):
    """Save NCHW images in [-1, 1] as one PNG grid (``grid_array``'s pixel size), under a title band of
    BANNER_PX when ``title`` is given (e.g. the checkpoint's step and the sampler)."""
    from PIL import Image

    pixels = grid_array(images, nrow)
    if title:
        pixels = with_banner(pixels, title)
    path = out_path(path)
    Image.fromarray(pixels).save(path)
    return path


def scatter_2d(points, path, reference=None, title=None):
    """Scatter (N, 2) points (blue) over optional reference data (grey), titled. PANEL_PX square PNG."""
    p = check_points(points)
    ref = None if reference is None else check_points(reference, "reference")
    fig, ax = plt.subplots(figsize=(PANEL_PX / DPI, PANEL_PX / DPI), dpi=DPI)
    scatter_panel(ax, p, ref, title=title)
    if ref is not None:
        ax.legend(loc="upper right", fontsize=7, markerscale=3)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.08, top=0.87)
    return save(fig, path)


def inversion_picture(x0, latents, recon, path, title=None, max_items=64):
    """An inversion, data | reconstruction. Images (NCHW in [-1, 1]): the first ``max_items`` data as a grid,
    a gap, the same items reconstructed, each half captioned, under ``title``. 2-D points: three PANEL_PX
    panels, the data, the latents x_T (beside N(0, I)'s unit circle) and the reconstruction over the data
    with a grey line from each point to its reconstruction. Same shapes for x0, latents and recon."""
    if not (np.shape(x0) == np.shape(latents) == np.shape(recon)):
        raise InputError(f"data, latents and reconstruction must have one shape, got {np.shape(x0)}, "
                         f"{np.shape(latents)}, {np.shape(recon)}")
    if np.ndim(x0) == 2:
        return _inversion_points(check_points(x0), check_points(latents, "latents"), check_points(recon, "recon"),
                                 path, title)
    from PIL import Image

    a = grid_array(check_images(x0)[:max_items])
    b = grid_array(np.clip(check_images(recon, "recon"), -1, 1)[:max_items])
    gap = np.full((a.shape[0], 4 * GRID_PAD * 4, 3), 255, dtype=np.uint8)
    body = np.concatenate([a, gap, b], axis=1)
    heads = text_band(body.shape[1], [(a.shape[1] / 2, "data x_0"),
                                      (a.shape[1] + gap.shape[1] + b.shape[1] / 2, "reconstruction")])
    pixels = with_banner(np.concatenate([heads, body]), title or "inversion: data | reconstruction")
    path = out_path(path)
    Image.fromarray(pixels).save(path)
    return path


def _inversion_points(x0, latents, recon, path, title):
    fig, axes = plt.subplots(1, 3, figsize=(3 * PANEL_PX / DPI, (PANEL_PX + 30) / DPI), dpi=DPI)
    lim = limits(x0, recon)
    scatter_panel(axes[0], x0, lim=lim, title="data x_0", label="data")
    scatter_panel(axes[1], latents, title="latents x_T (circle: N(0, I)'s 1 sd)", label="x_T")
    u = np.linspace(0, 2 * np.pi, 100)
    axes[1].plot(np.cos(u), np.sin(u), color="k", lw=0.8)
    segs = np.stack([x0, recon], axis=1)                              # (N, 2 ends, 2)
    for s in segs[:: max(1, len(segs) // 500)]:
        axes[2].plot(s[:, 0], s[:, 1], color="0.6", lw=0.4)
    scatter_panel(axes[2], recon, x0, lim=lim, title="reconstruction (lines: to its data point)",
                  label="reconstruction")
    axes[2].legend(loc="upper right", fontsize=7, markerscale=3)
    fig.suptitle(title or "inversion: data, latents, reconstruction", fontsize=9)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.06, top=0.82, wspace=0.15)
    return save(fig, path)
