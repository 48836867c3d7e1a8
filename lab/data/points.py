"""The 2-D procedural point sets: moons, swissroll, gaussians8, checkerboard (see lab/data/__init__.py).

Each is drawn from np.random.default_rng([seed, split]) and standardised by the distribution's exact
mean and standard deviation (closed form or Gauss-Legendre quadrature), never the sample's.
"""
from __future__ import annotations

import numpy as np

_STREAM = {"train": 0, "test": 1}   # the split picks an independent stream of the seed


def draw(name, n, seed, split):
    """(n, 2) float32 points, standardised by the exact moments of the distribution, and labels (or None)."""
    rng = np.random.default_rng([int(seed), _STREAM[split]])
    raw, labels = RAW_POINTS[name](rng, n)                        # (n, 2), (n,)
    mean, std = point_moments(name)
    return ((raw - mean) / std).astype(np.float32), labels


MOONS_NOISE = 0.05
SWISSROLL_NOISE = 0.25
SWISSROLL_TURNS = (1.5 * np.pi, 4.5 * np.pi)    # angle range of the roll
GAUSSIANS8_RADIUS, GAUSSIANS8_STD = 1.0, 0.1
CHECKERBOARD_HALF = 2.0                         # 4x4 board on [-2, 2]^2, points on the 8 dark squares


def _moons(rng, n):
    """Two interleaved half circles (sklearn's make_moons), Gaussian noise MOONS_NOISE."""
    which = rng.integers(0, 2, size=n)                            # 0 upper moon, 1 lower moon
    theta = rng.uniform(0.0, np.pi, size=n)
    upper = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    lower = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)
    pts = np.where(which[:, None] == 0, upper, lower)
    return pts + MOONS_NOISE * rng.standard_normal((n, 2)), which


def _swissroll(rng, n):
    """A 2-D spiral (t cos t, t sin t), t ~ U(SWISSROLL_TURNS), Gaussian noise SWISSROLL_NOISE."""
    t = rng.uniform(*SWISSROLL_TURNS, size=n)
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    return pts + SWISSROLL_NOISE * rng.standard_normal((n, 2)), None


def _gaussians8(rng, n):
    """Eight isotropic Gaussians (std GAUSSIANS8_STD) equally spaced on a circle of radius 1."""
    k = rng.integers(0, 8, size=n)
    centers = GAUSSIANS8_RADIUS * np.stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)], axis=1)
    return centers + GAUSSIANS8_STD * rng.standard_normal((n, 2)), k


def _checkerboard(rng, n):
    """Uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2 (square (row, col) dark when row + col is even)."""
    square = rng.integers(0, 8, size=n)                           # dark squares numbered row-major 0..7
    row = square // 2
    col = 2 * (square % 2) + row % 2
    u = rng.uniform(0.0, 1.0, size=(n, 2))
    pts = np.stack([col + u[:, 0], row + u[:, 1]], axis=1) - CHECKERBOARD_HALF
    return pts, square


RAW_POINTS = {"moons": _moons, "swissroll": _swissroll, "gaussians8": _gaussians8, "checkerboard": _checkerboard}


def point_moments(name):
    """Exact mean (2,) and std (2,) of the raw distribution (noise included)."""
    if name == "moons":
        # x: mixture of cos(th) and 1 - cos(th), th ~ U(0, pi): means 0, 1, each variance 1/2
        # y: mixture of sin(th) and 1/2 - sin(th): means 2/pi, 1/2 - 2/pi, each variance 1/2 - 4/pi^2
        mean = np.array([0.5, 0.25])
        var = np.array([0.5 + 0.25, 0.5 - 4 / np.pi**2 + (2 / np.pi - 0.25) ** 2]) + MOONS_NOISE**2
    elif name == "swissroll":
        # E f(t) for t ~ U(a, b) by 64-point Gauss-Legendre quadrature (exact to rounding for these smooth f)
        a, b = SWISSROLL_TURNS
        nodes, weights = np.polynomial.legendre.leggauss(64)
        t, w = 0.5 * (b - a) * nodes + 0.5 * (b + a), 0.5 * weights
        xy = np.stack([t * np.cos(t), t * np.sin(t)])            # (2, 64)
        mean = xy @ w
        var = (xy**2) @ w - mean**2 + SWISSROLL_NOISE**2
    elif name == "gaussians8":
        # centers at 8 equally spaced angles: mean 0, E cos^2 = E sin^2 = 1/2
        mean = np.zeros(2)
        var = np.full(2, GAUSSIANS8_RADIUS**2 / 2 + GAUSSIANS8_STD**2)
    else:
        # each column and each row holds two dark squares: both marginals are U(-2, 2)
        mean = np.zeros(2)
        var = np.full(2, (2 * CHECKERBOARD_HALF) ** 2 / 12)
    return mean, np.sqrt(var)

