"""Every objective's weighting w(lambda) over the log-SNR (derivations/design_space.md, D16), computed by
reference.objectives.weighting: the picture of Kingma & Gao 2023's Figure 2 for this project's objectives."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from common.objective_table import row as objective_row
from reference.objectives import weighting

from .common import DPI, PANEL_PX, save

LAMBDA_RANGE = (-12.0, 12.0)
# (label, objective, settings): every weighting the design space names; "ddpm" is the chain's L_simple family
CURVES = (
    ("ddpm L_simple, cosine (= SNR weighting)", "ddpm", {"process": "vp-cosine"}),
    ("ddpm L_simple, linear", "ddpm", {"process": "vp-linear"}),
    ("ddpm min-SNR-5, cosine", "ddpm", {"process": "vp-cosine", "loss_weighting": "min_snr", "gamma": 5.0}),
    ("ddpm v-MSE, cosine", "ddpm", {"process": "vp-cosine", "prediction": "v"}),
    ("edm (P_mean -1.2, P_std 1.2)", "edm", {}),
    ("flow, t uniform", "flow", {}),
    ("flow, logit-normal (0, 1)", "flow", {"t_sampling": "logit-normal"}),
    ("flow, logit-normal, shift 3", "flow", {"t_sampling": "logit-normal", "shift": 3.0}),
)


def weightings_figure(path, n=1201):
    """w(lambda) of each objective in CURVES: left, w itself (log scale); right, w normalised to integrate to 1,
    where each objective spends its training effort over lambda (the v-MSE and flow's uniform t grow as e^{-lambda/2}
    without bound towards low SNR, so theirs depends on the range). Dashed: the chain's losses.
    Size: 3 PANEL_PX wide, 1.5 PANEL_PX high."""
    lam = np.linspace(*LAMBDA_RANGE, n)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(3 * PANEL_PX / DPI, 1.5 * PANEL_PX / DPI), dpi=DPI)
    for i, (label, objective, kw) in enumerate(CURVES):
        w = weighting(objective, lam, **kw)
        # the chain's losses dashed, each its own dash, so coinciding stretches (min-SNR = L_simple below snr 5) show
        dash = ("--", ":", "-.", (0, (6, 2)))[i % 4]
        style = {"color": f"C{i}", "lw": 1.4, "ls": "-" if objective_row(objective).continuous else dash}
        a1.plot(lam, np.where(w > 0, w, np.nan), label=label, **style)
        a2.plot(lam, w / np.trapezoid(w, lam), **style)
    a1.set_yscale("log"), a1.set_ylim(1e-5, 1e3)
    a1.set_ylabel("w(lambda)"), a1.set_title("w(lambda) = 2 p(lambda) omega(lambda) (eps-MSE weight)", fontsize=8)
    a2.set_ylabel("w / its integral over the plotted range")
    a2.set_title("normalised: where the loss spends its effort", fontsize=8)
    for a in (a1, a2):
        a.set_xlabel("lambda = log SNR = log(alpha^2 / sigma^2)"), a.grid(alpha=0.3)
    a2.legend(*a1.get_legend_handles_labels(), fontsize=6, loc="upper right")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
    return save(fig, path)
