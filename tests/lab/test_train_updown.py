"""`train --resblock-updown` (ADM's residual resampling, B15): the flag reaches cfg.model, the checkpoint records it,
and `sample` on the other side rebuilds the same network from it; old checkpoints (no key) keep DDPM's
transitions; refused by name where it does not apply."""
import numpy as np
import pytest

from lab import checkpoint
from lab.cli import main


def test_show_recipe_lists_resblock_updown_only_when_given(capsys):
    assert main(["train", "--data", "digits", "--resblock-updown", "--show-recipe"], backend="reference") == 0
    assert capsys.readouterr().out.split("model.resblock_updown")[1].splitlines()[0].strip() == "true"
    assert main(["train", "--data", "digits", "--show-recipe"], backend="reference") == 0
    assert "resblock_updown" not in capsys.readouterr().out


def test_a_resblock_updown_run_is_recorded_and_sampled_on_the_other_side(tmp_path, capsys):
    pytest.importorskip("torch")
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "2", "--batch-size", "4",
                 "--resblock-updown", "--sample-every", "0"], backend="torch") == 0
    ck = checkpoint.load(run / "ckpt.npz")
    assert ck.config["model"]["resblock_updown"] is True
    assert "down.0.downsample.conv1.weight" in ck.params and "down.0.downsample.weight" not in ck.params
    assert main(["sample", "--ckpt", str(run / "ckpt.npz"), "--n", "2", "--out", str(tmp_path / "s.npy"),
                 "--sampler", "ddim", "--sample-steps", "2"], backend="reference") == 0
    assert np.isfinite(np.load(tmp_path / "s.npy")).all()


@pytest.mark.parametrize("argv,words", [
    (["--data", "moons", "--resblock-updown"], "--resblock-updown does not apply to the MLP"),
    (["--data", "digits", "--channel-mults", "1", "--resblock-updown"], "needs two levels"),
])
def test_resblock_updown_is_refused_by_name_where_it_cannot_apply(argv, words, tmp_path, capsys):
    assert main(["train", *argv, "--out", str(tmp_path / "r"), "--steps", "1"], backend="reference") != 0
    assert words in capsys.readouterr().err
