"""Two sampler families against NFE: one panel per model, the ODE family solid, the SDE family dashed.

benchmarks/bench_stochastic.py draws it (issue 27): EDM's Fig. 4 reading, where the deterministic samplers lead
at few network evaluations and the stochastic ones may overtake them at many. The values are quality over the
real-vs-real floor, so the floor is the line y = 1 in every panel.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from reference.errors import InputError

from .common import DPI, PANEL_PX, save

# The line style of each sampler family of common/sampler_table.py (its FAMILIES); the chain's samplers are
# dotted so that a DDPM baseline can stand beside the two families without being read as either.
FAMILY_STYLES = {"ode": "-", "sde": "--", "chain": ":"}


def _curve(panel, label, curve):
    """(family, nfe, value, err) checked -> (family, nfe, value, err) as float arrays, non-finite points dropped
    (a sampler that diverged at some NFE has no point there, the rest of its line stays)."""
    if len(curve) != 4:
        raise InputError(f"panels[{panel!r}][{label!r}] must be (family, nfe, value, err), got {len(curve)} items")
    family, nfe, val, err = curve
    if family not in FAMILY_STYLES:
        raise InputError(f"panels[{panel!r}][{label!r}]: family {family!r} is not one of "
                         f"{', '.join(FAMILY_STYLES)}")
    nfe, val = np.asarray(nfe, dtype=float), np.asarray(val, dtype=float)
    err = np.zeros_like(val) if err is None else np.asarray(err, dtype=float)
    if not (nfe.ndim == val.ndim == err.ndim == 1) or not (nfe.size == val.size == err.size) or nfe.size == 0:
        raise InputError(f"panels[{panel!r}][{label!r}]: nfe ({nfe.size}), value ({val.size}) and err ({err.size}) "
                         "must be non-empty lists of one length")
    keep = np.isfinite(val) & np.isfinite(nfe)
    return family, nfe[keep], val[keep], np.where(np.isfinite(err[keep]), err[keep], 0.0)


def _nfe_ticks(ax, nfe):
    """The NFE values as plain tick labels, a value within 15% of a larger one left out (Heun's 9 beside 10)."""
    ticks = []
    for v in sorted({int(v) for v in nfe if v > 0}, reverse=True):
        if not ticks or v * 1.15 < ticks[-1]:
            ticks.append(v)
    if ticks:
        ax.set_xticks(ticks[::-1]), ax.set_xticklabels([str(t) for t in ticks[::-1]])
    ax.minorticks_off()


def families_vs_nfe(panels, path, ylabel="quality / floor (lower is better)", title=None):
    """Quality over its floor against NFE (log x), one panel per model, side by side on one y scale.

    ``panels``: dict panel title -> dict curve label -> (family, nfe list, value list, err list), family a key of
    FAMILY_STYLES (ODE solid, SDE dashed), err the error bar (the standard error over draws; None for none).
    One colour per curve label across the panels, one legend under them. The y axis is logarithmic when the
    values span more than 20-fold. Size: 1.5 PANEL_PX wide per panel (at least 2), 1.8 PANEL_PX high.
    """
    if not panels:
        raise InputError("panels is empty: no model to plot")
    checked = {}
    for name, curves in panels.items():
        if not curves:
            raise InputError(f"panels[{name!r}] has no curves")
        checked[name] = {label: _curve(name, label, c) for label, c in curves.items()}
    labels = list(dict.fromkeys(label for curves in checked.values() for label in curves))
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    k = len(checked)
    fig, axes = plt.subplots(1, k, figsize=(1.5 * PANEL_PX * max(k, 2) / DPI, 1.8 * PANEL_PX / DPI), dpi=DPI,
                             sharey=True, squeeze=False)
    values = np.concatenate([c[2] for curves in checked.values() for c in curves.values()] + [[1.0]])
    log_y = bool(np.all(values > 0) and values.max() > 20 * values.min())
    for ax, (name, curves) in zip(axes[0], checked.items()):
        for label, (family, nfe, val, err) in curves.items():
            ax.errorbar(nfe, val, yerr=err, color=colours[label], ls=FAMILY_STYLES[family], marker="o", ms=3,
                        lw=1.4, capsize=2, label=f"{label} ({family})")
        ax.axhline(1.0, color="k", lw=0.8, ls=":", label="real-vs-real floor")
        ax.set_xscale("log")
        _nfe_ticks(ax, np.concatenate([c[1] for c in curves.values()]))
        if log_y:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9), ax.grid(alpha=0.3), ax.tick_params(labelsize=7)
        ax.set_xlabel("NFE (network evaluations per sample)", fontsize=8)
    axes[0][0].set_ylabel(ylabel, fontsize=8)
    handles, names = {}, []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                names.append(lab)
    fig.legend([handles[n] for n in names], names, loc="lower center", ncol=min(len(names), 4), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    rows = -(-len(names) // 4)
    fig.subplots_adjust(left=0.06 if k > 2 else 0.1, right=0.98, top=0.88 if title else 0.92,
                        bottom=0.1 + 0.045 * rows, wspace=0.08)
    return save(fig, path)
