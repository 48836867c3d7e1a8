"""Sampling trajectories: what the sampler holds (x_t) and what the network predicts (x0_hat), step by step."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from reference.errors import InputError

from .common import (DPI, PANEL_PX, check_images, check_points, grid_array, limits, out_path, save, scatter_panel,
                     text_band, with_banner)

ROWS = (("x_t (sampler state)", 1), ("x0_hat (prediction)", 2))
IMAGE_ROWS = ("x_t: the sampler's state, the input of the step at t",
              "x0_hat: the network's prediction of x_0 from that x_t")


def _frames(frames):
    frames = [(int(t), np.asarray(xt), np.asarray(x0)) for t, xt, x0 in frames]
    if not frames:
        raise InputError("no frames to draw")
    return frames


def trajectory_strip(frames, path, max_rows=8, reference=None, title=None):
    """One column per (t, x_t, x0_hat) frame, left to right, in two blocks: above, x_t (the input of the
    step at t); below, x0_hat (what the network predicts from it). Images: the first ``max_rows`` of
    each, one column per frame (``grid_array`` scale). Points: a scatter per panel on shared axes, over
    ``reference`` data (grey) when given, PANEL_PX/2 per panel.
    Size: images len(frames) * (W + pad) s + pad s (+ white if the title is wider) by
    2 (rows (H + pad) s + pad s) + 4 BANNER_PX; points len(frames) * PANEL_PX/2 + 20 by PANEL_PX + 60.
    """
    frames = _frames(frames)
    if frames[0][1].ndim == 2:
        return _point_strip(frames, path, reference, title)
    from PIL import Image

    blocks = []
    for label, idx in zip(IMAGE_ROWS, (1, 2)):
        cols = [grid_array(check_images(f[idx])[:max_rows], nrow=1) for f in frames]
        blocks.append((label, np.concatenate(cols, axis=1), [c.shape[1] for c in cols]))
    width = blocks[0][1].shape[1]
    centres = np.cumsum([0] + blocks[0][2][:-1]) + np.array(blocks[0][2]) / 2
    heads = text_band(width, [(c, f"t={t}") for c, (t, _, _) in zip(centres, frames)])
    parts = [with_banner(np.concatenate([text_band(width, [(None, blocks[0][0])]), heads, blocks[0][1]]),
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


def _point_strip(frames, path, reference, title):
    k, cell = len(frames), PANEL_PX // 2
    lim = limits(*[check_points(x) for f in frames for x in f[1:]])
    ref = None if reference is None else check_points(reference, "reference")
    fig_w, fig_h = k * cell + 20, 2 * cell + 60
    fig, axes = plt.subplots(2, k, figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, squeeze=False)
    for j, (t, xt, x0) in enumerate(frames):
        for (label, idx), x in zip(ROWS, (xt, x0)):
            ax = axes[idx - 1][j]
            scatter_panel(ax, check_points(x), ref, lim=lim, title=f"t={t}" if idx == 1 else None)
            ax.set_xticks([]), ax.set_yticks([])
    for (label, idx) in ROWS:
        axes[idx - 1][0].text(-0.06, 0.5, label, transform=axes[idx - 1][0].transAxes, rotation=90, fontsize=7,
                              va="center", ha="right")
    fig.suptitle(title or "sampling trajectory", fontsize=9)
    fig.subplots_adjust(left=20 / fig_w, right=0.995, bottom=0.01, top=1 - 40 / fig_h, wspace=0.05, hspace=0.05)
    return save(fig, path)


def _scatter_frame_array(x, lim, title, reference=None):
    """Render one scatter frame to a uint8 (PANEL_PX, PANEL_PX, 3) array."""
    fig, ax = plt.subplots(figsize=(PANEL_PX / DPI, PANEL_PX / DPI), dpi=DPI)
    try:
        scatter_panel(ax, x, reference, lim=lim, title=title, label="x_t")
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.08, top=0.92)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)


def frame_label(t):
    """The caption of one GIF frame: t >= 0 is a sampler state x_t, t = -1 the finished sample."""
    return "x_0: the sample" if t < 0 else f"x_t at t={t}"


def trajectory_gif(frames, path, duration_ms=100, nrow=None, reference=None):
    """Animated GIF, one frame per (t, x): image grids (``grid_array`` size, under a BANNER_PX caption) or
    PANEL_PX scatters (over ``reference`` data), each captioned by ``frame_label(t)``. The last frame is
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
