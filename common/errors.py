"""Input checks shared by both sides and lab/ (not math: written once; reference/errors.py re-exports them).

Every check raises :class:`InputError` with a message that names the argument, what was
expected and what was given. The CLIs catch ``InputError`` and print the message without a
traceback.
"""
from __future__ import annotations

import difflib
import math

import numpy as np

__all__ = ["InputError", "check_choice", "check_T", "check_betas", "check_timesteps", "check_finite",
           "check_same_shape", "check_batched", "check_number", "check_int", "check_labels", "check_class_cond",
           "check_run_labels", "check_max_norm", "check_rescaled", "check_progress"]


class InputError(ValueError):
    """A user-facing error: bad argument, bad file, bad flag. The message names the problem."""


def check_choice(value, allowed, what):
    """Return ``value`` if it is one of ``allowed``; otherwise raise naming the choices."""
    if isinstance(value, str) and value in allowed:
        return value
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, list(allowed), n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    raise InputError(f"unknown {what} {value!r}{hint}; choose one of: {', '.join(map(repr, allowed))}")


def check_T(T):
    """T is the number of diffusion steps: an integer >= 1."""
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)):
        raise InputError(f"T (number of diffusion steps) must be an integer, got {T!r}")
    if T < 1:
        raise InputError(f"T (number of diffusion steps) must be >= 1, got {T}")
    return int(T)


def check_betas(betas):
    """Betas must be a 1-D, finite float array with every entry in (0, 1]."""
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1:
        raise InputError(f"betas must be a 1-D array of length T, got shape {b.shape}")
    if b.size < 1:
        raise InputError("betas is empty: T (number of diffusion steps) must be >= 1")
    if not np.all(np.isfinite(b)):
        bad = int(np.flatnonzero(~np.isfinite(b))[0])
        raise InputError(f"betas must be finite; betas[{bad}] = {b[bad]}")
    if np.any(b <= 0) or np.any(b > 1):
        bad = int(np.flatnonzero((b <= 0) | (b > 1))[0])
        n_bad = int(np.count_nonzero((b <= 0) | (b > 1)))
        raise InputError(f"every beta must lie in (0, 1]; {n_bad} do not, first betas[{bad}] = {float(b[bad])!r}")
    return b


def check_timesteps(t, T, n=None):
    """t is an integer or an integer array of shape (N,) with values in {0, ..., T-1}.

    ``n`` is the batch size it must match (the leading dimension of the data), if known.
    Returns an int64 array of shape () or (N,).
    """
    ta = np.asarray(t)
    if ta.dtype == bool or not np.issubdtype(ta.dtype, np.integer):
        if np.issubdtype(ta.dtype, np.floating) and np.all(np.isfinite(ta)) and np.all(ta == np.round(ta)):
            ta = ta.astype(np.int64)
        else:
            raise InputError(f"t must be an integer time index (0-based, 0..T-1), got dtype {ta.dtype}")
    if ta.ndim > 1:
        raise InputError(f"t must be an int or an int array of shape (N,), got shape {ta.shape}")
    if ta.ndim == 1 and n is not None and ta.shape[0] != n:
        raise InputError(f"t has shape {ta.shape} but the batch has N={n}; t must be an int or shape ({n},)")
    if ta.size and (ta.min() < 0 or ta.max() > T - 1):
        bad = ta.min() if ta.min() < 0 else ta.max()
        raise InputError(f"t out of range: got {int(bad)}, valid indices are 0..{T - 1} (0-based; paper step = t+1)")
    return ta.astype(np.int64)


def check_finite(x, name):
    """Raise if the array ``x`` holds NaN or inf."""
    a = np.asarray(x)
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        n_bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise InputError(f"{name} holds {n_bad} non-finite value(s) (NaN or inf)")
    return x


def check_same_shape(a, b, name_a, name_b):
    if np.shape(a) != np.shape(b):
        raise InputError(f"shape mismatch: {name_a} has shape {np.shape(a)} but {name_b} has shape {np.shape(b)}")


def check_batched(x, name):
    """Data arrays are batched: at least 1-D with the batch first, (N, ...)."""
    if np.ndim(x) < 1:
        raise InputError(f"{name} must be a batch with the batch dimension first, (N, ...), got a scalar")
    return x


