"""`convert` where diffusers is not installed (the interop extra): it says how to install it. Runs with or without
diffusers (its absence is simulated); tests/lab/test_convert.py holds the conversions, which need it."""
import sys

from lab.cli import main


def test_convert_without_diffusers_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    (tmp_path / "c.npz").write_bytes(b"")  # --ckpt must exist (checked first); it is not read before the import
    for argv in (["--from-diffusers", str(tmp_path), "--out", str(tmp_path / "c.npz")],
                 ["--ckpt", str(tmp_path / "c.npz"), "--to-diffusers", str(tmp_path / "hf")]):
        assert main(["convert"] + argv, backend="reference") == 2
        err = capsys.readouterr().err
        assert "optional extra" in err and 'pip install -e ".[interop]"' in err, err


def test_convert_is_a_command_of_both_sides(capsys):
    for backend in ("reference", "torch"):
        assert main(["convert", "--help"], backend=backend) == 0
        assert "--from-diffusers DIR" in capsys.readouterr().out
