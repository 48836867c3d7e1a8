"""Progress bars for the tooling (tqdm on stderr, silent when stderr is not a terminal).

The math takes a ``progress`` callable that wraps an iterable (reference.errors.check_progress); these
build such callables, so reference/ never imports tqdm.
"""
from __future__ import annotations


def progress(iterable, desc=None, total=None):
    """Wrap ``iterable`` in a tqdm bar on stderr; silent when stderr is not a terminal."""
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False)


def bar(desc, total=None):
    """A ``progress`` callable for the math: ``iterable -> bar over it`` titled ``desc``."""
    return lambda it: progress(it, desc=desc, total=total)


def step_bar(total, initial, enabled):
    """The training loop's bar over steps (None when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.05)
