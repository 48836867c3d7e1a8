"""The samplers' table: one row per sampler, read by both sides, the CLI, its checks and the tests.

A row says what a sampler is, not how it computes: its family, the network calls it makes for n steps, the
fewest steps it runs, the flags that apply to it, whether it draws noise, its default spacing or grid, the
models it serves and its --help line. The math is one function per side, found by name: reference/samplers.py's
CHAIN_STEPS and reference/solvers.py's SOLVERS (and the port's twins). No module outside this one compares
sampler names (tests/common/test_sampler_table.py holds every module to that), so a new sampler is one row here,
one function on each side, its derivation and its tests.

Families: "chain" steps the trained discrete chain between kept integer steps (derivations/sampling.md);
"ode" solves the probability-flow ODE over a decreasing grid of noise levels (derivations/solvers.md); "sde"
is reserved for the reverse-SDE samplers of the next issue.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import objective_table as _objective_table
from .choices import CONTINUOUS_GRIDS, GRIDS, OBJECTIVES
from .errors import InputError, check_choice, check_int

FAMILIES = ("chain", "ode", "sde")
CLASSIFIER_ROUTES = ("ancestral", "eps", "denoiser")   # Sampler.classifier_route's values
FLAGS = ("eta", "variance", "spacing", "grid")
# What each flag sets, in the words of the flag checks' messages.
FLAG_WORDS = {"eta": "the noise of the DDIM step", "variance": "the ancestral step's variance",
              "spacing": "the chain's kept steps", "grid": "the noise levels the ODE is solved on"}
# The grid an ODE sampler runs on when --grid is omitted, per objective (the one place that says it): a model of
# the trained chain starts on "trailing" (lab.late_start.default_grid turns it to leading where a start at T-1
# is harmful); EDM's own grid is Karras et al.'s; flow matching's is uniform in its t (its training density).
DEFAULT_GRIDS = {r.name: r.default_grid for r in _objective_table.ROWS}   # common/objective_table.py's rows
# The grids each objective's models take: the trained chain's steps, or any level of a continuous sigma range.
OBJECTIVE_GRIDS = {r.name: r.grids for r in _objective_table.ROWS}


@dataclass(frozen=True)
class Sampler:
    """One sampler. ``calls_per_step`` network calls a step, ``calls_saved_at_zero`` fewer on a grid ending at
    sigma = 0 (Heun's last step is an Euler step); ``order`` 2 for a second-order update, after
    ``first_order_steps`` first-order steps (DPM-Solver++(2M) has no history at its first); ``min_steps`` the
    fewest steps on a grid ending at 0 with one second-order update; ``flags`` the CLI flags that apply;
    ``draws_noise`` whether it consumes the generator; ``default_where`` its default spacing (chain) or grid
    (ode, on the trained chain; DEFAULT_GRIDS has every objective's); ``objectives`` the models it serves;
    ``all_steps_default``: all T steps when --sample-steps is omitted; ``evaluates_ahead``: a step calls the
    network again at the next level (a trapezoid correction); ``invertible``: run forwards, it encodes data to
    latents (the Euler step, DDIM inversion N6); ``classifier_route``: how classifier guidance enters it
    (derivations/classifier_guidance.md): "ancestral", Algorithm 1's shifted mean (H1); "eps", Algorithm 2's
    guided eps (H3); "denoiser", D + s sigma^2 grad log p(y | x~) (H4)."""
    name: str
    family: str
    help: str
    flags: frozenset
    draws_noise: bool
    default_where: str
    objectives: tuple = OBJECTIVES
    calls_per_step: int = 1
    calls_saved_at_zero: int = 0
    order: int = 1
    first_order_steps: int = 0
    min_steps: int = 1
    all_steps_default: bool = False
    evaluates_ahead: bool = False
    invertible: bool = False
    classifier_route: str = "denoiser"

    def nfe(self, n, ends_at_zero=True):
        """Network evaluations for n steps: calls_per_step n, less calls_saved_at_zero on a grid ending at 0."""
        return self.calls_per_step * n - (self.calls_saved_at_zero if ends_at_zero else 0)

    def second_order_steps(self, n, ends_at_zero=True):
        """How many of n steps are second-order updates: none for a first-order sampler; the first
        first_order_steps and a last step to sigma = 0 are first order."""
        return 0 if self.order < 2 else max(0, n - self.first_order_steps - int(bool(ends_at_zero)))


_ODE = frozenset({"grid"})
ROWS = (
    Sampler("ddpm", "chain", "ancestral sampling (Ho et al. 2020, Algorithm 2), one network call a step",
            frozenset({"variance", "spacing"}), True, "leading", objectives=("ddpm",), all_steps_default=True,
            classifier_route="ancestral"),
    Sampler("ddim", "chain", "Song et al. 2021, deterministic at eta 0, one network call a step",
            frozenset({"eta", "spacing"}), True, "leading", objectives=("ddpm",), invertible=True,
            classifier_route="eps"),
    Sampler("euler", "ode", "Euler steps (= ddim with eta 0, step for step), one call a step", _ODE, False,
            "trailing", invertible=True),
    Sampler("heun", "ode", "Heun's steps (Karras et al. 2022), 2 calls a step, the last one to sigma = 0 an Euler "
            "step", _ODE, False, "trailing", calls_per_step=2, calls_saved_at_zero=1, order=2, min_steps=2,
            evaluates_ahead=True),
    Sampler("dpm++2m", "ode", "DPM-Solver++(2M) (Lu et al. 2022), one call a step", _ODE, False, "trailing",
            order=2, first_order_steps=1, min_steps=3),
)
TABLE = {r.name: r for r in ROWS}


def names(family=None):
    """The sampler names in table order, of one family (``check_choice`` of it) or all."""
    if family is not None:
        check_choice(family, FAMILIES, "sampler family")
    return tuple(r.name for r in ROWS if family is None or r.family == family)


def row(name):
    """The row of sampler ``name``; an unknown name is refused listing the names (and the nearest one)."""
    return TABLE[check_choice(name, names(), "sampler")]


def nfe(name, n, ends_at_zero=True):
    """Network evaluations of ``name`` for n steps: ddpm, ddim, euler, dpm++2m n; heun 2n - 1 on a grid ending
    at 0 (2n otherwise)."""
    return row(name).nfe(check_int(n, "n (number of steps)", lo=1), ends_at_zero)


def steps_for_nfe(name, k):
    """The most steps whose NFE on a grid ending at 0 is at most k (heun: 2n - 1 <= k); refused when k cannot
    buy the sampler's fewest steps."""
    r = row(name)
    k = check_int(k, "NFE (network evaluations)", lo=1)
    least = r.nfe(r.min_steps)
    if k < least:
        raise InputError(f"NFE {k} is too small for the second-order sampler {name!r}: it needs NFE >= {least}")
    return (k + r.calls_saved_at_zero) // r.calls_per_step


def takers(flag):
    """The samplers a flag applies to, in table order."""
    return tuple(r.name for r in ROWS if check_choice(flag, FLAGS, "flag") in r.flags)


def serves(name, objective):
    """Whether sampler ``name`` can sample a model trained with ``objective``."""
    return check_choice(objective, OBJECTIVES, "objective") in row(name).objectives


def check_serves(name, objective):
    """Refuse a sampler that cannot sample a model of ``objective``, naming the one that does its work."""
    if not serves(name, objective):
        r = row(name)
        raise InputError(f"--sampler {name} steps the discrete chain of a model trained with --objective "
                         f"{'/'.join(r.objectives)} (its integer steps t); this {objective} model has none: use "
                         "--sampler euler, which is DDIM with eta 0 on a grid of noise levels (K7)")
    return name


def check_flags(name, steps=None, eta=None, variance=None, spacing=None, grid=None, objective="ddpm"):
    """The flags given with sampler ``name`` (None: omitted), in the CLI's words: a flag the sampler would ignore,
    a grid the model does not take or a step count below the sampler's fewest is refused."""
    r, grids = row(name), OBJECTIVE_GRIDS[check_choice(objective, OBJECTIVES, "objective")]
    for flag, given in (("eta", eta), ("variance", variance)):
        if given is not None and flag not in r.flags:
            raise InputError(f"--{flag} applies to --sampler {'/'.join(takers(flag))} only ({FLAG_WORDS[flag]}); "
                             f"--sampler {name} would ignore it")
    if spacing is not None and "spacing" not in r.flags:
        fix = spacing if spacing in grids else " or ".join(grids)
        raise InputError(f"--spacing applies to --sampler {'/'.join(takers('spacing'))} ({FLAG_WORDS['spacing']}); "
                         f"--sampler {name} runs on a --grid ({'/'.join(grids)}): use --grid {fix}")
    if grid is not None and "grid" not in r.flags:
        raise InputError(f"--grid applies to the ODE samplers ({'/'.join(takers('grid'))}); --sampler {name} "
                         "shortens with --spacing instead (--sampler ddim --spacing S is --sampler euler --grid S)")
    if grid is not None and grid not in grids:
        raise InputError(f"--grid {grid} is a grid of the trained chain's integer steps; this {objective} model "
                         f"has continuous noise levels and takes --grid {' or '.join(grids)} (default "
                         f"{DEFAULT_GRIDS[objective]})")
    if steps is not None and steps < r.min_steps:
        k = r.min_steps
        raise InputError(f"--sample-steps {steps} is too few for --sampler {name}: it takes a second-order step "
                         f"only with --sample-steps {k} or more (NFE {r.nfe(k)}); use more steps or --sampler euler")
    return r


def help_lines(family=None):
    """The --sampler help: "name: description" of every sampler (of one family), joined by "; "."""
    return "; ".join(f"{r.name}: {r.help}" for r in ROWS if family is None or r.family == family)
