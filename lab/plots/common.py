"""What every picture shares: the Agg backend, fixed sizes, input checks, image tiles and titled banners.

Every function of lab.plots takes NumPy arrays in model space (images NCHW in [-1, 1], points (N, 2)),
writes one file and returns its path. Figures are drawn at a fixed size and DPI (no tight bounding box),
so a picture's pixel size is known in advance: PANEL_PX per panel unless a function says otherwise, and
SCATTER_PX for a 2-D scatter that stands alone. Scatters are laid out by matplotlib's constrained layout, which
moves the axes (not the figure's edges) until every title, tick label and legend fits inside the figure.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: must come before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reference.errors import InputError, check_finite  # noqa: E402

from ..data import to_uint8  # noqa: E402

DPI = 100
PANEL_PX = 300          # one matplotlib panel is PANEL_PX x PANEL_PX pixels
SCATTER_PX = 600        # a 2-D scatter standing alone: room for a wrapped title, ticks and a legend at 8-11 pt
GRID_PAD = 2            # pixels between images in a grid (before upscaling)
MIN_IMAGE_PX = 64       # tiny images are upscaled (nearest) until each is at least this many pixels
BANNER_PX = 22          # height of the title band above a PIL-drawn picture


def out_path(path):
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_images(images, name="images"):
    """Validate NCHW images with C in {1, 3}; a single (C, H, W) image becomes a batch of one."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise InputError(f"{name} must be NCHW with C = 1 or 3 (or one CHW image), got shape {x.shape}")
    return check_finite(x, name)


def check_points(points, name="points"):
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 2:
        raise InputError(f"{name} must have shape (N, 2), got {p.shape}")
    return check_finite(p, name)


def upscale_factor(h):
    """Nearest-neighbour factor for images of height h: 8 -> 8, 28 -> 3, 32 -> 2, >= 64 -> 1."""
    return max(1, math.ceil(MIN_IMAGE_PX / h))


def grid_array(images, nrow=None, pad=GRID_PAD, scale=None):
    """Tile NCHW images in [-1, 1] into one uint8 (H', W', 3) array, ``nrow`` images per row.

    nrow defaults to ceil(sqrt(N)). Size before upscaling: rows * (H + pad) + pad by
    nrow * (W + pad) + pad, padding white; then each pixel is repeated ``scale`` times
    (default ``upscale_factor(H)``).
    """
    x = check_images(images)
    n, c, h, w = x.shape
    nrow = int(nrow or math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    u8 = to_uint8(x).transpose(0, 2, 3, 1)                       # (N, H, W, C)
    if c == 1:
        u8 = np.repeat(u8, 3, axis=3)                            # (N, H, W, 3)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = u8[i]
    s = upscale_factor(h) if scale is None else int(scale)
    return np.repeat(np.repeat(grid, s, axis=0), s, axis=1)


def font(size=13):
    """PIL's bundled font at ``size`` pixels (Pillow >= 10.1), else its fixed bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: one size only
        return ImageFont.load_default()


def text_band(width, items, height=BANNER_PX):
    """A white uint8 (height, width, 3) band with each (x, text) of ``items`` written centred at x
    (x None: left-aligned at 4 px)."""
    from PIL import Image, ImageDraw

    band = Image.new("RGB", (int(width), height), "white")
    draw, f = ImageDraw.Draw(band), font()
    for x, text in items:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
        x0 = 4 if x is None else int(x - (right - left) / 2)
        draw.text((max(0, x0), (height - (bottom - top)) // 2 - top), text, fill="black", font=f)
    return np.asarray(band)


def text_width(text):
    from PIL import Image, ImageDraw

    left, _, right, _ = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font())
    return right - left


def with_banner(pixels, text):
    """A uint8 (H, W, 3) picture with a white band of BANNER_PX on top holding ``text``, widened with
    white if the text needs more room: (H + BANNER_PX, max(W, text width + 8), 3)."""
    h, w = pixels.shape[:2]
    width = max(w, text_width(text) + 8)
    body = np.full((h, width, 3), 255, dtype=np.uint8)
    body[:, (width - w) // 2:(width - w) // 2 + w] = pixels
    return np.concatenate([text_band(width, [(None, text)]), body])


def limits(*arrays):
    """Shared square axis limits covering the 0.5..99.5 percentiles of all points, with a margin."""
    allp = np.concatenate([a for a in arrays if a is not None])
    lo, hi = np.percentile(allp, [0.5, 99.5])
    half = 0.55 * (hi - lo) + 1e-6
    mid = 0.5 * (hi + lo)
    return mid - half, mid + half


def wrap(text, width_px, fontsize):
    """``text`` broken into lines that fit ``width_px`` pixels at ``fontsize`` points (every word kept). The
    width of a character is taken as 0.6 em, wider than the mean of DejaVu Sans, so a line never overruns."""
    per_line = max(12, int(width_px / (0.6 * fontsize * DPI / 72)))
    return "\n".join(textwrap.fill(line, per_line) for line in str(text).splitlines())


def scatter_figure(width_px, height_px, nrows=1, ncols=1, **kw):
    """(fig, axes) of exactly width_px x height_px pixels at DPI, with constrained layout, its padding at the
    figure's edge 8 px (twice matplotlib's default, with which the bottom tick labels of a strip of square,
    shared axes under a long title were placed just past the figure's edge)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained",
                             **kw)
    fig.get_layout_engine().set(w_pad=8 / DPI, h_pad=8 / DPI)
    return fig, axes


def scatter_panel(ax, points, reference=None, lim=None, title=None, label="samples", title_px=None, fontsize=8,
                  labels=None):
    """Points (blue, or coloured by class when ``labels`` (N,) is given, one legend entry per class) over
    reference data (grey) on square axes; ``title`` wrapped to ``title_px`` pixels (default: 48 characters)."""
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.75", label="data", rasterized=True)
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:blue", label=label, rasterized=True)
    else:
        cmap = plt.get_cmap("tab10")
        for i, c in enumerate(np.unique(labels)):
            m = labels == c
            ax.scatter(points[m, 0], points[m, 1], s=3, color=cmap(i % 10), label=f"class {int(c)}",
                       rasterized=True)
    lo, hi = lim if lim is not None else limits(points, reference)
    ax.set_xlim(lo, hi), ax.set_ylim(lo, hi), ax.set_aspect("equal")
    if title:
        ax.set_title(textwrap.fill(title, 48) if title_px is None else wrap(title, title_px, fontsize),
                     fontsize=fontsize)


def save(fig, path):
    """Save a matplotlib figure at DPI and close it."""
    try:
        path = out_path(path)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path
