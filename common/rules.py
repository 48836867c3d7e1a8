"""The rules between a run's settings that are not math, written once: both sides, lab/ and the CLI import them.

Each rule is stated once and speaks the words of whoever asked: the CLI's flags (``FLAGS``: "--loss hybrid") or
a function's arguments (``ARGS``: "loss 'hybrid'"). The choice lists are common/choices.py's; the math that gives
the settings a meaning lives on each side (reference/vlb.py, reference/objectives.py and their twins).

  check_loss       the chain's loss against its variance, the bound's weight and importance sampling (V4, I1)
  loss_settings    a run configuration's (loss, variance, hybrid_lambda, importance_sampling), checked
  check_zero_terminal_snr   a schedule with alpha_bar = 0 at the end needs a prediction that can recover x0
  check_objective  the objective's own settings, and the settings it cannot use (named as flags or fields)
"""
from __future__ import annotations

import math
from types import SimpleNamespace

from . import objective_table as _objective_table
from .choices import CONTINUOUS_OBJECTIVES, LOSSES, OBJECTIVES, TRAIN_VARIANCES
from .errors import InputError, check_choice, check_number

FLAGS, ARGS = "flags", "args"
LEARNED = "learned"
HYBRID_LAMBDA = _objective_table._HYBRID_LAMBDA   # Nichol & Dhariwal's lambda (V4): at T = 1000 the per-draw weight lambda T is 1
# How an argument reads where its field name would not (the bound's functions call it so)
_ARG_WORDS = {"importance_sampling": "importance sampling of t"}

__all__ = ["FLAGS", "ARGS", "HYBRID_LAMBDA", "say", "check_loss", "loss_settings", "check_zero_terminal_snr",
           "OBJECTIVE_SETTINGS", "NEUTRAL", "objective_settings", "check_objective", "check_objective_values",
           "is_continuous", "process_of", "PROCESS_OF"]


def say(field, value=None, words=FLAGS):
    """A setting as the message names it: "--loss hybrid" (FLAGS; a flag that takes no value alone) or
    "loss 'hybrid'" (ARGS)."""
    if words == FLAGS:
        flag = "--" + field.replace("_", "-")
        return flag if value is None or isinstance(value, bool) else f"{flag} {value}"
    name = _ARG_WORDS.get(field, field)
    return name if value is None or isinstance(value, bool) else f"{name} {value!r}"


def _finite_at_least(v, lo, open_lo):
    return (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            and (v > lo if open_lo else v >= lo))


# ---- the chain's losses ------------------------------------------------------------------------------

def check_loss(loss, variance, hybrid_lambda=HYBRID_LAMBDA, importance=False, words=ARGS):
    """(V4, I1) The loss against the variance: "hybrid" trains learned variances (with a fixed one its bound term
    has nothing to train), learned variances need "hybrid" or "vlb" (L_simple gives them no gradient), the weight
    lambda is finite and >= 0, importance sampling draws the bound's t (loss "vlb" only). ``variance``: any of
    the bound's names ("fixed", "fixed_small", "fixed_large", "learned"); its choice list is the caller's."""
    check_choice(loss, LOSSES, say("loss", words=words))
    learned = variance == LEARNED
    if loss == "hybrid" and not learned:
        raise InputError(f"{say('loss', 'hybrid', words)} trains learned variances: use "
                         f"{say('variance', LEARNED, words)}, or {say('loss', 'simple', words)} (with a fixed "
                         "variance its bound term, the mean frozen, has nothing to train)")
    if loss == "simple" and learned:
        raise InputError(f"{say('variance', LEARNED, words)} is trained by the bound: use "
                         f"{say('loss', 'hybrid', words)} (L_simple + lambda L_vlb) or {say('loss', 'vlb', words)}; "
                         "L_simple gives the variance outputs no gradient")
    if not _finite_at_least(hybrid_lambda, 0, False):
        raise InputError(f"{say('hybrid_lambda', words=words)} must be a finite number >= 0, got {hybrid_lambda!r}")
    if importance and loss != "vlb":
        raise InputError(f"{say('importance_sampling', True, words)} applies to {say('loss', 'vlb', words)} (the "
                         f"bound's sum over t), not {say('loss', loss, words)}")


def loss_settings(cfg, words=ARGS):
    """(loss, p_mean_variance's variance, hybrid_lambda, importance_sampling) of a run configuration, checked;
    configs written before these fields existed mean (simple, fixed). "fixed" is "fixed_small" in the bound."""
    variance = getattr(cfg, "variance", "fixed")
    check_choice(variance, TRAIN_VARIANCES, say("variance", words=words))
    loss, lam = getattr(cfg, "loss", "simple"), getattr(cfg, "hybrid_lambda", HYBRID_LAMBDA)
    importance = bool(getattr(cfg, "importance_sampling", False))
    check_loss(loss, variance, lam, importance, words)
    return loss, (LEARNED if variance == LEARNED else "fixed_small"), lam, importance


def check_zero_terminal_snr(zero_terminal_snr, prediction, words=FLAGS):
    """A schedule rescaled to alpha_bar = 0 at its last step cannot be trained to predict eps (x0 = (x - sigma
    eps) / alpha has alpha = 0 there)."""
    if zero_terminal_snr and prediction == "eps":
        raise InputError(f"{say('zero_terminal_snr', True, words)} needs {say('prediction', 'v', words)} or x0: x0 "
                         "cannot be recovered from eps at the last step, where alpha_bar = 0")


# ---- the objectives ------------------------------------------------------------------------------------

