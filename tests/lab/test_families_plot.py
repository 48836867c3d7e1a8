"""lab/plots/families.py: the two-family picture of benchmarks/bench_stochastic.py (issue 27)."""
import numpy as np
import pytest
from PIL import Image

from lab.plots import families
from lab.plots.common import PANEL_PX
from reference.errors import InputError


def _panels():
    return {"ddpm-eps": {"euler": ("ode", [10, 20, 50], [3.0, 2.0, 1.5], [0.1, 0.1, 0.1]),
                         "euler-maruyama": ("sde", [10, 20, 50], [9.0, 4.0, 1.2], [0.3, 0.2, 0.1])},
            "flow": {"euler": ("ode", [10, 20], [2.5, 1.8], None),
                     "pc": ("sde", [20, 50], [np.inf, 1.4], [np.nan, 0.1])}}   # pc diverged at NFE 20


def test_families_plot_writes_a_png_of_the_stated_size(tmp_path):
    path = families.families_vs_nfe(_panels(), tmp_path / "f.png", title="digits")
    with Image.open(path) as im:   # 1.5 PANEL_PX wide per panel (two here), 1.8 PANEL_PX high, at DPI
        assert im.format == "PNG" and im.size == (int(2 * 1.5 * PANEL_PX), int(1.8 * PANEL_PX))


def test_ode_lines_are_solid_and_sde_lines_dashed_with_one_colour_per_sampler(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(families, "save", lambda fig, path: figures.append(fig) or path)
    families.families_vs_nfe(_panels(), tmp_path / "f.png")
    (fig,) = figures
    seen = {}
    for ax in fig.axes:
        for bars in ax.containers:                  # one errorbar container per curve, its data line first
            line = bars.lines[0]
            seen.setdefault(bars.get_label(), []).append((line.get_linestyle(), line.get_color()))
    # the style comes from the family the caller names, not from the sampler's name
    assert {s for s, _ in seen["euler (ode)"]} == {"-"}
    assert {s for s, _ in seen["euler-maruyama (sde)"] + seen["pc (sde)"]} == {"--"}
    assert len({c for _, c in seen["euler (ode)"]}) == 1          # euler's colour is the same in both panels
    assert seen["euler (ode)"][0][1] != seen["pc (sde)"][0][1]


def test_a_diverged_point_is_dropped_not_drawn(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(families, "save", lambda fig, path: figures.append(fig) or path)
    families.families_vs_nfe(_panels(), tmp_path / "f.png")
    pc = [b.lines[0] for ax in figures[0].axes for b in ax.containers if b.get_label() == "pc (sde)"]
    assert [list(ln.get_xdata()) for ln in pc] == [[50.0]]


def test_bad_input_is_refused_naming_the_argument(tmp_path):
    bad = _panels()
    bad["flow"]["euler"] = ("ode", [10, 20, 50], [2.5, 1.8], None)
    with pytest.raises(InputError, match=r"panels\['flow'\]\['euler'\]: nfe \(3\), value \(2\)"):
        families.families_vs_nfe(bad, tmp_path / "f.png")
    bad = _panels()
    bad["flow"]["pc"] = ("stochastic", [20], [1.0], None)
    with pytest.raises(InputError, match=r"panels\['flow'\]\['pc'\]: family 'stochastic' is not one of ode"):
        families.families_vs_nfe(bad, tmp_path / "f.png")
    with pytest.raises(InputError, match="panels is empty"):
        families.families_vs_nfe({}, tmp_path / "f.png")
    with pytest.raises(InputError, match=r"panels\['flow'\] has no curves"):
        families.families_vs_nfe({"flow": {}}, tmp_path / "f.png")
