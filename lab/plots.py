"""Pictures, shared by reference/ and torch_port/ (not math: written once).

Every function takes NumPy arrays in model space (images NCHW in [-1, 1], points (N, 2)),
writes one file and returns its path. Matplotlib runs on the Agg backend (no display needed).
Figures are drawn at a fixed size and DPI (no tight bounding box), so a picture's pixel size is
known in advance: PANEL_PX per panel unless a function says otherwise.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: must come before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reference.errors import InputError, check_finite  # noqa: E402

from .data import to_uint8  # noqa: E402

DPI = 100
PANEL_PX = 300          # one matplotlib panel is PANEL_PX x PANEL_PX pixels
GRID_PAD = 2            # pixels between images in a grid (before upscaling)
MIN_IMAGE_PX = 64       # tiny images are upscaled (nearest) until each is at least this many pixels


def _out(path):
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _images(images, name="images"):
    """Validate NCHW images with C in {1, 3}; a single (C, H, W) image becomes a batch of one."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise InputError(f"{name} must be NCHW with C = 1 or 3 (or one CHW image), got shape {x.shape}")
    return check_finite(x, name)


def _points(points, name="points"):
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 2:
        raise InputError(f"{name} must have shape (N, 2), got {p.shape}")
    return check_finite(p, name)


# ---- image grids ----------------------------------------------------------------------------------

def upscale_factor(h):
    """Nearest-neighbour factor for images of height h: 8 -> 8, 28 -> 3, 32 -> 2, >= 64 -> 1."""
    return max(1, math.ceil(MIN_IMAGE_PX / h))


def grid_array(images, nrow=None, pad=GRID_PAD, scale=None):
    """Tile NCHW images in [-1, 1] into one uint8 (H', W', 3) array, ``nrow`` images per row.

    nrow defaults to ceil(sqrt(N)). Size before upscaling: rows * (H + pad) + pad by
    nrow * (W + pad) + pad, padding white; then each pixel is repeated ``scale`` times
    (default ``upscale_factor(H)``).
    """
    x = _images(images)
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


def image_grid(images, path, nrow=None):
    """Save NCHW images in [-1, 1] as one PNG grid (see ``grid_array`` for the pixel size)."""
    from PIL import Image
    path = _out(path)
    Image.fromarray(grid_array(images, nrow)).save(path)
    return path


# ---- 2-D points -----------------------------------------------------------------------------------

def _limits(*arrays):
    """Shared square axis limits covering the 0.5..99.5 percentiles of all points, with a margin."""
    allp = np.concatenate([a for a in arrays if a is not None])
    lo, hi = np.percentile(allp, [0.5, 99.5])
    half = 0.55 * (hi - lo) + 1e-6
    mid = 0.5 * (hi + lo)
    return mid - half, mid + half


def _scatter_panel(ax, points, reference=None, lim=None, title=None):
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.75", label="data", rasterized=True)
    ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:blue", label="samples", rasterized=True)
    lo, hi = lim if lim is not None else _limits(points, reference)
    ax.set_xlim(lo, hi), ax.set_ylim(lo, hi), ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=9)


def scatter_2d(points, path, reference=None, title=None):
    """Scatter (N, 2) points (blue) over optional reference data (grey). PANEL_PX square PNG."""
    p = _points(points)
    ref = None if reference is None else _points(reference, "reference")
    fig, ax = plt.subplots(figsize=(PANEL_PX / DPI, PANEL_PX / DPI), dpi=DPI)
    try:
        _scatter_panel(ax, p, ref, title=title)
        if ref is not None:
            ax.legend(loc="upper right", fontsize=7, markerscale=3)
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.08, top=0.92)
        path = _out(path)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


# ---- training curves ------------------------------------------------------------------------------

def _records(log):
    if isinstance(log, (str, Path)):
        p = Path(log)
        if not p.is_file():
            raise InputError(f"loss log not found: {p}")
        try:
            return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise InputError(f"{p}: not a JSON-lines log ({e})") from e
    return list(log)


