"""NCSN's sigma ladder: its levels and Song & Ermon 2020's rules for choosing them -- derivations/ncsn.md (J2, J3).

The ladder sigma_1 > sigma_2 > ... > sigma_L is geometric (a constant ratio gamma = sigma_{i-1} / sigma_i).
Technique 1: sigma_1 as large as the largest pairwise Euclidean distance of the training data, so that the
noisiest level can carry a sample from any data point to any other. Technique 2: gamma such that a sample of
level i lands in the typical shell of level i - 1 about half the time. In code the ladder is 0-based
(``ladder[0]`` is the paper's sigma_1). lab/config.py reads these to build the per-dataset recipes.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from .errors import InputError, check_int, check_number


def sigma_ladder(sigma_max, sigma_min, num_levels):
    """(J2) The geometric ladder sigma_max = ladder[0] > ... > ladder[L-1] = sigma_min: (L,) float64."""
    hi = check_number(sigma_max, "--sigma-max (the ladder's largest sigma)", lo_open=True)
    lo = check_number(sigma_min, "--sigma-min (the ladder's smallest sigma)", lo_open=True)
    n = check_int(num_levels, "--num-levels (the ladder's levels)", lo=2)
    if not lo < hi:
        raise InputError(f"--sigma-min {lo:g} must lie below --sigma-max {hi:g}: the ladder runs from sigma_max down")
    # (J2)  sigma_i = sigma_max (sigma_min / sigma_max)^{i / (L - 1)}, i = 0 .. L-1: ratio gamma = (max/min)^{1/(L-1)}
    return hi * (lo / hi) ** (np.arange(n, dtype=np.float64) / (n - 1))


def max_pairwise_distance(x, max_points=None, seed=0, chunk=512):
    """(J2) max_{i,j} ||x_i - x_j|| over the rows of x (N, ...): exact over all N when N <= max_points (or
    max_points None), else exact over a random subsample of max_points rows (``seed``): a lower bound of the
    data's, which ``radius_bound`` bounds from above. Chunked, so memory is chunk * N floats."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[0] < 2:
        raise InputError(f"the largest pairwise distance needs at least 2 points, got {x.shape[0]}")
    if max_points is not None and x.shape[0] > check_int(max_points, "max_points", lo=2):
        x = x[np.random.default_rng(seed).choice(x.shape[0], size=max_points, replace=False)]
    x = x - x.mean(axis=0)                      # distances are shift-invariant; centring keeps ||a||^2 small
    sq = np.einsum("nd,nd->n", x, x)
    best = 0.0
    for i in range(0, x.shape[0], chunk):
        # ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b, one block of rows against all
        d2 = sq[i:i + chunk, None] + sq[None, :] - 2.0 * x[i:i + chunk] @ x.T
        best = max(best, float(d2.max()))
    return math.sqrt(max(best, 0.0))


def radius_bound(x):
    """An upper bound of the largest pairwise distance: 2 max_i ||x_i - mean|| (the triangle inequality)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return 2.0 * float(np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1).max()))


def shell_overlap(gamma, dim):
    """(J3) Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma): the probability (||x|| for x ~
    N(0, sigma^2 I_D) taken as N(sqrt(D) sigma, sigma^2 / 2)) that a sample of level i lies within 3 standard
    deviations of level i - 1's typical norm, gamma = sigma_{i-1} / sigma_i."""
    a = math.sqrt(2.0 * dim)
    g = np.asarray(gamma, dtype=np.float64)
    return norm.cdf(a * (g - 1.0) + 3.0 * g) - norm.cdf(a * (g - 1.0) - 3.0 * g)


def ladder_ratio(dim, overlap=0.5):
    """(J3) Technique 2's ratio: the gamma > 1 with shell_overlap(gamma, dim) = overlap; None where no gamma reaches
    it (dim <= 4: with sqrt(2D) < 3 the overlap never falls below Phi(3) - Phi(-3), so the rule does not bind)."""
    d = check_int(dim, "dim (the data's dimension)", lo=1)
    p = check_number(overlap, "overlap", lo_open=True)
    if 2.0 * d <= 9.0 or not p < float(shell_overlap(1.0, d)):
        return None
    # the overlap falls from Phi(3) - Phi(-3) at gamma = 1 towards 0 once sqrt(2D) > 3: one root
    return brentq(lambda g: float(shell_overlap(g, d)) - p, 1.0, 1.0 + 20.0 / (math.sqrt(2.0 * d) - 3.0),
                  xtol=1e-14)


def num_levels_for(sigma_max, sigma_min, dim, overlap=0.5, fallback=10):
    """(J3) The fewest levels L whose ratio (sigma_max / sigma_min)^{1/(L-1)} is at most ladder_ratio(dim);
    ``fallback`` where the rule does not bind (dim <= 4; Song & Ermon 2019's L = 10)."""
    g = ladder_ratio(dim, overlap)
    if g is None:
        return fallback
    # the root is solved to 1e-14 in gamma: a count within 1e-6 of an integer is that integer, not one more level
    return 1 + math.ceil(math.log(sigma_max / sigma_min) / math.log(g) - 1e-6)
