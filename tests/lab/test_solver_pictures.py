"""The pictures of issue 15's CLI: quality against NFE (eval --nfe, the benchmark), an inversion's data beside
its reconstruction (sample --invert), and the titles that name the sampler, grid and NFE."""
import numpy as np
import pytest
from PIL import Image

from lab.pictures import inversion_pictures, quality_vs_nfe, sampler_label
from lab.plots import image_grid
from lab.plots.common import BANNER_PX, PANEL_PX
from reference.errors import InputError


def test_quality_vs_nfe_draws_every_curve_with_the_floor_at_its_stated_size(tmp_path):
    curves = {"dpm++2m (karras)": ([5, 10, 20], [4.0, 2.4, 2.1], [0.3, 0.2, 0.1]), "ddim (leading)": ([5, 10], [6, 3])}
    path = quality_vs_nfe(curves, tmp_path / "q.png", 1.99, metric="FD", baseline=("ddpm, all 1000 steps", 2.03))
    assert Image.open(path).size == (2 * PANEL_PX, int(1.5 * PANEL_PX))


def test_quality_vs_nfe_refuses_curves_it_cannot_draw(tmp_path):
    with pytest.raises(InputError, match="no curves"):
        quality_vs_nfe({}, tmp_path / "q.png", 1.0)
    with pytest.raises(InputError, match="of one length"):
        quality_vs_nfe({"a": ([5, 10], [1.0])}, tmp_path / "q.png", 1.0)


def test_inversion_picture_of_images_puts_data_and_reconstruction_side_by_side(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (4, 1, 8, 8))
    path = inversion_pictures(x, x * 0, x, tmp_path / "i.png", "digits: inversion")
    w, h = Image.open(path).size
    single = Image.open(image_grid(x, tmp_path / "g.png")).size
    assert w > 2 * single[0] and h == single[1] + 2 * BANNER_PX   # two grids and a gap; a title and captions


def test_inversion_picture_of_points_has_three_panels(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 2))
    path = inversion_pictures(x, x * 2, x + 0.01, tmp_path / "p.png", "moons: inversion")
    assert Image.open(path).size == (3 * 480, 480 + 60)     # three 480 px panels under a 60 px title
    with pytest.raises(InputError, match="one shape"):
        inversion_pictures(x, x[:10], x, tmp_path / "p.png", "t")


def test_sampler_labels_name_the_grid_and_the_nfe():
    assert sampler_label("ddim", 50, 1000, step=2800, spacing="leading") == \
        "step 2800 · ddim, 50 of T=1000 steps (leading)"
    assert sampler_label("dpm++2m", 20, 1000, step=2800, grid="karras", nfe=20) == \
        "step 2800 · dpm++2m, 20 steps on the karras grid of T=1000 · NFE 20"
    assert sampler_label("heun", 10, 1000, grid="trailing", nfe=19).endswith("· NFE 19")