def loss_curve(log, path, key="loss", ema=0.98):
    """Plot ``key`` against "step" from a JSON-lines file or a list of dicts; log-scale y when positive.

    Raw values are drawn faint; the line is an exponential moving average (bias-corrected like Adam's
    moments, so the first points are not pulled toward 0). Records without ``key`` are skipped.
    Size: 2 PANEL_PX wide, PANEL_PX high.
    """
    rows = [r for r in _records(log) if isinstance(r, dict) and key in r and r[key] is not None]
    if not rows:
        raise InputError(f"no records with {key!r} to plot")
    y = np.array([float(r[key]) for r in rows])
    steps = np.array([float(r.get("step", i)) for i, r in enumerate(rows)])
    smooth, m = np.empty_like(y), 0.0
    for i, v in enumerate(y):
        m = ema * m + (1 - ema) * v
        smooth[i] = m / (1 - ema ** (i + 1))
    fig, ax = plt.subplots(figsize=(2 * PANEL_PX / DPI, PANEL_PX / DPI), dpi=DPI)
    try:
        ax.plot(steps, y, color="tab:blue", alpha=0.25, lw=0.8, label=key)
        ax.plot(steps, smooth, color="tab:blue", lw=1.6, label=f"{key} (EMA {ema})")
        if np.all(y[np.isfinite(y)] > 0):
            ax.set_yscale("log")
        ax.set_xlabel("step"), ax.set_ylabel(key), ax.legend(fontsize=7), ax.grid(alpha=0.3)
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.16, top=0.95)
        path = _out(path)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


# ---- sampling trajectories ------------------------------------------------------------------------

def _frames(frames):
    frames = [(int(t), np.asarray(x)) for t, x in frames]
    if not frames:
        raise InputError("no frames to draw")
    return frames


def trajectory_strip(frames, path, max_rows=8):
    """One panel per (t, x) frame, left to right: x is (N, 2) points or NCHW images.

    Images: each panel is a column of the first ``max_rows`` images. Points: a scatter per frame
    on shared axes. Size: points len(frames) * PANEL_PX by PANEL_PX; images len(frames) * PANEL_PX / 2
    by rows * PANEL_PX / 2 + 40 (rows = min(N, max_rows)).
    """
    frames = _frames(frames)
    k = len(frames)
    points = frames[0][1].ndim == 2
    if points:
        fig_w, fig_h = k * PANEL_PX, PANEL_PX
        lim = _limits(*[_points(x) for _, x in frames])
    else:
        rows = min(_images(frames[0][1]).shape[0], max_rows)
        fig_w, fig_h = k * PANEL_PX // 2, rows * PANEL_PX // 2 + 40
    fig, axes = plt.subplots(1, k, figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, squeeze=False)
    try:
        for ax, (t, x) in zip(axes[0], frames):
            if points:
                _scatter_panel(ax, _points(x), lim=lim, title=f"t={t}")
                ax.set_xticks([]), ax.set_yticks([])
            else:
                ax.imshow(grid_array(_images(x)[:max_rows], nrow=1, scale=1), interpolation="nearest")
                ax.set_title(f"t={t}", fontsize=9), ax.axis("off")
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 30 / fig_h, wspace=0.05)
        path = _out(path)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def _scatter_frame_array(x, lim, title):
    """Render one scatter frame to a uint8 (PANEL_PX, PANEL_PX, 3) array."""
    fig, ax = plt.subplots(figsize=(PANEL_PX / DPI, PANEL_PX / DPI), dpi=DPI)
    try:
        _scatter_panel(ax, x, lim=lim, title=title)
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.08, top=0.92)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)


def trajectory_gif(frames, path, duration_ms=100, nrow=None):
    """Animated GIF, one frame per (t, x): image grids (``grid_array`` size) or PANEL_PX scatters.

    The last frame is held for a second so the result can be seen.
    """
    from PIL import Image
    frames = _frames(frames)
    if frames[0][1].ndim == 2:
        lim = _limits(*[_points(x) for _, x in frames])
        pics = [_scatter_frame_array(_points(x), lim, f"t={t}") for t, x in frames]
    else:
        pics = [grid_array(x, nrow) for _, x in frames]
    ims = [Image.fromarray(p) for p in pics]
    durations = [duration_ms] * (len(ims) - 1) + [1000]
    path = _out(path)
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=durations, loop=0)
    return path


# ---- the forward process and schedules ------------------------------------------------------------

