"""lab/plots/guidance_kinds.py (the picture of classifier guidance beside classifier-free guidance) on a tiny
synthetic input, and benchmarks/bench_classifier_guidance.py's matching at equal accuracy against a closed form."""
import importlib.util
import os

import pytest
from PIL import Image
from tolerances import TOL

from lab.plots import DPI, PANEL_PX
from lab.plots.guidance_kinds import guidance_kinds
from reference.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))   # its _sidebyside, as when run as a script
    path = os.path.join(ROOT, "benchmarks", "bench_classifier_guidance.py")
    spec = importlib.util.spec_from_file_location("bench_classifier_guidance", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _kinds():
    return [{"label": "classifier guidance", "scales": [0, 2, 4], "ratios": [1.2, 1.5, 2.5],
             "accuracies": [0.1, 0.6, 0.95], "ratio_se": [0.05, 0.05, 0.1], "accuracy_se": [0.01, 0.02, 0.01]},
            {"label": "classifier-free guidance", "scales": [0, 1, 2], "ratios": [1.2, 1.1, 1.6],
             "accuracies": [0.1, 0.9, 0.98]}]   # no error bars on this one: optional


def test_guidance_kinds_writes_a_png_of_the_stated_size(tmp_path):
    path = guidance_kinds(_kinds(), tmp_path / "k.png", ceiling=0.97, target_accuracy=0.9, title="synthetic")
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.size == (round(2 * PANEL_PX / DPI * DPI), round(1.2 * PANEL_PX / DPI * DPI))


@pytest.mark.parametrize("key", ["ratios", "accuracies", "ratio_se", "accuracy_se"])
def test_guidance_kinds_refuses_mismatched_lengths_naming_the_argument(tmp_path, key):
    kinds = _kinds()
    kinds[0][key] = kinds[0][key][:2]
    with pytest.raises(InputError, match=rf"kinds\[0\] \(classifier guidance\): {key} has 2 values and scales 3"):
        guidance_kinds(kinds, tmp_path / "k.png")
    assert not (tmp_path / "k.png").exists()


def test_guidance_kinds_refuses_no_curves(tmp_path):
    with pytest.raises(InputError, match="kinds must be a non-empty list"):
        guidance_kinds([], tmp_path / "k.png")


def test_equal_accuracy_matching_is_linear_in_accuracy_between_neighbours(monkeypatch):
    b = _bench(monkeypatch)
    # points on the line ratio = 3 - 2 accuracy, listed out of accuracy order (accuracy need not rise with s):
    # any interpolation inside the range must land on that line exactly
    line = [{"scale": s, "accuracy": a, "ratio": 3 - 2 * a} for s, a in ((0, 0.1), (4, 0.9), (2, 0.5))]
    for a in (0.1, 0.3, 0.5, 0.77, 0.9):
        assert b.interpolate(line, a) == pytest.approx(3 - 2 * a, abs=TOL["exact64"])
    assert b.interpolate(line, 0.05) is None and b.interpolate(line, 0.95) is None   # no extrapolation
    other = [{"scale": 1, "accuracy": 0.3, "ratio": 1.0}, {"scale": 3, "accuracy": 0.95, "ratio": 2.0}]
    rows = b.matched(line, other)
    assert [r["accuracy"] for r in rows] == sorted(r["accuracy"] for r in rows)
    at = {(r["measured"], r["scale"]): r for r in rows}
    assert at[("cfg", 1)]["cg"] == pytest.approx(3 - 2 * 0.3, abs=TOL["exact64"])   # the line at the other's point
    assert at[("cfg", 3)]["cg"] is None                                             # beyond the line's accuracies
    assert at[("cg", 0)]["cfg"] is None                                             # below the other's
    assert at[("cg", 4)]["cfg"] == pytest.approx(1.0 + (0.9 - 0.3) / 0.65, abs=TOL["exact64"])
