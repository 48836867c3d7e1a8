"""Every bad input gets a clear error: a non-zero exit, a message that names the problem, no traceback.

The catalogue runs through the CLI in-process (``lab.cli.main`` returns the exit code) and, for
a few cases, in a real subprocess (``python -m reference`` / ``python -m torch_port``) to prove that
no traceback reaches the user. The API-level cases run on both sides (reference and torch_port).
"""
import shutil
import zipfile
import sys

import numpy as np
import pytest

from lab import checkpoint, cli
from reference.errors import InputError
from reliability_runs import run

torch = pytest.importorskip("torch")

COMMON = ["--steps", "20", "--save-every", "10", "--log-every", "10", "--sample-every", "0", "--sample-steps", "2",
          "--quiet", "--batch-size", "16", "--T", "50"]
TINY = COMMON + ["--hidden", "16", "--num-layers", "1"]          # the MLP of the 2-D sets


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny moons run per side: run/ckpt.npz (reference) and torch_run/ckpt.npz."""
    root = tmp_path_factory.mktemp("trained")
    assert cli.main(["train", "--data", "moons", "--out", str(root / "run"), *TINY]) == 0
    assert cli.main(["train", "--data", "moons", "--out", str(root / "torch_run"), *TINY, "--device", "cpu"],
                    backend="torch") == 0
    return root


@pytest.fixture
def files(tmp_path, trained):
    """Paths the cases refer to as {name}: copies of the runs and broken files of every kind."""
    shutil.copytree(trained / "run", tmp_path / "run")
    shutil.copytree(trained / "torch_run", tmp_path / "torch_run")
    raw = (tmp_path / "run" / "ckpt.npz").read_bytes()
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "ckpt.npz").write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    # a bit error inside a member's data: the middle of the largest member (a byte at a fixed fraction of the file
    # can land in a local header's zip64 extra field, which readers ignore, and then nothing is corrupt)
    with zipfile.ZipFile(tmp_path / "run" / "ckpt.npz") as zf:
        big = max(zf.infolist(), key=lambda i: i.compress_size)
    flipped[big.header_offset + 100 + big.compress_size // 2] ^= 0xFF
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "ckpt.npz").write_bytes(bytes(flipped))
    (tmp_path / "garbage.npz").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "empty").mkdir()
    (tmp_path / "badimages").mkdir()
    (tmp_path / "badimages" / "x.png").write_bytes(b"not a png at all")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "afile").write_text("a file, not a folder")
    np.save(tmp_path / "points.npy", np.zeros((5, 2)))                 # data for sample --invert
    np.save(tmp_path / "points3.npy", np.zeros((5, 3)))
    np.save(tmp_path / "point.npy", np.zeros(2))
    np.save(tmp_path / "nanpoints.npy", np.full((5, 2), np.nan))
    (tmp_path / "garbage.npy").write_bytes(np.random.default_rng(1).bytes(300))
    ck = checkpoint.load(tmp_path / "run" / "ckpt.npz")               # params of hidden 16, config says 32
    cfg = dict(ck.config, model=dict(ck.config["model"], hidden=32))
    (tmp_path / "wrongarch").mkdir()
    checkpoint.save(tmp_path / "wrongarch" / "ckpt.npz", ck.params, ema=ck.ema, opt_state=ck.opt_state,
                    config=cfg, step=ck.step, rng_state=ck.rng_state, extra=ck.extra)
    (tmp_path / "weightsonly").mkdir()                                # a checkpoint with no training state
    checkpoint.save(tmp_path / "weightsonly" / "ckpt.npz", ck.params, config=ck.config, step=ck.step,
                    extra=ck.extra)
    return tmp_path


def _train(*extra, data="moons", out="{tmp}/new"):
    return ["train", "--data", data, "--out", out, *(TINY if data in ("moons", "swissroll") else COMMON), *extra]


def _sample(*extra):
    return ["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--out", "{tmp}/s.npy", *extra]


def _invert(*extra):
    return ["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--out", "{tmp}/z.npy", "--invert", *extra]


def _eval(*extra):
    return ["eval", "--ckpt", "{tmp}/run/ckpt.npz", *extra]


# (argv with {placeholders}, a phrase the message must contain). Exit code 2 for all of these.
CLI_CASES = {
    # names
    "unknown dataset": (_train(data="moonz"), "unknown dataset"),
    "unknown schedule": (_train("--schedule", "cosin"), "invalid choice: 'cosin'"),
    "unknown prediction": (_train("--prediction", "noise"), "invalid choice: 'noise'"),
    "unknown weighting": (_train("--weighting", "p2"), "invalid choice: 'p2'"),
    "unknown command": (["trian"], "invalid choice: 'trian'"),
    "no command": ([], "required"),
    "unknown flag": (_train("--lerning-rate", "1"), "unrecognized arguments: --lerning-rate"),
    "missing --out": (["train", "--data", "moons"], "--out"),
    # numbers
    "T zero": (_train("--T", "0"), "--T must be a positive integer"),
    "T not a number": (_train("--T", "ten"), "invalid int value: 'ten'"),
    "negative steps": (_train("--steps", "-5"), "--steps must be a positive integer"),
    "zero batch": (_train("--batch-size", "0"), "--batch-size must be a positive integer"),
    "lr zero": (_train("--lr", "0"), "--lr must be > 0"),
    "lr nan": (_train("--lr", "nan"), "--lr must be > 0"),
    "lr inf": (_train("--lr", "inf"), "--lr must be a finite number"),
    "ema decay 1.5": (_train("--ema-decay", "1.5"), "--ema-decay must lie in [0, 1)"),
    "negative grad clip": (_train("--grad-clip", "-1"), "--grad-clip must be a finite number >= 0"),
    "negative weight decay": (_train("--weight-decay", "-0.1"), "--weight-decay must be a finite number >= 0"),
    "negative n-data": (_train("--n-data", "-5"), "--n-data: must be a positive integer"),
    "zero sample steps": (_train("--sample-steps", "0"), "--sample-steps: must be a positive integer"),
    "zero hidden width": (_train("--hidden", "0"), "--hidden: must be a positive integer"),
    "bad channel mults": (_train("--channel-mults", "1,x", data="digits"), "comma-separated positive integers"),
    "zero image size": (_train("--image-size", "0", data="digits"), "--image-size: must be a positive integer"),
    "UNet flag on 2-D data": (_train("--base-channels", "8"), "does not apply to the MLP"),
    "zero terminal SNR with eps": (_train("--zero-terminal-snr"), "needs --prediction v or x0"),
    "cuda flag on the reference": (_train("--device", "cuda"), "torch_port options"),
    # data
    "empty data folder": (_train(data="folder:{tmp}/empty"), "no images"),
    "folder without a path": (_train(data="folder:"), "needs a path"),
    "missing data folder": (_train(data="folder:{tmp}/nothere"), "image folder not found"),
    "unreadable image in folder": (_train(data="folder:{tmp}/badimages"), "cannot read image"),
    # the run folder and its checkpoint
    "--out is a file": (_train(out="{tmp}/afile"), "is a file"),
    "resume without checkpoint": (_train("--resume"), "no checkpoint"),
    "existing run without --resume": (_train(out="{tmp}/run"), "already exists"),
    "resume with another T": (_train("--resume", "--T", "500", out="{tmp}/run"), "checkpoint has T=50 but --T 500"),
    "resume with another width": (_train("--resume", "--hidden", "64", out="{tmp}/run"),
                                  "checkpoint has hidden=16 but --hidden 64"),
    "resume with another schedule": (_train("--resume", "--schedule", "linear", out="{tmp}/run"),
                                     "checkpoint has schedule=cosine but --schedule linear"),
    "resume on other data": (_train("--resume", data="swissroll", out="{tmp}/run"), "trained on 'moons'"),
    "resume truncated checkpoint": (_train("--resume", out="{tmp}/truncated"), "truncated or corrupt"),
    "resume corrupt checkpoint": (_train("--resume", out="{tmp}/corrupt"), "truncated or corrupt"),
    "resume other backend's checkpoint": (_train("--resume", out="{tmp}/torch_run"), "written by the torch backend"),
    "resume weights-only checkpoint": (_train("--resume", out="{tmp}/weightsonly"), "cannot be resumed"),
    # forward
    "forward unreadable image": (["forward", "--image", "{tmp}/bad.png", "--out", "{tmp}/f.png"], "cannot read image"),
    "forward missing image": (["forward", "--image", "{tmp}/no.png", "--out", "{tmp}/f.png"], "image file not found"),
    "forward not png": (["forward", "--out", "{tmp}/f.jpg"], "must name a .png"),
    "forward T zero": (["forward", "--out", "{tmp}/f.png", "--T", "0"], "must be >= 1"),
    "forward zero frames": (["forward", "--out", "{tmp}/f.png", "--frames", "0"], "--frames must be >= 1"),
    # sample
    "sample truncated checkpoint": (["sample", "--ckpt", "{tmp}/truncated/ckpt.npz", "--out", "{tmp}/s.npy"],
                                    "truncated or corrupt"),
    "sample garbage checkpoint": (["sample", "--ckpt", "{tmp}/garbage.npz", "--out", "{tmp}/s.npy"],
                                  "not a valid .npz"),
    "sample missing checkpoint": (["sample", "--ckpt", "{tmp}/no.npz", "--out", "{tmp}/s.npy"], "not found"),
    "sample folder as checkpoint": (["sample", "--ckpt", "{tmp}/run", "--out", "{tmp}/s.npy"], "is a folder"),
    "sample architecture mismatch": (["sample", "--ckpt", "{tmp}/wrongarch/ckpt.npz", "--out", "{tmp}/s.npy"],
                                     "the model expects"),
    "sample zero n": (["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--n", "0", "--out", "{tmp}/s.npy"],
                      "--n must be >= 1"),
    "sample not npy": (["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--out", "{tmp}/s.txt"], "must name a .npy"),
    "sample negative steps": (["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--out", "{tmp}/s.npy",
                               "--sample-steps", "-3"], "--sample-steps must be >= 1"),
    "sample bad eta": (["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--out", "{tmp}/s.npy", "--sampler", "ddim",
                        "--sample-steps", "2", "--eta", "-1"], "eta must be"),
    "sample unknown sampler": (["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--out", "{tmp}/s.npy", "--sampler", "eular"],
                               "invalid choice: 'eular'"),
    "sample more steps than T": (["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--out", "{tmp}/s.npy",
                                  "--sample-steps", "5000"], "--sample-steps 5000 must lie in 1..T=50"),
    "sample eta with ddpm": (["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--out", "{tmp}/s.npy", "--eta", "0.5"],
                             "--eta applies to --sampler ddim/ancestral/dpm++2m-sde only"),
    "sample variance with ddim": (["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--out", "{tmp}/s.npy", "--sampler",
                                   "ddim", "--variance", "fixed_large"], "--variance applies to --sampler ddpm only"),
    "eval more steps than T": (["eval", "--ckpt", "{tmp}/run/ckpt.npz", "--sample-steps", "5000"],
                               "--sample-steps 5000 must lie in 1..T=50"),
    "train image size the UNet cannot halve": (_train("--image-size", "5", data="digits"),
                                               "must be divisible by 2; use --image-size 6"),
    "train attention flags per level": (_train("--attention", "1", data="digits"), "has 2 levels"),
    "train groups not dividing": (_train("--groups", "5", data="digits"), "--groups 5 must divide"),
    "sample into a file's folder": (["sample", "--ckpt", "{tmp}/run/ckpt.npz", "--out", "{tmp}/afile/s.npy",
                                     "--sample-steps", "2"], "afile"),
    # eval
    "eval truncated checkpoint": (["eval", "--ckpt", "{tmp}/truncated/ckpt.npz"], "truncated or corrupt"),
    "eval unknown dataset": (["eval", "--ckpt", "{tmp}/run/ckpt.npz", "--data", "moonz"], "unknown dataset"),
    "eval data of another shape": (["eval", "--ckpt", "{tmp}/run/ckpt.npz", "--data", "digits"],
                                   "do not have the shape"),
    # the ODE samplers (issue 15): flags a sampler would ignore, too few steps, bad grids
    "sample grid with ddpm": (_sample("--sampler", "ddpm", "--grid", "karras"), "--grid applies to the ODE and SDE samplers"),
    "sample spacing with an ODE sampler": (_sample("--sampler", "euler", "--spacing", "trailing"),
                                           "--spacing applies to --sampler ddpm/ddim"),
    "sample unknown grid": (_sample("--sampler", "euler", "--grid", "karas"), "invalid choice: 'karas'"),
    "sample too few steps for dpm++2m": (_sample("--sampler", "dpm++2m", "--sample-steps", "2"),
                                         "--sample-steps 2 is too few for --sampler dpm++2m"),
    "sample too few steps for heun": (_sample("--sampler", "heun", "--sample-steps", "1"),
                                      "--sample-steps 1 is too few for --sampler heun"),
    "sample eta with an ODE sampler": (_sample("--sampler", "dpm++2m", "--eta", "0.5"),
                                       "--eta applies to --sampler ddim/ancestral/dpm++2m-sde only"),
    "sample ODE steps above T": (_sample("--sampler", "heun", "--sample-steps", "51"),
                                 "--sample-steps 51 must lie in 1..T=50"),
    # sample --invert: the data file and the flags that would be ignored
    "invert missing file": (_invert("{tmp}/no.npy"), "file not found"),
    "invert not npy": (_invert("{tmp}/bad.png"), "--invert must name a .npy file"),
    "invert unreadable npy": (_invert("{tmp}/garbage.npy"), "not a readable .npy array"),
    "invert wrong shape": (_invert("{tmp}/points3.npy"), "shape (5, 3), but this model's items need (N, 2)"),
    "invert one item without a batch axis": (_invert("{tmp}/point.npy"), "add a leading axis of 1"),
    "invert non-finite data": (_invert("{tmp}/nanpoints.npy"), "holds 10 non-finite value(s)"),
    "invert with heun": (_invert("{tmp}/points.npy", "--sampler", "heun"),
                         "--invert runs the Euler step of the ODE forwards"),
    "invert with ddpm": (_invert("{tmp}/points.npy", "--sampler", "ddpm"), "--sampler ddpm cannot be run backwards"),
    "invert with --n": (_invert("{tmp}/points.npy", "--n", "3"), "--n does not apply with --invert"),
    "invert with --seed": (_invert("{tmp}/points.npy", "--seed", "3"), "--seed does not apply with --invert"),
    "invert with --trajectory": (_invert("{tmp}/points.npy", "--trajectory"), "--trajectory draws a sampling run"),
    "invert euler with --spacing": (_invert("{tmp}/points.npy", "--spacing", "trailing"),
                                    "with --sampler euler use --grid trailing"),
    # eval --nfe
    "eval unknown sampler": (_eval("--sampler", "eular"), "invalid choice: 'eular'"),
    "eval nfe too small for a second-order sampler": (_eval("--nfe", "2,10"),
                                                      "--nfe 2 is too small for the second-order --sampler dpm++2m"),
    "eval nfe not numbers": (_eval("--nfe", "five"), "--nfe must be a comma-separated list of integers"),
    "eval nfe zero": (_eval("--nfe", "0,5"), "--nfe needs network-evaluation counts >= 1"),
    "eval nfe with sample steps": (_eval("--nfe", "5", "--sample-steps", "5"), "--nfe sets the steps of each run"),
    "eval nfe above T": (_eval("--nfe", "120", "--sampler", "heun", "--bpd-n", "0"),
                         "--nfe 120 needs 60 steps of --sampler heun, more than the checkpoint's T=50"),
    "eval plot without nfe": (_eval("--plot", "{tmp}/q.png"), "--plot applies with --nfe only"),
    "eval plot not png": (_eval("--nfe", "5", "--plot", "{tmp}/q.jpg"), "--plot must name a .png file"),
    "eval spacing with an ODE sampler": (_eval("--spacing", "trailing"), "--spacing applies to --sampler ddpm/ddim"),
    "eval grid with ddim": (_eval("--sampler", "ddim", "--grid", "karras"), "--grid applies to the ODE and SDE samplers"),
}


def _fill(argv, tmp):
    return [a.replace("{tmp}", str(tmp)) for a in argv]


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_exits_2_naming_the_problem_without_traceback(case, files, capsys):
    argv, needle = CLI_CASES[case]
    code = cli.main(_fill(argv, files))
    err = capsys.readouterr().err
    assert code == 2, f"{case}: exit code {code}, stderr:\n{err}"
    assert needle in err, f"{case}: {needle!r} not in:\n{err}"
    assert "Traceback" not in err


def test_failed_resumes_leave_the_run_untouched(files, capsys):
    before = {p.name: p.read_bytes() for p in (files / "run").iterdir()}
    for case in ("resume with another T", "resume with another width", "resume on other data"):
        assert cli.main(_fill(CLI_CASES[case][0], files)) == 2
    assert {p.name: p.read_bytes() for p in (files / "run").iterdir()} == before


TORCH_CASES = {
    "cuda without a GPU": (_train("--device", "cuda"), "no CUDA device"),
    "resume the reference's checkpoint": (_train("--resume", out="{tmp}/run"), "written by the reference backend"),
    "resume with another T": (_train("--resume", "--T", "500", out="{tmp}/torch_run"), "checkpoint has T=50"),
    "sample truncated checkpoint": (["sample", "--ckpt", "{tmp}/truncated/ckpt.npz", "--out", "{tmp}/s.npy"],
                                    "truncated or corrupt"),
    "sample architecture mismatch": (["sample", "--ckpt", "{tmp}/wrongarch/ckpt.npz", "--out", "{tmp}/s.npy",
                                      "--device", "cpu"], "wrongarch"),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_torch_cli_bad_input_exits_2_naming_the_problem(case, files, capsys):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv, needle = TORCH_CASES[case]
    code = cli.main(_fill(argv, files), backend="torch")
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, f"{case}: exit {code}:\n{err}"


@pytest.mark.parametrize("module, case", [("reference", "resume with another T"),
                                          ("reference", "forward unreadable image"),
                                          ("reference", "sample truncated checkpoint"),
                                          ("torch_port", "T zero")])
def test_subprocess_prints_one_error_line_and_no_traceback(module, case, files):
    argv, needle = CLI_CASES[case]
    rc, out, err = run([sys.executable, "-m", module, *_fill(argv, files)])
    assert rc == 2 and needle in err and "Traceback" not in err, err
    assert err.strip().startswith("error:") or err.strip().startswith("warning:"), err


# ---- the API, both sides ------------------------------------------------------------------------------

def _sides():
    import reference.diffusion as rd
    import reference.samplers as rsa
    import reference.schedules as rs
    import torch_port.diffusion as td
    import torch_port.samplers as tsa
    import torch_port.schedules as ts
    return {"reference": (rs, rd, rsa, np.asarray), "torch": (ts, td, tsa, torch.as_tensor)}


def _api_cases(S, D, SA, arr):
    sched = S.Schedule(S.make_betas("cosine", 10))
    x, eps = arr(np.zeros((3, 2), np.float32)), arr(np.zeros((3, 2), np.float32))
    nan_x = arr(np.array([[np.nan, 0.0]] * 3, np.float32))
    return {
        "unknown schedule": (lambda: S.make_betas("cosin", 10), "unknown schedule 'cosin'"),
        "T zero": (lambda: S.make_betas("linear", 0), "must be >= 1"),
        "beta above 1": (lambda: S.Schedule(np.array([0.1, 1.5])), "(0, 1]"),
        "beta zero": (lambda: S.Schedule(np.array([0.0, 0.1])), "(0, 1]"),
        "beta NaN": (lambda: S.Schedule(np.array([np.nan, 0.1])), "finite"),
        "betas 2-D": (lambda: S.Schedule(np.full((2, 2), 0.1)), "1-D"),
        "t = T": (lambda: D.q_sample(sched, x, 10, eps), "t out of range: got 10, valid indices are 0..9"),
        "t = -1": (lambda: D.q_sample(sched, x, -1, eps), "t out of range: got -1"),
        "t array out of range": (lambda: D.q_sample(sched, x, arr(np.array([0, 1, 10])), eps), "out of range"),
        "t wrong length": (lambda: D.q_sample(sched, x, arr(np.array([0, 1, 2, 3])), eps), "batch has N=3"),
        "t 2-D": (lambda: D.q_sample(sched, x, arr(np.zeros((3, 1), np.int64)), eps), "shape (N,)"),
        "t float": (lambda: D.q_sample(sched, x, 1.5, eps), "integer time index"),
        "t float array": (lambda: D.q_sample(sched, x, arr(np.array([0.5, 1.0, 2.0])), eps), "integer time index"),
        "t bool": (lambda: D.q_sample(sched, x, True, eps), "integer time index"),
        "x0 NaN": (lambda: D.q_sample(sched, nan_x, 0, eps), "x0 holds 3 non-finite"),
        "xt NaN in posterior": (lambda: D.q_posterior(sched, x, nan_x, 1), "xt holds 3 non-finite"),
        "eps of another shape": (lambda: D.q_sample(sched, x, 0, arr(np.zeros((3, 3), np.float32))), "shape mismatch"),
        "x0 of strings": (lambda: D.q_sample(sched, np.array([["a", "b"]] * 3), 0, eps), "numeric"),
        "x0 scalar": (lambda: D.q_sample(sched, arr(np.float32(1)), 0, arr(np.float32(1))), "batch"),
        "unknown prediction": (lambda: D.predict_x0(sched, x, 0, eps, "noise"), "unknown prediction 'noise'"),
        "zero sampler steps": (lambda: SA.timesteps(10, 0, "leading"), "sampling steps"),
        "unknown spacing": (lambda: SA.timesteps(10, 5, "uniform"), "unknown"),
    }


API_NAMES = list(_api_cases(*_sides()["reference"]))


@pytest.mark.filterwarnings("ignore::UserWarning")          # a T=10 schedule warns about its prior
@pytest.mark.parametrize("side", ["reference", "torch"])
@pytest.mark.parametrize("case", API_NAMES)
def test_api_bad_input_raises_input_error_naming_it(side, case):
    call, needle = _api_cases(*_sides()[side])[case]
    with pytest.raises(InputError) as e:
        call()
    assert needle in str(e.value), f"{side}/{case}: {e.value}"


def _flip_positions(n, every_byte):
    if every_byte:
        return range(n)
    # the zip's structure lives in the first local header and the central directory at the end
    return sorted(set(range(0, n, max(1, n // 150))) | set(range(40)) | set(range(max(0, n - 400), n)))


@pytest.mark.parametrize("every_byte", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_checkpoint_bit_errors_never_load_silently_wrong(tmp_path, trained, every_byte):
    """Flip bytes all over a real checkpoint: every load either fails with InputError or returns the
    original arrays (a flip in a field that zip does not check); never another exception, never wrong data."""
    ref = checkpoint.load(trained / "run" / "ckpt.npz")
    raw = (trained / "run" / "ckpt.npz").read_bytes()
    path = tmp_path / "ckpt.npz"
    for pos in _flip_positions(len(raw), every_byte):
        bad = bytearray(raw)
        bad[pos] ^= 0xA5
        path.write_bytes(bytes(bad))
        try:
            got = checkpoint.load(path)
        except InputError:
            continue
        for group in ("params", "ema", "opt_state"):
            for k, v in getattr(ref, group).items():
                assert np.array_equal(getattr(got, group)[k], v), f"flip at byte {pos} changed {group}/{k} silently"
        assert got.step == ref.step and got.config == ref.config, f"flip at byte {pos}"
