"""Pictures: each function writes a non-empty file of the documented pixel size (Agg backend)."""
import json

import matplotlib
import numpy as np
import pytest
from PIL import Image

from lab import plots
from reference import schedules as S
from reference.errors import InputError

P = plots.PANEL_PX


def _size(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        return im.size


def test_agg_backend_is_used():
    assert matplotlib.get_backend().lower() == "agg"


def test_image_grid_size_and_upscaling_of_tiny_images(tmp_path, rng):
    x = rng.uniform(-1, 1, (10, 1, 8, 8))
    # 10 images, 4 per row -> 3 rows; each cell 8 + 2 px pad, plus the outer pad; upscaled 8x (8 px -> 64 px)
    assert _size(plots.image_grid(x, tmp_path / "g.png", nrow=4)) == ((4 * 10 + 2) * 8, (3 * 10 + 2) * 8)
    assert plots.upscale_factor(8) == 8 and plots.upscale_factor(32) == 2 and plots.upscale_factor(64) == 1
    # default nrow = ceil(sqrt(N)); RGB 32x32 images upscaled 2x
    y = rng.uniform(-1, 1, (5, 3, 32, 32))
    assert _size(plots.image_grid(y, tmp_path / "c.png")) == ((3 * 34 + 2) * 2, (2 * 34 + 2) * 2)


def test_image_grid_maps_minus_one_to_black_and_pads_white(tmp_path):
    g = plots.grid_array(-np.ones((1, 1, 4, 4)), scale=1)            # (8, 8, 3)
    assert g.shape == (8, 8, 3)
    assert np.all(g[2:6, 2:6] == 0) and np.all(g[0] == 255) and np.all(g[:, -1] == 255)
    with pytest.raises(InputError, match="NCHW"):
        plots.image_grid(np.zeros((2, 2, 4, 4)), tmp_path / "bad.png")
    with pytest.raises(InputError, match="non-finite"):
        plots.image_grid(np.full((1, 1, 4, 4), np.nan), tmp_path / "nan.png")


def test_scatter_2d_size(tmp_path, rng):
    # 600 px square: room for a wrapped title, ticks and a legend (tests/lab/test_pictures_layout.py checks the fit)
    p = plots.scatter_2d(rng.standard_normal((300, 2)), tmp_path / "s.png", reference=rng.standard_normal((300, 2)))
    assert _size(p) == (600, 600)
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        plots.scatter_2d(np.zeros((3, 3)), tmp_path / "bad.png")


def test_loss_curve_from_jsonl_and_from_records(tmp_path):
    rows = [{"step": i + 1, "loss": 1.0 / (i + 1)} for i in range(50)] + [{"step": 50, "bpd": 3.0}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _size(plots.loss_curve(log, tmp_path / "a.png", label="L_simple")) == (2 * P, P)
    assert _size(plots.loss_curve(rows, tmp_path / "b.png")) == (2 * P, P)
    with pytest.raises(InputError, match="no records"):
        plots.loss_curve([{"step": 1}], tmp_path / "c.png")
    with pytest.raises(InputError, match="not found"):
        plots.loss_curve(tmp_path / "missing.jsonl", tmp_path / "d.png")


def test_loss_smoothing_is_a_centred_window_in_steps_that_does_not_lag():
    """A per-record EMA with a long time constant sits above a falling loss for the whole run (issue 19);
    the centred window follows it: on a straight line it is exact away from the ends, and it averages
    records by their step, not by their count (uneven logging)."""
    steps = np.array([10.0, 20, 30, 40, 50, 60, 200])
    y = 100.0 - steps
    got = plots.smooth_in_steps(steps, y, window=20)
    np.testing.assert_allclose(got[1:5], y[1:5])                     # symmetric window on a line: no lag
    assert got[-1] == y[-1]                                          # alone in its window
    assert got[0] == pytest.approx(np.mean(y[:2]))                   # steps 10, 20 lie within 10 of 10


def test_trajectory_strip_shows_x_t_above_x0_hat_for_points_and_images(tmp_path, rng):
    pts = [(t, rng.standard_normal((100, 2)) * (1 + t), rng.standard_normal((100, 2))) for t in (9, 4, 0)]
    # 300 px panels, 60 px for the row captions and y ticks, 110 px for the title, column captions and x ticks
    assert _size(plots.trajectory_strip(pts, tmp_path / "p.png", reference=rng.standard_normal((50, 2)))) == \
        (3 * 300 + 60, 2 * 300 + 110)
    imgs = [(t, rng.uniform(-1, 1, (5, 1, 8, 8)), rng.uniform(-1, 1, (5, 1, 8, 8))) for t in (9, 4, 0)]
    w, h = _size(plots.trajectory_strip(imgs, tmp_path / "i.png", max_rows=4))
    s = plots.upscale_factor(8)
    assert w >= 3 * 10 * s and h == 2 * (4 * 10 + 2) * s + 4 * plots.BANNER_PX
    # the two blocks are the two arrays: x_t above, x0_hat below
    top = plots.grid_array(imgs[0][1][:4], nrow=1)
    with Image.open(tmp_path / "i.png") as im:
        a = np.asarray(im.convert("RGB"))
    y0 = 3 * plots.BANNER_PX
    assert np.array_equal(a[y0:y0 + top.shape[0], (w - 3 * top.shape[1]) // 2:][:, :top.shape[1]], top)


def test_trajectory_gif_has_one_captioned_frame_per_step(tmp_path, rng):
    imgs = [(t, rng.uniform(-1, 1, (4, 3, 8, 8))) for t in (2, 1, 0, -1)]
    with Image.open(plots.trajectory_gif(imgs, tmp_path / "i.gif")) as im:
        grid = (2 * 10 + 2) * 8
        assert im.n_frames == 4 and im.size[1] == grid + plots.BANNER_PX and im.size[0] >= grid
    pts = [(t, rng.standard_normal((50, 2))) for t in (2, 1, 0)]
    with Image.open(plots.trajectory_gif(pts, tmp_path / "p.gif")) as im:
        assert im.n_frames == 3 and im.size == (600, 600)
    assert plots.frame_label(-1) == "x_0: the sample" and plots.frame_label(7) == "x_t at t=7"


def test_a_titled_grid_gains_a_banner(tmp_path, rng):
    x = rng.uniform(-1, 1, (4, 1, 8, 8))
    w, h = _size(plots.image_grid(x, tmp_path / "t.png", title="step 10 · ddim"))
    assert h == (2 * 10 + 2) * 8 + plots.BANNER_PX and w == (2 * 10 + 2) * 8


def test_forward_figure_size_and_timesteps(tmp_path, rng):
    sched = S.Schedule(S.make_betas("linear", 100), warn=False)
    seen = []

    def spy(x0, t, eps):
        seen.append(t)
        return x0 * 0.5 + eps * 0.5

    p = plots.forward_process_figure(rng.uniform(-1, 1, (3, 16, 16)), sched, tmp_path / "f.png", frames=5, q_sample=spy)
    assert _size(p) == (6 * P // 2, P // 2 + 60)
    assert seen == [20, 40, 59, 79, 99]           # x_0 is the first panel: t = 0 would look the same
    assert plots.forward_timesteps(3, 8).tolist() == [0, 1, 2]
    # the default q_sample is the reference's (F3)
    assert _size(plots.forward_process_figure(rng.uniform(-1, 1, (1, 1, 8, 8)), sched, tmp_path / "g.png", frames=2))


def test_schedule_plot_size(tmp_path):
    scheds = {n: S.Schedule(S.make_betas(n, 200), warn=False) for n in S.SCHEDULES}
    scheds["zero terminal SNR"] = S.Schedule(S.rescale_zero_terminal_snr(S.make_betas("linear", 200)), warn=False)
    assert _size(plots.schedule_plot(scheds, tmp_path / "s.png")) == (3 * P, 3 * P // 2)


def test_sample_image_is_a_real_picture_in_model_space():
    x = plots.sample_image(32)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    assert plots.sample_image(16, channels=1).shape == (1, 16, 16)
