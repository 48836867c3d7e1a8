"""Sample pictures: a grid of images or a scatter of 2-D points, each titled with what drew them."""
from __future__ import annotations

import matplotlib.pyplot as plt

from .common import DPI, PANEL_PX, check_points, grid_array, out_path, save, scatter_panel, with_banner


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
