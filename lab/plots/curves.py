"""Curves: the training loss over steps, and the noise schedules."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib import patheffects
import numpy as np

from reference.errors import InputError

from .common import DPI, PANEL_PX, save


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


def smooth_in_steps(steps, y, window):
    """The mean of y over the records whose step lies within window/2 of each record's step (a centred
    window in training steps, not in records, so no lag: the line follows the data at both ends)."""
    c = np.concatenate([[0.0], np.cumsum(y)])
    lo = np.searchsorted(steps, steps - window / 2, side="left")
    hi = np.searchsorted(steps, steps + window / 2, side="right")
    return (c[hi] - c[lo]) / (hi - lo)


def loss_curve(log, path, key="loss", label=None, window=None):
    """Plot ``key`` against "step" from a JSON-lines file or a list of dicts; log-scale y when positive.

    Each record is the mean loss over the steps since the previous record (the runner's log). Raw records
    are drawn faint; the line is their mean over a centred ``window`` of training steps (default: 5% of
    the run, at least 3 records). ``label`` names the loss on the axis and in the title, e.g.
    "L_simple: mean ||eps_hat - eps||^2". Records without ``key`` are skipped. Size: 2 PANEL_PX by PANEL_PX.
    """
    rows = [r for r in _records(log) if isinstance(r, dict) and key in r and r[key] is not None]
    if not rows:
        raise InputError(f"no records with {key!r} to plot")
    y = np.array([float(r[key]) for r in rows])
    steps = np.array([float(r.get("step", i)) for i, r in enumerate(rows)])
    gap = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    window = float(window or max(0.05 * (steps[-1] - steps[0]), 3 * gap))
    fig, ax = plt.subplots(figsize=(2 * PANEL_PX / DPI, PANEL_PX / DPI), dpi=DPI)
    name = label or key
    ax.plot(steps, y, color="tab:blue", alpha=0.25, lw=0.8, label="logged (mean since the last record)")
    ax.plot(steps, smooth_in_steps(steps, y, window), color="tab:blue", lw=1.6,
            label=f"mean over {window:.0f} steps")
    if np.all(y[np.isfinite(y)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("training step"), ax.set_ylabel(key), ax.legend(fontsize=7), ax.grid(alpha=0.3)
    ax.set_title(f"training loss: {name}", fontsize=9)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.16, top=0.9)
    return save(fig, path)


# a white edge around each dash of a rescaled schedule, so it reads on top of the wide line it follows
_OUTLINE = [patheffects.Stroke(linewidth=3.4, foreground="white"), patheffects.Normal()]
_RESCALED = "zero terminal SNR"


def schedule_plot(schedules, path):
    """alpha_bar_t (S2, F2) and log SNR_t (S7) against t/T, one line per schedule (dict name -> Schedule).

    Size: 3 PANEL_PX wide, 1.5 PANEL_PX high. A rescaled schedule ("NAME, zero terminal SNR") follows NAME for
    most of t, so it is drawn dashed and edged in white on top of NAME, which is drawn wide beneath: both stay
    visible where they coincide, NAME's colour on either side of the dashes.
    Steps with SNR = 0 (zero terminal SNR, S6) have log SNR = -inf and are left out of the right panel.
    """
    if not schedules:
        raise InputError("no schedules to plot")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(3 * PANEL_PX / DPI, 1.5 * PANEL_PX / DPI), dpi=DPI)
    under = {name.split(",")[0].strip() for name in schedules if _RESCALED in name}
    for name, s in schedules.items():
        abar = np.asarray(s.alpha_bar, dtype=np.float64)
        log_snr = np.asarray(s.log_snr, dtype=np.float64)
        u = (np.arange(abar.size) + 1) / abar.size            # paper step / T, in (0, 1]
        style = (dict(lw=2.0, ls=(0, (3, 1.5)), zorder=3, path_effects=_OUTLINE) if _RESCALED in name
                 else dict(lw=5.5, zorder=2) if name in under else dict(lw=1.6))
        line, = a1.plot(u, abar, label=name, **style)
        ok = np.isfinite(log_snr)
        a2.plot(u[ok], log_snr[ok], label=name, color=line.get_color(), **style)
    a1.set_title("alpha_bar_t: the signal fraction left in x_t", fontsize=10)
    a2.set_title("log SNR_t = log alpha_bar_t / (1 - alpha_bar_t)", fontsize=10)
    for ax in (a1, a2):
        ax.set_xlabel("t / T  (paper step over T)", fontsize=9), ax.grid(alpha=0.3), ax.tick_params(labelsize=8)
    a1.legend(fontsize=8)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.2)
    return save(fig, path)


def quality_vs_nfe(curves, path, floor, metric="quality", baseline=None, title=None):
    """Sample quality against network evaluations (NFE, log x), one line per sampler, with the real-vs-real
    ``floor`` as a dashed line (what a perfect model scores at the same n) and an optional ``baseline``
    (label, value), e.g. ("ddpm, 1000 steps", 2.03), dotted. ``curves``: dict label -> (nfe list, value
    list) or (nfe, value, spread) with spread the standard deviation over draws (error bars). Lower is
    better; the y axis is logarithmic when the values span more than 20-fold. Size: 2 PANEL_PX by 1.5 PANEL_PX.
    """
    if not curves:
        raise InputError("no curves to plot")
    fig, ax = plt.subplots(figsize=(2 * PANEL_PX / DPI, 1.5 * PANEL_PX / DPI), dpi=DPI)
    for label, c in curves.items():
        nfe, val = np.asarray(c[0], dtype=float), np.asarray(c[1], dtype=float)
        if nfe.shape != val.shape or nfe.size == 0:
            raise InputError(f"curve {label!r}: NFE and values must be non-empty and of one length")
        err = np.asarray(c[2], dtype=float) if len(c) > 2 and c[2] is not None else None
        ax.errorbar(nfe, val, yerr=err, marker="o", ms=4, lw=1.4, capsize=2, label=label)
    ax.axhline(floor, color="k", ls="--", lw=1.0, label=f"real-vs-real floor {floor:.3g}")
    if baseline is not None:
        ax.axhline(baseline[1], color="tab:gray", ls=":", lw=1.4, label=f"{baseline[0]}: {baseline[1]:.3g}")
    ax.set_xscale("log")
    values = np.concatenate([np.asarray(c[1], dtype=float) for c in curves.values()] + [[floor]])
    if np.all(values > 0) and values.max() > 20 * values.min():   # a diverging setting would hide the rest
        ax.set_yscale("log")
    ticks = []
    for v in sorted({int(v) for c in curves.values() for v in c[0]}, reverse=True):   # heun's 9 beside 10: "10"
        if not ticks or v * 1.15 < ticks[-1]:
            ticks.append(v)
    ticks = ticks[::-1]
    ax.set_xticks(ticks), ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("NFE (network evaluations per sample)"), ax.set_ylabel(f"{metric} (lower is better)")
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    ax.set_title(title or f"{metric} against NFE", fontsize=9)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    return save(fig, path)
