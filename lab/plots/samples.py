"""Sample pictures: a grid of images or a scatter of 2-D points, each titled with what drew them; and an
inversion's data beside its reconstruction."""
from __future__ import annotations

import numpy as np

from reference.errors import InputError

from .common import (GRID_PAD, SCATTER_PX, check_images, check_points, grid_array, limits, out_path, save,
                     scatter_figure, scatter_panel, text_band, with_banner, wrap)

INVERSION_PANEL_PX = 480   # one of the three panels of a 2-D inversion


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
    """Scatter (N, 2) points (blue) over optional reference data (grey), titled (wrapped to the width).
    SCATTER_PX square PNG."""
    p = check_points(points)
    ref = None if reference is None else check_points(reference, "reference")
    fig, ax = scatter_figure(SCATTER_PX, SCATTER_PX)
    scatter_panel(ax, p, ref, title=title, title_px=SCATTER_PX - 20, fontsize=11)
    ax.tick_params(labelsize=9)
    if ref is not None:
        ax.legend(loc="upper right", fontsize=9, markerscale=3)
    return save(fig, path)


def inversion_picture(x0, latents, recon, path, title=None, max_items=64):
    """An inversion, data | reconstruction. Images (NCHW in [-1, 1]): the first ``max_items`` data as a grid,
    a gap, the same items reconstructed, each half captioned, under ``title``. 2-D points: three panels of
    INVERSION_PANEL_PX under a 60 px title, the data, the latents x_T (beside N(0, I)'s unit circle) and the
    reconstruction over the data with a grey line from each point to its reconstruction. Same shapes for x0,
    latents and recon."""
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
    side = INVERSION_PANEL_PX
    fig, axes = scatter_figure(3 * side, side + 60, 1, 3)
    lim, cap = limits(x0, recon), dict(title_px=side - 40, fontsize=10)
    scatter_panel(axes[0], x0, lim=lim, title="data x_0", label="data", **cap)
    scatter_panel(axes[1], latents, title="latents x_T (circle: N(0, I)'s 1 sd)", label="x_T", **cap)
    u = np.linspace(0, 2 * np.pi, 100)
    axes[1].plot(np.cos(u), np.sin(u), color="k", lw=0.8)
    segs = np.stack([x0, recon], axis=1)                              # (N, 2 ends, 2)
    for s in segs[:: max(1, len(segs) // 500)]:
        axes[2].plot(s[:, 0], s[:, 1], color="0.6", lw=0.4)
    scatter_panel(axes[2], recon, x0, lim=lim, title="reconstruction (lines: to its data point)",
                  label="reconstruction", **cap)
    axes[2].legend(loc="upper right", fontsize=8, markerscale=3)
    for ax in axes:
        ax.tick_params(labelsize=8)
    fig.suptitle(wrap(title or "inversion: data, latents, reconstruction", 3 * side - 20, 11), fontsize=11)
    return save(fig, path)


def recipes_figure(panels, path, per_panel_px=300):
    """Real data above samples, one column per (caption of the real row, caption of the sample row, real,
    samples) of ``panels``: sample_table's columns of two cells."""
    return sample_table([[(top, real), (bottom, fake)] for top, bottom, real, fake in panels], path, per_panel_px)


def sample_table(columns, path, per_panel_px=300, across=False):
    """A table of sample pictures, one column per entry of ``columns`` (a list of cells (caption, array), the
    same number in every column; e.g. a dataset's real data, then one sampler's samples per row), or with
    ``across`` one row per entry (the cells side by side): images (NCHW in [-1, 1], the first 36 as a 6 x 6 grid)
    or 2-D points (scatters on square axes, without ticks; the first cell grey, the rest blue, all on the first
    cell's square limits). Each cell per_panel_px wide and high, plus 10 px a row for the captions."""
    if not columns or not all(columns):
        raise InputError("no panels to draw" if not columns else "a column of sample_table has no cells")
    cells = {len(c) for c in columns}
    if len(cells) != 1:
        raise InputError(f"every column of sample_table needs the same number of cells, got {sorted(cells)}")
    k, r, side = len(columns), cells.pop(), int(per_panel_px)
    rows, cols = (k, r) if across else (r, k)
    fig, axes = scatter_figure(cols * side, rows * side + 10 * rows, rows, cols, squeeze=False)
    for j, column in enumerate(columns):
        first = np.asarray(column[0][1])
        lim = limits(check_points(first, f"column {j}'s first cell")) if first.ndim == 2 else None
        for i, (what, arr) in enumerate(column):
            ax, arr = (axes[j][i] if across else axes[i][j]), np.asarray(arr)
            if arr.ndim == 2:   # every cell of a column on its first cell's axes, so that spreads compare
                p = check_points(arr)
                ax.scatter(p[:, 0], p[:, 1], s=1, c="0.3" if i == 0 else "tab:blue", rasterized=True)
                ax.set_xlim(*lim), ax.set_ylim(*lim)
                ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
            else:
                ax.imshow(grid_array(check_images(arr)[:36], nrow=6, scale=1)), ax.axis("off")
            ax.set_title(wrap(what, side - 20, 9), fontsize=9)
    return save(fig, path)
