"""A trajectory strip of a model without trained steps (a continuous objective's: its columns are indices on the
sampling grid, not steps t of a chain) is captioned by each column's sigma alone, never "t=<index>"."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image, ImageDraw

from lab import plots
from reference.errors import InputError


def test_column_label_by_sigma_alone_without_trained_steps():
    assert plots.column_label(3, 1.5) == ["t=3", "sigma=1.5"]                 # the chain's, as before
    assert plots.column_label(3) == ["t=3"]
    assert plots.column_label(3, 1.5, trained_steps=False) == ["sigma=1.5"]
    assert plots.column_label(-1, 0.0, trained_steps=False) == [plots.FINAL, "sigma=0"]
    with pytest.raises(InputError, match="captioned by sigma: pass the sigmas"):
        plots.column_label(3, trained_steps=False)


def test_a_point_strip_without_trained_steps_is_captioned_by_sigma(tmp_path, rng, monkeypatch):
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))   # keep the figure to read its titles
    frames = [(i, rng.standard_normal((30, 2)), rng.standard_normal((30, 2))) for i in range(3)]
    plots.trajectory_strip(frames, tmp_path / "p.png", final=rng.standard_normal((30, 2)), sigmas=[80.0, 2.5, 0.01],
                           trained_steps=False)
    titles = [ax.get_title() for ax in kept[0].axes if ax.get_title()]
    assert titles == ["sigma=80", "sigma=2.5", "sigma=0.01", "x_0 (final)\nsigma=0"]
    with pytest.raises(InputError, match="pass sigmas"):
        plots.trajectory_strip(frames, tmp_path / "q.png", trained_steps=False)


def test_an_image_strip_without_trained_steps_has_one_caption_band_and_no_t(tmp_path, rng, monkeypatch):
    seen, text = [], ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, s, *a, **k: seen.append(s) or
                        text(self, xy, s, *a, **k))
    frames = [(i, rng.uniform(-1, 1, (2, 1, 8, 8)), rng.uniform(-1, 1, (2, 1, 8, 8))) for i in range(3)]
    final, sigmas = rng.uniform(-1, 1, (2, 1, 8, 8)), [80.0, 2.5, 0.01]
    heights = {}
    for trained in (True, False):
        seen.clear()
        path = plots.trajectory_strip(frames, tmp_path / f"{trained}.png", final=final, sigmas=sigmas,
                                      trained_steps=trained)
        with Image.open(path) as im:
            heights[trained] = im.size[1]
        assert ("t=0" in seen) is trained and {"sigma=80", "sigma=0.01", "x_0 (final)"} <= set(seen)
    assert heights[True] - heights[False] == 22      # one BANNER_PX band fewer: sigma is the only caption line
