"""Datasets: shapes, ranges, determinism, file formats (tiny files written here; nothing is downloaded)."""
import gzip
import io
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
from PIL import Image

from lab import data
from reference.errors import InputError
from tolerances import TOL, mc_close


# ---- 2-D procedural sets ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", data.POINT_SETS)
def test_points_shape_dtype_finite_and_deterministic_by_seed(name):
    x = data.load(name, n=500, seed=3)
    assert x.shape == (500, 2) and x.dtype == np.float32 and np.all(np.isfinite(x))
    assert np.array_equal(x, data.load(name, n=500, seed=3))
    assert not np.array_equal(x, data.load(name, n=500, seed=4))
    assert not np.array_equal(x, data.load(name, n=500, seed=3, split="test"))
    assert data.load(name).shape == (data.DEFAULT_N_POINTS["train"], 2)
    assert not data.is_image(name) and data.info(name).shape == (2,)


@pytest.mark.parametrize("name", data.POINT_SETS)
def test_points_standardisation_constants_match_monte_carlo(name):
    """The exact moments used to standardise (closed form / quadrature) vs a large sample: mean 0, var 1."""
    n = 200_000
    x = data.load(name, n=n, seed=11).astype(np.float64)
    mean, var = x.mean(0), x.var(0)
    # standard errors of the sample mean and the sample variance, estimated from the sample
    se_mean = np.sqrt(var / n)
    se_var = np.sqrt((((x - mean) ** 4).mean(0) - var**2) / n)
    assert mc_close(mean, 0.0, se_mean)
    assert mc_close(var, 1.0, se_var)


