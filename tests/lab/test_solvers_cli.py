"""The ODE samplers through the command line, both sides (issue 15's CLI): ``sample --sampler euler|heun|dpm++2m
--grid``, ``sample --invert``, ``eval --nfe``, the NFE printed, the late-start messages in the CLI's words
(issue 19 §2) and eval's default sampler (issue 19 §1).

One tiny moons run in float64 (T = 20, an MLP of width 16, 300 training steps), trained by the reference and
sampled by both sides: the same checkpoint and seed must give the same samples (TOL["solve64"]: a whole
solve NumPy vs torch in float64, tests/tolerances.py), for every new sampler.
"""
import json
import re

import numpy as np
import pytest

from lab import cli
from lab.backend import Backend
from lab.sampling import draw, load_trainer, ode_denoiser
from tolerances import TOL

torch = pytest.importorskip("torch")

# 300 steps (~2 s): enough that the network is not near-linear in x, so the ODE samplers really differ from
# each other (an untrained MLP makes Euler and DPM-Solver++ agree to 1e-6 and a test of which ran, blind)
TINY = ["--steps", "300", "--save-every", "0", "--log-every", "100", "--sample-every", "0", "--quiet",
        "--batch-size", "64", "--T", "20", "--hidden", "16", "--num-layers", "1", "--dtype", "float64",
        "--no-final-samples"]
SIDES = ("reference", "torch")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("solvers_cli") / "run"
    assert cli.main(["train", "--data", "moons", "--out", str(out), *TINY]) == 0
    return out / "ckpt.npz"


def _sample(ckpt, out, *flags, backend="reference"):
    dev = ["--device", "cpu"] if backend == "torch" else []
    assert cli.main(["sample", "--ckpt", str(ckpt), "--n", "40", "--out", str(out), *flags, *dev],
                    backend=backend) == 0
    return np.load(out)


@pytest.mark.parametrize("flags", [("--sampler", "euler", "--grid", "karras", "--sample-steps", "6"),
                                   ("--sampler", "heun", "--grid", "trailing", "--sample-steps", "4"),
                                   ("--sampler", "dpm++2m", "--grid", "leading", "--sample-steps", "5"),
                                   ("--sampler", "dpm++2m")])
def test_the_ode_samplers_give_the_same_samples_on_both_sides_for_one_checkpoint_and_seed(ckpt, tmp_path, flags):
    ref = _sample(ckpt, tmp_path / "r.npy", *flags, "--seed", "3")
    port = _sample(ckpt, tmp_path / "t.npy", *flags, "--seed", "3", backend="torch")
    assert ref.shape == (40, 2) and np.all(np.isfinite(ref))
    # float64 solves agree to TOL["solve64"] (next test); written as float32 they may differ by one rounding
    ulp = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(port, ref, rtol=ulp, atol=ulp)


def test_the_draws_are_float64_solves_before_the_file_casts_them(ckpt):
    """The cross-test above compares float32 files; here the solves themselves, in float64, on both sides."""
    got = {}
    for side in SIDES:
        B = Backend(side)
        trainer, _ = load_trainer(B, ckpt, **({"device": "cpu"} if side == "torch" else {}))
        got[side] = draw(B, trainer, 30, 5, "dpm++2m", 6, grid="trailing")
    assert got["reference"].dtype == np.float64
    np.testing.assert_allclose(got["torch"], got["reference"], rtol=TOL["solve64"], atol=TOL["solve64"])


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_euler_on_a_grid_is_ddim_with_that_spacing_through_the_cli(ckpt, tmp_path, spacing):
    # (K7) DDIM with eta 0 is the ODE's Euler step: the same samples, to float64 rounding
    a = _sample(ckpt, tmp_path / "e.npy", "--sampler", "euler", "--grid", spacing, "--sample-steps", "7")
    b = _sample(ckpt, tmp_path / "d.npy", "--sampler", "ddim", "--spacing", spacing, "--sample-steps", "7")
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)   # float32 files of float64 solves


