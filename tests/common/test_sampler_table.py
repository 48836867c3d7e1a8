"""The samplers' table (common/sampler_table.py) is the one home of the sampler vocabulary, and it is true.

  * No module of reference/, torch_port/ or lab/ compares a sampler name as a string (==, !=, in a literal
    tuple/set/list, or a literal dict of numbers looked up by name): the table is read instead. A dict from the
    names to the functions of one side (solvers.SOLVERS, samplers.CHAIN_STEPS) is that side's one function.
  * Each row agrees with what its function does, on both sides: the network calls counted on a counting
    denoiser for several n (on grids ending at 0 and above it) are row.nfe(n); steps_for_nfe(k) is the most steps
    whose counted calls fit in k; below min_steps a second-order solver's result is Euler's (no second-order
    update happened) and the solver refuses the grid, at min_steps it is not; draws_noise is whether the
    function consumes the generator.
  * The lists each side and the CLI expose are the table's, and every row has one function on each side.
"""
import ast
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common import sampler_table as table
from common.choices import OBJECTIVES
from reference import samplers as RSa
from reference import sde as RSde
from reference import solvers as RSo
from reference.errors import InputError
from reference.oracle import GaussianMixtureOracle
from reference.schedules import Schedule, make_betas
from tolerances import TOL
from torch_port import samplers as TSa
from torch_port import sde as TSde
from torch_port import solvers as TSo

ROOT = Path(__file__).resolve().parents[2]
NAMES = set(table.names())


# ---- no module outside the table compares sampler names ---------------------------------------------------

def _literal_names(node):
    """The sampler names among the string constants of a literal tuple/set/list (or the constant itself)."""
    elts = node.elts if isinstance(node, (ast.Tuple, ast.Set, ast.List)) else [node]
    return [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value in NAMES]


def name_comparisons(source):
    """(line, source) of every comparison of a sampler name as a string in ``source``: ``x == "heun"`` (either
    side, or !=), ``x in ("heun", ...)`` (a literal tuple/set/list, or not in), ``{"heun": 2, ...}[x]``.

    Exempt: a name that is also an objective's ("ddpm") compared with an expression that mentions "objective"
    (``cfg.objective == "ddpm"`` asks which objective, not which sampler)."""
    def hits(literal, other):
        words = ast.unparse(other)
        return [h for h in _literal_names(literal) if not (h in OBJECTIVES and "objective" in words)]

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left] + list(node.comparators)
            for op, left, right in zip(node.ops, operands, operands[1:]):
                if isinstance(op, (ast.Eq, ast.NotEq)):
                    bad = [h for a, b in ((left, right), (right, left)) if isinstance(a, ast.Constant)
                           for h in hits(a, b)]
                elif isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.Tuple, ast.Set, ast.List)):
                    bad = hits(right, left)
                else:
                    bad = []
                if bad:
                    found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict):
            if _literal_names(ast.Tuple(elts=[k for k in node.value.keys if k is not None])):
                found.append((node.lineno, ast.unparse(node)[:80]))
    return found


def test_the_checker_finds_each_kind_of_name_comparison_and_passes_the_allowed_forms():
    bad = {'if sampler == "heun": pass': 1, 'x = sampler != "ddim"': 1, 'if "euler" == s: pass': 1,
           'if sampler in ("heun", "dpm++2m"): pass': 1, 'if s not in {"ddpm"}: pass': 1,
           'n = {"euler": 0, "heun": 1}[sampler]': 1}
    ok = ['SOLVERS = {"euler": euler, "heun": heun}', 'f(sampler="ddim")', 'if sampler in ODE_SAMPLERS: pass',
          'if cfg.objective == "ddpm": pass', 'if objective != "ddpm": pass', 'DEFAULT = "dpm++2m"',
          'if grid == "karras": pass', 'if "ddim" in text: pass']
    for src, n in bad.items():
        assert len(name_comparisons(src)) == n, src
    for src in ok:
        assert name_comparisons(src) == [], src


def test_no_module_outside_the_table_compares_sampler_names():
    found = [f"{path.relative_to(ROOT).as_posix()}:{line}: {what}"
             for pkg in ("reference", "torch_port", "lab") for path in sorted((ROOT / pkg).rglob("*.py"))
             for line, what in name_comparisons(path.read_text())]
    assert not found, ("sampler names compared outside common/sampler_table.py (read the table's row instead):\n  "
                       + "\n  ".join(found))


# ---- the lists each side exposes are the table's -----------------------------------------------------------

