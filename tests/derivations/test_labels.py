"""The derivation labels are a closed system: every equation label is cited by a test, no label is
defined twice, every label the code cites exists, and the map in derivations/README.md is accurate.

Rules (see derivations/README.md):
  * a label is defined by ``\\tag{P2}`` inside a ``$$ ... $$`` display block of a derivations/*.md page,
    one tag per block (MathJax on GitHub renders one tag per display);
  * a test cites a label when the label is an underscore-separated token of a test function's name
    anywhere under tests/ (``def test_P1_P2_P3_posterior_is_bayes_rule_on_a_grid``);
  * code cites a label as ``(P2)`` or ``(P2, P3)`` in comments or docstrings of reference/ and torch_port/;
  * pages point at code and tests with ``**Code:**`` / ``**Test:**`` lines holding ``path::name`` refs.

Pure text and ``ast`` work: no imports of the project, so this runs in well under a second.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DERIV = ROOT / "derivations"
LABEL = re.compile(r"^[A-Z][0-9]{1,2}$")
TAG = re.compile(r"\\tag\{([^}]*)\}")
INLINE_CODE = re.compile(r"`[^`\n]*`")
CODE_CITE = re.compile(r"\(\s*([A-Z][0-9]{1,2}(?:\s*,\s*[A-Z][0-9]{1,2})*)\s*\)")
REF = re.compile(r"`([^`]+?\.py)::([A-Za-z_][A-Za-z0-9_.]*)`")


# ---- parsing -----------------------------------------------------------------------------------

def _pages():
    return sorted(p for p in DERIV.glob("*.md"))


def _display_blocks(text):
    """(start_line, body) of every $$ ... $$ block; $$ lines stand on their own (GitHub rendering)."""
    blocks, open_at, body = [], None, []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip() == "$$":
            if open_at is None:
                open_at, body = i, []
            else:
                blocks.append((open_at, "\n".join(body)))
                open_at = None
        elif open_at is not None:
            body.append(line)
    assert open_at is None, f"unclosed $$ block opened at line {open_at}"
    return blocks


@lru_cache(maxsize=None)
def defined_labels():
    """{label: [(page, line), ...]} for every \\tag in display math."""
    out = {}
    for page in _pages():
        for line, body in _display_blocks(page.read_text()):
            for tag in TAG.findall(body):
                out.setdefault(tag.strip(), []).append((page.name, line))
    return out


@lru_cache(maxsize=None)
def _test_function_names():
    """{path relative to ROOT: set of test function names} for tests/**/*.py."""
    out = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names = {n.name for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")}
        out[path.relative_to(ROOT).as_posix()] = names
    return out


def citing_tests(label):
    return sorted(f"{f}::{n}" for f, names in _test_function_names().items() for n in names if label in n.split("_"))


def _code_files():
    for pkg in ("reference", "torch_port"):
        yield from sorted((ROOT / pkg).rglob("*.py"))


@lru_cache(maxsize=None)
def _defined_names(path):
    """Top-level functions and classes, and Class.method, of a Python file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _pointer_lines():
    """(page, line number, kind, text) for every **Code:** / **Test:** line of every page."""
    for page in _pages():
        for i, line in enumerate(page.read_text().splitlines(), 1):
            for kind in ("Code", "Test"):
                if re.match(rf"\s*(?:[-*]\s+)?\*\*{kind}:\*\*", line):   # "- **Code:** ..." list items
                    yield page.name, i, kind, line


def _missing_ref(path, name, kind):
    """Why the ref `path::name` does not resolve, or None when it does."""
    file = ROOT / path
    if not file.is_file():
        return f"no file {path}"
    if kind == "Test":
        if name not in _test_function_names().get(path, set()):
            return f"no test function {name} in {path}"
    elif name not in _defined_names(file):
        return f"no function/class {name} in {path}"
    return None


# ---- the checks --------------------------------------------------------------------------------

def test_labels_are_well_formed_and_inside_display_math():
    problems = []
    for page in _pages():
        text = page.read_text()
        n_all = len(TAG.findall(INLINE_CODE.sub("", text)))   # `\tag{..}` quoted as code is prose
        n_display = 0
        for line, body in _display_blocks(text):
            tags = TAG.findall(body)
            n_display += len(tags)
            if len(tags) > 1:
                problems.append(f"{page.name}:{line}: {len(tags)} \\tag in one display block (GitHub renders one)")
            problems += [f"{page.name}:{line}: malformed label {t!r} (want a letter and digits, e.g. P2)"
                         for t in tags if not LABEL.match(t.strip())]
        if n_all != n_display:
            problems.append(f"{page.name}: {n_all - n_display} \\tag outside $$ display blocks")
    assert defined_labels(), "no labels found in derivations/*.md"
    assert not problems, "label format problems:\n  " + "\n  ".join(problems)


