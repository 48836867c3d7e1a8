"""Finite-difference gradient checkers (float64, central differences) and error measures.

The independent route for every hand-written backward: perturb, re-run the forward, difference.
"""
import copy

import numpy as np

H = 1e-6  # element-wise central step: truncation O(h^2) ~ 1e-12, rounding O(eps / h) ~ 1e-10 (TOL["fd64"])
H_DIR = 1e-3  # directional fourth-order step: truncation O(h^4) ~ 1e-12, rounding O(eps |f| / h) ~ 1e-13 |f|


def numeric_grad(f, x, h=H):
    """Central-difference gradient of the scalar f() w.r.t. every element of the float64 array x.

    x is perturbed in place one element at a time and restored exactly afterwards.
    """
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        f_plus = f()
        x[idx] = old - h
        f_minus = f()
        x[idx] = old
        g[idx] = (f_plus - f_minus) / (2 * h)
    return g


def directional_derivative(f, arrays, directions, h=H_DIR):
    """d/ds f(a + s d) at s = 0 for lists of arrays a and directions d, by the fourth-order stencil
    [8 (f(h) - f(-h)) - (f(2h) - f(-2h))] / 12h (Richardson on central differences).

    A whole network's f sums many terms, so rounding (~ eps |f| / h) would swamp the derivative
    along a direction where it is small; the fourth-order stencil allows the larger h = 1e-3 with
    truncation O(h^4) ~ 1e-12. The arrays are perturbed in place and restored exactly.
    """
    olds = [a.copy() for a in arrays]

    def f_at(s):
        for a, old, d in zip(arrays, olds, directions):
            np.add(old, s * d, out=a)
        return f()

    value = (8 * (f_at(h) - f_at(-h)) - (f_at(2 * h) - f_at(-2 * h))) / (12 * h)
    for a, old in zip(arrays, olds):
        a[...] = old
    return value


def rel_error(a, b):
    """Norm-wise relative error ||a - b|| / max(||a||, ||b||) (0 when both are 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


def rel_max_error(a, b):
    """Max-abs relative error max|a - b| / max|b| (b the reference; 0 when both are 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(initial=0.0), np.abs(a).max(initial=0.0))
    return 0.0 if scale == 0 else float(np.abs(a - b).max() / scale)


def snapshot(obj):
    """A deep copy of nested tuples / lists / dicts of arrays, for "backward mutated nothing" checks."""
    return copy.deepcopy(obj)


def same(a, b):
    """Exact structural equality of nested containers of arrays and scalars (NaN-free)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and \
            a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
