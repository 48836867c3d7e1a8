"""THE tolerance table. Every tolerance a test uses comes from here (`from tolerances import TOL`).

Why each value:
  exact64   float64, closed form vs an exact independent route (recursion over <= 1000 steps,
            algebraic inversion): rounding grows ~ T * 2^-52 ~ 2e-13, so 1e-12 is tight but safe.
  cross64   float64 NumPy vs Torch: same math, different op order and libm (exp, log, sqrt,
            cumprod): a few hundred ulps worst case over T=1000 tables, so 1e-10.
  grid64    Bayes' rule normalised numerically on a grid (trapezoid, spacing h): the error of the
            quadrature of a smooth Gaussian is far below h^2; with the grids used, 1e-6.
  op32      float32 per operation: 2^-23 ~ 1.2e-7 relative, times accumulation in a few
            hundred-term sums, so 1e-5.
  net32     float32 whole networks (NumPy vs Torch, TF32 off): relative 1e-4.
  net64     float64 whole networks: relative 1e-8.
  fd64      central finite differences in float64 on smooth inputs: truncation O(h^2) with
            h = 1e-6 and rounding O(eps/h): relative error <= 1e-7 per layer.
  fd64_dir  a whole network's directional derivative in float64 with a fourth-order stencil, h = 1e-3:
            truncation ~h^4 ~ 1e-12, rounding ~1e-13 |f| / h; small directional derivatives need the
            slack, so 1e-6 relative.
  bf16net   a whole network under bf16 autocast vs float32, norm-wise relative: bf16 keeps 8 significant
            bits (unit roundoff 2^-9 ~ 2e-3) and a UNet rounds through ~20 convolutions and products;
            measured 0.6-1.5% on outputs and gradients over 3 seeds, so 5e-2 (a wrong cast is O(1)).
  mc_z      Monte Carlo: an estimate must lie within 5 standard errors of the truth
            (false-failure probability ~ 6e-7 per comparison at fixed seeds).
"""
import numpy as np

TOL = {
    "exact64": 1e-12,
    "cross64": 1e-10,
    "grid64": 1e-6,
    "op32": 1e-5,
    "net32": 1e-4,
    "net64": 1e-8,
    "fd64": 1e-7,
    "fd64_dir": 1e-6,
    "bf16net": 5e-2,
    "mc_z": 5.0,
}


def mc_close(estimate, truth, std_err, z=TOL["mc_z"]):
    """True when every Monte Carlo estimate lies within z standard errors of the truth."""
    estimate, truth, std_err = map(np.asarray, (estimate, truth, std_err))
    return bool(np.all(np.abs(estimate - truth) <= z * std_err))