@pytest.mark.parametrize("flags, nfe", [(("--sampler", "heun", "--sample-steps", "4"), 7),
                                        (("--sampler", "dpm++2m", "--sample-steps", "5"), 5),
                                        (("--sampler", "ddim", "--sample-steps", "5"), 5),
                                        (("--sampler", "dpm++2m"), 20)])
def test_sample_prints_the_nfe_it_used(ckpt, tmp_path, capsys, flags, nfe):
    _sample(ckpt, tmp_path / "s.npy", *flags)
    assert f"NFE {nfe} per sample" in capsys.readouterr().out


def test_the_ode_trajectory_is_in_vp_variables_and_named_by_trained_steps(ckpt, tmp_path):
    B = Backend("reference")
    trainer, _ = load_trainer(B, ckpt)
    _, traj = draw(B, trainer, 25, 2, "heun", 4, grid="karras", record=True)
    x_T = np.random.default_rng(2).standard_normal((25, 2))
    assert traj[0][0] == 19 and all(isinstance(t, int) for t, _, _ in traj)
    assert [t for t, _, _ in traj] == sorted({t for t, _, _ in traj}, reverse=True)   # one frame per step
    np.testing.assert_allclose(traj[0][1], x_T, rtol=1e-12)   # x_t at the first step is x_T itself (VP)
    out = tmp_path / "s.npy"
    _sample(ckpt, out, "--sampler", "dpm++2m", "--sample-steps", "5", "--trajectory")
    for name in ("s_trajectory.png", "s_trajectory.gif"):
        assert (tmp_path / name).is_file()


def test_invert_writes_latents_reconstruction_and_picture_that_agree_on_both_sides(ckpt, tmp_path, capsys):
    x0 = np.random.default_rng(0).standard_normal((30, 2)) * 0.5
    np.save(tmp_path / "x.npy", x0)
    res = {}
    for side in SIDES:
        out = tmp_path / side / "z.npy"
        dev = ["--device", "cpu"] if side == "torch" else []
        assert cli.main(["sample", "--ckpt", str(ckpt), "--out", str(out), "--invert", str(tmp_path / "x.npy"),
                         "--sample-steps", "10", "--grid", "linspace", *dev], backend=side) == 0
        printed = capsys.readouterr().out
        assert "NFE 9 to encode, 10 to decode" in printed
        rmse = float(re.search(r"RMSE ([\d.e+-]+)", printed).group(1))
        z, rec = np.load(out), np.load(out.with_name("z_reconstruction.npy"))
        assert out.with_suffix(".png").is_file() and z.shape == rec.shape == x0.shape
        np.testing.assert_allclose(rmse, np.sqrt(np.mean((rec - x0) ** 2)), rtol=1e-3)
        res[side] = z, rec
    np.testing.assert_allclose(res["torch"][0], res["reference"][0], rtol=1e-6, atol=1e-6)
    # the reconstruction is the Euler decoding of those latents down the same grid
    B = Backend("reference")
    trainer, _ = load_trainer(B, ckpt)
    sigmas = B.solvers.sigma_grid(trainer.sched, 10, "linspace")
    dec = B.solvers.sample(ode_denoiser(B, trainer), res["reference"][0].astype(np.float64), sigmas, "euler").x
    np.testing.assert_allclose(res["reference"][1], dec, rtol=1e-5, atol=1e-5)


def test_the_inversion_round_trip_error_falls_with_the_steps(ckpt):
    # (N6) decoding returns x_0 up to the solver's error, first order in the step
    from lab.inversion import encode_decode
    B = Backend("reference")
    trainer, _ = load_trainer(B, ckpt)
    x0 = np.random.default_rng(1).standard_normal((50, 2)) * 0.5
    errs = [encode_decode(B, trainer, x0, n, "linspace").rmse for n in (4, 8, 16)]
    assert errs[0] > errs[1] > errs[2], errs