def check_number(x, name, lo=0.0, hi=math.inf, lo_open=False, hi_open=False):
    """A finite real number in [lo, hi] (ends open where asked); returns it as a Python float."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not math.isfinite(x):
        raise InputError(f"{name} must be a finite number, got {x!r}")
    x = float(x)
    if x < lo or (lo_open and x == lo) or x > hi or (hi_open and x == hi):
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise InputError(f"{name} must lie in {lb}{lo}, {hi}{rb}, got {x!r}")
    return x


def check_int(x, name, lo=0):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < lo:
        raise InputError(f"{name} must be an integer >= {lo}, got {x!r}")
    return int(x)


def check_labels(y, num_classes, n=None, allow_null=True):
    """Class labels -> int64 (n,) (or as given when n is None): an int for every example or an int array (n,),
    each in 0..K-1, or K, the null class (the unconditional pass), where ``allow_null``. num_classes None means
    the model is unconditional, and labels are refused. Shared by both sides (the port checks host values)."""
    if num_classes is None:
        raise InputError("class labels were given to an unconditional model (num_classes=None): it was trained "
                         "without classes; `train --class-cond` trains a class-conditional one")
    a = np.asarray(y)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer) or a.ndim > 1 or \
            (n is not None and a.ndim == 1 and a.shape[0] != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise InputError(f"class labels must be an int or an int array of shape {want}, got shape {a.shape} "
                         f"dtype {a.dtype}")
    hi = num_classes if allow_null else num_classes - 1
    if a.size and (a.min() < 0 or a.max() > hi):
        bad = int(a.min()) if a.min() < 0 else int(a.max())
        null = f", or {num_classes} for the null class" if allow_null else ""
        raise InputError(f"class {bad} is out of range: the model has {num_classes} classes, 0..{num_classes - 1}"
                         f"{null}")
    return a.astype(np.int64) if n is None else np.broadcast_to(a, (n,)).astype(np.int64)


def check_class_cond(cfg):
    """A run configuration's classes: K = cfg.model["num_classes"] when cfg.class_cond, None when not; a class-
    conditional run without num_classes (or the reverse) is refused."""
    k = (getattr(cfg, "model", None) or {}).get("num_classes")
    if bool(getattr(cfg, "class_cond", False)) != (k is not None):
        raise InputError("a class-conditional run (class_cond) needs model num_classes, an unconditional one none: "
                         f"got class_cond={getattr(cfg, 'class_cond', False)}, num_classes={k}")
    return None if k is None else check_int(k, "num_classes", lo=1)


def check_run_labels(y, num_classes, n):
    """A training batch's labels: None for an unconditional run (labels refused), else (n,) in 0..K-1."""
    if num_classes is None:
        if y is not None:
            raise InputError("class labels were given to an unconditional run: train with --class-cond")
        return None
    if y is None:
        raise InputError("this run is class-conditional (--class-cond): each step needs the batch's labels y")
    return check_labels(y, num_classes, n, allow_null=False)


def check_max_norm(max_norm):
    """max_norm > 0; inf means no clipping (the coefficient is then exactly 1), as in torch."""
    if not isinstance(max_norm, bool) and isinstance(max_norm, (int, float, np.integer, np.floating)) \
            and max_norm == math.inf:
        return math.inf
    return check_number(max_norm, "max_norm", lo_open=True)


def check_rescaled(betas):
    """The output of rescale_zero_terminal_snr (both sides): only the last step may lose all signal. An
    earlier beta that rounds to 1 means the input's last betas were below float64's resolution (alpha_bar
    hardly decreased there). ``betas``: a NumPy array. Returns it."""
    if np.any(betas[:-1] >= 1.0):
        k = int(np.flatnonzero(betas[:-1] >= 1.0)[0])
        raise InputError(f"rescale_zero_terminal_snr: the rescaled schedule leaves so little signal at step {k} "
                         f"(of {betas.size}) that beta_{k} rounds to 1 in float64: only the last step may lose all "
                         "signal. The last betas are too small relative to the earlier ones to rescale.")
    return betas


def check_progress(progress):
    """A loop's progress hook: None (no progress) or a callable that wraps an iterable (e.g. a tqdm bar).

    Returns the wrapper to apply, ``iterable -> iterable``; the math never imports a progress library.
    """
    if progress is None:
        return lambda it: it
    if callable(progress):
        return progress
    raise InputError(f"progress must be None or a callable that wraps an iterable, got {progress!r}")
