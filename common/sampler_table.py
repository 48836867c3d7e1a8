"""The samplers' table: one row per sampler, read by both sides, the CLI, its checks and the tests.

A row says what a sampler is, not how it computes: its family, the network calls it makes for n steps, the
fewest steps it runs, the flags that apply to it, whether it draws noise, its default spacing or grid, the
models it serves and its --help line. The math is one function per side, found by name: reference/samplers.py's
CHAIN_STEPS and reference/solvers.py's SOLVERS (and the port's twins). No module outside this one compares
sampler names (tests/common/test_sampler_table.py holds every module to that), so a new sampler is one row here,
one function on each side, its derivation and its tests.

Families: "chain" steps the trained discrete chain between kept integer steps (derivations/sampling.md);
"ode" solves the probability-flow ODE over a decreasing grid of noise levels (derivations/solvers.md); "sde"
runs a stochastic sampler over such a grid (reference/sde.py SDE_SAMPLERS and its twin, derivations/sde_samplers.md),
fed its noise draws in order. An SDE row names its settings and their defaults (``settings``, the CLI's flags with
dashes), how its network calls grow with them (``setting_calls``) and the setting at which it would be an ODE
sampler exactly (``deterministic_at``), which the flag checks refuse naming that sampler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import objective_table as _objective_table
from .choices import CONTINUOUS_GRIDS, GRIDS, OBJECTIVES
from .errors import InputError, check_choice, check_int

FAMILIES = ("chain", "ode", "sde")
CLASSIFIER_ROUTES = ("shifted-mean", "eps", "denoiser")   # Sampler.classifier_route's values
SDE_FLAGS = ("s_churn", "s_tmin", "s_tmax", "s_noise", "snr", "corrector_steps", "langevin_steps", "langevin_eps",
             "final_denoise")   # the SDE samplers' settings, one CLI flag each (--s-churn, ...)
FLAGS = ("eta", "variance", "spacing", "grid") + SDE_FLAGS
# What each flag sets, in the words of the flag checks' messages.
FLAG_WORDS = {"eta": "the noise of a DDIM or SDE step, 0 deterministic", "variance": "the ancestral step's variance",
              "spacing": "the chain's kept steps", "grid": "the noise levels the ODE or SDE is solved on",
              "s_churn": "EDM's total churn S_churn, the noise added before each step",
              "s_tmin": "the lowest level EDM churns (S_tmin)", "s_tmax": "the highest level EDM churns (S_tmax)",
              "s_noise": "EDM's inflation of the churn noise (S_noise)",
              "snr": "the Langevin corrector's signal-to-noise ratio, which sets its step (Q7)",
              "corrector_steps": "Langevin corrector steps per level, each one network call",
              "langevin_steps": "Langevin steps per noise level, each one network call",
              "langevin_eps": "the Langevin step at the smallest level, eps sigma_i^2 / sigma_L^2 at level i (Q10)",
              "final_denoise": "the final denoising step D(x, sigma_L) after the last level (Q12)"}
# The value each SDE setting takes, checked by check_flags in the CLI's words: (kind, lower bound); "int" an integer
# >= the bound, "number" a finite number >= the bound (> it where open; eta at most 1), "bool" a switch.
SETTING_RULES = {"eta": ("number", 0.0, False), "s_churn": ("number", 0.0, False), "s_tmin": ("number", 0.0, False),
                 "s_tmax": ("number", 0.0, False), "s_noise": ("number", 0.0, True), "snr": ("number", 0.0, True),
                 "corrector_steps": ("int", 0, False), "langevin_steps": ("int", 1, False),
                 "langevin_eps": ("number", 0.0, True), "final_denoise": ("bool", None, False)}
# A setting whose default follows the grid (None in its row's settings): the words the help gives for it.
GRID_DEFAULTS = {"langevin_eps": "0.2 sigma_L^2, sigma_L the grid's smallest nonzero level (Q13)"}
_HIGHEST = {"eta": 1.0}   # eta 1 is the full noise of the step (DDPM's beta~ for ancestral, Q5)
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
    (derivations/classifier_guidance.md): "shifted-mean", Algorithm 1's (H1); "eps", Algorithm 2's
    guided eps (H3); "denoiser", D + s sigma^2 grad log p(y | x~) (H4). An SDE sampler's ``settings``: ((name,
    default), ...), its flags' defaults (reference/sde.py's, held equal by the tests); ``setting_calls``: ((name,
    per), ...), each adding the setting's value in network calls per "step", per nonzero "level" of the grid or
    "once" (a switch counts 1); ``deterministic_at``: ((name, value, ode sampler), ...), the setting's value at which
    the sampler is that ODE sampler exactly; ``leaves_grid``: it calls the denoiser at levels off the grid (EDM's
    churned sigma^ = (1 + gamma) sigma), which a model of the chain answers at its nearest trained level (K8);
    ``noise_of_the_step``: its step draws noise of std sqrt(sigma^2 - sigma'^2) (Euler-Maruyama's, the
    reverse-diffusion predictor's; Q2, Q6), about sigma itself on a large step, where ancestral and DPM-Solver++ SDE
    keep it below the next level sigma' (Q4, Q9): from the cosine's sigma_{T-1} ~ 2e4 that is far above the next
    level, so lab.late_start.default_grid starts such a sampler on the leading grid there, as it does Heun."""
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
    settings: tuple = ()
    setting_calls: tuple = ()
    deterministic_at: tuple = ()
    leaves_grid: bool = False
    noise_of_the_step: bool = False
    draws: object = None

    def noise_draws(self, n, ends_at_zero=True, **settings):
        """The standard-normal draws an SDE sampler consumes for n steps (a grid of n + 1 levels), with its settings
        (omitted ones at their defaults): what lab's generator must give; 0 for a sampler that draws none here."""
        return 0 if self.draws is None else self.draws(n, {**self.defaults(), **settings}, int(bool(ends_at_zero)))

    def defaults(self):
        """The SDE settings' defaults, {name: value} ({} for a chain or ODE sampler)."""
        return dict(self.settings)

    def nfe(self, n, ends_at_zero=True, **settings):
        """Network evaluations for n steps: calls_per_step n, less calls_saved_at_zero on a grid ending at 0, plus
        each setting_calls entry's value per step, per nonzero level (n, or n + 1 above 0) or once; ``settings``
        omitted take their defaults."""
        st = {**self.defaults(), **{k: v for k, v in settings.items() if v is not None}}
        per = {"step": n, "level": n if ends_at_zero else n + 1, "once": 1}
        extra = sum(int(st[name]) * per[where] for name, where in self.setting_calls)
        return self.calls_per_step * n - (self.calls_saved_at_zero if ends_at_zero else 0) + extra

    def second_order_steps(self, n, ends_at_zero=True):
        """How many of n steps are second-order updates: none for a first-order sampler; the first
        first_order_steps and a last step to sigma = 0 are first order."""
        return 0 if self.order < 2 else max(0, n - self.first_order_steps - int(bool(ends_at_zero)))


