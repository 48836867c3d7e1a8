"""The layout is the architecture: four packages, imports one way (lab -> torch_port -> reference -> common,
lab -> reference, lab -> common), the spec importing only math, and files and functions small enough to read.

Rules (issues 14 and 26, DESIGN.md):
  * common/ (the vocabulary that is not math: errors, plans, choice lists, the samplers' table) imports the
    standard library, numpy and itself only; never reference, torch_port or lab.
  * reference/ (the spec) imports the standard library, numpy, scipy, common and itself; never lab, tqdm,
    matplotlib, PIL, torch. Exceptions: ``__main__.py`` (the command line's entry) and the deprecated
    ``data.py`` shim that re-exports lab.data.
  * torch_port/ imports common freely, and from reference/ only public names that are not math: the shared
    input checks (reference.errors, a re-export of common.errors) and the shared diagnostics of
    reference.schedules; never an underscore name.
  * nothing under reference/ or torch_port/ imports lab, except their ``__main__.py`` (and the shim).
  * no file of the four packages is over 400 lines; no function in reference/ or torch_port/ is over 60.

Pure ``ast`` work over the source: nothing is imported.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "reference", "torch_port", "lab")
ENTRY_POINTS = {"reference/__main__.py", "torch_port/__main__.py"}
SHIM = "reference/data.py"
SPEC_THIRD_PARTY = {"numpy", "scipy"}
COMMON_THIRD_PARTY = {"numpy"}
# What the port may take from the reference: the shared input checks, and the schedule diagnostics
# (scalar Python: the prior term, its warning and the late-start warning), none of it math it mirrors.
PORT_MAY_IMPORT = {
    "reference.errors": None,  # any public name
    "reference.schedules": {"PRIOR_BPD_WARN", "SCHEDULES", "PriorMismatchWarning", "ScheduleDiagnostics",
                            "warn_late_start"},
}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60
STDLIB = set(getattr(sys, "stdlib_module_names", ())) or {
    "__future__", "math", "warnings", "typing", "dataclasses", "difflib", "functools", "itertools", "collections"}


def _files(pkg):
    return sorted((ROOT / pkg).rglob("*.py"))


def _rel(path):
    return path.relative_to(ROOT).as_posix()


def _imports(path):
    """(absolute module, imported names or None for ``import x``, line) of every import; relative imports
    are resolved against the file's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = ".".join(path.relative_to(ROOT).parent.parts)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def test_the_spec_imports_only_the_standard_library_numpy_scipy_and_itself():
    bad = []
    for path in _files("reference"):
        if _rel(path) in ENTRY_POINTS | {SHIM}:
            continue
        for mod, _, line in _imports(path):
            top = mod.split(".")[0]
            if top not in STDLIB | SPEC_THIRD_PARTY | {"reference", "common"}:
                bad.append(f"{_rel(path)}:{line} imports {mod}")
    assert not bad, "reference/ is math only:\n  " + "\n  ".join(bad)


def test_common_imports_only_the_standard_library_numpy_and_itself():
    bad = [f"{_rel(path)}:{line} imports {mod}" for path in _files("common") for mod, _, line in _imports(path)
           if mod.split(".")[0] not in STDLIB | COMMON_THIRD_PARTY | {"common"}]
    assert not bad, "common/ sits below both sides and lab (no reference, torch_port, lab, scipy):\n  " + \
        "\n  ".join(bad)


def test_the_moved_vocabulary_is_the_same_object_from_every_old_home():
    import common.errors
    import common.plans
    import reference.errors
    import reference.plans
    import torch_port.plans

    for name in common.errors.__all__:
        assert getattr(reference.errors, name) is getattr(common.errors, name), name
    for side in (reference.plans, torch_port.plans):
        for name in side.__all__:
            assert getattr(side, name) is getattr(common.plans, name), (side.__name__, name)


def test_the_port_takes_only_public_non_math_names_from_the_reference():
    bad = []
    for path in _files("torch_port"):
        for mod, names, line in _imports(path):
            if mod.split(".")[0] != "reference":
                continue
            if names is None or mod not in PORT_MAY_IMPORT:
                bad.append(f"{_rel(path)}:{line} imports {mod} (the port writes its math itself)")
                continue
            allowed = PORT_MAY_IMPORT[mod]
            for n in names:
                if n.startswith("_") or (allowed is not None and n not in allowed):
                    bad.append(f"{_rel(path)}:{line} imports {mod}.{n}")
    assert not bad, "torch_port/ may import from reference/ only public non-math names:\n  " + "\n  ".join(bad)


def test_imports_run_one_way_lab_is_never_imported_by_the_math():
    bad = []
    for pkg in ("reference", "torch_port"):
        for path in _files(pkg):
            if _rel(path) in ENTRY_POINTS | {SHIM}:
                continue
            bad += [f"{_rel(path)}:{line} imports {mod}" for mod, _, line in _imports(path)
                    if mod.split(".")[0] == "lab"]
    for path in _files("reference"):
        bad += [f"{_rel(path)}:{line} imports {mod}" for mod, _, line in _imports(path)
                if mod.split(".")[0] == "torch_port"]
    assert not bad, "arrows run lab -> torch_port -> reference -> common only:\n  " + "\n  ".join(bad)


def test_the_entry_points_and_the_shim_are_thin():
    for rel in sorted(ENTRY_POINTS):
        mods = {m for m, _, _ in _imports(ROOT / rel)}
        assert mods == {"lab.cli"}, f"{rel} should only call lab.cli.main, imports {mods}"
    mods = {m for m, _, _ in _imports(ROOT / SHIM)}
    assert mods == {"warnings", "lab.data"}, f"{SHIM} should only re-export lab.data, imports {mods}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_file_is_over_400_lines(pkg):
    long = [f"{_rel(p)}: {n} lines" for p in _files(pkg) if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long, f"files over {MAX_FILE_LINES} lines:\n  " + "\n  ".join(long)


@pytest.mark.parametrize("pkg", ("reference", "torch_port"))
def test_no_function_of_the_math_is_over_60_lines(pkg):
    long = []
    for path in _files(pkg):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_rel(path)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n  " + "\n  ".join(long)


def test_reference_data_is_a_deprecated_re_export_of_lab_data():
    import importlib
    import warnings

    sys.modules.pop("reference.data", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shim = importlib.import_module("reference.data")
    assert any(issubclass(w.category, DeprecationWarning) and "lab.data" in str(w.message) for w in caught)
    import lab.data

    assert shim.load is lab.data.load and shim.info is lab.data.info
    assert shim.load("moons", n=5).shape == (5, 2)
