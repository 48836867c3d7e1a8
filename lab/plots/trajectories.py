"""Sampling trajectories: what the sampler holds (x_t) and what the network predicts (x0_hat), step by step."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from reference.errors import InputError

from .common import (GRID_PAD, SCATTER_PX, check_images, check_points, font, grid_array, limits, out_path, save,
                     scatter_figure, scatter_panel, text_band, upscale_factor, with_banner, wrap)

ROWS = (("x_t (sampler state)", 1), ("x0_hat (prediction)", 2))
IMAGE_ROWS = ("x_t: the sampler's state, the input of the step at t",
              "x0_hat: the network's prediction of x_0 from that x_t")
FINAL = "x_0 (final)"        # the caption of the last column: the finished sample, after the last step
CELL_PX = 300                # one panel of a 2-D trajectory strip


def _frames(frames):
    frames = [(int(t), np.asarray(xt), np.asarray(x0)) for t, xt, x0 in frames]
    if not frames:
        raise InputError("no frames to draw")
    return frames


def column_label(t, sigma=None, trained_steps=True):
    """A strip column's caption lines: the trained step t (0-based) and, when known, its noise level
    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t); t = -1 is the finished sample. ``trained_steps=False``
    (a continuous objective's model: t is only the column's index on the sampling grid): sigma alone."""
    if not trained_steps and sigma is None:
        raise InputError("a model without trained steps has its columns captioned by sigma: pass the sigmas")
    if t < 0:
        return [FINAL, "sigma=0"] if sigma is not None else [FINAL]
    return ([f"t={t}"] if trained_steps else []) + ([f"sigma={sigma:.3g}"] if sigma is not None else [])


def _check_extras(frames, final, sigmas, labels):
    n = len(frames[0][1])
    if final is not None and np.shape(final) != frames[0][1].shape:
        raise InputError(f"final samples must have the frames' shape {frames[0][1].shape}, got {np.shape(final)}")
    if sigmas is not None and len(sigmas) != len(frames):
        raise InputError(f"{len(sigmas)} sigmas for {len(frames)} frames")
    if labels is not None and np.shape(labels) != (n,):
        raise InputError(f"labels must have shape ({n},) (one class per item), got {np.shape(labels)}")


def trajectory_strip(frames, path, max_rows=8, reference=None, title=None, final=None, sigmas=None, labels=None,
                     trained_steps=True):
    """One column per (t, x_t, x0_hat) frame, left to right, in two blocks: above, x_t (the input of the
    step at t); below, x0_hat (what the network predicts from it). ``final`` (the finished samples, the
    frames' shape) adds a last column captioned FINAL, blank in the x0_hat block; ``sigmas`` (one per frame)
    add each column's noise level to its t (``trained_steps=False``, a continuous objective's model whose t are
    grid indices: the sigmas alone, which are then required); ``labels`` (the class of each item): image rows
    are captioned "class k" on the left, points are coloured by class. Images: the first ``max_rows`` items, one column per
    frame (``grid_array`` scale). Points: a scatter per panel on shared axes, over ``reference`` data (grey)
    when given, CELL_PX per panel, ticks on the outer panels.
    Size: images (columns (W + pad) s + pad s) (+ the class column, + white if the title is wider) by
    2 (rows (H + pad) s + pad s) + (4 + 1 if sigmas and trained_steps) BANNER_PX; points columns * CELL_PX + 60 by
    2 CELL_PX + 110 (columns = frames, + 1 with ``final``).
    """
    frames = _frames(frames)
    _check_extras(frames, final, sigmas, labels)
    if not trained_steps and sigmas is None:
        raise InputError("trained_steps=False captions each column by its sigma: pass sigmas (one per frame)")
    cols = [(t, xt, x0, None if sigmas is None else float(sigmas[j])) for j, (t, xt, x0) in enumerate(frames)]
    if final is not None:
        cols.append((-1, np.asarray(final), None, None if sigmas is None else 0.0))
    if frames[0][1].ndim == 2:
        return _point_strip(cols, path, reference, title, None if labels is None else np.asarray(labels),
                            trained_steps)
    return _image_strip(cols, path, max_rows, title, labels, sigmas is not None, trained_steps)


def _image_strip(cols, path, max_rows, title, labels, with_sigma, trained_steps=True):
    from PIL import Image

    shape = check_images(cols[0][1])[:max_rows].shape                      # (rows, C, H, W)
    blank = np.full(shape, 1.0)                                             # white: no x0_hat after the end
    blocks = []
    for label, idx in zip(IMAGE_ROWS, (1, 2)):
        tiles = [grid_array(check_images(c[idx] if c[idx] is not None else blank)[:max_rows], nrow=1) for c in cols]
        blocks.append((label, np.concatenate(tiles, axis=1), [t.shape[1] for t in tiles]))
    left = _row_captions(labels[:max_rows], shape[2], blocks[0][1].shape[0]) if labels is not None else None
    if left is not None:
        blocks = [(lab, np.concatenate([left, px], axis=1), w) for lab, px, w in blocks]
    width, offset = blocks[0][1].shape[1], 0 if left is None else left.shape[1]
    centres = offset + np.cumsum([0] + blocks[0][2][:-1]) + np.array(blocks[0][2]) / 2
    lines = [column_label(t, sig if with_sigma else None, trained_steps) for t, _, _, sig in cols]
    heads = [text_band(width, [(c, ls[k]) for c, ls in zip(centres, lines)]) for k in range(len(lines[0]))]
    parts = [with_banner(np.concatenate([text_band(width, [(None, blocks[0][0])]), *heads, blocks[0][1]]),
                         title or "sampling trajectory")]
    w = parts[0].shape[1]
    for label, pixels, _ in blocks[1:]:
        body = np.concatenate([text_band(width, [(None, label)]), pixels])
        pad = np.full((body.shape[0], w, 3), 255, dtype=np.uint8)
        pad[:, (w - width) // 2:(w - width) // 2 + width] = body
        parts.append(pad)
    path = out_path(path)
    Image.fromarray(np.concatenate(parts)).save(path)
    return path


def _row_captions(labels, h, height):
    """A white column as tall as a block, "class k" written beside each of its rows of images of height h."""
    from PIL import Image, ImageDraw

    names = [f"class {int(c)}" for c in labels]
    f = font()
    width = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), t, font=f)[2] for t in names) + 10
    column = Image.new("RGB", (width, height), "white")
    draw, s = ImageDraw.Draw(column), upscale_factor(h)
    for r, text in enumerate(names):
        _, top, _, bottom = draw.textbbox((0, 0), text, font=f)
        centre = GRID_PAD * s + r * (h + GRID_PAD) * s + h * s / 2
        draw.text((4, int(centre - (bottom - top) / 2 - top)), text, fill="black", font=f)
    return np.asarray(column)


def _point_strip(cols, path, reference, title, labels, trained_steps=True):
    k, cell = len(cols), CELL_PX
    lim = limits(*[check_points(x) for c in cols for x in c[1:3] if x is not None])
    ref = None if reference is None else check_points(reference, "reference")
    fig, axes = scatter_figure(k * cell + 60, 2 * cell + 110, 2, k, squeeze=False, sharex=True, sharey=True)
    for j, (t, xt, x0, sigma) in enumerate(cols):
        head = "\n".join(column_label(t, sigma, trained_steps))
        scatter_panel(axes[0][j], check_points(xt), ref, lim=lim, title=head, title_px=cell - 10, fontsize=10,
                      labels=labels, label="x_t")
        if x0 is None:
            axes[1][j].axis("off")      # the finished sample has no prediction after it
        else:
            scatter_panel(axes[1][j], check_points(x0), ref, lim=lim, labels=labels, label="x0_hat")
        for ax in axes[:, j]:
            ax.tick_params(labelsize=8, labelleft=j == 0)
    for label, idx in ROWS:
        axes[idx - 1][0].set_ylabel(label, fontsize=10)
    if labels is not None or ref is not None:
        axes[0][0].legend(loc="upper right", fontsize=8, markerscale=3, ncol=2 if labels is not None else 1)
    fig.suptitle(wrap(title or "sampling trajectory", k * cell, 12), fontsize=12)
    return save(fig, path)


def _scatter_frame_array(x, lim, title, reference=None):
    """Render one scatter frame to a uint8 (SCATTER_PX, SCATTER_PX, 3) array."""
    fig, ax = scatter_figure(SCATTER_PX, SCATTER_PX)
    try:
        scatter_panel(ax, x, reference, lim=lim, title=title, label="x_t", title_px=SCATTER_PX - 20, fontsize=11)
        ax.tick_params(labelsize=9)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)


def frame_label(t):
    """The caption of one GIF frame: t >= 0 is a sampler state x_t, t = -1 the finished sample."""
    return "x_0: the sample" if t < 0 else f"x_t at t={t}"


def trajectory_gif(frames, path, duration_ms=100, nrow=None, reference=None):
    """Animated GIF, one frame per (t, x): image grids (``grid_array`` size, under a BANNER_PX caption) or
    SCATTER_PX scatters (over ``reference`` data), each captioned by ``frame_label(t)``. The last frame is
    held for a second so the result can be seen."""
    from PIL import Image

    frames = [(int(t), np.asarray(x)) for t, x in frames]
    if not frames:
        raise InputError("no frames to draw")
    if frames[0][1].ndim == 2:
        lim = limits(*[check_points(x) for _, x in frames])
        ref = None if reference is None else check_points(reference, "reference")
        pics = [_scatter_frame_array(check_points(x), lim, frame_label(t), ref) for t, x in frames]
    else:
        pics = [with_banner(grid_array(x, nrow), frame_label(t)) for t, x in frames]
    ims = [Image.fromarray(p) for p in pics]
    durations = [duration_ms] * (len(ims) - 1) + [1000]
    path = out_path(path)
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=durations, loop=0)
    return path