_ODE = frozenset({"grid"})
ROWS = (
    Sampler("ddpm", "chain", "ancestral sampling (Ho et al. 2020, Algorithm 2), one network call a step",
            frozenset({"variance", "spacing"}), True, "leading", objectives=("ddpm",), all_steps_default=True,
            classifier_route="shifted-mean"),
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
    Sampler("euler-maruyama", "sde", "Euler-Maruyama steps of the reverse SDE (Song et al. 2021; Q2), one call a "
            "step, the step to sigma = 0 Tweedie's mean (Q3)", _ODE, True, "trailing", noise_of_the_step=True,
            draws=lambda n, st, z: n - z),
    Sampler("ancestral", "sde", "k-diffusion's euler_ancestral (Q4): an Euler step down to sigma_down and fresh "
            "noise up to sigma', one call a step; DDIM with the same --eta on the chain's levels (Q5), default eta 1",
            _ODE | {"eta"}, True, "trailing", settings=(("eta", 1.0),), deterministic_at=(("eta", 0.0, "euler"),),
            draws=lambda n, st, z: n - z),
    Sampler("pc", "sde", "predictor-corrector (Song et al. 2021, Algorithm 2; Q6, Q7): --corrector-steps Langevin "
            "steps at --snr, then a reverse-diffusion step; (corrector steps + 1) calls a step",
            _ODE | {"snr", "corrector_steps"}, True, "trailing", settings=(("snr", 0.16), ("corrector_steps", 1)),
            setting_calls=(("corrector_steps", "step"),), noise_of_the_step=True,
            draws=lambda n, st, z: st["corrector_steps"] * n + n - z),
    Sampler("edm-sde", "sde", "Karras et al. 2022, Algorithm 2 (Q8): churn by --s-churn between --s-tmin and --s-tmax "
            "with --s-noise, then Heun's step; 2 calls a step, the last one to sigma = 0 an Euler step",
            _ODE | {"s_churn", "s_tmin", "s_tmax", "s_noise"}, True, "trailing", calls_per_step=2,
            calls_saved_at_zero=1, order=2, min_steps=2, evaluates_ahead=True,
            settings=(("s_churn", 40.0), ("s_tmin", 0.05), ("s_tmax", 50.0), ("s_noise", 1.003)),
            deterministic_at=(("s_churn", 0.0, "heun"),), leaves_grid=True, draws=lambda n, st, z: n),
    Sampler("dpm++2m-sde", "sde", "DPM-Solver++(2M) SDE (Lu et al. 2022; Q9), one call a step, --eta the share of "
            "noise (default 1)", _ODE | {"eta"}, True, "trailing", order=2, first_order_steps=1, min_steps=3,
            settings=(("eta", 1.0),), deterministic_at=(("eta", 0.0, "dpm++2m"),),
            draws=lambda n, st, z: (n - z) if st["eta"] > 0 else 0),
    Sampler("langevin", "sde", "annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1; Q10-Q12): "
            "--langevin-steps steps at each nonzero level of the grid with step --langevin-eps sigma_i^2 / sigma_L^2 "
            "(default eps 0.2 sigma_L^2, Q13), "
            "then the final denoising step (--no-final-denoise: none); langevin steps x levels (+ 1) calls",
            _ODE | {"langevin_steps", "langevin_eps", "final_denoise"}, True, "trailing", calls_per_step=0,
            settings=(("langevin_steps", 100), ("langevin_eps", None), ("final_denoise", True)),
            setting_calls=(("langevin_steps", "level"), ("final_denoise", "once")),
            draws=lambda n, st, z: st["langevin_steps"] * (n + 1 - z)),
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


def nfe(name, n, ends_at_zero=True, **settings):
    """Network evaluations of ``name`` for n steps: ddpm, ddim, euler, dpm++2m, euler-maruyama, ancestral,
    dpm++2m-sde n; heun and edm-sde 2n - 1 on a grid ending at 0 (2n otherwise); pc (corrector_steps + 1) n;
    langevin langevin_steps L + final_denoise, L the grid's nonzero levels. ``settings`` omitted: the defaults."""
    return row(name).nfe(check_int(n, "n (number of steps)", lo=1), ends_at_zero, **settings)


def steps_for_nfe(name, k, **settings):
    """The most steps whose NFE on a grid ending at 0 (with ``settings``) is at most k (heun: 2n - 1 <= k); refused
    when k cannot buy the sampler's fewest steps."""
    r = row(name)
    k = check_int(k, "NFE (network evaluations)", lo=1)
    least = r.nfe(r.min_steps, **settings)
    if k < least:
        kind = "the second-order sampler" if r.order > 1 else "the sampler"
        with_ = f" with {_words(settings)}" if r.setting_calls else ""
        raise InputError(f"NFE {k} is too small for {kind} {name!r}{with_}: it needs NFE >= {least}")
    slope = r.nfe(r.min_steps + 1, **settings) - least   # NFE is affine in the steps: least + slope (n - min_steps)
    return r.min_steps + (k - least) // slope


def _words(settings):
    return ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None) or "its default settings"


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


