"""A real training checkpoint holds everything a run needs (config, step, params, EMA (O2), AdamW state
(O1), every RNG stream) and is written atomically: temp file in the same folder, flush + fsync, rename.

The file is read with plain ``np.load`` here, not with lab.checkpoint, and the RNG states are
checked against generators advanced independently by the draws a run makes.
"""
import json
import os

import numpy as np
import pytest

from lab import checkpoint, cli, runner
from lab import data as datasets
from lab.config import TrainConfig, make_config
from reference.train import Trainer

train = runner.train  # the reference backend by default

torch = pytest.importorskip("torch")

SMALL = dict(steps=30, save_every=10, log_every=10, sample_every=0, sample_steps=2, batch_size=16, T=50, seed=11,
             model=dict(hidden=16, num_layers=1))


def _raw(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(str(arrays.pop("meta")))


def test_O1_O2_reference_checkpoint_holds_config_step_params_ema_optimiser_and_rng(tmp_path):
    cfg = make_config("moons", **SMALL)
    train(cfg, tmp_path, progress=False)
    arrays, meta = _raw(tmp_path / "ckpt.npz")
    assert meta["format"] == checkpoint.FORMAT and meta["step"] == 30
    assert TrainConfig.from_dict({**meta["config"], "model": meta["config"]["model"]}).to_json() == cfg.to_json()
    assert meta["extra"] == {"backend": "reference", "item_shape": [2], "process": "chain"}

    names = Trainer(cfg, (2,)).model.params                    # a fresh model: the names and shapes to expect
    for group in ("params", "ema", "opt/m", "opt/v"):
        got = {k[len(group) + 1:]: v for k, v in arrays.items() if k.startswith(group + "/")}
        assert set(got) == set(names), group
        assert all(got[k].shape == names[k].shape and got[k].dtype == np.float32 for k in names), group
    assert int(arrays["opt/step"]) == 30                       # (O1) bias corrections need the update count
    moved = [k for k in names if not np.array_equal(arrays[f"params/{k}"], arrays[f"ema/{k}"])]
    assert moved == list(names)                                # (O2) the EMA lags the weights (decay < 1)
    assert all(np.isfinite(v).all() for v in arrays.values())

    # RNG streams: the data order draws one batch of indices per step from default_rng([seed, 0]);
    # t and eps come from default_rng([seed, 1]), t then eps, per step (reference/train.py)
    n_data = len(datasets.load("moons", seed=cfg.seed))
    data_rng, noise_rng = np.random.default_rng([cfg.seed, 0]), np.random.default_rng([cfg.seed, 1])
    for _ in range(30):
        data_rng.integers(0, n_data, size=cfg.batch_size)
        noise_rng.integers(0, cfg.T, size=cfg.batch_size)
        noise_rng.standard_normal((cfg.batch_size, 2))
    assert meta["rng_state"]["data"] == json.loads(json.dumps(data_rng.bit_generator.state))
    assert meta["rng_state"]["noise"] == json.loads(json.dumps(noise_rng.bit_generator.state))


def test_torch_checkpoint_has_the_same_layout_and_the_same_data_stream(tmp_path):
    """One file format for both sides. The port seeds its noise per update from (seed, rank, step), so its
    only stored stream is the data order, which the shared runner draws identically on both sides."""
    cfg = make_config("moons", **SMALL)
    train(cfg, tmp_path / "t", backend="torch", progress=False, device="cpu")
    train(cfg, tmp_path / "r", progress=False)
    (ta, tm), (ra, rm) = _raw(tmp_path / "t" / "ckpt.npz"), _raw(tmp_path / "r" / "ckpt.npz")
    assert {k: (v.shape, v.dtype) for k, v in ta.items()} == {k: (v.shape, v.dtype) for k, v in ra.items()}
    assert tm["step"] == rm["step"] == 30 and tm["config"] == rm["config"]
    assert tm["extra"] == {"backend": "torch", "item_shape": [2], "process": "chain"}
    assert tm["rng_state"]["data"] == rm["rng_state"]["data"]
    assert int(ta["opt/step"]) == 30 and all(np.isfinite(v).all() for v in ta.values())


def test_saves_go_through_an_fsynced_temp_file_renamed_over_the_checkpoint(tmp_path, monkeypatch):
    events, real_replace, real_fsync = [], os.replace, os.fsync

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    train(make_config("moons", **SMALL), tmp_path, progress=False)
    target = str(tmp_path / "ckpt.npz")
    replaces = [e for e in events if e[0] == "replace"]
    assert len(replaces) == 3 and all(e[2] == target for e in replaces)     # steps 10, 20 and the end
    for e in replaces:
        src = e[1]
        assert os.path.dirname(src) == str(tmp_path) and src.endswith(".tmp")   # same folder: rename is atomic
        i = events.index(e)
        assert events[i - 1] == ("fsync", src)                   # the data is on disk before the rename
        assert events[i + 1][0] == "fsync" and events[i + 1][1] == str(tmp_path)   # and the rename too
    mode = os.stat(target).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask                                # like any file the user writes, not 0600


def test_disk_full_during_a_save_keeps_the_previous_checkpoint_and_resume_is_exact(tmp_path, monkeypatch, capsys):
    argv = ["train", "--data", "moons", "--steps", "30", "--save-every", "10", "--log-every", "10",
            "--sample-every", "0", "--sample-steps", "2", "--quiet", "--hidden", "16", "--num-layers", "1",
            "--batch-size", "16", "--T", "50"]
    assert cli.main(argv + ["--out", str(tmp_path / "whole")]) == 0
    real_savez, calls = np.savez, []

    def savez_then_disk_full(f, **arrays):
        calls.append(1)
        real_savez(f, **arrays)
        if len(calls) == 2:                                      # the save at step 20 dies half-way
            f.truncate(1000)
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.np, "savez", savez_then_disk_full)
    broken = tmp_path / "broken"
    code = cli.main(argv + ["--out", str(broken)])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    assert checkpoint.load(broken / "ckpt.npz").step == 10
    assert sorted(p.name for p in broken.iterdir() if p.name.startswith(".")) == []   # no temp file left
    monkeypatch.undo()
    assert cli.main(argv + ["--out", str(broken), "--resume"]) == 0
    a, b = checkpoint.load(broken / "ckpt.npz"), checkpoint.load(tmp_path / "whole" / "ckpt.npz")
    assert a.step == b.step == 30
    assert all(a.params[k].tobytes() == b.params[k].tobytes() and a.ema[k].tobytes() == b.ema[k].tobytes()
               for k in b.params)


def test_runner_refuses_to_resume_a_checkpoint_without_training_state(tmp_path):
    cfg = make_config("moons", **SMALL)
    tr = Trainer(cfg, (2,))
    checkpoint.save(tmp_path / "ckpt.npz", tr.model.params, config=json.loads(cfg.to_json()), step=5,
                    extra={"backend": "reference"})
    x = datasets.load("moons", n=100)
    with pytest.raises(runner.InputError, match="holds no EMA, optimiser state, RNG state"):
        runner.run(tr, x, tmp_path, resume=True, progress=False)