def test_checkerboard_points_lie_on_dark_squares_named_by_their_label():
    x, y = data.load("checkerboard", n=2000, seed=0, return_labels=True)
    mean, std = data.points.point_moments("checkerboard")
    raw = x.astype(np.float64) * std + mean + data.points.CHECKERBOARD_HALF     # back to [0, 4]^2
    col, row = np.floor(raw[:, 0]), np.floor(raw[:, 1])
    away = np.min(np.abs(raw - np.round(raw)), axis=1) > 1e-5           # float32 rounding at cell edges
    assert np.all(((row + col) % 2 == 0)[away])
    assert np.array_equal((row * 4 + col)[away] // 2, y[away])


def test_point_labels_have_the_documented_ranges():
    for name, k in (("moons", 2), ("gaussians8", 8), ("checkerboard", 8)):
        x, y = data.load(name, n=4000, return_labels=True)
        assert y.shape == (4000,) and y.dtype == np.int64 and set(np.unique(y)) == set(range(k))
        assert data.info(name).num_classes == k
    with pytest.raises(InputError, match="no labels"):
        data.load("swissroll", return_labels=True)


# ---- digits -------------------------------------------------------------------------------------

def test_digits_shape_range_levels_and_labels():
    x, y = data.load("digits", return_labels=True)
    assert x.ndim == 4 and x.shape[1:] == (1, 8, 8) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    # 17 levels 0..16 map to k/8 - 1
    assert np.array_equal(np.unique(x), (np.arange(17) / 8 - 1).astype(np.float32))
    assert y.shape == (x.shape[0],) and set(np.unique(y)) == set(range(10))
    inf = data.info("digits")
    assert inf.levels == 17 and not inf.eight_bit and inf.discrete and data.is_image("digits")


def test_digits_train_and_test_split_the_whole_set():
    from sklearn.datasets import load_digits
    full = load_digits().images.reshape(-1, 64) / 8 - 1
    tr, te = data.load("digits").reshape(-1, 64), data.load("digits", split="test").reshape(-1, 64)
    assert te.shape[0] == round(data.TEST_FRACTION * full.shape[0])
    both = np.concatenate([tr, te]).astype(np.float64)
    # same multiset of rows: sort rows lexicographically
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    assert np.array_equal(key(both), key(full))
    # the split does not depend on the user's seed
    assert np.array_equal(data.load("digits", split="test", seed=5), data.load("digits", split="test", seed=6))


def test_digits_nearest_upsampling_is_a_pixel_repeat_and_bilinear_stays_on_the_grid():
    x8 = data.load("digits", split="test")
    x16 = data.load("digits", split="test", image_size=16, resample="nearest")
    assert np.array_equal(x16, np.repeat(np.repeat(x8, 2, axis=2), 2, axis=3))
    xb = data.load("digits", split="test", image_size=16)
    assert xb.shape == (x8.shape[0], 1, 16, 16) and xb.min() >= -1 and xb.max() <= 1
    assert np.all(np.isin(xb, (np.arange(17) / 8 - 1).astype(np.float32)))
    assert data.info("digits", image_size=16).shape == (1, 16, 16)


def test_image_subset_n_is_seeded():
    a = data.load("digits", n=50, seed=1)
    assert a.shape == (50, 1, 8, 8) and np.array_equal(a, data.load("digits", n=50, seed=1))
    assert not np.array_equal(a, data.load("digits", n=50, seed=2))
    with pytest.raises(InputError, match="only"):
        data.load("digits", n=10**6)


# ---- MNIST-style IDX files ---------------------------------------------------------------------------

def _idx_bytes(a):
    a = np.asarray(a, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + np.array(a.shape, dtype=">i4").tobytes() + a.tobytes()


def _write_idx_set(folder, rng, n_train=5, n_test=3, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs, lbls = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        for base, arr in zip(data.images._IDX_FILES[split], (imgs, lbls)):
            if gz:
                (folder / (base + ".gz")).write_bytes(gzip.compress(_idx_bytes(arr)))
            else:
                (folder / base).write_bytes(_idx_bytes(arr))
        out[split] = (imgs, lbls)
    return out


@pytest.mark.parametrize("name,gz", [("mnist", True), ("fashion-mnist", False)])
def test_idx_files_round_trip(tmp_path, rng, name, gz):
    written = _write_idx_set(tmp_path / name, rng, gz=gz)
    for split in ("train", "test"):
        x, y = data.load(name, data_dir=tmp_path, split=split, download=False, return_labels=True)
        imgs, lbls = written[split]
        assert x.shape == (len(imgs), 1, 28, 28) and x.dtype == np.float32
        # back to bytes by the inverse map k = (x + 1) * 255 / 2
        assert np.array_equal(np.round((x[:, 0].astype(np.float64) + 1) * 127.5), imgs)
        assert np.array_equal(y, lbls)
    assert data.info(name).eight_bit


def test_idx_truncated_or_bad_magic_is_a_clear_error(tmp_path, rng):
    _write_idx_set(tmp_path / "mnist", rng, gz=False)
    f = tmp_path / "mnist" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated"):
        data.load("mnist", data_dir=tmp_path, download=False)
    f.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(InputError, match="train-images-idx3-ubyte.*magic"):
        data.load("mnist", data_dir=tmp_path, download=False)


def test_missing_files_without_download_name_the_file(tmp_path):
    with pytest.raises(InputError, match="train-images-idx3-ubyte"):
        data.load("mnist", data_dir=tmp_path, download=False)
    with pytest.raises(InputError, match="cifar-10"):
        data.load("cifar10", data_dir=tmp_path, download=False)


def test_download_failure_names_file_and_url(tmp_path, monkeypatch):
    def fail(url, timeout=None):
        raise urllib.error.URLError("no network in tests")
    monkeypatch.setattr(data.downloads.urllib.request, "urlopen", fail)
    with pytest.raises(InputError) as e:
        data.load("mnist", data_dir=tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and data.downloads.MIRRORS["mnist"][0] in msg and "no network" in msg


class _FakeResponse(io.BytesIO):
    headers = {"Content-Length": "9"}


def test_download_checksum_mismatch_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data.downloads.urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(b"not mnist"))
    with pytest.raises(InputError, match="checksum mismatch") as e:
        data.load("fashion-mnist", data_dir=tmp_path)
    assert data.downloads.MIRRORS["fashion-mnist"][0] + "train-images-idx3-ubyte.gz" in str(e.value)
    assert list((tmp_path / "fashion-mnist").iterdir()) == []


def test_download_with_the_right_checksum_is_kept(tmp_path, monkeypatch):
    payload = b"pretend archive"
    monkeypatch.setattr(data.downloads.urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(payload))
    import hashlib
    dest = data.downloads.download(["http://example.invalid/f.gz"], tmp_path / "x" / "f.gz", hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload and [p.name for p in dest.parent.iterdir()] == ["f.gz"]


# ---- CIFAR-10 pickles -------------------------------------------------------------------------------

def _cifar_batch(rng, n):
    return {b"batch_label": b"test", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"filenames": [b"x.png"] * n}


def _write_cifar(folder, rng):
    batches = {name: _cifar_batch(rng, 4) for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, d in batches.items():
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    return batches


def test_cifar_pickle_batches_round_trip_with_planes_as_channels(tmp_path, rng):
    batches = _write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py", rng)
    x, y = data.load("cifar10", data_dir=tmp_path, download=False, return_labels=True)
    assert x.shape == (20, 3, 32, 32) and y.shape == (20,)
    b1 = batches["data_batch_1"]
    # row layout: 1024 red values, then 1024 green, then 1024 blue, each row-major 32x32
    red_first_row = b1[b"data"][0, :32]
    assert np.array_equal(np.round((x[0, 0, 0].astype(np.float64) + 1) * 127.5), red_first_row)
    blue_last = b1[b"data"][0, -1]
    assert np.round((float(x[0, 2, 31, 31]) + 1) * 127.5) == blue_last
    assert np.array_equal(y[:4], b1[b"labels"])
    xt = data.load("cifar10", data_dir=tmp_path, split="test", download=False)
    assert xt.shape == (4, 3, 32, 32)


def test_cifar_reads_the_tar_gz_without_extracting(tmp_path, rng):
    src = tmp_path / "src" / "cifar-10-batches-py"
    _write_cifar(src, rng)
    (tmp_path / "cifar10").mkdir()
    with tarfile.open(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    from_tar = data.load("cifar10", data_dir=tmp_path, download=False)
    (tmp_path / "cifar10" / "cifar-10-batches-py").symlink_to(src)
    assert np.array_equal(from_tar, data.load("cifar10", data_dir=tmp_path, download=False))


def test_cifar_refuses_a_pickle_that_runs_code(tmp_path, rng):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    _write_cifar(folder, rng)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (folder / "data_batch_1").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InputError, match="data_batch_1"):
        data.load("cifar10", data_dir=tmp_path, download=False)


# ---- folder:PATH --------------------------------------------------------------------------------------

def _write_pngs(folder, colors, size=(12, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(colors):
        mode = "L" if isinstance(c, int) else "RGB"
        Image.new(mode, size, c).save(folder / f"img{i:02d}.png")


def test_folder_of_rgb_images_resized_and_split(tmp_path):
    _write_pngs(tmp_path / "a", [(255, 0, 0)] * 6)
    _write_pngs(tmp_path / "a" / "sub", [(0, 0, 255)] * 4, size=(40, 20))   # recursive, other sizes
    name = f"folder:{tmp_path / 'a'}"
    tr = data.load(name, image_size=8)
    te = data.load(name, image_size=8, split="test")
    assert tr.shape == (9, 3, 8, 8) and te.shape == (1, 3, 8, 8)
    both = np.concatenate([tr, te])
    red = np.all(both[:, 0] == 1.0, axis=(1, 2)) & np.all(both[:, 2] == -1.0, axis=(1, 2))
    blue = np.all(both[:, 2] == 1.0, axis=(1, 2)) & np.all(both[:, 0] == -1.0, axis=(1, 2))
    assert red.sum() == 6 and blue.sum() == 4
    assert data.info(name, image_size=8).shape == (3, 8, 8)
    assert data.load(name).shape[2:] == (data.DEFAULT_FOLDER_SIZE,) * 2


def test_folder_grayscale_detection_and_forced_channels(tmp_path):
    _write_pngs(tmp_path / "g", [0, 128, 255])
    name = f"folder:{tmp_path / 'g'}"
    x = data.load(name, image_size=4)
    assert x.shape == (3, 1, 4, 4) and data.info(name).channels == 1
    assert np.allclose(x.reshape(3, -1).mean(1), np.array([0, 128, 255]) / 127.5 - 1, atol=TOL["op32"])
    assert data.load(name, image_size=4, channels=3).shape == (3, 3, 4, 4)
    _write_pngs(tmp_path / "mixed", [0, (10, 200, 30)])
    assert data.load(f"folder:{tmp_path / 'mixed'}", image_size=4).shape == (2, 3, 4, 4)


def test_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        data.load(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(InputError, match="not found"):
        data.load(f"folder:{tmp_path / 'nope'}")
    _write_pngs(tmp_path / "bad", [(1, 2, 3)])
    (tmp_path / "bad" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(InputError, match="broken.png"):
        data.load(f"folder:{tmp_path / 'bad'}")


def test_unknown_name_lists_the_choices():
    with pytest.raises(InputError, match="moons") as e:
        data.load("moon")
    assert "did you mean 'moons'" in str(e.value) and "folder:PATH" in str(e.value)
    with pytest.raises(InputError, match="split"):
        data.load("moons", split="validation")


def test_to_uint8_inverts_the_model_space_map():
    k = np.arange(256)
    assert np.array_equal(data.to_uint8(k * (2 / 255) - 1), k)
    assert data.to_uint8(np.array([-3.0, 3.0])).tolist() == [0, 255]


def test_level_map_hits_minus_one_and_one_exactly_and_is_monotone():
    for levels in (17, 256):
        x = data.images.levels_to_model_space(np.arange(levels, dtype=np.uint8), levels)
        assert x.dtype == np.float32 and x[0] == -1.0 and x[-1] == 1.0 and np.all(np.diff(x) > 0)
        # each value is the float32 nearest to the exact 2k/(L-1) - 1
        exact = 2 * np.arange(levels) / (levels - 1) - 1
        assert np.array_equal(x, exact.astype(np.float32))