# The settings that belong to one objective, and the value each takes when unused (the field's default), read
# from common/objective_table.py. NEUTRAL None: no neutral value (every recipe sets one), so only a flag the user
# gave is refused.
OBJECTIVE_SETTINGS = {r.name: tuple(r.settings) for r in _objective_table.ROWS}
NEUTRAL = {k: v for r in _objective_table.ROWS for k, v in r.settings.items()}
_WHY = {r.name: r.why for r in _objective_table.ROWS}


def objective_settings(objective):
    """The settings ``objective`` reads (its own, none of another's)."""
    return OBJECTIVE_SETTINGS[check_choice(objective, OBJECTIVES, "objective")]


def check_objective(objective, settings, given=False, words=FLAGS):
    """Refuse a setting that ``objective`` cannot use, naming it and why. ``settings``: {field: value}. given=False:
    a configuration's values, refused where they differ from the neutral value (NEUTRAL); given=True: the flags
    the user gave, each refused whatever its value (a flag that would be ignored)."""
    own = objective_settings(objective)
    for owner, fields in OBJECTIVE_SETTINGS.items():
        if owner == objective:
            continue
        for field in fields:
            if field not in settings or field in own:
                continue
            value, neutral = settings[field], NEUTRAL[field]
            if given or (neutral is not None and value != neutral):
                raise InputError(f"{say(field, value, words)} does not apply to {say('objective', objective, words)}"
                                 f": {_WHY[owner]}")


def check_objective_values(cfg, words=FLAGS):
    """The objective and its own settings: the row's value checks (choices, positivity), and what reflow needs."""
    objective = check_choice(getattr(cfg, "objective", OBJECTIVES[0]), OBJECTIVES, say("objective", words=words))
    r = _objective_table.row(objective)
    for name, kind, choices in r.checks:
        v = getattr(cfg, name, NEUTRAL[name])
        if kind == "choice":
            check_choice(v, choices, say(name, words=words))
        elif kind in ("integer", "below"):
            _check_order(cfg, name, kind, choices, v, words)
        elif kind == "optional-positive" and v is None:
            continue
        elif not (_finite_at_least(v, 0, True) if kind != "finite" else _finite_at_least(v, -math.inf, False)):
            raise InputError(f"{say(name, words=words)} must be a finite number{' > 0' if kind != 'finite' else ''}"
                             f", got {v!r}")
    if r.reflow:
        _check_reflow(cfg, words)
    return objective


def _check_order(cfg, name, kind, choices, v, words):
    """kind "integer": an integer >= choices[0]; "below": a number below the setting choices[0] (when that is set)."""
    if kind == "integer":
        if isinstance(v, bool) or not isinstance(v, int) or v < choices[0]:
            raise InputError(f"{say(name, words=words)} must be an integer >= {choices[0]}, got {v!r}")
        return
    other = getattr(cfg, choices[0], NEUTRAL[choices[0]])
    if other is not None and _finite_at_least(v, -math.inf, False) and not v < other:
        raise InputError(f"{say(name, v, words)} must lie below {say(choices[0], other, words)}")


def _check_reflow(cfg, words):
    reflow, teacher = bool(getattr(cfg, "reflow", False)), getattr(cfg, "teacher", None)
    if reflow and not teacher:
        raise InputError(f"{say('reflow', True, words)} trains on the pairs a teacher draws: add "
                         f"{say('teacher', 'CKPT', words)} (a trained checkpoint of the same data)")
    if teacher and not reflow:
        raise InputError(f"{say('teacher', teacher, words)} is the teacher of {say('reflow', True, words)}: add it "
                         "(or drop the teacher)")
    if reflow and getattr(cfg, "class_cond", False):
        raise InputError(f"{say('reflow', True, words)} trains on the teacher's unconditional pairs: drop "
                         f"{say('class_cond', True, words)}")
    for name in ("reflow_pairs", "teacher_steps"):
        v = getattr(cfg, name, NEUTRAL[name])
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"{say(name, words=words)} must be a positive integer, got {v!r}")


PROCESS_OF = {r.name: r.process for r in _objective_table.ROWS}   # the noise process each objective trains on


def process_of(cfg):
    """The name of the process a run trains (a checkpoint's extra["process"]): "chain" (the trained discrete
    chain of cfg.schedule and cfg.T), "edm" or "flow" (common.choices.PROCESSES)."""
    return PROCESS_OF[getattr(cfg, "objective", OBJECTIVES[0])]


def is_continuous(cfg):
    """Whether the run's objective is one of the continuous ones (a float time input, no trained chain)."""
    return getattr(cfg, "objective", OBJECTIVES[0]) in CONTINUOUS_OBJECTIVES


def continuous_settings(cfg):
    """A continuous objective's settings read from ``cfg`` (defaults: the table rows'), checked by its row's checks;
    a namespace holding every continuous row's settings (a field ``cfg`` lacks takes its row's default). Not math:
    both sides' objectives.settings are this function."""
    objective = getattr(cfg, "objective", OBJECTIVES[0])
    check_choice(objective, CONTINUOUS_OBJECTIVES, "continuous objective (--objective; 'ddpm' is the chain)")
    d = {k: r.defaults()[k] for r in map(_objective_table.row, CONTINUOUS_OBJECTIVES) for k in r.settings
         if k in r.defaults()}   # each row's own settings (its extra may give one a default no flag leaves None)
    s = SimpleNamespace(objective=objective, **{k: getattr(cfg, k, v) for k, v in d.items()})
    check_objective_values(s)   # the row's value checks, in the flags' words
    for name, kind, _ in _objective_table.row(objective).checks:
        if kind in ("positive", "finite") or (kind == "optional-positive" and getattr(s, name) is not None):
            setattr(s, name, float(getattr(s, name)))
    return s
