"""What a picture shows and whether it fits: every title, tick label, caption and legend of a 2-D scatter lies
inside its figure (matplotlib's window extents under the Agg renderer); trajectories end on the finished
sample, captioned, with each column's step and noise level and, for a class-conditional draw, the classes
and the guidance scale; a class-conditional run's final picture draws every class; the schedules picture
shows the linear schedule beside its zero-terminal-SNR rescaling, where the two coincide."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.text import Text
from PIL import Image, ImageDraw

from lab import cli, plots
from lab.pictures import trajectory_pictures
from lab.plots.guidance import class_scatter
from lab.plots.samples import inversion_picture
from reference import schedules as S
from reference.errors import InputError

# a title as long as the commands write when every setting is named: five lines at 600 px
LONG_TITLE = ("moons, one colour per class (0..1), 256 each, guidance s=2 (EMA weights), step 12000 · dpm++2m, 50 "
              "steps on the trailing grid of T=1000 · NFE 100 · trailing grid, x0_hat not clipped, variance "
              "fixed_small · checkpoint runs/moons-cond/ckpt.npz, seed 0, 512 samples")


@pytest.fixture
def figures(monkeypatch):
    """The figures lab.plots saves, kept open for inspection (it closes each one after saving it)."""
    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        close(fig)


@pytest.fixture
def pil_texts(monkeypatch):
    """Every string PIL writes into a picture (the image strips' captions and row labels)."""
    seen, text = [], ImageDraw.ImageDraw.text

    def record(self, xy, s, *a, **k):
        seen.append(s)
        return text(self, xy, s, *a, **k)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    return seen


def _png(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def drawn_texts(fig):
    """(kind, Text) of every non-empty text the last draw of ``fig`` showed: tick labels only of the ticks
    inside their axis's view (matplotlib keeps labels of ticks it does not draw), nothing of an axes whose
    axis is off."""
    ticks, shown = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                for label in (tick.label1, tick.label2):
                    ticks.add(label)
                    if ax.axison and label.get_visible() and label.get_text() and lo <= tick.get_loc() <= hi:
                        shown.append(("tick label", label))
    for t in fig.findobj(Text):
        owner = t.axes
        if t in ticks or not t.get_visible() or not t.get_text() or (owner is not None and not owner.axison
                                                                     and t is not owner.title):
            continue
        shown.append(("title" if owner is not None and t is owner.title else "text", t))
    return shown


def assert_all_inside(fig):
    """Every drawn text's window extent lies inside the figure: no pixel of it is cut (no slack: extents are
    the glyphs' boxes, and a box touching the edge would already lose antialiased pixels)."""
    r = fig.canvas.get_renderer()
    w, h = fig.bbox.width, fig.bbox.height
    texts = drawn_texts(fig)
    for kind, t in texts:
        b = t.get_window_extent(r)
        assert b.x0 >= 0 and b.y0 >= 0 and b.x1 <= w and b.y1 <= h, \
            f"{kind} {t.get_text()!r} at {b.bounds} is cut by the {w:.0f}x{h:.0f} figure"
    return texts


def _words(text):
    return "".join(text.split())


@pytest.mark.parametrize("draw", ["samples", "classes"])
def test_a_scatter_with_a_long_title_fits_title_ticks_and_legend_in_600_px(draw, tmp_path, rng, figures):
    pts, ref = rng.standard_normal((500, 2)) * 3, rng.standard_normal((300, 2))
    if draw == "samples":
        path = plots.scatter_2d(pts, tmp_path / "s.png", reference=ref, title=LONG_TITLE)
    else:
        path = class_scatter(pts, np.arange(500) % 8, tmp_path / "s.png", reference=ref, title=LONG_TITLE)
    h, w = _png(path).shape[:2]
    assert w >= 600 and h >= 600
    (fig,) = figures
    texts = assert_all_inside(fig)
    ax = fig.axes[0]
    assert _words(ax.get_title()) == _words(LONG_TITLE)                    # wrapped, every word kept
    ticks = [t for kind, t in texts if kind == "tick label"]
    assert len(ticks) >= 6                                                 # both axes carry their numbers
    assert {t.get_text() for _, t in texts} >= {"data"} | ({"class 0", "class 7"} if draw == "classes" else
                                                          {"samples"})


def test_an_inversion_of_points_fits_its_captions(tmp_path, rng, figures):
    x = rng.standard_normal((100, 2))
    inversion_picture(x, 2 * x, x + 0.01, tmp_path / "i.png", title=LONG_TITLE)
    (fig,) = figures
    assert_all_inside(fig)


def _point_frames(rng):
    return [(t, rng.standard_normal((60, 2)) * (1 + t / 3), rng.standard_normal((60, 2))) for t in (9, 4, 0)]


def test_a_point_trajectory_fits_and_ends_on_the_final_sample_captioned(tmp_path, rng, figures):
    frames, final = _point_frames(rng), rng.standard_normal((60, 2))
    labels = np.arange(60) % 2
    path = plots.trajectory_strip(frames, tmp_path / "p.png", reference=rng.standard_normal((40, 2)),
                                  title=LONG_TITLE, final=final, sigmas=[12.5, 1.5, 0.05], labels=labels)
    h, w = _png(path).shape[:2]
    assert w >= 600 and h >= 600
    (fig,) = figures
    texts = assert_all_inside(fig)
    assert any(kind == "tick label" for kind, _ in texts)
    top = [ax for ax in fig.axes if ax.get_title()]                       # the x_t row carries the captions
    assert [ax.get_title() for ax in top] == ["t=9\nsigma=12.5", "t=4\nsigma=1.5", "t=0\nsigma=0.05",
                                              "x_0 (final)\nsigma=0"]
    # the last column is the finished sample itself (the points of its coloured collections), with no
    # x0_hat panel under it
    shown = np.concatenate([c.get_offsets() for c in top[-1].collections if len(c.get_offsets()) != 40])
    assert np.array_equal(np.sort(shown, axis=0), np.sort(final, axis=0))
    assert sum(not ax.axison for ax in fig.axes) == 1
    assert {"class 0", "class 1"} <= {t.get_text() for _, t in texts}


def test_an_image_trajectory_ends_on_the_final_sample_captioned_with_sigma_and_class_rows(tmp_path, rng, pil_texts):
    frames = [(t, rng.uniform(-1, 1, (2, 1, 8, 8)), rng.uniform(-1, 1, (2, 1, 8, 8))) for t in (9, 4, 0)]
    final = rng.uniform(-1, 1, (2, 1, 8, 8))
    a = _png(plots.trajectory_strip(frames, tmp_path / "i.png", title="t", final=final, sigmas=[12.5, 1.5, 0.05],
                                    labels=np.array([3, 5])))
    for words in ("t=9", "sigma=12.5", "t=0", "sigma=0.05", "x_0 (final)", "sigma=0"):
        assert words in pil_texts
    assert pil_texts.count("class 3") == 1 and pil_texts.count("class 5") == 1    # one caption column ...
    # 8 px images upscaled 8x, one column of 2 each: (2 (8 + 2) + 2) 8 px high, (8 + 2) 8 + 2 8 wide
    tile = plots.grid_array(final, nrow=1)
    assert tile.shape == (176, 96, 3)
    bands, block = 22, 176                                          # BANNER_PX: each caption band
    top = a[4 * bands:4 * bands + block]                            # title, row caption, t and sigma bands
    assert np.array_equal(top[:, -96:], tile)                       # the last column is the final sample
    bottom = a[5 * bands + block:]                                  # its x0_hat row caption, then the block
    assert bottom.shape[0] == block and np.all(bottom[:, -96 + 16:] == 255)   # blank: nothing after the end
    assert np.array_equal(top[:, :40], bottom[:, :40]) and top[:, :40].min() < 128   # ... beside both blocks


def test_trajectory_pictures_name_the_classes_and_the_scale(tmp_path, rng, figures, pil_texts):
    """lab.pictures: a class-conditional draw's strip names the classes and guidance in its title, gives each
    class a row (images: the first item of each) or a colour (points), and captions each column's sigma_t."""
    cfg = type("Cfg", (), {"data": "moons"})()
    sig = np.array([1.0, 2.0, 3.0])                               # the trained sigma_t of t = 0, 1, 2
    y = np.repeat(np.arange(3), 4)
    imgs = [(t, rng.uniform(-1, 1, (12, 1, 8, 8)), rng.uniform(-1, 1, (12, 1, 8, 8))) for t in (2, 1, 0)]
    trajectory_pictures(imgs, rng.uniform(-1, 1, (12, 1, 8, 8)), tmp_path / "i", cfg, "digits: ddim",
                        labels=y, guidance=2.0, sigmas=sig)
    assert "digits: ddim · classes 0..2, guidance s=2" in pil_texts
    assert [pil_texts.count(f"class {k}") for k in range(3)] == [1, 1, 1]   # one row per class
    assert [t for t in pil_texts if t.startswith("sigma=")] == ["sigma=3", "sigma=2", "sigma=1", "sigma=0"]
    assert "x_0 (final)" in pil_texts
    pts = [(t, rng.standard_normal((40, 2)), rng.standard_normal((40, 2))) for t in (2, 1, 0)]
    trajectory_pictures(pts, rng.standard_normal((40, 2)), tmp_path / "p", cfg, "moons: ddim",
                        labels=np.repeat([0, 1], 20), guidance=1.0, sigmas=sig)
    strip = figures[0]
    assert "moons: ddim · classes 0..1, guidance s=1" in strip.get_suptitle().replace("\n", " ")
    assert {"class 0", "class 1"} <= {t.get_text() for _, t in drawn_texts(strip)}


TINY = ["--steps", "3", "--save-every", "0", "--sample-every", "0", "--quiet", "--T", "20", "--sample-steps", "2"]


def test_a_class_conditional_runs_final_samples_are_drawn_per_class(tmp_path, monkeypatch, figures, pil_texts):
    """samples_final.png of a class-conditional run: every class at s = 1 (one row of 8 per class for images,
    n // K points per class, coloured), not the null class under a plain title."""
    import lab.sampling
    calls, draw = [], lab.sampling.draw

    def spy(B, trainer, n, *a, **k):
        calls.append((n, k.get("y"), k.get("guidance")))
        return draw(B, trainer, n, *a, **k)

    monkeypatch.setattr(lab.sampling, "draw", spy)
    assert cli.main(["train", "--data", "gaussians8", "--class-cond", "--out", str(tmp_path / "g"), *TINY,
                     "--hidden", "8", "--num-layers", "1"]) == 0
    n, y, s = calls[-1]
    assert n == 2000 and s == 1 and np.array_equal(y, np.repeat(np.arange(8), 250))
    fig = figures[-1]
    texts = {t.get_text() for _, t in drawn_texts(fig)}
    assert {f"class {k}" for k in range(8)} <= texts
    assert "onecolourperclass" in _words(fig.axes[0].get_title()) and "s=1" in fig.axes[0].get_title()
    assert cli.main(["train", "--data", "digits", "--class-cond", "--out", str(tmp_path / "d"), *TINY,
                     "--base-channels", "8"]) == 0
    n, y, s = calls[-1]
    assert n == 80 and s == 1 and np.array_equal(y, np.repeat(np.arange(10), 8))
    assert [pil_texts.count(f"class {k}") for k in range(10)] == [1] * 10
    assert any("one row per class" in t and "s=1" in t for t in pil_texts)
    # 10 rows of 8 px digits upscaled 8x under the title band: (10 (8 + 2) + 2) 8 + 22 px high
    assert _png(tmp_path / "d" / "samples_final.png").shape[0] == 102 * 8 + 22


def _shown(png, ax, u, v, color):
    """The fraction of the pixel columns a curve (u, v) crosses in which at least 2 pixels of ``color`` lie
    within 6 px of it (the curve's half-width and its antialiased edge; 2 pixels: a visible stroke, not one
    stray blended edge pixel; colour distance 0.2 of the RGB cube's unit side: an edge pixel blended with
    white or a neighbouring line stays farther than that, a pixel of the line itself nearer)."""
    h, target = png.shape[0], np.asarray(to_rgb(color))
    rgb = png.astype(float) / 255
    rows = {}
    for x, y in ax.transData.transform(np.column_stack([u, v])):
        rows.setdefault(int(round(x)), []).append(h - y)
    hits = [(np.linalg.norm(rgb[int(min(ys)) - 6:int(max(ys)) + 7, col] - target, axis=-1) < 0.2).sum() >= 2
            for col, ys in rows.items()]
    return float(np.mean(hits))


def test_the_schedules_picture_shows_linear_where_its_zero_terminal_snr_rescaling_lies_on_it(tmp_path, figures):
    """The rescaled linear schedule follows the linear one for most of t; drawn the same width on top, it
    hid it except in the gaps of its dashes. Along the stretch where they coincide, both colours show."""
    T = 1000                    # the command's default: alpha_bar_{T-1} ~ 4e-5, so the rescaling moves little
    lin = S.Schedule(S.make_betas("linear", T), warn=False)
    scheds = {n: S.Schedule(S.make_betas(n, T), warn=False) for n in S.SCHEDULES}
    scheds["linear, zero terminal SNR"] = S.Schedule(S.rescale_zero_terminal_snr(S.make_betas("linear", T)),
                                                     warn=False)
    png = _png(plots.schedule_plot(scheds, tmp_path / "s.png"))
    (fig,) = figures
    u = (np.arange(T) + 1) / T
    # the two agree on 0.1..0.5, and no other schedule's line runs within a line width of them there (below
    # 0.1 every alpha_bar is near 1 and the other wide lines, drawn later, lie on the linear one)
    stretch = (u > 0.1) & (u < 0.5)
    for ax, v in zip(fig.axes[:2], (np.asarray(lin.alpha_bar), np.asarray(lin.log_snr))):
        colours = {line.get_label(): line.get_color() for line in ax.get_lines()}
        linear = _shown(png, ax, u[stretch], v[stretch], colours["linear"])
        rescaled = _shown(png, ax, u[stretch], v[stretch], colours["linear, zero terminal SNR"])
        # a dashed line of the same width on top leaves the linear one in its gaps only, a third of the columns
        # or fewer; a wide line beneath shows in (nearly) all of them, and the dashes in most
        assert linear > 0.8, f"the linear schedule shows in only {linear:.0%} of its pixel columns"
        assert rescaled > 0.5, f"the rescaled schedule shows in only {rescaled:.0%} of its pixel columns"


def test_the_recipes_figure_fits_its_captions(tmp_path, rng, figures):
    """benchmarks/bench_recipes.py's picture: real data above samples, per dataset, every caption inside."""
    panels = [("moons: real", "moons: torch_port", rng.standard_normal((200, 2)), rng.standard_normal((200, 2))),
              ("digits: real", "digits: reference", rng.uniform(-1, 1, (36, 1, 8, 8)),
               rng.uniform(-1, 1, (36, 1, 8, 8)))]
    h, w = _png(plots.recipes_figure(panels, tmp_path / "r.png")).shape[:2]
    assert (w, h) == (2 * 300, 2 * 300 + 20)
    (fig,) = figures
    assert {"moons: real", "digits: reference"} <= {t.get_text() for _, t in assert_all_inside(fig)}


def test_the_sample_table_fits_its_captions_and_refuses_ragged_columns(tmp_path, rng, figures):
    """benchmarks/bench_stochastic.py's NCSN picture: per dataset its real data above one row per sampler."""
    cols = [[("moons: real", rng.standard_normal((200, 2))), ("langevin NFE 5001: 1.53x floor",
             rng.standard_normal((200, 2))), ("euler-maruyama NFE 100", rng.standard_normal((200, 2)))],
            [("digits: real", rng.uniform(-1, 1, (36, 1, 8, 8))), ("langevin", rng.uniform(-1, 1, (36, 1, 8, 8))),
             ("euler-maruyama", rng.uniform(-1, 1, (36, 1, 8, 8)))]]
    h, w = _png(plots.sample_table(cols, tmp_path / "t.png")).shape[:2]
    assert (w, h) == (2 * 300, 3 * 300 + 30)
    (fig,) = figures
    assert {"moons: real", "langevin NFE 5001: 1.53x floor", "euler-maruyama"} <= \
        {t.get_text() for _, t in assert_all_inside(fig)}
    h, w = _png(plots.sample_table(cols, tmp_path / "a.png", across=True)).shape[:2]
    assert (w, h) == (3 * 300, 2 * 300 + 20)                        # across: a row per entry
    assert {"moons: real", "euler-maruyama"} <= {t.get_text() for _, t in assert_all_inside(plt.gcf())}
    with pytest.raises(InputError, match="same number of cells, got \\[1, 3\\]"):
        plots.sample_table([cols[0], cols[1][:1]], tmp_path / "u.png")
