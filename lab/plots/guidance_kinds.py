"""The two guidances side by side (issue 28): classifier guidance on an unconditional model and classifier-free
guidance on a class-conditional one, each a curve of quality over its floor against the accuracy the judge's
classifier reaches (left: the trade-off, at equal accuracy the lower curve wins) and against its own scale
(right). Used by benchmarks/bench_classifier_guidance.py."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np

from reference.errors import InputError

from .common import DPI, PANEL_PX, save

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def _curve(i, kind):
    """One kind's arrays, each checked against its scales (the error names the kind and the key)."""
    label = kind.get("label", f"kinds[{i}]")
    s = np.asarray(kind["scales"], dtype=float)
    if s.ndim != 1 or s.size == 0:
        raise InputError(f"kinds[{i}] ({label}): scales must be a non-empty list, got shape {s.shape}")
    out = {"label": label, "scales": s}
    for key in ("ratios", "accuracies", "ratio_se", "accuracy_se"):
        v = kind.get(key)
        if v is None and key in ("ratio_se", "accuracy_se"):
            out[key] = None
            continue
        v = np.asarray(v, dtype=float)
        if v.shape != s.shape:
            raise InputError(f"kinds[{i}] ({label}): {key} has {v.size} values and scales {s.size}: one per scale")
        out[key] = v
    return out


def guidance_kinds(kinds, path, metric="Frechet distance", ceiling=None, target_accuracy=None, title=None):
    """``kinds``: a non-empty list of dicts, one per guidance, each with ``label``, ``scales``, ``ratios`` (the
    quality figure over its real-vs-real floor), ``accuracies`` (fractions) and optional standard errors
    ``ratio_se`` and ``accuracy_se`` (error bars), all one value per scale. Left: ratio against accuracy, each
    point labelled with its scale; right: ratio against the scale. The floor (1) dashed; ``ceiling`` (the
    classifier's accuracy on real test items) and ``target_accuracy`` as vertical lines. Size: 2 PANEL_PX by
    1.2 PANEL_PX."""
    if not isinstance(kinds, (list, tuple)) or not kinds:
        raise InputError(f"kinds must be a non-empty list of curves (dicts), got {type(kinds).__name__}")
    curves = [_curve(i, k) for i, k in enumerate(kinds)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(2 * PANEL_PX / DPI, 1.2 * PANEL_PX / DPI), dpi=DPI)
    for i, c in enumerate(curves):
        colour = COLOURS[i % len(COLOURS)]
        a = 100 * c["accuracies"]
        a_se = None if c["accuracy_se"] is None else 100 * c["accuracy_se"]
        left.errorbar(a, c["ratios"], xerr=a_se, yerr=c["ratio_se"], marker="o", ms=4, lw=1.4, capsize=2,
                      color=colour, label=c["label"])
        for x, y, s in zip(a, c["ratios"], c["scales"]):
            left.annotate(f"s={s:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6, color=colour)
        right.errorbar(c["scales"], c["ratios"], yerr=c["ratio_se"], marker="o", ms=4, lw=1.4, capsize=2,
                       color=colour, label=c["label"])
    for ax in (left, right):
        ax.axhline(1.0, color="k", ls="--", lw=1.0, label="real-vs-real floor")
        ax.set_ylabel(f"{metric} / floor (lower is better)", fontsize=8)
        ax.set_ylim(bottom=0)
    if ceiling is not None:
        left.axvline(100 * ceiling, color="tab:gray", ls="--", lw=1.0, label=f"real test items {100 * ceiling:.1f}%")
    if target_accuracy is not None:
        left.axvline(100 * target_accuracy, color="tab:red", ls=":", lw=1.2,
                     label=f"target {100 * target_accuracy:.0f}%")
    left.set_xlabel("classifier names the requested class (%)", fontsize=7)
    right.set_xlabel("guidance scale s (each kind's own)", fontsize=7)
    left.set_xlim(0, 102)
    for ax in (left, right):
        ax.grid(alpha=0.3), ax.legend(fontsize=6), ax.tick_params(labelsize=8)
    fig.suptitle(textwrap.fill(title or "classifier guidance and classifier-free guidance: quality against accuracy",
                               100), fontsize=8)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.84, wspace=0.3)
    return save(fig, path)