def test_every_side_lists_the_tables_samplers_and_has_one_function_for_each_row():
    import lab.sampling as LS

    assert table.names() == ("ddpm", "ddim", "euler", "heun", "dpm++2m", "euler-maruyama", "ancestral", "pc",
                             "edm-sde", "dpm++2m-sde", "langevin")
    assert RSo.SAMPLERS == TSo.SAMPLERS == table.names("ode") == ("euler", "heun", "dpm++2m")
    assert RSa.SAMPLERS == TSa.SAMPLERS == table.names("chain") == ("ddpm", "ddim")
    assert LS.SAMPLERS == table.names()
    assert LS.MIN_STEPS == {"heun": 2, "dpm++2m": 3, "edm-sde": 2, "dpm++2m-sde": 3}
    for side in (RSo, TSo):
        assert tuple(side.SOLVERS) == table.names("ode")
    for side in (RSa, TSa):
        assert tuple(side.CHAIN_STEPS) == table.names("chain")
    for side in (RSde, TSde):
        assert tuple(side.SDE_SAMPLERS) == table.names("sde")


@pytest.mark.parametrize("side", [RSde, TSde], ids=["reference", "torch"])
def test_the_sde_rows_settings_are_their_functions_keywords_with_the_same_defaults(side):
    for name in table.names("sde"):
        r, params = table.row(name), inspect.signature(side.SDE_SAMPLERS[name]).parameters
        own = {k: p.default for k, p in params.items() if k not in ("D", "x", "sigmas", "noise", "callback",
                                                                     "progress")}
        assert r.defaults() == own, name
        assert set(own) <= r.flags and all(k in table.FLAGS for k in own), name


def test_unknown_names_are_refused_listing_the_names():
    with pytest.raises(InputError, match=r"unknown sampler 'hune' \(did you mean 'heun'\?\); choose one of: 'ddpm'"):
        table.row("hune")
    with pytest.raises(InputError, match="unknown sampler family"):
        table.names("chains")


# ---- each row agrees with what its function does -----------------------------------------------------------

MIX = GaussianMixtureOracle([0.4, 0.6], [[-1.0, 0.0], [1.0, 0.5]], var=[[0.1, 0.2], [0.2, 0.1]])
SCHED = Schedule(make_betas("cosine", 50))   # alpha_bar_{T-1} ~ 0: no prior-mismatch warning


def _counted_ode_calls(side, name, n, to_zero):
    """Network calls of the side's solver function itself (no table check in the way) on a Karras grid."""
    calls = []

    def D(x, sigma):
        calls.append(sigma)
        out = MIX.denoise_sigma(np.asarray(x), sigma)
        return out if side is RSo else torch.as_tensor(out)

    g = RSo.karras_sigmas(n, 0.02, 40.0) if to_zero else RSo.karras_sigmas(n + 1, 0.02, 40.0)[:-1]   # n steps
    x = np.zeros((3, 2))
    side.SOLVERS[name](D, x if side is RSo else torch.as_tensor(x), g)
    return len(calls)


def _counted_chain_calls(side, name, n):
    calls = []

    def den(x, t):
        calls.append(t)
        return x * 0.0

    x = np.zeros((2, 2))
    side.samplers_module.sample_loop(side.sched, den, x if side.np else torch.as_tensor(x),
                                     np.random.default_rng(0), sampler=name, steps=n, spacing="trailing")
    return len(calls)


class _Side:
    def __init__(self, np_side):
        self.np = np_side
        self.samplers_module = RSa if np_side else TSa
        if np_side:
            self.sched = SCHED
        else:
            from torch_port.schedules import Schedule as TSchedule
            self.sched = TSchedule(torch.as_tensor(make_betas("cosine", 50)))


@pytest.mark.parametrize("side", [RSo, TSo], ids=["reference", "torch"])
@pytest.mark.parametrize("name", table.names("ode"))
def test_ode_rows_count_the_network_calls_their_solver_makes(side, name):
    r = table.row(name)
    for n in (1, 2, 3, 4, 7):
        for to_zero in (True, False):
            assert _counted_ode_calls(side, name, n, to_zero) == r.nfe(n, ends_at_zero=to_zero), (n, to_zero)


@pytest.mark.parametrize("np_side", [True, False], ids=["reference", "torch"])
@pytest.mark.parametrize("name", table.names("chain"))
def test_chain_rows_count_the_network_calls_of_the_loop(np_side, name):
    side = _Side(np_side)
    for n in (1, 2, 5, 50):
        assert _counted_chain_calls(side, name, n) == table.nfe(name, n)


# Settings of each SDE sampler whose network calls the table must count: the defaults and others.
SDE_SETTINGS = {"euler-maruyama": [{}], "ancestral": [{}, {"eta": 0.3}], "pc": [{}, {"corrector_steps": 0},
                                                                                  {"corrector_steps": 3}],
                "edm-sde": [{}, {"s_churn": 2.0, "s_tmin": 1.0}], "dpm++2m-sde": [{}, {"eta": 0.5}],
                "langevin": [{"langevin_eps": 1e-4}, {"langevin_steps": 3, "langevin_eps": 1e-4},
                             {"langevin_steps": 2, "langevin_eps": 1e-4, "final_denoise": False}]}


