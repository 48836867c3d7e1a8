"""Every objective's weighting w(lambda) (derivations/design_space.md, D16), drawn from the code.

    python benchmarks/bench_weightings.py                       # writes benchmarks/figures/weightings.png
    python benchmarks/bench_weightings.py --out /tmp/w.png

Nothing is trained or measured: each curve is reference.objectives.weighting, the loss's weight on the eps-MSE
per unit of lambda with the objective's sampling density folded in (Kingma & Gao 2023's form). Prints each
curve's peak and the lambda range holding the middle 90% of its weight, both over the plotted range
lambda in [-12, 12] (a curve growing as e^{-lambda/2} peaks at its left end).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.plots.weightings import CURVES, LAMBDA_RANGE, weightings_figure  # noqa: E402
from reference.objectives import weighting  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "figures" / "weightings.png"))
    args = p.parse_args(argv)
    lam = np.linspace(*LAMBDA_RANGE, 4801)
    print(f"{'objective':46s} {'peak lambda':>11s} {'middle 90% of w':>18s}")
    for label, objective, kw in CURVES:
        w = weighting(objective, lam, **kw)
        c = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(lam))])
        c /= c[-1]
        lo, hi = np.interp([0.05, 0.95], c, lam)
        print(f"{label:46s} {lam[np.argmax(w)]:11.2f} {lo:8.2f} .. {hi:6.2f}")
    print("wrote", weightings_figure(args.out))


if __name__ == "__main__":
    main()
