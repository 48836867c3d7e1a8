"""`train --class-cond [--p-uncond P]` (issue 17): datasets give labels (folder:PATH by sub-folder), the labels
travel with the data to either side's Trainer, the checkpoint says the model is conditional, a resumed run is
bit-exact, and what cannot work is refused naming the problem."""
import json

import numpy as np
import pytest
from PIL import Image

from lab import checkpoint, cli, data, runner
from lab.config import make_config
from reference.errors import InputError

SMALL = dict(steps=20, save_every=10, log_every=10, sample_every=0, sample_steps=2, batch_size=16, T=50, seed=3,
             final_samples=False, model=dict(hidden=16, num_layers=1))


def _images(folder, names, n=3, size=8):
    """n small grayscale PNGs in each of ``names`` (sub-folders of folder; "" = folder itself)."""
    rng = np.random.default_rng(0)
    for name in names:
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.mark.parametrize("name,k", [("digits", 10), ("mnist", 10), ("fashion-mnist", 10), ("cifar10", 10),
                                    ("moons", 2), ("gaussians8", 8), ("checkerboard", 8), ("swissroll", 0)])
def test_every_dataset_names_its_class_count(name, k):
    assert data.info(name).num_classes == k


@pytest.mark.parametrize("name", ["digits", "moons", "gaussians8", "checkerboard"])
def test_labels_come_with_the_data_and_cover_every_class(name):
    x, y = data.load(name, n=1000 if name != "digits" else None, return_labels=True)
    assert y.shape == (x.shape[0],) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(data.info(name).num_classes))


def test_a_folder_of_sub_folders_is_labelled_by_sorted_names_and_one_without_is_not(tmp_path):
    _images(tmp_path / "cls", ["zebra", "ant", "mole/deep"], n=10)   # a nested image belongs to its first sub-folder
    info = data.info(f"folder:{tmp_path / 'cls'}", image_size=8)
    assert info.num_classes == 3
    x, y = data.load(f"folder:{tmp_path / 'cls'}", image_size=8, return_labels=True)
    files = data.images.folder_files(tmp_path / "cls")
    names, labels = data.images.folder_classes(tmp_path / "cls", files)
    assert names == ["ant", "mole", "zebra"] and x.shape[0] == y.shape[0] == 27   # 30 minus the 10% test split
    assert set(np.unique(y)) == {0, 1, 2} and np.array_equal(np.bincount(labels), [10, 10, 10])
    _images(tmp_path / "flat", [""])
    _images(tmp_path / "mixed", ["", "a"])
    for name in ("flat", "mixed"):
        assert data.info(f"folder:{tmp_path / name}", image_size=8).num_classes == 0
        with pytest.raises(InputError, match="directly under the folder"):
            data.load(f"folder:{tmp_path / name}", image_size=8, return_labels=True)


def test_class_cond_on_a_dataset_without_labels_and_stray_flags_are_refused(tmp_path, capsys):
    _images(tmp_path / "flat", [""], n=12)
    for argv, words in [(["--data", "swissroll", "--class-cond"], "--class-cond needs a dataset with labels, and "
                                                                   "'swissroll' has none"),
                        (["--data", f"folder:{tmp_path / 'flat'}", "--class-cond", "--image-size", "8"],
                         "every image sits in a sub-folder named after its class"),
                        (["--data", "moons", "--p-uncond", "0.2"], "--p-uncond applies to a class-conditional run"),
                        (["--data", "moons", "--class-cond", "--p-uncond", "1"], "--p-uncond must be a probability"),
                        (["--data", "moons", "--class-cond", "--p-uncond", "-0.1"],
                         "--p-uncond must be a probability")]:
        assert cli.main(["train", "--out", str(tmp_path / "r"), "--steps", "2", *argv]) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / "r" / "ckpt.npz").exists()