def forward_timesteps(T, frames):
    """``frames`` 0-based indices evenly spaced over 0..T-1, both ends included (repeats removed)."""
    return np.unique(np.round(np.linspace(0, T - 1, frames)).astype(np.int64))


def forward_process_figure(image, sched, path, frames=8, seed=0, q_sample=None):
    """x_0 then x_t ~ q(x_t | x_0) (F3) at ``frames`` evenly spaced t, one noise draw shared by all t.

    image   (C, H, W) or (1, C, H, W) in [-1, 1]
    sched   a Schedule (anything with .T and a NumPy-convertible .alpha_bar)
    q_sample  function (x0, t, eps) -> x_t on NumPy arrays; default reference.diffusion.q_sample
              (the CLI passes the torch port's, wrapped, for the torch backend)
    Each panel is titled with t (0-based) and alpha_bar_t, the signal fraction left.
    Size: (frames + 1) * PANEL_PX / 2 wide, PANEL_PX / 2 + 40 high.
    """
    x0 = _images(image, "image")[:1].astype(np.float64)           # (1, C, H, W)
    if q_sample is None:
        from reference import diffusion
        q_sample = lambda x, t, e: diffusion.q_sample(sched, x, t, e)  # noqa: E731
    eps = np.random.default_rng(seed).standard_normal(x0.shape)   # (1, C, H, W)
    ts = forward_timesteps(int(sched.T), frames)
    alpha_bar = np.asarray(sched.alpha_bar, dtype=np.float64)
    panels = [("x_0 (data)", x0)] + [
        (f"t={t}\nabar={alpha_bar[t]:.4g}", np.asarray(q_sample(x0, int(t), eps))) for t in ts]
    k, side = len(panels), PANEL_PX / 2
    fig, axes = plt.subplots(1, k, figsize=(k * side / DPI, (side + 40) / DPI), dpi=DPI, squeeze=False)
    try:
        for ax, (title, x) in zip(axes[0], panels):
            ax.imshow(grid_array(x, pad=0, scale=1), interpolation="nearest")
            ax.set_title(title, fontsize=8), ax.axis("off")
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 40 / (side + 40), wspace=0.05)
        path = _out(path)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def schedule_plot(schedules, path):
    """alpha_bar_t (S2, F2) and log SNR_t (S7) against t/T, one line per schedule (dict name -> Schedule).

    Size: 2 PANEL_PX wide, PANEL_PX high. Steps with SNR = 0 (zero terminal SNR, S6) have log SNR
    = -inf and are left out of the right panel.
    """
    if not schedules:
        raise InputError("no schedules to plot")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(2 * PANEL_PX / DPI, PANEL_PX / DPI), dpi=DPI)
    try:
        for name, s in schedules.items():
            abar = np.asarray(s.alpha_bar, dtype=np.float64)
            log_snr = np.asarray(s.log_snr, dtype=np.float64)
            u = (np.arange(abar.size) + 1) / abar.size            # paper step / T, in (0, 1]
            a1.plot(u, abar, label=name, lw=1.2)
            ok = np.isfinite(log_snr)
            a2.plot(u[ok], log_snr[ok], label=name, lw=1.2)
        a1.set_title("alpha_bar_t (signal fraction)", fontsize=9)
        a2.set_title("log SNR_t = log abar/(1-abar)", fontsize=9)
        for ax in (a1, a2):
            ax.set_xlabel("t / T", fontsize=8), ax.grid(alpha=0.3), ax.tick_params(labelsize=7)
        a1.legend(fontsize=6)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.25)
        path = _out(path)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


# ---- a picture to try things on -------------------------------------------------------------------

SAMPLE_IMAGE = "grace_hopper.jpg"


def sample_image(size=64, channels=3):
    """Matplotlib's bundled photo (Grace Hopper) as (C, size, size) float32 in [-1, 1], center-cropped."""
    from .data import load_image
    try:
        import matplotlib.cbook as cbook
        src = Path(cbook.get_sample_data(SAMPLE_IMAGE, asfileobj=False))
    except (OSError, ValueError) as e:
        raise InputError(f"matplotlib's sample image {SAMPLE_IMAGE} is not available ({e}); pass an image file") from e
    return load_image(src, size=size, channels=channels)