def test_labels_are_unique_across_pages():
    dupes = {k: v for k, v in defined_labels().items() if len(v) > 1}
    assert not dupes, "labels defined more than once:\n  " + "\n  ".join(
        f"{k}: " + ", ".join(f"{p}:{ln}" for p, ln in v) for k, v in sorted(dupes.items()))


def test_every_label_is_cited_by_a_test_name():
    uncited = sorted(k for k in defined_labels() if not citing_tests(k))
    where = {k: defined_labels()[k][0] for k in uncited}
    assert not uncited, (f"{len(uncited)} label(s) with no test whose name contains the label as a token "
                         "(e.g. def test_P2_...):\n  " + "\n  ".join(f"{k}  ({p}:{ln})" for k, (p, ln) in where.items()))


def test_labels_cited_in_code_and_pages_exist():
    known, unknown = set(defined_labels()), []
    sources = [(f, f.relative_to(ROOT).as_posix()) for f in _code_files()]
    sources += [(p, f"derivations/{p.name}") for p in _pages()]
    for path, rel in sources:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for group in CODE_CITE.findall(line):
                unknown += [f"{rel}:{i}: ({lab})" for lab in re.split(r"\s*,\s*", group) if lab not in known]
    assert not unknown, "labels cited but defined in no derivations/*.md page:\n  " + "\n  ".join(unknown)


def test_code_and_test_pointers_resolve():
    problems, lines = [], list(_pointer_lines())
    assert len(lines) >= len(defined_labels()), "fewer **Code:**/**Test:** lines than labels: parser broken?"
    for page, i, kind, line in lines:
        refs = REF.findall(line)
        if not refs:
            problems.append(f"{page}:{i}: **{kind}:** line without a `path.py::name` ref")
        problems += [f"{page}:{i}: {why}" for path, name in refs if (why := _missing_ref(path, name, kind))]
    assert not problems, "broken Code:/Test: pointers:\n  " + "\n  ".join(problems)


def _readme_rows():
    """{label: (page, code cell, test cell)} from the map table in derivations/README.md."""
    rows = {}
    for line in (DERIV / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 4 and LABEL.match(cells[0]):
            page = re.search(r"\(([^)]+\.md)\)", cells[2])
            rows[cells[0]] = (page.group(1) if page else cells[2], cells[3], cells[4] if len(cells) > 4 else "")
    return rows


def test_readme_map_matches_pages_code_and_tests():
    rows, defined, problems = _readme_rows(), defined_labels(), []
    problems += [f"{k}: in the map but defined on no page" for k in sorted(set(rows) - set(defined))]
    problems += [f"{k}: defined in {defined[k][0][0]} but missing from the map" for k in sorted(set(defined) - set(rows))]
    for k, (page, code, test) in sorted(rows.items()):
        if k in defined and page != defined[k][0][0]:
            problems.append(f"{k}: map says {page}, defined in {defined[k][0][0]}")
        for path, name in REF.findall(code):
            if why := _missing_ref(path, name, "Code"):
                problems.append(f"{k}: {why}")
        for path, name in REF.findall(test):
            if why := _missing_ref(path, name, "Test"):
                problems.append(f"{k}: {why}")
            elif k not in name.split("_"):
                problems.append(f"{k}: map names {name}, which does not cite {k}")
        if not REF.findall(test):
            cited = citing_tests(k)
            problems.append(f"{k}: map names no test" + (f"; candidates: {', '.join(cited[:3])}" if cited else ""))
    assert not problems, "derivations/README.md map is out of date:\n  " + "\n  ".join(problems)


def test_pages_named_in_code_exist():
    """Docstrings point readers at derivations/NAME.md: every such page must exist."""
    page_ref = re.compile(r"derivations/([A-Za-z0-9_]+\.md)")
    pages = {p.name for p in _pages()}
    missing = [f"{path.relative_to(ROOT).as_posix()}:{i}: derivations/{name}"
               for path in _code_files()
               for i, line in enumerate(path.read_text().splitlines(), 1)
               for name in page_ref.findall(line) if name not in pages]
    assert not missing, "code names derivation pages that do not exist:\n  " + "\n  ".join(missing)


QUOTED_TEST = re.compile(r"(?<![\w/.])(test_\w+)(…|\.\.\.|\.py)?")


def test_test_names_quoted_in_the_docs_exist():
    """A test named in prose (`test_P1_P2_P3_...`, or a prefix ending in an ellipsis) in derivations/*.md or
    README.md is a real test function: the docs cite the tests that hold their claims."""
    names = {n for found in _test_function_names().values() for n in found}
    problems = []
    for doc in _pages() + [ROOT / "README.md"]:
        for i, line in enumerate(doc.read_text().splitlines(), 1):
            for span in re.findall(r"`([^`\n]+)`", line):
                for name, tail in QUOTED_TEST.findall(span):
                    if tail == ".py":
                        continue
                    ok = any(n.startswith(name) for n in names) if tail else name in names
                    if not ok:
                        problems.append(f"{doc.name}:{i}: {name}{tail} names no test function")
    assert not problems, "docs quote tests that do not exist:\n  " + "\n  ".join(problems)
