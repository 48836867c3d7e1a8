"""`train --norm scale-shift --num-heads H`: the flags reach cfg.model, the checkpoint records them, and `sample`
on the other side rebuilds the same network from it; refused by name where they do not apply."""
import numpy as np
import pytest

from lab import checkpoint
from lab.cli import main


def test_show_recipe_lists_the_adm_options_given(capsys):
    assert main(["train", "--data", "digits", "--norm", "scale-shift", "--num-heads", "2", "--show-recipe"],
                backend="reference") == 0
    out = capsys.readouterr().out
    assert '"scale-shift"' in out.split("model.norm")[1].splitlines()[0]
    assert out.split("model.num_heads")[1].splitlines()[0].strip() == "2"


def test_a_scale_shift_two_head_run_is_recorded_and_sampled_on_the_other_side(tmp_path, capsys):
    pytest.importorskip("torch")
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "2", "--batch-size", "4", "--norm",
                 "scale-shift", "--num-heads", "2", "--sample-every", "0"], backend="torch") == 0
    ck = checkpoint.load(run / "ckpt.npz")
    assert (ck.config["model"]["norm"], ck.config["model"]["num_heads"]) == ("scale-shift", 2)
    c = ck.config["model"]["base_channels"]
    assert ck.params["down.0.res.0.temb_proj.weight"].shape[0] == 2 * c  # (B13) [scale | shift]
    assert main(["sample", "--ckpt", str(run / "ckpt.npz"), "--n", "2", "--out", str(tmp_path / "s.npy"),
                 "--sampler", "ddim", "--sample-steps", "2"], backend="reference") == 0
    assert np.isfinite(np.load(tmp_path / "s.npy")).all()


@pytest.mark.parametrize("argv,words", [
    (["--data", "moons", "--norm", "scale-shift"], "--norm does not apply to the MLP"),
    (["--data", "digits", "--num-heads", "3"], "--num-heads 3 must divide the channels"),
])
def test_adm_flags_are_refused_by_name_where_they_cannot_apply(argv, words, tmp_path, capsys):
    assert main(["train", *argv, "--out", str(tmp_path / "r"), "--steps", "1"], backend="reference") != 0
    assert words in capsys.readouterr().err
