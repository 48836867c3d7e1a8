"""No module outside common/objective_table.py compares objective names (issue 26): an objective's behaviour is its
table row (common/objective_table.py) and its class on each side (reference/objectives.py OBJECTIVE_MATH and the
port's twin), so a new objective is a row, a class per side, its derivation and its tests -- no branch elsewhere.

The walk is the samplers' (tests/common/test_sampler_table.py) with the objectives' names. "ddpm" is a sampler's
name too: a comparison of it is refused here whatever it asks, as the samplers' test refuses it for samplers.
"""
import ast
from pathlib import Path

from common import objective_table
from reference import objectives as ref
from torch_port import objectives as tor

ROOT = Path(__file__).resolve().parents[2]
TABLE = "common/objective_table.py"
# (path, source text) of each comparison that must stay, with its reason. None today; add one only with the reason.
ALLOWED = {}


def _names_in(node, names):
    """The objective names among a string constant or the string constants of a literal tuple/set/list."""
    elts = node.elts if isinstance(node, (ast.Tuple, ast.Set, ast.List)) else [node]
    return [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value in names]


def objective_comparisons(source, names=frozenset(objective_table.names())):
    """(line, source) of every ==, !=, in, not in with an objective's name as a string literal (or a literal
    tuple/set/list holding one) on either side, and of every ``{"edm": ..., ...}[x]`` (a lookup by name in a
    literal dict is the same branch). A dict keyed by names, a class attribute ``name = "edm"`` or a keyword
    argument are no comparison."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left] + list(node.comparators)
            if any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) and (_names_in(a, names) or
                                                                             _names_in(b, names))
                   for op, a, b in zip(node.ops, operands, operands[1:])):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict):
            if _names_in(ast.Tuple(elts=[k for k in node.value.keys if k is not None]), names):
                found.append((node.lineno, ast.unparse(node)[:80]))
    return found


def test_the_checker_finds_each_kind_of_objective_comparison_and_passes_the_allowed_forms():
    bad = ['if s.objective == "edm": pass', 'x = objective != "ddpm"', 'if "flow" == cfg.objective: pass',
           'if objective in ("edm", "flow"): pass', 'if o not in ["ddpm"]: pass', 'if o in {"edm"}: pass',
           'ok = "edm" in choices', 'w = {"edm": 1, "flow": 2}[objective]', 'if a < b == "flow": pass']
    ok = ['OBJECTIVE_MATH = {"edm": EDM(), "flow": Flow()}', 'class EDM:\n    name = "edm"',
          'f(objective="flow")', 'if objective in OBJECTIVE_MATH: pass', 'if row(o).continuous: pass',
          'if grid == "karras": pass', 'if s.t_sampling == "uniform": pass', 'DEFAULT = "ddpm"',
          'x = RECIPES["edm"]']
    for src in bad:
        assert len(objective_comparisons(src)) == 1, src
    for src in ok:
        assert objective_comparisons(src) == [], src


def test_no_module_outside_the_table_compares_objective_names():
    found, used = [], set()
    for pkg in ("reference", "torch_port", "lab", "common"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == TABLE:
                continue
            for line, what in objective_comparisons(path.read_text()):
                if (rel, what) in ALLOWED:
                    used.add((rel, what))
                else:
                    found.append(f"{rel}:{line}: {what}")
    assert not found, ("objective names compared outside common/objective_table.py (read the row, or add a method "
                       "to the objective's class in reference/objectives.py and torch_port/objectives.py):\n  "
                       + "\n  ".join(found))
    assert used == set(ALLOWED), f"ALLOWED lists comparisons that are gone: {set(ALLOWED) - used}"


def test_each_side_has_one_math_class_per_continuous_row_and_a_weighting_per_row():
    for side in (ref, tor):
        assert tuple(side.OBJECTIVE_MATH) == objective_table.names(continuous=True), side.__name__
        assert set(side.WEIGHTING_MATH) == set(objective_table.names()), side.__name__
        for name, math_ in side.OBJECTIVE_MATH.items():
            assert math_.name == name
            for method in ("network_time", "level", "target", "denoise", "sigma_grid_linspace", "weighting_of"):
                assert callable(getattr(math_, method, None)), f"{side.__name__}.{type(math_).__name__}.{method}"
    # the classes are each side's own: the port's math is not the reference's imported
    assert all(type(ref.OBJECTIVE_MATH[n]) is not type(tor.OBJECTIVE_MATH[n]) for n in ref.OBJECTIVE_MATH)


def test_the_recipes_own_settings_are_keyed_by_continuous_objectives_and_are_their_settings():
    from lab.config import OBJECTIVE_RECIPES

    assert set(OBJECTIVE_RECIPES) <= set(objective_table.names(continuous=True))
    for name, own in OBJECTIVE_RECIPES.items():
        assert set(own("moons")) <= set(objective_table.row(name).settings), name
