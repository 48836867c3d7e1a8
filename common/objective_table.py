"""The objectives' table: one frozen row per training objective, read by both sides, lab/, the checks and tests.

A row says what an objective is, not how it computes: the process its checkpoint records (extra["process"]),
whether it trains a continuous process or the discrete chain, the settings it reads and their defaults, the
checks of their values, why a foreign setting is refused, its default grid, the grids it takes and its --help
line. The math is one class per continuous objective on each side (reference/objectives.py OBJECTIVE_MATH and
the port's twin, WEIGHTING_MATH adding the chain's w(lambda)). No module outside this table compares objective
names (tests/common/test_objective_names.py walks every module of reference/, torch_port/, lab/ and common/), so a
new objective is one row here, one class on each side, an entry in lab/config.py OBJECTIVE_RECIPES if its recipe
settings depend on the data, its derivation and its tests. Standard library only: common/choices.py reads its
names from here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import check_choice

# The chain's grids and a continuous sigma range's grids (common/choices.py GRIDS, CONTINUOUS_GRIDS name the same;
# tests/common/test_objective_table.py holds them equal).
_CHAIN_GRIDS = ("leading", "trailing", "linspace", "karras")
_CONTINUOUS_GRIDS = ("karras", "linspace")
_T_SAMPLINGS = ("uniform", "logit-normal")
_HYBRID_LAMBDA = 1e-3   # Nichol & Dhariwal's lambda (V4); common.rules.HYBRID_LAMBDA re-exports it

# The kinds of value check a row's setting takes (common.rules.check_objective_values reads them).
# "optional-positive": None (measured from the data by the recipe) or > 0; "integer": an integer >= choices[0];
# "below": a number below the setting named choices[0] (when that one is set).
CHECK_KINDS = ("positive", "finite", "choice", "optional-positive", "integer", "below")


@dataclass(frozen=True)
class Objective:
    """One objective. ``settings``: {field: neutral value} of the settings it reads (their defaults; None where
    every recipe sets one, so only a flag the user gave is refused); ``checks``: ((field, kind, choices), ...)
    value checks of its own settings (kind in CHECK_KINDS); ``why``: the reason a foreign objective refuses one
    of these settings; ``extra``: defaults of its math that are no flag (EDM's sigma range); ``reflow``:
    it can train on a teacher's pairs (the reflow checks apply)."""
    name: str
    process: str
    continuous: bool
    settings: dict
    why: str
    default_grid: str
    grids: tuple
    help: str
    checks: tuple = ()
    extra: tuple = ()
    reflow: bool = False

    def defaults(self):
        """The settings' defaults and the extra math defaults, one dict (common.choices.EDM_DEFAULTS's shape)."""
        return {**{k: v for k, v in self.settings.items() if k not in _FLAGLESS}, **dict(self.extra)}


_FLAGLESS = ("reflow", "teacher", "reflow_pairs", "teacher_steps")   # flow's reflow fields: not math defaults

ROWS = (
    Objective("ddpm", "chain", False,
              {"prediction": "eps", "weighting": "none", "variance": "fixed", "loss": "simple",
               "hybrid_lambda": _HYBRID_LAMBDA, "importance_sampling": False, "zero_terminal_snr": False,
               "schedule": None, "T": None},
              "the continuous objectives fix what the network predicts and how the loss weighs each noise level "
              "(EDM's preconditioned denoiser, flow matching's velocity), and train no discrete chain",
              "trailing", _CHAIN_GRIDS,
              "the discrete DDPM chain (L_simple and its relatives over integer steps)"),
    Objective("edm", "edm", True, {"sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2},
              "it is a setting of EDM's noise levels and preconditioning (--objective edm)",
              "karras", _CONTINUOUS_GRIDS,
              "Karras et al. 2022's preconditioned denoiser on x = x0 + sigma eps",
              checks=(("sigma_data", "positive", ()), ("p_std", "positive", ()), ("p_mean", "finite", ())),
              extra=(("sigma_min", 0.002), ("sigma_max", 80.0))),
    Objective("flow", "flow", True,
              {"t_sampling": "uniform", "logit_mean": 0.0, "logit_std": 1.0, "shift": 1.0,
               "reflow": False, "teacher": None, "reflow_pairs": None, "teacher_steps": 50},
              "it is a setting of flow matching (--objective flow)",
              "linspace", _CONTINUOUS_GRIDS,
              "flow matching / rectified flow on x_t = (1 - t) x0 + t eps, the network predicting u = eps - x0",
              checks=(("t_sampling", "choice", _T_SAMPLINGS), ("shift", "positive", ()),
                      ("logit_std", "positive", ()), ("logit_mean", "finite", ())),
              reflow=True),
    # NCSN (Song & Ermon 2019, 2020): sigma_max None is measured from the data (the largest pairwise distance,
    # reference.ladder.max_pairwise_distance) by the dataset's recipe; extra gives the top of the ladder a
    # namespace without the field samples on (score_sde's VE sigma_max). Default grid: "linspace", uniform in the
    # VE process's own t, is the ladder's own geometric spacing (at n = num_levels, the ladder itself).
    Objective("ncsn", "ve", True, {"sigma_min": 0.01, "sigma_max": None, "num_levels": 10},
              "it is a setting of NCSN's sigma ladder (--objective ncsn)",
              "linspace", _CONTINUOUS_GRIDS,
              "NCSN's score network s = F / sigma on x = x0 + sigma eps over a geometric sigma ladder (Song & Ermon)",
              checks=(("sigma_min", "positive", ()), ("sigma_max", "optional-positive", ()),
                      ("num_levels", "integer", (2,)), ("sigma_min", "below", ("sigma_max",))),
              extra=(("sigma_max", 50.0),)),
)
_BY_NAME = {r.name: r for r in ROWS}


def names(continuous=None):
    """The objectives' names in table order; continuous=True/False: only those of a continuous process / the chain."""
    return tuple(r.name for r in ROWS if continuous is None or r.continuous == continuous)


def row(name):
    """The row of objective ``name``; an unknown name is an InputError listing the names."""
    return _BY_NAME[check_choice(name, names(), "objective")]


def chain_objective():
    """The name of the objective that trains the discrete chain (the default)."""
    return names(continuous=False)[0]
