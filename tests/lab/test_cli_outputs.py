"""Where the commands write and read: one rule for every output (missing folders are created; the nearest folder
that exists must be writable; nothing on the way may be a file), checked before any work, with the flag and the
path in the message; and eval --data-dir, the folder the image datasets are read from (fake IDX files here: no
download).
"""
import gzip
import json
import os
import struct

import numpy as np
import pytest

from lab import cli, data

TINY = ["--steps", "3", "--save-every", "0", "--sample-every", "0", "--quiet", "--no-final-samples", "--T", "20"]


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "run"
    assert cli.main(["train", "--data", "moons", "--out", str(out), *TINY, "--hidden", "8", "--num-layers", "1"]) == 0
    return out / "ckpt.npz"


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command starts its work: reading a dataset or a checkpoint."""
    from lab import checkpoint

    def no(*a, **kw):
        raise AssertionError("the command started its work before refusing the output")
    monkeypatch.setattr(data, "load", no)
    monkeypatch.setattr(checkpoint, "load", no)


@pytest.mark.parametrize("argv, flag", [
    (["train", "--data", "moons", "--out", "{f}/run"], "--out"),
    (["sample", "--ckpt", "c.npz", "--out", "{f}/s.npy"], "--out"),
    (["eval", "--ckpt", "c.npz", "--json", "{f}/deeper/e.json"], "--json"),
    (["eval", "--ckpt", "c.npz", "--nfe", "5", "--plot", "{f}/q.png"], "--plot"),
    (["forward", "--out", "{f}/f.png"], "--out"),
    (["schedules", "--out", "{f}/s.png"], "--out"),
])
def test_an_output_under_a_regular_file_is_refused_before_any_work(tmp_path, capsys, no_work, argv, flag):
    f = tmp_path / "afile"
    f.write_text("a file, not a folder")
    argv = [a.replace("{f}", str(f)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} {f}/") and f"{f} is a file, not a folder" in err, err


def test_a_read_only_run_folder_is_refused_before_training(tmp_path, capsys, no_work):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions do not stop this user from writing")
        assert cli.main(["train", "--data", "moons", "--out", str(ro / "run"), *TINY]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {ro / 'run'}: {ro} is not writable"), err
    finally:
        ro.chmod(0o700)


def test_eval_json_into_missing_folders_creates_them(moons, tmp_path):
    js = tmp_path / "new" / "deeper" / "e.json"
    assert cli.main(["eval", "--ckpt", str(moons), "--n", "20", "--repeats", "1", "--bpd-n", "0",
                     "--json", str(js)]) == 0
    assert json.loads(js.read_text())["sampler"] == "dpm++2m"


def test_sample_into_missing_folders_creates_them_as_its_help_says(moons, tmp_path):
    out = tmp_path / "a" / "b" / "s.npy"
    assert cli.main(["sample", "--ckpt", str(moons), "--n", "4", "--out", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".png").is_file()
    import argparse
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("sample", "train", "eval"):   # the rule is said where the output flags are
        assert "missing folders on the way are created" in " ".join(sub.choices[command].format_help().split())


def test_an_output_that_names_a_folder_where_a_file_is_expected_is_refused(tmp_path, capsys, no_work):
    (tmp_path / "s.npy").mkdir()
    assert cli.main(["sample", "--ckpt", "c.npz", "--out", str(tmp_path / "s.npy")]) == 2
    assert f"--out {tmp_path / 's.npy'} is a folder; it must name a file" in capsys.readouterr().err


# ---- eval --data-dir ----------------------------------------------------------------------------------

def _idx(a):
    """The IDX encoding of a uint8 array (the MNIST file format)."""
    return struct.pack(">HBB", 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def _fake_mnist(folder, rng, n_train=40, n_test=12):
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_idx(rng.integers(0, 10, n, dtype=np.uint8))))


def test_eval_reads_the_dataset_from_data_dir_and_downloads_nothing(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"   # a 28x28 model (digits upsampled), judged against --data mnist
    assert cli.main(["train", "--data", "digits", "--image-size", "28", "--base-channels", "8", "--out", str(run),
                     *TINY]) == 0
    _fake_mnist(tmp_path / "dd" / "mnist", np.random.default_rng(0))
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "empty"))      # the default folder holds nothing
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "cache"))     # the feature classifier of the fake data

    def no_download(urls, dest, md5):
        raise AssertionError(f"tried to download {dest}")
    monkeypatch.setattr(data.downloads, "download", no_download)
    base = ["eval", "--ckpt", str(run / "ckpt.npz"), "--data", "mnist", "--n", "6", "--repeats", "1",
            "--bpd-n", "2", "--sampler", "ddim", "--sample-steps", "2"]
    js = tmp_path / "e.json"
    assert cli.main(base + ["--data-dir", str(tmp_path / "dd"), "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["data"] == "mnist" and res["bits_per_dim_n"] == 2 and np.isfinite(res["value"])
    capsys.readouterr()
    with pytest.raises(AssertionError, match="tried to download"):     # without it: the empty default folder
        cli.main(base)
