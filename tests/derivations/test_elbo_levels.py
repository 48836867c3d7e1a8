"""The discretised decoder on L levels (derivations/elbo.md, L9): data with L intensity values in [-1, 1]
(256 for 8-bit images, 17 for the digits) have bins of width 2/(L-1); the first and last bins take the
tails. Independent routes: the trapezoid rule over each bin of the Gaussian density (the tails by a wide
finite grid), the telescoping sum of the L masses, and the 8-bit default against levels=256 spelled out.
"""
import math

import numpy as np
import pytest

from reference import losses
from reference.errors import InputError
from reference.schedules import Schedule, make_betas
from tolerances import TOL

LEVELS = (2, 3, 17, 256)
PARAMS = [(0.0, 0.5), (0.93, 0.01), (-1.4, 0.2), (0.2, 1e-3), (3.0, 1.0), (-0.5, 0.07)]


def _grid(levels):
    return -1.0 + 2.0 * np.arange(levels) / (levels - 1)


def _density(x, mean, sigma):
    return np.exp(-0.5 * ((x - mean) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


@pytest.mark.parametrize("levels", LEVELS)
def test_L9_the_L_bin_masses_sum_to_one_and_integrate_the_density(levels):
    grid, half = _grid(levels), 1.0 / (levels - 1)
    for mean, sigma in PARAMS:
        ll = losses.discretized_gaussian_log_likelihood(grid, mean, math.log(sigma), levels=levels)
        # L terms with relative rounding ~1e-16 each: exact64
        assert abs(np.exp(ll).sum() - 1.0) <= TOL["exact64"], (levels, mean, sigma)
        for k in sorted({0, 1, levels // 2, levels - 2, levels - 1}):
            lo = grid[k] - half if k > 0 else min(mean, grid[k]) - 14 * sigma            # first bin: to -inf
            hi = grid[k] + half if k < levels - 1 else max(mean, grid[k]) + 14 * sigma   # last bin: to +inf
            x = np.linspace(lo, hi, 200001)
            mass = np.trapezoid(_density(x, mean, sigma), x)
            # grid64: the trapezoid's error on a smooth density over 2e5 points, relative to the mass
            # (absolute below 1e-3, where the bin is far in a tail)
            assert abs(math.exp(ll[k]) - mass) <= TOL["grid64"] * max(mass, 1e-3), (levels, mean, sigma, k)


def test_L9_the_default_is_8_bit_data_and_17_levels_are_the_digits():
    grid = _grid(256)
    ll = losses.discretized_gaussian_log_likelihood(grid, 0.1, math.log(0.05))
    assert np.array_equal(ll, losses.discretized_gaussian_log_likelihood(grid, 0.1, math.log(0.05), levels=256))
    digits = _grid(17)
    with pytest.raises(InputError, match="8-bit data on the grid"):   # the digits are not 8-bit data
        losses.discretized_gaussian_log_likelihood(digits, 0.0, 0.0)
    with pytest.raises(InputError, match="data of 17 levels on the grid"):
        losses.discretized_gaussian_log_likelihood(grid[1:3], 0.0, 0.0, levels=17)
    # a mean exactly on a level with a tiny sigma puts all the mass in that level's bin, whatever L
    for levels in LEVELS:
        g = _grid(levels)
        ll = losses.discretized_gaussian_log_likelihood(g, g[levels // 2], math.log(1e-4), levels=levels)
        assert abs(ll[levels // 2]) <= TOL["exact64"]


def test_L1_L7_L9_digits_bound_with_17_levels_is_a_code_length_on_17_symbols(rng):
    """bits/dim of 17-level data under a bound with levels=17: >= 0 (a bound on -log2 of a mass), the batch mean
    of the per-example totals; the 8-bit default refuses the digits instead of scoring them on the wrong grid."""
    s = Schedule(make_betas("linear", 20, beta_end=0.3), warn=False)
    x0 = _grid(17)[rng.integers(0, 17, size=(8, 1, 4, 4))]
    model = lambda xt, t: 0.3 * xt
    out = losses.vlb_terms(s, model, x0, np.random.default_rng(0), levels=17)
    assert np.all(out["total"] >= 0) and np.all(out["terms"][0] >= 0)
    assert abs(losses.bits_per_dim(s, model, x0, np.random.default_rng(0), levels=17) - out["total"].mean()) \
        <= TOL["exact64"]
    with pytest.raises(InputError, match="pass levels=L"):
        losses.vlb_terms(s, model, x0, np.random.default_rng(0))
