"""Pictures of class-conditional sampling and classifier-free guidance: one labelled row of images per
class, a scatter of 2-D samples coloured by class, and the trade-off of guidance (quality and accuracy against
the scale s)."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np

from reference.errors import InputError

from .common import (DPI, GRID_PAD, PANEL_PX, SCATTER_PX, check_images, check_points, font, grid_array, out_path,
                     save, scatter_figure, scatter_panel, upscale_factor, with_banner)


def _rows(labels):
    """The classes of a class-major label array (each class one contiguous run of equal length) -> (classes,
    per row); refused otherwise."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise InputError(f"labels must be a non-empty (N,) array, got shape {y.shape}")
    classes, starts, counts = np.unique(y, return_index=True, return_counts=True)
    order = np.argsort(starts)
    classes, counts = classes[order], counts[order]
    per = int(counts[0])
    if np.any(counts != per) or not np.array_equal(y, np.repeat(classes, per)):
        raise InputError("class rows need class-major labels: every class one contiguous run of the same length")
    return classes, per


def class_rows(images, labels, path, title=None, row_labels=None):
    """NCHW images in [-1, 1] in class-major order (labels (N,), every class the same count) as one grid with one
    row per class, each row labelled on the left ("class k", or ``row_labels[k]``), under ``title``. Size: the
    grid of ``grid_array`` (per-class count across) plus a label column, plus the banner."""
    from PIL import Image, ImageDraw

    x = check_images(images)
    classes, per = _rows(labels)
    if len(x) != len(classes) * per:
        raise InputError(f"{len(x)} images for {len(classes)} rows of {per} labels")
    grid = grid_array(x, nrow=per)
    names = [row_labels[int(c)] if row_labels is not None else f"class {int(c)}" for c in classes]
    f = font()
    width = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), t, font=f)[2] for t in names) + 10
    column = Image.new("RGB", (width, grid.shape[0]), "white")
    draw = ImageDraw.Draw(column)
    row_px = (x.shape[2] + GRID_PAD) * upscale_factor(x.shape[2])
    for r, text in enumerate(names):
        _, top, _, bottom = draw.textbbox((0, 0), text, font=f)
        centre = (GRID_PAD * upscale_factor(x.shape[2])) + r * row_px + row_px / 2
        draw.text((4, int(centre - (bottom - top) / 2 - top)), text, fill="black", font=f)
    pixels = np.concatenate([np.asarray(column), grid], axis=1)
    if title:
        pixels = with_banner(pixels, title)
    path = out_path(path)
    Image.fromarray(pixels).save(path)
    return path


def class_scatter(points, labels, path, reference=None, title=None):
    """(N, 2) points coloured by their class (labels (N,)) over optional grey reference data, one legend entry
    per class, titled (wrapped to the width). SCATTER_PX square PNG."""
    p = check_points(points)
    y = np.asarray(labels)
    if y.shape != (len(p),):
        raise InputError(f"labels must have shape ({len(p)},), got {y.shape}")
    ref = None if reference is None else check_points(reference, "reference")
    fig, ax = scatter_figure(SCATTER_PX, SCATTER_PX)
    scatter_panel(ax, p, ref, title=title, title_px=SCATTER_PX - 20, fontsize=11, labels=y)
    ax.tick_params(labelsize=9)
    ax.legend(loc="upper right", fontsize=8, markerscale=3, ncol=2)
    return save(fig, path)


def guidance_tradeoff(scales, ratios, accuracies, path, ceiling=None, chance=None, metric="Frechet distance",
                      ratio_spread=None, accuracy_spread=None, title=None):
    """The trade-off of classifier-free guidance, two panels against the scale s: the quality figure over its
    real-vs-real floor (left; 1 is the floor, dashed; lower is better) and the accuracy of the classifier on the
    samples against the requested classes (right; the ``ceiling``, its accuracy on real test items, dashed, and
    ``chance`` 1/K dotted). Spreads (standard deviations over draws) as error bars. Size: 2 PANEL_PX by
    1.2 PANEL_PX."""
    s, r, a = (np.asarray(v, dtype=float) for v in (scales, ratios, accuracies))
    if s.ndim != 1 or s.size == 0 or r.shape != s.shape or a.shape != s.shape:
        raise InputError(f"scales, ratios and accuracies must be non-empty and of one length, got {s.shape}, "
                         f"{r.shape}, {a.shape}")
    fig, (left, right) = plt.subplots(1, 2, figsize=(2 * PANEL_PX / DPI, 1.2 * PANEL_PX / DPI), dpi=DPI)
    left.errorbar(s, r, yerr=ratio_spread, marker="o", ms=4, lw=1.4, capsize=2, color="tab:blue")
    left.axhline(1.0, color="k", ls="--", lw=1.0, label="real-vs-real floor")
    left.set_ylabel(f"{metric} / floor (lower is better)", fontsize=8)
    left.set_ylim(bottom=0)
    right.errorbar(s, 100 * a, yerr=None if accuracy_spread is None else 100 * np.asarray(accuracy_spread),
                   marker="o", ms=4, lw=1.4, capsize=2, color="tab:green")
    if ceiling is not None:
        right.axhline(100 * ceiling, color="k", ls="--", lw=1.0, label=f"real test items {100 * ceiling:.1f}%")
    if chance is not None:
        right.axhline(100 * chance, color="tab:gray", ls=":", lw=1.2, label=f"chance {100 * chance:.3g}%")
    right.set_ylabel("classifier names the requested class (%)", fontsize=8)
    right.set_ylim(0, 102)
    for ax in (left, right):
        ax.set_xticks(s), ax.set_xticklabels([f"{v:g}" for v in s])
        ax.set_xlabel("guidance scale s (0: unconditional, 1: conditional)", fontsize=7)
        ax.grid(alpha=0.3), ax.legend(fontsize=7), ax.tick_params(labelsize=8)
    fig.suptitle(textwrap.fill(title or "classifier-free guidance: quality and accuracy against the scale", 100),
                 fontsize=8)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.84, wspace=0.3)
    return save(fig, path)