def test_the_trainers_refuse_labels_they_cannot_use():
    from reference.train import Trainer
    cond = Trainer(make_config("moons", class_cond=True, **dict(SMALL, model=dict(hidden=16, num_layers=1,
                                                                                    num_classes=2))), (2,))
    plain = Trainer(make_config("moons", **SMALL), (2,))
    x0 = np.zeros((4, 2), np.float32)
    with pytest.raises(InputError, match="needs the batch's labels"):
        cond.step(x0, 0)
    with pytest.raises(InputError, match="class 2 is out of range"):
        cond.step(x0, 0, y=np.array([0, 1, 2, 0]))
    with pytest.raises(InputError, match="unconditional run"):
        plain.step(x0, 0, y=np.zeros(4, int))
    with pytest.raises(InputError, match="needs model num_classes"):
        Trainer(make_config("moons", class_cond=True, **SMALL), (2,))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_a_class_conditional_run_checkpoints_as_one_and_resumes_bit_for_bit(backend, tmp_path):
    """20 steps in one go against 10, a checkpoint and --resume for 10 more: the same parameters, bit for bit
    (the label dropout comes from the run's own noise stream). The checkpoint says class_cond and num_classes."""
    if backend == "torch":
        pytest.importorskip("torch")
    kw = dict(device="cpu") if backend == "torch" else {}
    cfg = make_config("gaussians8", class_cond=True, p_uncond=0.3, **SMALL)
    runner.train(cfg, tmp_path / "full", backend=backend, progress=False, **kw)
    half = make_config("gaussians8", class_cond=True, p_uncond=0.3, **dict(SMALL, steps=10))
    runner.train(half, tmp_path / "half", backend=backend, progress=False, **kw)
    runner.train(cfg, tmp_path / "half", backend=backend, progress=False, resume=True, **kw)
    full, resumed = checkpoint.load(tmp_path / "full" / "ckpt.npz"), checkpoint.load(tmp_path / "half" / "ckpt.npz")
    assert full.config["class_cond"] and full.config["model"]["num_classes"] == 8
    assert full.params["class_embedding.weight"].shape == (9, 16) and full.params["class_embedding.weight"].any()
    assert all(np.array_equal(full.params[k], resumed.params[k]) for k in full.params)
    assert all(np.array_equal(full.ema[k], resumed.ema[k]) for k in full.ema)
    assert json.loads((tmp_path / "full" / "config.json").read_text())["p_uncond"] == 0.3


def test_both_sides_load_a_conditional_checkpoint_and_sample_its_null_class(tmp_path):
    """A conditional checkpoint's configuration rebuilds the conditional model on either side; the sampling
    commands, which pass no labels, then sample the null class (the unconditional model)."""
    pytest.importorskip("torch")
    from lab.backend import Backend
    from lab.sampling import draw, load_trainer
    runner.train(make_config("moons", class_cond=True, **SMALL), tmp_path / "r", progress=False)
    got = {}
    for name in ("reference", "torch"):
        B = Backend(name)
        trainer, _ = load_trainer(B, tmp_path / "r" / "ckpt.npz", **({"device": "cpu"} if name == "torch" else {}))
        assert trainer.num_classes == 2
        got[name] = draw(B, trainer, 8, seed=1, sampler="ddim", steps=5, warn=False)
    assert np.allclose(got["reference"], got["torch"], atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_each_batch_reaches_the_trainer_with_its_own_labels(backend, tmp_path, monkeypatch):
    """gaussians8's label is its mode, the angle of the point in multiples of pi/4: every batch the runner hands
    to Trainer.step carries the labels of exactly those points (through DeviceData on the port)."""
    if backend == "torch":
        pytest.importorskip("torch")
    from lab.backend import Backend
    Trainer = Backend(backend).train.Trainer
    seen, step = [], Trainer.step

    def record(self, x0, i, y=None):
        host = [np.asarray(a.cpu() if hasattr(a, "cpu") else a) for a in (x0, y)]
        seen.append(tuple(host))
        return step(self, x0, i, y=y)

    monkeypatch.setattr(Trainer, "step", record)
    runner.train(make_config("gaussians8", class_cond=True, **dict(SMALL, steps=5)), tmp_path, backend=backend,
                 progress=False, **({"device": "cpu"} if backend == "torch" else {}))
    assert len(seen) == 5
    for x0, y in seen:
        mode = np.round(np.arctan2(x0[:, 1], x0[:, 0]) / (np.pi / 4)).astype(int) % 8
        assert np.array_equal(mode, y)