def _counted_sde_calls(side, name, n, to_zero, settings):
    """Network calls of the side's SDE function itself on a Karras grid, fed zero noise draws."""
    calls = []

    def D(x, sigma):
        calls.append(sigma)
        out = MIX.denoise_sigma(np.asarray(x), sigma)
        return out if side is RSde else torch.as_tensor(out)

    g = RSo.karras_sigmas(n, 0.02, 40.0) if to_zero else RSo.karras_sigmas(n + 1, 0.02, 40.0)[:-1]
    x = np.zeros((3, 2))
    z = np.zeros_like(x) if side is RSde else torch.zeros(3, 2, dtype=torch.float64)
    side.SDE_SAMPLERS[name](D, x if side is RSde else torch.as_tensor(x), g, lambda k: z, **settings)
    return len(calls)


@pytest.mark.parametrize("side", [RSde, TSde], ids=["reference", "torch"])
@pytest.mark.parametrize("name", table.names("sde"))
def test_sde_rows_count_the_network_calls_their_function_makes_with_its_settings(side, name):
    for settings in SDE_SETTINGS[name]:
        for n in (1, 2, 3, 5):
            for to_zero in (True, False):
                got = _counted_sde_calls(side, name, n, to_zero, settings)
                assert got == table.row(name).nfe(n, ends_at_zero=to_zero, **settings), (settings, n, to_zero)
                if to_zero:
                    assert got == table.nfe(name, n, **settings)


@pytest.mark.parametrize("name", table.names())
def test_steps_for_nfe_is_the_most_steps_whose_counted_calls_fit(name):
    r = table.row(name)
    for settings in SDE_SETTINGS.get(name, [{}]):
        counted = {n: (_counted_ode_calls(RSo, name, n, True) if r.family == "ode" else
                       _counted_sde_calls(RSde, name, n, True, settings) if r.family == "sde" else n)
                   for n in range(1, 17)}
        for k in range(1, 16):
            fits = [n for n, c in counted.items() if c <= k and n >= r.min_steps]
            if not fits:
                with pytest.raises(InputError, match=f"NFE {k} is too small for the "):
                    table.steps_for_nfe(name, k, **settings)
                continue
            assert table.steps_for_nfe(name, k, **settings) == max(fits), (settings, k)
            if r.family == "ode":   # each side's solvers.steps_for_nfe reads the table
                assert RSo.steps_for_nfe(name, k) == TSo.steps_for_nfe(name, k) == max(fits), k


@pytest.mark.parametrize("side", [RSo, TSo], ids=["reference", "torch"])
@pytest.mark.parametrize("name", table.names("ode"))
def test_below_min_steps_a_solver_is_euler_and_is_refused_at_min_steps_it_is_not(side, name):
    """A second-order update changes the result from Euler's; fewer steps than min_steps (on a grid ending at 0)
    make none, so the solver's own function returns Euler's result there, and sample refuses the grid."""
    r = table.row(name)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2)) * 40.0

    def D(z, sigma):
        out = MIX.denoise_sigma(np.asarray(z), sigma)
        return out if side is RSo else torch.as_tensor(out)

    def run(fn, g):
        out = fn(D, x if side is RSo else torch.as_tensor(x), g)
        return np.asarray(out)

    for n in range(1, r.min_steps + 1):
        g = RSo.karras_sigmas(n, 0.02, 40.0)
        same = np.allclose(run(side.SOLVERS[name], g), run(side.SOLVERS["euler"], g), rtol=0, atol=TOL["exact64"])
        assert same == (n < r.min_steps or r.order == 1), n
        if n < r.min_steps:
            with pytest.raises(InputError, match=f"at least {r.min_steps} steps"):
                side.sample(D, x if side is RSo else torch.as_tensor(x), g, name)
        else:
            side.sample(D, x if side is RSo else torch.as_tensor(x), g, name)


