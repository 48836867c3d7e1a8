"""Checkpoint file format: round trip, atomic writes, clear errors for bad files and mismatched configs."""
import dataclasses
import json

import numpy as np
import pytest

from lab import checkpoint as C
from reference.errors import InputError


def _state(rng):
    params = {"conv_in.weight": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
              "conv_in.bias": np.zeros(8, np.float32), "time_mlp.0.weight": rng.standard_normal((16, 8))}
    ema = {k: v * 0.5 for k, v in params.items()}
    opt = {f"m/{k}": np.ones_like(v) for k, v in params.items()} | {"step": 7, "lr": 2e-4}
    return params, ema, opt


def test_round_trip_keeps_every_part(tmp_path, rng):
    params, ema, opt = _state(rng)
    gen = np.random.default_rng(5)
    gen.standard_normal(3)
    torch_like_state = np.arange(20, dtype=np.uint8)
    cfg = {"T": 1000, "schedule": "cosine", "channel_mult": (1, 2), "lr": 2e-4}
    path = C.save(tmp_path / "run" / "ckpt.npz", params, ema=ema, opt_state=opt, config=cfg, step=123,
                  rng_state={"numpy": gen.bit_generator.state, "torch": torch_like_state},
                  extra={"backend": "reference", "fid_feats": np.ones(3)})
    ck = C.load(path)
    for got, want in ((ck.params, params), (ck.ema, ema)):
        assert set(got) == set(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k])
    assert ck.opt_state["step"].shape == () and int(ck.opt_state["step"]) == 7
    assert np.array_equal(ck.opt_state["m/conv_in.bias"], opt["m/conv_in.bias"])
    assert ck.step == 123 and ck.config["channel_mult"] == [1, 2] and ck.config["schedule"] == "cosine"
    assert ck.extra["backend"] == "reference" and np.array_equal(ck.extra["fid_feats"], np.ones(3))
    assert np.array_equal(ck.rng_state["torch"], torch_like_state) and ck.rng_state["torch"].dtype == np.uint8
    # the restored generator state continues the same stream
    g2 = np.random.default_rng()
    g2.bit_generator.state = ck.rng_state["numpy"]
    assert np.array_equal(g2.standard_normal(4), gen.standard_normal(4))


def test_optional_parts_and_dataclass_config(tmp_path):
    @dataclasses.dataclass
    class Cfg:
        T: int = 50
        schedule: str = "linear"

    ck = C.load(C.save(tmp_path / "c.npz", {"w": np.ones(2)}, config=Cfg()))
    assert ck.ema is None and ck.opt_state is None and ck.rng_state is None and ck.step == 0
    assert ck.config == {"T": 50, "schedule": "linear"} and ck.version == C.VERSION


def test_file_is_plain_npz_without_pickle(tmp_path):
    path = C.save(tmp_path / "c.npz", {"w": np.ones(2)}, ema={"w": np.zeros(2)}, step=3)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"params/w", "ema/w", "meta"}
        meta = json.loads(str(z["meta"]))
    assert meta["format"] == C.FORMAT and meta["step"] == 3


def test_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = C.save(tmp_path / "ckpt.npz", {"w": np.full(4, 1.0)}, step=1)
    real_savez = np.savez

    def crash_midway(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(100)           # half-written file, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(C.np, "savez", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        C.save(path, {"w": np.full(4, 2.0)}, step=2)
    monkeypatch.undo()
    ck = C.load(path)
    assert ck.step == 1 and np.array_equal(ck.params["w"], np.full(4, 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]    # no temp file left behind


def test_truncated_or_foreign_files_are_input_errors(tmp_path):
    path = C.save(tmp_path / "ckpt.npz", {"w": np.ones(1000)})
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        C.load(path)
    path.write_bytes(b"hello, not a zip")
    with pytest.raises(InputError, match="ckpt.npz"):
        C.load(path)
    np.save(tmp_path / "a.npy", np.ones(3))
    with pytest.raises(InputError, match="single .npy"):
        C.load(tmp_path / "a.npy")


def test_missing_file_folder_no_meta_and_wrong_version(tmp_path):
    with pytest.raises(InputError, match="not found"):
        C.load(tmp_path / "nope.npz")
    with pytest.raises(InputError, match="ckpt.npz"):
        C.load(tmp_path)
    np.savez(tmp_path / "plain.npz", w=np.ones(2))
    with pytest.raises(InputError, match="no 'meta'"):
        C.load(tmp_path / "plain.npz")
    meta = {"format": C.FORMAT, "version": C.VERSION + 1, "step": 0, "config": {}}
    np.savez(tmp_path / "future.npz", **{"params/w": np.ones(2), "meta": np.array(json.dumps(meta))})
    with pytest.raises(InputError, match=f"version {C.VERSION + 1}"):
        C.load(tmp_path / "future.npz")
    np.savez(tmp_path / "other.npz", **{"params/w": np.ones(2), "meta": np.array(json.dumps({"format": "x"}))})
    with pytest.raises(InputError, match="not a ddpm-executable checkpoint"):
        C.load(tmp_path / "other.npz")


def test_save_refuses_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="non-empty params"):
        C.save(tmp_path / "c.npz", {})
    with pytest.raises(InputError, match="JSON"):
        C.save(tmp_path / "c.npz", {"w": np.ones(1)}, config={"f": object()})
    with pytest.raises(InputError, match="nested"):
        C.save(tmp_path / "c.npz", {"w": np.ones(1)}, opt_state={"m": {"w": np.ones(1)}})
    assert not (tmp_path / "c.npz").exists()


def test_check_compatible_names_each_mismatch():
    ckpt = {"T": 1000, "schedule": "linear", "channel_mult": [1, 2, 2], "prediction": "eps"}
    C.check_compatible(ckpt, {"T": 1000, "channel_mult": (1, 2, 2), "schedule": None})   # no mismatch
    with pytest.raises(InputError) as e:
        C.check_compatible(ckpt, {"T": 500, "schedule": "cosine", "prediction": "eps", "batch_size": 64})
    msg = str(e.value)
    assert "checkpoint has T=1000 but --T 500 was given" in msg
    assert "checkpoint has schedule=linear but --schedule cosine was given" in msg
    assert "does not record batch_size but --batch-size 64" in msg and "prediction" not in msg
    # keys= restricts the comparison
    C.check_compatible(ckpt, {"T": 500, "prediction": "eps"}, keys=("prediction",))
