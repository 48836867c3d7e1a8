"""The shared CLI: forward / schedules / demo, the command registry, and errors without tracebacks."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lab import cli, plots
from reference.errors import InputError

P = plots.PANEL_PX


def _size(path):
    with Image.open(path) as im:
        return im.size


def test_forward_writes_the_picture(tmp_path, capsys):
    out = tmp_path / "f.png"
    assert cli.main(["forward", "--out", str(out), "--size", "16", "--frames", "3", "--T", "100"]) == 0
    assert _size(out) == (4 * P // 2, P // 2 + 60)            # x_0 plus 3 noise levels
    assert "t = 33, 66, 99" in capsys.readouterr().out


def test_forward_on_a_user_image(tmp_path):
    img = tmp_path / "gray.png"
    Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))).save(img)
    out = tmp_path / "sub" / "f.png"
    assert cli.main(["forward", "--image", str(img), "--out", str(out), "--size", "8", "--schedule", "cosine"]) == 0
    assert out.is_file()


def test_schedules_plots_and_prints_every_schedule(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert cli.main(["schedules", "--out", str(out), "--T", "200"]) == 0
    assert _size(out) == (3 * P, 3 * P // 2)
    text = capsys.readouterr().out
    for name in ("linear", "cosine", "quadratic", "sigmoid", "zero terminal SNR"):
        assert name in text


def test_demo_writes_its_pictures_and_runs_added_steps(tmp_path, monkeypatch):
    # the digits training step is exercised by test_demo_quick_trains_samples_and_evaluates
    import lab.commands.demo  # noqa: F401  (registers its steps now, not inside cli.main after the patch)
    monkeypatch.setattr(cli, "DEMO_STEPS", [s for s in cli.DEMO_STEPS if s[0] != "train"])
    cli.add_demo_step("extra", lambda args, B, d: [d / "extra.txt"] if (d / "extra.txt").write_text("x") else [])
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert {p.name for p in (tmp_path / "demo").iterdir()} == {"forward.png", "schedules.png", "extra.txt"}


@pytest.mark.parametrize("argv,needle", [
    (["forward"], "--out"),                                             # argparse: missing flag
    (["forward", "--out", "x.png", "--T", "ten"], "invalid int"),       # argparse: bad type
    (["forward", "--out", "x.png", "--T", "0"], "T (number of diffusion steps) must be >= 1"),
    (["forward", "--out", "x.jpg"], ".png"),
    (["forward", "--out", "x.png", "--image", "no/such/file.png"], "image file not found"),
    (["nonsense"], "invalid choice"),
])
def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and needle in err and "Traceback" not in err


def test_help_teaches_and_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "forward" in text and "schedules" in text and "noise" in text
    assert cli.main(["forward", "--help"]) == 0
    text = capsys.readouterr().out
    assert "sqrt(alpha_bar_t)" in text and "default: 1000" in text and "example" in text


def test_python_dash_m_reference_works_and_fails_cleanly(tmp_path):
    out = tmp_path / "f.png"
    ok = subprocess.run([sys.executable, "-m", "reference", "forward", "--out", str(out), "--size", "8"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and out.is_file(), ok.stderr
    bad = subprocess.run([sys.executable, "-m", "reference", "forward", "--out", str(out), "--image", "missing.png"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: image file not found")
    assert "Traceback" not in bad.stderr


def test_registry_adds_a_command(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    cli.add_command("hello", "say hello", lambda p: p.add_argument("--name", default="world"),
                    lambda args, B: print(f"hello {args.name} from {B.name}"))
    assert cli.main(["hello", "--name", "T"]) == 0
    assert capsys.readouterr().out.strip() == "hello T from reference"


def test_backend_modules_select_the_math():
    from reference import diffusion, schedules
    B = cli.backend_modules("reference")
    assert B.schedules is schedules and B.diffusion is diffusion
    assert B.to_numpy(B.from_numpy(np.ones(2))).tolist() == [1.0, 1.0]
    with pytest.raises(InputError, match="backend"):
        cli.backend_modules("jax")
    with pytest.raises(AttributeError):
        B.not_a_module


def test_torch_backend_draws_the_same_forward_picture(tmp_path):
    """The same command through torch_port's schedules and q_sample gives the same pixels (F3 on both sides)."""
    pytest.importorskip("torch")
    pytest.importorskip("torch_port.diffusion")
    argv = ["forward", "--size", "16", "--frames", "4", "--schedule", "cosine"]
    assert cli.main(argv + ["--out", str(tmp_path / "r.png")], backend="reference") == 0
    assert cli.main(argv + ["--out", str(tmp_path / "t.png")], backend="torch") == 0
    r, t = (np.asarray(Image.open(tmp_path / n)) for n in ("r.png", "t.png"))
    assert np.array_equal(r, t)


def test_demo_quick_trains_samples_and_evaluates(tmp_path, monkeypatch):
    """The whole demo pipeline end to end, shortened: train, sample with trajectory, eval."""
    import lab.commands.demo  # noqa: F401
    monkeypatch.setattr(cli, "DEMO_STEPS", [s for s in cli.DEMO_STEPS if s[0] == "train"])
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--steps", "5", "--quick"]) == 0
    run = tmp_path / "demo" / "digits"
    for name in ("ckpt.npz", "loss.png", "samples.npy", "samples.png",
                 "samples_trajectory.png", "samples_trajectory.gif", "eval.json"):
        assert (run / name).exists(), name
    import json

    res = json.loads((run / "eval.json").read_text())
    assert res["value"] > 0 and res["floor"] > 0 and res["n"] == 100
