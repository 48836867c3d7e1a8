"""``schedules``: alpha_bar_t and log SNR of every noise schedule, plotted and tabulated (both sides)."""
from __future__ import annotations

import warnings

import numpy as np

from .. import plots
from ..cli import DEFAULT_T, add_command, make_schedule, out_png


def _configure_schedules(p):
    p.add_argument("--out", required=True, metavar="FILE.png", help="where to write the plot")
    p.add_argument("--T", type=int, default=DEFAULT_T, metavar="T", help="number of diffusion steps")


def _schedule_set(B, T):
    """Every named schedule, plus the linear one rescaled to zero terminal SNR (S6)."""
    names = B.schedules.SCHEDULES
    out = {name: make_schedule(B, name, T, warn=False) for name in names}
    if T >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            betas = B.schedules.rescale_zero_terminal_snr(B.schedules.make_betas("linear", T))
            out["linear, zero terminal SNR"] = B.schedules.Schedule(betas)
    return out


def _run_schedules(args, B):
    out = out_png(args.out)
    scheds = _schedule_set(B, args.T)
    plots.schedule_plot(scheds, out)
    print(f"{'schedule':28s} {'alpha_bar at t=T-1':>20s} {'prior L_T bits/dim':>20s}")
    for name, s in scheds.items():
        abar_T = float(np.asarray(B.to_numpy(s.alpha_bar))[-1])
        bpd = s.prior_bpd()
        print(f"{name:28s} {abar_T:20.3e} {bpd:20.3e}")
    print(f"wrote {out}")
    return 0


add_command(
    "schedules", "plot alpha_bar_t and log SNR for every noise schedule", _configure_schedules, _run_schedules,
    description="""
    A schedule sets beta_t, the noise variance added at step t. What matters to the model is
    alpha_bar_t = prod_{s<=t} (1 - beta_s), the signal share left in x_t, or equivalently the
    signal-to-noise ratio SNR_t = alpha_bar_t / (1 - alpha_bar_t). This plots both against t/T for
    every schedule and prints alpha_bar at the last step: it should be ~0 so that x_T ~ N(0, I),
    the distribution sampling starts from (the prior term L_T measures the gap).
    """,
    epilog="""
    example:
      python -m reference schedules --out schedules.png --T 1000
    """)
