"""Classifier-free guidance through the command line (issue 17): ``sample --class K|all --guidance S`` and
``eval --guidance 0,1,2,4``, both sides.

A small class-conditional moons model (reference, float64, T = 100, 600 steps, ~10 s) is the "mixture-like" data:
its two classes are the two moons, and whether a sample landed on the requested moon is read by an independent
judge, the majority of the 5 nearest *real* labelled points (lab.guidance_eval.NearestNeighbours; it knows the
data's labels, not the model). A 3-step digits model gives the one-row-per-class picture its shape.
"""
import json

import numpy as np
import pytest
from PIL import Image

from lab import cli, data
from lab.backend import Backend
from lab.guidance_eval import NearestNeighbours, balanced
from lab.plots.common import BANNER_PX, grid_array
from lab.sampling import draw, load_trainer, ode_denoiser, plan

torch = pytest.importorskip("torch")

COND = ["--class-cond", "--steps", "600", "--save-every", "0", "--sample-every", "0", "--quiet", "--batch-size",
        "128", "--T", "100", "--hidden", "32", "--num-layers", "2", "--lr", "3e-3", "--warmup", "50", "--dtype",
        "float64", "--no-final-samples"]
TINY = ["--steps", "3", "--save-every", "0", "--sample-every", "0", "--quiet", "--T", "20", "--no-final-samples"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("guidance_cli")
    assert cli.main(["train", "--data", "moons", "--out", str(root / "moons"), *COND]) == 0
    assert cli.main(["train", "--data", "moons", "--out", str(root / "plain"), *TINY, "--hidden", "8",
                     "--num-layers", "1"]) == 0
    assert cli.main(["train", "--data", "digits", "--class-cond", "--out", str(root / "digits"), *TINY,
                     "--base-channels", "8"]) == 0
    return {k: root / k / "ckpt.npz" for k in ("moons", "plain", "digits")}


@pytest.fixture(scope="module")
def judge():
    x, y = data.load("moons", n=4000, seed=77, split="train", return_labels=True)
    return NearestNeighbours(x, y)


def _sample(ckpt, out, *flags, backend="reference"):
    dev = ["--device", "cpu"] if backend == "torch" else []
    assert cli.main(["sample", "--ckpt", str(ckpt), "--out", str(out), *flags, *dev], backend=backend) == 0
    return np.load(out)


# ---- refusals, each naming its flag, before any work -------------------------------------------------------

@pytest.mark.parametrize("flags,words", [
    (["--class", "1", "--guidance", "-0.5"], "--guidance must be a finite scale >= 0"),
    (["--class", "1", "--guidance", "inf"], "--guidance must be a finite scale >= 0"),
    (["--class", "-1"], "--class must be a class index >= 0"),
    (["--class", "three"], "--class must be a class index (0..K-1) or 'all', got 'three'"),
    (["--class", "1", "--invert", "x.npy"], "--class does not apply with --invert"),
])
def test_sample_refuses_bad_class_and_guidance_flags_before_reading_the_checkpoint(tmp_path, capsys, flags, words):
    code = cli.main(["sample", "--ckpt", str(tmp_path / "no_such.npz"), "--out", str(tmp_path / "s.npy"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "not found" not in err, err


@pytest.mark.parametrize("which,flags,words", [
    ("moons", ["--class", "2"], "--class 2 is out of range: this checkpoint's model has 2 classes, 0..1"),
    ("digits", ["--class", "10"], "model has 10 classes, 0..9 (or --class all)"),
    ("plain", ["--class", "0"], "--class needs a class-conditional checkpoint (trained with train --class-cond)"),
    ("plain", ["--class", "all", "--guidance", "2"], "--class / --guidance needs a class-conditional checkpoint"),
    # --guidance without --class: a conditional checkpoint is asked for the classes, an unconditional one is
    # named as such at once (asking for --class first would send the user to a flag it cannot take)
    ("moons", ["--guidance", "2"], "--guidance needs --class K (or all)"),
    ("plain", ["--guidance", "2"], "--guidance needs a class-conditional checkpoint (trained with train --class-cond)"),
    ("plain", ["--sampler", "ddpm", "--variance", "learned"], "--variance learned needs a checkpoint trained with --variance learned"),
])
def test_sample_refuses_what_the_checkpoint_cannot_do_and_writes_nothing(runs, tmp_path, capsys, which, flags,
                                                                           words):
    code = cli.main(["sample", "--ckpt", str(runs[which]), "--out", str(tmp_path / "s.npy"), "--n", "4", *flags])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err   # one message, the right one
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("which,flags,words", [
    ("plain", ["--guidance", "0,1"], "--guidance needs a class-conditional checkpoint"),
    ("moons", ["--guidance", "0,-1"], "--guidance needs finite scales >= 0"),
    ("moons", ["--guidance", "0,x"], "--guidance must be a comma-separated list of scales"),
    ("moons", ["--guidance", "1", "--nfe", "5"], "--guidance and --nfe are two sweeps"),
    ("moons", ["--guidance", "1", "--plot", "t.jpg"], "--plot must name a .png file"),
    ("moons", ["--guidance", "1", "--data", "gaussians8"], "judging them against --data 'gaussians8'"),
    ("moons", ["--plot", "t.png"], "--plot applies with --nfe only (the sweep over network evaluations) or --guidance"),
])
def test_eval_guidance_refusals_name_the_flag(runs, tmp_path, capsys, which, flags, words):
    js = tmp_path / "e.json"
    code = cli.main(["eval", "--ckpt", str(runs[which]), "--bpd-n", "0", "--n", "20", "--json", str(js), *flags])
    assert code == 2 and words in capsys.readouterr().err
    assert not js.exists()


# ---- what the flags draw ----------------------------------------------------------------------------------

def test_sample_class_k_lands_on_that_moon_and_guidance_0_does_not_care(runs, tmp_path, judge):
    """At s = 3 (sharpened) >= 95% of --class K samples sit on moon K for either K, by the 5 nearest real
    labelled points; the same request at s = 0 (the unconditional model) lands about half on each moon: the
    class flag, not the data, put them there. Thresholds: the trained model scored 100% at s = 3 and 46-53% at
    s = 0 on 400 samples; 0.95 and [0.25, 0.75] leave room for a slightly different run (5 standard errors of
    a fair coin at n = 200 is 0.18)."""
    for k in (0, 1):
        x = _sample(runs["moons"], tmp_path / f"c{k}.npy", "--class", str(k), "--guidance", "3", "--n", "200",
                    "--sampler", "dpm++2m")
        assert judge.accuracy(x, np.full(200, k)) >= 0.95
        assert np.array_equal(np.load(tmp_path / f"c{k}_labels.npy"), np.full(200, k))
    x0 = _sample(runs["moons"], tmp_path / "u.npy", "--class", "0", "--guidance", "0", "--n", "200",
                 "--sampler", "dpm++2m")
    assert 0.25 <= judge.accuracy(x0, np.zeros(200)) <= 0.75


@pytest.mark.parametrize("flags", [["--class", "all", "--guidance", "2", "--n", "10", "--sampler", "dpm++2m"],
                                   ["--class", "1", "--guidance", "2.5", "--n", "12", "--sampler", "ddpm",
                                    "--sample-steps", "10"],
                                   ["--class", "0", "--n", "12", "--sampler", "heun", "--sample-steps", "5"]])
def test_both_sides_give_the_same_guided_samples_for_one_checkpoint_and_seed(runs, tmp_path, flags):
    """A float64 checkpoint: the two sides' float64 draws agree far below float32 rounding (the cross-tests hold
    each guided step to TOL["cross64"]); the files are float32, so one rounding (1 ulp) apart at most."""
    ref = _sample(runs["moons"], tmp_path / "r.npy", *flags, "--seed", "5")
    port = _sample(runs["moons"], tmp_path / "t.npy", *flags, "--seed", "5", backend="torch")
    assert np.all(np.isfinite(ref)) and ref.shape[1] == 2
    ulp = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(port, ref, rtol=ulp, atol=ulp)
    assert not np.allclose(ref, _sample(runs["moons"], tmp_path / "o.npy", *flags, "--seed", "6"))


@pytest.mark.parametrize("side", ["reference", "torch"])
def test_draw_with_guidance_is_two_separate_passes_mixed_by_hand(runs, side):
    """The independent route: the ODE run on a denoiser that calls the network twice, once with the classes and
    once with the null class, and mixes eps_null + s (eps_c - eps_null) itself (W2), against draw's guided one
    batched pass. Same float64 arithmetic up to the batch order: TOL["solve64"] would do, 1e-10 is its size."""
    B = Backend(side)
    trainer, _ = load_trainer(B, runs["moons"], **({"device": "cpu"} if side == "torch" else {}))
    y, s = balanced(16, 2), 2.5
    got = draw(B, trainer, 16, 3, "dpm++2m", 8, y=y, guidance=s, warn=False)
    net = trainer.denoiser()
    lab = B.from_numpy(y)
    null = B.from_numpy(np.full(16, 2, dtype=np.int64))

    def by_hand(x, t):
        e_c, e_0 = net(x, t, lab), net(x, t, null)
        return e_0 + s * (e_c - e_0)

    p = plan(B, trainer.sched, "dpm++2m", 8, prediction=trainer.cfg.prediction, clip_x0=False)
    x_T = B.from_numpy(np.random.default_rng(3).standard_normal((16, 2)))
    want = B.to_numpy(B.solvers.sample(ode_denoiser(B, trainer, by_hand), x_T, p.sigmas, "dpm++2m").x)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert not np.allclose(got, draw(B, trainer, 16, 3, "dpm++2m", 8, y=y, guidance=1.0, warn=False))


def test_class_all_on_images_is_one_labelled_row_per_class(runs, tmp_path, capsys):
    x = _sample(runs["digits"], tmp_path / "g.npy", "--class", "all", "--n", "3", "--sampler", "dpm++2m",
                "--sample-steps", "4", "--guidance", "2")
    assert x.shape == (30, 1, 8, 8)
    assert np.array_equal(np.load(tmp_path / "g_labels.npy"), np.repeat(np.arange(10), 3))
    body = np.asarray(Image.open(tmp_path / "g.png").convert("L"))[BANNER_PX:]
    grid = grid_array(x, nrow=3)[..., 0]                         # 10 rows of 3 (gray: R = G = B)
    assert body.shape[0] == grid.shape[0]
    at = [o for o in range(body.shape[1] - grid.shape[1] + 1) if np.array_equal(body[:, o:o + grid.shape[1]], grid)]
    assert len(at) == 1 and at[0] > 20                           # the grid, once, right of a label column
    rows = np.array_split(body[:, :at[0]], 10)                   # one band per class row: each holds its label
    assert all((band < 128).any() for band in rows)
    out = capsys.readouterr().out
    assert "30 samples of 10 classes" in out and "guidance s=2" in out and "NFE 8 per sample" in out


def test_class_all_on_points_and_the_default_guidance(runs, tmp_path, capsys):
    """2-D --class all: --n per class, class-major; without --guidance the scale is 1 (the conditional model)."""
    x = _sample(runs["moons"], tmp_path / "p.npy", "--class", "all", "--n", "7", "--sampler", "ddim",
                "--sample-steps", "5")
    assert x.shape == (14, 2) and np.array_equal(np.load(tmp_path / "p_labels.npy"), [0] * 7 + [1] * 7)
    assert (tmp_path / "p.png").is_file() and "guidance s=1;" in capsys.readouterr().out
    y = _sample(runs["moons"], tmp_path / "q.npy", "--class", "all", "--n", "7", "--sampler", "ddim",
                "--sample-steps", "5", "--guidance", "1")
    assert np.array_equal(x, y)


# ---- eval --guidance ---------------------------------------------------------------------------------------

def test_eval_guidance_writes_a_row_per_scale_the_ceiling_and_the_picture(runs, tmp_path, capsys):
    js, png = tmp_path / "e.json", tmp_path / "trade.png"
    assert cli.main(["eval", "--ckpt", str(runs["moons"]), "--guidance", "3,0,1", "--n", "200", "--repeats", "2",
                     "--bpd-n", "0", "--json", str(js), "--plot", str(png)]) == 0
    res = json.loads(js.read_text())
    g = res["guidance"]
    assert [r["scale"] for r in g["rows"]] == [0.0, 1.0, 3.0] and g["classes"] == 2 and g["chance"] == 0.5
    assert g["ceiling"] >= 0.99                                  # moons are separated by ~10 noise widths
    by = {r["scale"]: r for r in g["rows"]}
    # s = 0 is the null class: chance against the requested labels, within 5 standard errors of 0.5 at n = 400
    assert abs(by[0.0]["accuracy"] - 0.5) <= 5 * np.sqrt(0.25 / 400)
    assert by[3.0]["accuracy"] >= 0.95 and by[1.0]["accuracy"] > by[0.0]["accuracy"]
    for r in g["rows"]:
        assert r["ratio_to_floor"] == pytest.approx(r["value"] / res["floor"]) and len(r["values"]) == 2
        assert r["accuracy"] == pytest.approx(np.mean(r["accuracies"])) and r["seconds_per_sample"] > 0
    assert by[3.0]["nfe"] == 2 * by[1.0]["nfe"] == 2 * by[0.0]["nfe"]
    assert png.is_file() and g["plot"] == str(png)
    out = capsys.readouterr().out
    assert "classifier-free guidance: 200 samples of 2 balanced classes" in out and "the ceiling" in out


@pytest.mark.parametrize("which,want", [("plain", 4), ("digits", 1)])
def test_eval_repeats_default_to_4_draws_for_points_and_1_for_images(runs, tmp_path, which, want):
    js = tmp_path / "e.json"
    assert cli.main(["eval", "--ckpt", str(runs[which]), "--n", "20", "--sampler", "ddim", "--sample-steps", "2",
                     "--bpd-n", "0", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["repeats"] == want and len(res["values"]) == want