@pytest.mark.parametrize("np_side", [True, False], ids=["reference", "torch"])
def test_draws_noise_is_whether_the_sampler_consumes_the_generator(np_side):
    side = _Side(np_side)
    for r in table.ROWS:
        rng = np.random.default_rng(0)
        before = rng.bit_generator.state["state"]["state"]
        x = np.zeros((2, 2))
        if r.family == "chain":
            side.samplers_module.sample_loop(side.sched, lambda z, t: z * 0.0, x if np_side else torch.as_tensor(x),
                                             rng, sampler=r.name, steps=3, spacing="trailing")
            moved = rng.bit_generator.state["state"]["state"] != before
        elif r.family == "sde":   # the SDE samplers take their draws as noise(k): count the draws asked for
            drawn = []
            z = np.zeros((2, 2)) if np_side else torch.zeros(2, 2, dtype=torch.float64)
            fn = (RSde if np_side else TSde).SDE_SAMPLERS[r.name]
            fn(lambda x, s: x * 0.0, x if np_side else torch.as_tensor(x), RSo.karras_sigmas(3, 0.1, 10.0),
               lambda k: drawn.append(k) or z, **({"langevin_steps": 2} if "langevin_steps" in r.flags else {}))
            moved = len(drawn) > 0
        else:   # the ODE solvers take no generator at all: nothing to consume
            moved = "rng" in (RSo.SOLVERS[r.name].__code__.co_varnames + TSo.SOLVERS[r.name].__code__.co_varnames)
        assert moved == r.draws_noise, r.name


def test_min_steps_rows_are_the_fewest_with_one_second_order_update():
    for r in table.ROWS:
        assert r.second_order_steps(r.min_steps) >= (1 if r.order > 1 else 0)
        assert r.min_steps == 1 or r.second_order_steps(r.min_steps - 1) == 0


# ---- the flag checks, written from the rows, in the CLI's words ---------------------------------------------

@pytest.mark.parametrize("name, kw, needle", [
    ("euler", {"eta": 0.5}, "--eta applies to --sampler ddim/ancestral/dpm++2m-sde only (the noise of a DDIM or "
                            "SDE step, 0 deterministic); --sampler euler would ignore it"),
    ("edm-sde", {"sde": {"s_churn": -1.0}}, "--s-churn must be a finite number >= 0"),
    ("ancestral", {"eta": 0.0}, "--eta 0 makes --sampler ancestral deterministic: it is then --sampler euler exactly"),
    ("dpm++2m-sde", {"eta": 0.0}, "it is then --sampler dpm++2m exactly"),
    ("edm-sde", {"sde": {"s_churn": 0.0}}, "it is then --sampler heun exactly"),
    ("ancestral", {"eta": 1.5}, "--eta must be a finite number >= 0 and <= 1"),
    ("heun", {"sde": {"snr": 0.1}}, "--snr applies to --sampler pc only"),
    ("langevin", {"sde": {"langevin_steps": 0}}, "--langevin-steps must be an integer >= 1"),
    ("langevin", {"sde": {"final_denoise": 1}}, "--final-denoise is a switch"),
    ("edm-sde", {"steps": 1}, "--sample-steps 1 is too few for --sampler edm-sde"),
    ("ddim", {"variance": "fixed_large"}, "--variance applies to --sampler ddpm only (the ancestral step's variance)"),
    ("heun", {"spacing": "trailing"}, "--spacing applies to --sampler ddpm/ddim (the chain's kept steps); --sampler "
                                      "heun runs on a --grid (leading/trailing/linspace/karras): use --grid trailing"),
    ("ddpm", {"grid": "karras"}, "--grid applies to the ODE and SDE samplers (euler/heun/dpm++2m/euler-maruyama/"
                                 "ancestral/pc/edm-sde/dpm++2m-sde/langevin); --sampler ddpm shortens"),
    ("dpm++2m", {"steps": 2}, "--sample-steps 2 is too few for --sampler dpm++2m: it takes a second-order step only "
                              "with --sample-steps 3 or more (NFE 3)"),
    ("heun", {"steps": 1}, "--sample-steps 1 is too few for --sampler heun: it takes a second-order step only with "
                           "--sample-steps 2 or more (NFE 3)"),
    ("euler", {"grid": "leading", "objective": "flow"}, "--grid leading is a grid of the trained chain's integer "
                                                        "steps; this flow model has continuous noise levels and takes "
                                                        "--grid karras or linspace (default linspace)"),
    ("euler", {"grid": "trailing", "objective": "edm"}, "takes --grid karras or linspace (default karras)"),
])
def test_the_flag_checks_refuse_in_the_clis_words(name, kw, needle):
    with pytest.raises(InputError) as e:
        table.check_flags(name, **kw)
    assert needle in str(e.value)


def test_the_chain_samplers_are_refused_for_a_continuous_model_by_name_pointing_at_euler():
    for objective in ("edm", "flow"):
        for name in table.names("chain"):
            assert not table.serves(name, objective)
            with pytest.raises(InputError, match=rf"--sampler {name} steps the discrete chain .* this {objective} "
                                                 r"model has none: use --sampler euler, which is DDIM with eta 0"):
                table.check_serves(name, objective)
        for name in table.names("ode") + table.names("sde"):
            assert table.check_serves(name, objective) == name
    assert all(table.serves(n, "ddpm") for n in table.names())
    assert math.isfinite(table.nfe("heun", 3)) and table.nfe("heun", 3) == 5 and table.nfe("heun", 3, False) == 6
