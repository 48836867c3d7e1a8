"""Progress for the tooling: a tqdm bar when stderr is a terminal, else a plain line every tenth of the work
or every 30 s (whichever comes first), with the time so far and an estimate of what is left, so a run
in a log file or a CI job still shows it is moving.

The math takes a ``progress`` callable that wraps an iterable (reference.errors.check_progress); these
build such callables, so reference/ never imports tqdm.
"""
from __future__ import annotations

import sys
import time

EVERY_S = 30.0      # a line at least this often when stderr is not a terminal
EVERY_FRACTION = 0.1


def _is_terminal():
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def _duration(s):
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


class LineBar:
    """What tqdm offers the loops (update, set_postfix, close, iteration) as occasional lines on stderr."""

    def __init__(self, total=None, desc=None, initial=0, unit="it", iterable=None):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc or "progress", unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)
        self.n = self.start_n = initial
        self.t0 = self.t_last = time.perf_counter()
        self.next_n = self._milestone(initial)
        self.postfix = ""

    def _milestone(self, n):
        if not self.total:
            return float("inf")
        step = max(1, round(EVERY_FRACTION * self.total))
        return (n // step + 1) * step

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def set_postfix(self, **kw):
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def update(self, k=1):
        self.n += k
        now = time.perf_counter()
        if self.n >= self.next_n or now - self.t_last >= EVERY_S or (self.total and self.n == self.total):
            self._line(now)

    def _line(self, now):
        done, spent = self.n - self.start_n, now - self.t0
        of = f"/{self.total}" if self.total else ""
        left = ""
        if self.total and done > 0 and self.n < self.total:
            left = f", ~{_duration(spent / done * (self.total - self.n))} left"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}s ({_duration(spent)}{left}{extra})", file=sys.stderr,
              flush=True)
        self.t_last, self.next_n = now, self._milestone(self.n)

    def close(self):
        pass


def progress(iterable, desc=None, total=None):
    """Wrap ``iterable`` in a tqdm bar on a terminal, else in a LineBar."""
    if not _is_terminal():
        return LineBar(total=total, desc=desc, iterable=iterable, unit="step")
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False)


def bar(desc, total=None):
    """A ``progress`` callable for the math: ``iterable -> bar over it`` titled ``desc``."""
    return lambda it: progress(it, desc=desc, total=total)


def step_bar(total, initial, enabled):
    """The training loop's bar over steps (None when disabled): tqdm on a terminal, else a LineBar."""
    if not enabled:
        return None
    if not _is_terminal():
        return LineBar(total=total, desc="train", initial=initial, unit="step")
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.05)


LONG_RUN_S = 1800   # a run estimated longer than this says so, whether progress is shown or not
ESTIMATE_STEPS = 3  # steps timed for the estimate, after the first (which pays for warm-up)


class RunEstimate:
    """The run's estimated time, on stderr: right after the first step when even that pace (warm-up
    included) makes the run long, and after ESTIMATE_STEPS more steps at the measured pace (always shown
    when progress is, else only for a long run). A long run on the reference adds the pointer to the port."""

    def __init__(self, trainer, start, show):
        self.trainer, self.start, self.show, self.t0, self.t1, self.warned = trainer, start, show, None, None, False
        self.t0 = time.perf_counter()

    def tick(self, done):
        now = time.perf_counter()
        if done == self.start + 1:
            self.t1 = now
            if (now - self.t0) * (self.trainer.cfg.steps - self.start) > LONG_RUN_S:
                self._say(now - self.t0, "the first step, warm-up included")
        elif self.t1 is not None and done == self.start + 1 + ESTIMATE_STEPS:
            per_step = (now - self.t1) / ESTIMATE_STEPS
            if self.show or per_step * (self.trainer.cfg.steps - self.start) > LONG_RUN_S:
                self._say(per_step, f"steps {done - ESTIMATE_STEPS + 1}..{done}")
            self.t1 = None

    def _say(self, per_step, measured):
        cfg, backend = self.trainer.cfg, self.trainer.backend
        total = per_step * (cfg.steps - self.start)
        msg = (f"estimated training time: {_duration(total)} for {cfg.steps - self.start} steps at "
               f"{per_step:.3g} s/step ({backend}, measured over {measured})")
        if total > LONG_RUN_S and backend == "reference" and not self.warned:
            msg += (f". That is long for NumPy: the port trains the same recipe on a GPU, "
                    f"`python -m torch_port train --data {cfg.data} --out DIR --device cuda`, or choose a smaller "
                    "run (--steps, --base-channels, --image-size)")
            self.warned = True
        print(msg, file=sys.stderr, flush=True)