def test_eval_nfe_sweeps_beside_the_ddpm_baseline_and_writes_the_picture(ckpt, tmp_path, capsys):
    js, png = tmp_path / "e.json", tmp_path / "q.png"
    assert cli.main(["eval", "--ckpt", str(ckpt), "--n", "40", "--sampler", "heun", "--nfe", "3,6", "--json", str(js),
                     "--plot", str(png), "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    res = json.loads(js.read_text())
    rows, base = res["sweep"]["rows"], res["sweep"]["baseline"]
    assert [(r["nfe_asked"], r["steps"], r["nfe"]) for r in rows] == [(3, 2, 3), (6, 3, 5)]   # heun: 2 steps - 1
    assert base["sampler"] == "ddpm" and base["nfe"] == 20 and len(base["values"]) == 2
    for r in rows:
        assert r["ratio_to_baseline"] == pytest.approx(r["value"] / base["value"])
        assert r["ratio_to_floor"] == pytest.approx(r["value"] / res["floor"]) and r["seconds_per_sample"] > 0
    assert png.is_file() and "ddpm, all 20 steps" in out and str(png) in out


def test_eval_nfe_without_the_baseline_and_the_default_sampler(ckpt, tmp_path):
    js = tmp_path / "e.json"
    assert cli.main(["eval", "--ckpt", str(ckpt), "--n", "30", "--nfe", "4", "--no-baseline", "--json", str(js),
                     "--plot", str(tmp_path / "q.png")]) == 0
    sw = json.loads(js.read_text())["sweep"]
    assert sw["baseline"] is None and sw["rows"][0]["ratio_to_baseline"] is None and sw["sampler"] == "dpm++2m"
    assert cli.main(["eval", "--ckpt", str(ckpt), "--n", "30", "--json", str(js)]) == 0
    res = json.loads(js.read_text())   # the default: dpm++2m, 20 steps (all of this T = 20), one network call each
    assert (res["sampler"], res["sample_steps"], res["nfe"]) == ("dpm++2m", 20, 20) and res["seconds_per_sample"] > 0


def test_invert_checks_image_data_for_model_space_in_the_cli_words(tmp_path):
    from lab.inversion import load_items
    from reference.errors import InputError
    ok = np.random.default_rng(0).uniform(-1, 1, (3, 1, 8, 8))
    np.save(tmp_path / "ok.npy", ok)
    np.testing.assert_array_equal(load_items(tmp_path / "ok.npy", (1, 8, 8)), ok)
    np.save(tmp_path / "u8.npy", np.full((3, 1, 8, 8), 200, dtype=np.uint8))
    with pytest.raises(InputError, match=r"values 200\.\.200, but images in model space lie in \[-1, 1\] "
                                         r"\(8-bit pixels\? convert with x / 127.5 - 1\)"):
        load_items(tmp_path / "u8.npy", (1, 8, 8))
    np.save(tmp_path / "rgb.npy", np.zeros((3, 3, 8, 8)))
    with pytest.raises(InputError, match=r"shape \(3, 3, 8, 8\), but this model's items need \(N, 1, 8, 8\)"):
        load_items(tmp_path / "rgb.npy", (1, 8, 8))


def test_a_zero_terminal_snr_checkpoint_runs_the_ode_on_the_leading_grid_and_refuses_a_start_at_t_minus_1(
        tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--data", "moons", "--out", str(out), "--zero-terminal-snr", "--prediction", "v",
                     "--steps", "2", "--save-every", "0", "--sample-every", "0", "--no-final-samples", "--quiet",
                     "--batch-size", "8", "--T", "20", "--hidden", "8", "--num-layers", "1"]) == 0
    base = ["sample", "--ckpt", str(out / "ckpt.npz"), "--n", "10", "--out", str(tmp_path / "s.npy"),
            "--sampler", "dpm++2m", "--sample-steps", "5"]
    assert cli.main(base) == 0 and "leading grid" in capsys.readouterr().out      # the default grid here
    assert cli.main(base + ["--grid", "trailing"]) == 2
    err = capsys.readouterr().err
    assert "--grid trailing with --sample-steps 5 starts at t=19" in err and "zero terminal SNR" in err
