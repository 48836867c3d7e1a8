"""``sample`` and ``eval`` on a tiny moons run: every flag is checked before any work; the quality judge
(real sets, classifier, floor) is built once however many draws ``--repeats`` asks for, so
``sampling_seconds`` times sampling alone; 2-D samples get their trajectory pictures too."""
import json
import time

import pytest

from lab import cli
from lab.commands import eval as eval_cmd

TINY = ["--steps", "4", "--save-every", "0", "--log-every", "2", "--sample-every", "0", "--sample-steps", "2",
        "--quiet", "--batch-size", "16", "--T", "20", "--hidden", "16", "--num-layers", "1"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    assert cli.main(["train", "--data", "moons", "--out", str(out), *TINY]) == 0
    return out / "ckpt.npz"


@pytest.mark.parametrize("flag,value,needle", [
    ("--repeats", "0", "--repeats must be >= 1"),
    ("--n", "1", "--n must be >= 2"),
    ("--bpd-n", "-1", "--bpd-n must be >= 0"),
    ("--sample-steps", "0", "--sample-steps must be >= 1"),
])
def test_a_bad_flag_is_refused_before_the_checkpoint_is_even_read(tmp_path, capsys, flag, value, needle):
    code = cli.main(["eval", "--ckpt", str(tmp_path / "no_such.npz"), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "not found" not in err


def test_repeats_build_the_judge_once_and_time_only_the_sampling(ckpt, tmp_path, monkeypatch):
    built, pause = [], 0.5

    class SlowJudge(eval_cmd.Quality):
        def __init__(self, *a, **kw):
            built.append(1)
            time.sleep(pause)  # loading data and training a classifier take time; it must not count
            super().__init__(*a, **kw)

    monkeypatch.setattr(eval_cmd, "Quality", SlowJudge)
    out = tmp_path / "e.json"
    assert cli.main(["eval", "--ckpt", str(ckpt), "--n", "50", "--repeats", "3", "--sampler", "ddim",
                     "--sample-steps", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert built == [1] and len(res["values"]) == 3
    assert res["sampling_seconds"] < pause


def test_judging_a_model_against_another_dataset_says_so(ckpt, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert cli.main(["eval", "--ckpt", str(ckpt), "--data", "gaussians8", "--n", "50", "--sampler", "ddim",
                     "--sample-steps", "2", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "trained on 'moons'" in err and "judged against 'gaussians8'" in err
    res = json.loads(out.read_text())
    assert res["data"] == "gaussians8" and res["trained_on"] == "moons"


def test_sample_trajectory_on_2d_points_writes_the_strip_and_the_gif(ckpt, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert cli.main(["sample", "--ckpt", str(ckpt), "--n", "200", "--out", str(out), "--sampler", "ddim",
                     "--sample-steps", "5", "--trajectory"]) == 0
    for name in ("s.npy", "s.png", "s_trajectory.png", "s_trajectory.gif"):
        assert (tmp_path / name).is_file(), name
    assert "s_trajectory.gif" in capsys.readouterr().out


def test_eval_samples_2d_points_with_50_ode_steps_by_default(ckpt, tmp_path):
    """2-D points: dpm++2m with POINTS_ODE_STEPS = 50 when --sample-steps is omitted (20 bend gaussians8's modes
    into wedges), at most T; an explicit --sample-steps is kept."""
    run = tmp_path / "t100"
    assert cli.main(["train", "--data", "gaussians8", "--out", str(run), *TINY[:-8], "--T", "100", "--hidden", "16",
                     "--num-layers", "1", "--batch-size", "16"]) == 0
    for path, flags, want in ((run / "ckpt.npz", [], 50), (run / "ckpt.npz", ["--sample-steps", "20"], 20),
                              (ckpt, [], 20)):   # the fixture's T = 20 caps it
        out = tmp_path / "e.json"
        assert cli.main(["eval", "--ckpt", str(path), "--n", "50", "--repeats", "1", "--bpd-n", "0", *flags,
                         "--json", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["sampler"] == "dpm++2m" and res["sample_steps"] == want, (flags, res["sample_steps"])