def flag(name):
    """A setting's CLI flag: "s_churn" -> "--s-churn"."""
    return "--" + name.replace("_", "-")


def check_flags(name, steps=None, eta=None, variance=None, spacing=None, grid=None, objective="ddpm", sde=None):
    """The flags given with sampler ``name`` (None: omitted; ``sde`` a dict of the SDE settings given), in the CLI's
    words: a flag the sampler would ignore, a setting out of its range, an SDE sampler asked to be an ODE sampler,
    a grid the model does not take or a step count below the sampler's fewest is refused."""
    r, grids = row(name), OBJECTIVE_GRIDS[check_choice(objective, OBJECTIVES, "objective")]
    given = {k: v for k, v in (sde or {}).items() if v is not None}   # draw(sde={"eta": ...}) is --eta too
    given.update({k: v for k, v in (("eta", eta), ("variance", variance)) if v is not None})
    for key in sorted(given, key=lambda k: FLAGS.index(check_choice(k, FLAGS, "setting"))):
        if key not in r.flags:
            raise InputError(f"{flag(key)} applies to --sampler {'/'.join(takers(key))} only ({FLAG_WORDS[key]}); "
                             f"--sampler {name} would ignore it")
    _check_settings(r, given)
    if spacing is not None and "spacing" not in r.flags:
        fix = spacing if spacing in grids else " or ".join(grids)
        raise InputError(f"--spacing applies to --sampler {'/'.join(takers('spacing'))} ({FLAG_WORDS['spacing']}); "
                         f"--sampler {name} runs on a --grid ({'/'.join(grids)}): use --grid {fix}")
    if grid is not None and "grid" not in r.flags:
        raise InputError(f"--grid applies to the ODE and SDE samplers ({'/'.join(takers('grid'))}); --sampler {name} "
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


def _check_settings(r, given):
    """The SDE settings' values (SETTING_RULES), EDM's churn window, and a setting that makes the sampler an ODE
    sampler exactly (deterministic_at), refused naming that sampler."""
    for key, value in given.items():
        kind, lo, open_ = SETTING_RULES.get(key, (None, None, None))
        if kind == "bool" and not isinstance(value, bool):
            raise InputError(f"{flag(key)} is a switch ({flag(key)} / --no-{flag(key)[2:]}), got {value!r}")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < lo):
            raise InputError(f"{flag(key)} must be an integer >= {lo} ({FLAG_WORDS[key]}), got {value!r}")
        if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                 or not math.isfinite(value) or value < lo or (open_ and value == lo)
                                 or value > _HIGHEST.get(key, math.inf)):
            bound = (f"> {lo:g}" if open_ else f">= {lo:g}") + (f" and <= {_HIGHEST[key]:g}" if key in _HIGHEST else "")
            raise InputError(f"{flag(key)} must be a finite number {bound} ({FLAG_WORDS[key]}), got {value!r}")
    st = {**r.defaults(), **{k: v for k, v in given.items() if k in r.defaults()}}
    if "s_tmax" in st and st["s_tmax"] < st["s_tmin"]:
        raise InputError(f"--s-tmax {st['s_tmax']:g} is below --s-tmin {st['s_tmin']:g}: EDM churns the levels "
                         "between them, and this window has none")
    for key, value, ode in r.deterministic_at:
        if key in given and given[key] == value:
            raise InputError(f"{flag(key)} {value:g} makes --sampler {r.name} deterministic: it is then --sampler "
                             f"{ode} exactly; use --sampler {ode}, or a {flag(key)} above {value:g} for noise")


def grid_default(key):
    """A setting left to follow the grid, in a summary line's words: "0.2 sigma_L^2 (default)" for langevin_eps."""
    return GRID_DEFAULTS[key].split(",")[0] + " (default)"


def help_lines(family=None):
    """The --sampler help: "name: description" of every sampler (of one family), joined by "; "."""
    return "; ".join(f"{r.name}: {r.help}" for r in ROWS if family is None or r.family == family)
