"""Datasets in model space, shared by reference/ and torch_port/ (not math: written once).

``load(name, ...)`` returns float32 NumPy arrays:
  2-D sets   (N, 2) points, standardised to zero mean and unit variance per coordinate with the
             distribution's exact moments (closed form or Gauss-Legendre quadrature, never the sample's).
  image sets (N, C, H, W) in [-1, 1]: an integer level k of L levels maps to 2 k / (L - 1) - 1.

Names (``DATASETS``):
  moons, swissroll, gaussians8, checkerboard   procedural, drawn from np.random.default_rng([seed, split])
  digits          scikit-learn's 8x8 handwritten digits (17 levels, 0..16); fixed 10% test split
  mnist, fashion-mnist   28x28 IDX files (optionally .gz) in DATA_DIR/<name>/, downloaded when missing
  cifar10         32x32 RGB: DATA_DIR/cifar10/cifar-10-batches-py/ or DATA_DIR/cifar10/cifar-10-python.tar.gz
  folder:PATH     every image under PATH (recursive), resized and center-cropped to image_size (default 32)

DATA_DIR is ``data_dir``, else $DDPM_DATA_DIR, else ~/.cache/ddpm-executable.

Resizing (``image_size``) happens on the integer levels with PIL (bilinear by default, or "nearest")
and the result is rounded back to the level grid, so every image set stays discrete with
``info(name).levels`` levels and the discretised decoder and bits/dim (L6, L7) apply to it.
Nearest upsampling by an integer factor (e.g. digits 8 -> 16) is an exact pixel repeat.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, check_choice

POINT_SETS = ("moons", "swissroll", "gaussians8", "checkerboard")
IMAGE_SETS = ("digits", "mnist", "fashion-mnist", "cifar10")
FOLDER_PREFIX = "folder:"
DATASETS = POINT_SETS + IMAGE_SETS + (FOLDER_PREFIX + "PATH",)
SPLITS = ("train", "test")
RESAMPLE = ("bilinear", "nearest")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

DEFAULT_N_POINTS = {"train": 10_000, "test": 2_000}
TEST_FRACTION = 0.1          # digits and folder: fixed held-out share
SPLIT_SEED = 20200619        # the fixed split never depends on the user's seed (DDPM arXiv date)
DEFAULT_FOLDER_SIZE = 32


@dataclass(frozen=True)
class DatasetInfo:
    """What one item of a dataset looks like.

    shape        per item: (2,) or (C, H, W)
    channels     C for images, 0 for points
    levels       number of discrete intensity values per pixel (256 for 8-bit, 17 for digits),
                 None for continuous 2-D points
    num_classes  labels available through ``load(..., return_labels=True)``, 0 if none
    """

    name: str
    kind: str            # "points" | "image"
    shape: tuple
    channels: int
    levels: int | None
    num_classes: int

    @property
    def eight_bit(self):
        """True when pixels are 8-bit (256 levels): bits/dim is then comparable with published numbers."""
        return self.levels == 256

    @property
    def discrete(self):
        """True when the discretised Gaussian decoder (L6) applies: pixels sit on a level grid."""
        return self.levels is not None


# ---- names, info, paths ------------------------------------------------------------------------

def check_name(name):
    """Return ``name`` if it names a dataset (a fixed name or "folder:PATH"); else raise InputError."""
    if isinstance(name, str) and name.startswith(FOLDER_PREFIX):
        if not name[len(FOLDER_PREFIX):]:
            raise InputError('dataset "folder:" needs a path, e.g. "folder:./my_images"')
        return name
    return check_choice(name, DATASETS[:-1], "dataset (or folder:PATH)")


def is_image(name):
    """True for image datasets (NCHW), False for 2-D point sets ((N, 2))."""
    return check_name(name) not in POINT_SETS


_NATIVE = {  # name: (channels, size, levels, num_classes)
    "digits": (1, 8, 17, 10), "mnist": (1, 28, 256, 10),
    "fashion-mnist": (1, 28, 256, 10), "cifar10": (3, 32, 256, 10),
}
_POINT_CLASSES = {"moons": 2, "swissroll": 0, "gaussians8": 8, "checkerboard": 8}


def info(name, image_size=None, channels=None):
    """DatasetInfo for ``name`` at the given ``image_size`` (folder: scans image headers for channels)."""
    name = check_name(name)
    if name in POINT_SETS:
        return DatasetInfo(name, "points", (2,), 0, None, _POINT_CLASSES[name])
    if name.startswith(FOLDER_PREFIX):
        files = _folder_files(name[len(FOLDER_PREFIX):])
        c = _folder_channels(files, channels)
        s = _check_size(image_size, DEFAULT_FOLDER_SIZE)
        return DatasetInfo(name, "image", (c, s, s), c, 256, 0)
    c, size, levels, k = _NATIVE[name]
    s = _check_size(image_size, size)
    return DatasetInfo(name, "image", (c, s, s), c, levels, k)


def default_data_dir():
    """$DDPM_DATA_DIR if set, else ~/.cache/ddpm-executable."""
    return Path(os.environ.get("DDPM_DATA_DIR") or Path.home() / ".cache" / "ddpm-executable")


def _check_size(image_size, default):
    if image_size is None:
        return default
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise InputError(f"image_size must be a positive integer (pixels per side), got {image_size!r}")
    return int(image_size)


# ---- the public loader -------------------------------------------------------------------------

def load(name, n=None, seed=0, data_dir=None, split="train", image_size=None, download=True,
         return_labels=False, channels=None, resample="bilinear"):
    """Load a dataset as float32 arrays in model space.

    Returns ``x`` of shape (N, 2) (points) or (N, C, H, W) in [-1, 1] (images), or ``(x, y)`` with
    int64 labels y of shape (N,) when ``return_labels`` (moons: which moon, gaussians8: which
    mode, checkerboard: which square, image sets: the class).

    n        points to draw (2-D sets; default 10_000 train / 2_000 test) or a random subset of
             that size drawn with ``seed`` (image sets; default: all, in file order)
    split    "train" or "test": 2-D sets draw the test split from an independent stream;
             mnist/fashion-mnist/cifar10 use the official test files; digits and folder hold out
             a fixed 10% chosen by a seed that does not depend on ``seed``
    channels folder only: 1 forces grayscale, 3 forces RGB (default: 1 if every image is grayscale)
    """
    name = check_name(name)
    check_choice(split, SPLITS, "split")
    check_choice(resample, RESAMPLE, "resample")
    if name in POINT_SETS:
        x, y = _points(name, _check_n(n, DEFAULT_N_POINTS[split]), seed, split)
    else:
        x, y, levels = _images(name, data_dir, split, image_size, download, channels, resample)
        if n is not None:
            keep = np.random.default_rng(seed).choice(len(x), size=_check_n(n, None, len(x), name), replace=False)
            x, y = x[keep], (None if y is None else y[keep])
        x = _levels_to_model_space(x, levels)
    if not return_labels:
        return x
    if y is None:
        raise InputError(f"dataset {name!r} has no labels; call load(..., return_labels=False)")
    return x, y.astype(np.int64)


def _levels_to_model_space(k, levels):
    """Level k in {0..L-1} -> (2k - (L-1)) / (L-1) in [-1, 1], float32.

    Integer numerator, one correctly rounded float32 division: -1 and 1 are hit exactly.
    """
    x = k.astype(np.float32)                                      # in place below: one float32 copy in memory
    x *= 2
    x -= levels - 1
    x /= levels - 1
    return x


def _check_n(n, default, available=None, name=None):
    if n is None:
        return default
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n (number of items) must be a positive integer, got {n!r}")
    if available is not None and n > available:
        raise InputError(f"n={n} but dataset {name!r} has only {available} items in this split")
    return int(n)


def to_uint8(x):
    """Model space [-1, 1] -> uint8 [0, 255] (clipped, rounded): for pictures and image files."""
    x = np.asarray(x, dtype=np.float64)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ---- 2-D procedural sets -----------------------------------------------------------------------

def _points(name, n, seed, split):
    """(n, 2) float32 points, standardised by the exact moments of the distribution, and labels."""
    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    raw, labels = _RAW_POINTS[name](rng, n)                       # (n, 2), (n,)
    mean, std = _point_moments(name)
    return ((raw - mean) / std).astype(np.float32), labels


MOONS_NOISE = 0.05
SWISSROLL_NOISE = 0.25
SWISSROLL_TURNS = (1.5 * np.pi, 4.5 * np.pi)    # angle range of the roll
GAUSSIANS8_RADIUS, GAUSSIANS8_STD = 1.0, 0.1
CHECKERBOARD_HALF = 2.0                         # 4x4 board on [-2, 2]^2, points on the 8 dark squares


def _moons(rng, n):
    """Two interleaved half circles (sklearn's make_moons), Gaussian noise MOONS_NOISE."""
    which = rng.integers(0, 2, size=n)                            # 0 upper moon, 1 lower moon
    theta = rng.uniform(0.0, np.pi, size=n)
    upper = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    lower = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)
    pts = np.where(which[:, None] == 0, upper, lower)
    return pts + MOONS_NOISE * rng.standard_normal((n, 2)), which


def _swissroll(rng, n):
    """A 2-D spiral (t cos t, t sin t), t ~ U(SWISSROLL_TURNS), Gaussian noise SWISSROLL_NOISE."""
    t = rng.uniform(*SWISSROLL_TURNS, size=n)
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    return pts + SWISSROLL_NOISE * rng.standard_normal((n, 2)), None


def _gaussians8(rng, n):
    """Eight isotropic Gaussians (std GAUSSIANS8_STD) equally spaced on a circle of radius 1."""
    k = rng.integers(0, 8, size=n)
    centers = GAUSSIANS8_RADIUS * np.stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)], axis=1)
    return centers + GAUSSIANS8_STD * rng.standard_normal((n, 2)), k


def _checkerboard(rng, n):
    """Uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2 (square (row, col) dark when row + col is even)."""
    square = rng.integers(0, 8, size=n)                           # dark squares numbered row-major 0..7
    row = square // 2
    col = 2 * (square % 2) + row % 2
    u = rng.uniform(0.0, 1.0, size=(n, 2))
    pts = np.stack([col + u[:, 0], row + u[:, 1]], axis=1) - CHECKERBOARD_HALF
    return pts, square


_RAW_POINTS = {"moons": _moons, "swissroll": _swissroll, "gaussians8": _gaussians8, "checkerboard": _checkerboard}


def _point_moments(name):
    """Exact mean (2,) and std (2,) of the raw distribution (noise included)."""
    if name == "moons":
        # x: mixture of cos(th) and 1 - cos(th), th ~ U(0, pi): means 0, 1, each variance 1/2
        # y: mixture of sin(th) and 1/2 - sin(th): means 2/pi, 1/2 - 2/pi, each variance 1/2 - 4/pi^2
        mean = np.array([0.5, 0.25])
        var = np.array([0.5 + 0.25, 0.5 - 4 / np.pi**2 + (2 / np.pi - 0.25) ** 2]) + MOONS_NOISE**2
    elif name == "swissroll":
        # E f(t) for t ~ U(a, b) by 64-point Gauss-Legendre quadrature (exact to rounding for these smooth f)
        a, b = SWISSROLL_TURNS
        nodes, weights = np.polynomial.legendre.leggauss(64)
        t, w = 0.5 * (b - a) * nodes + 0.5 * (b + a), 0.5 * weights
        xy = np.stack([t * np.cos(t), t * np.sin(t)])            # (2, 64)
        mean = xy @ w
        var = (xy**2) @ w - mean**2 + SWISSROLL_NOISE**2
    elif name == "gaussians8":
        # centers at 8 equally spaced angles: mean 0, E cos^2 = E sin^2 = 1/2
        mean = np.zeros(2)
        var = np.full(2, GAUSSIANS8_RADIUS**2 / 2 + GAUSSIANS8_STD**2)
    else:
        # each column and each row holds two dark squares: both marginals are U(-2, 2)
        mean = np.zeros(2)
        var = np.full(2, (2 * CHECKERBOARD_HALF) ** 2 / 12)
    return mean, np.sqrt(var)


# ---- image sets: integer levels (N, C, H, W), labels, number of levels --------------------------

def _images(name, data_dir, split, image_size, download, channels, resample):
    """(N, C, H, W) integer levels (uint8), labels or None, number of levels."""
    if name.startswith(FOLDER_PREFIX):
        size = _check_size(image_size, DEFAULT_FOLDER_SIZE)
        x = _load_folder(name[len(FOLDER_PREFIX):], size, channels, split)
        return x, None, 256
    if channels is not None:
        raise InputError(f"channels= applies to folder:PATH datasets only, not {name!r}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if name == "digits":
        x, y = _load_digits(split)
    elif name == "cifar10":
        x, y = _load_cifar10(root / "cifar10", split, download)
    else:
        x, y = _load_idx_pair(name, root / name, split, download)
    c, size, levels, _ = _NATIVE[name]
    s = _check_size(image_size, size)
    if s != size:
        x = _resize_levels(x, s, levels, resample)
    return x, y, levels


def _resize_levels(x, size, levels, resample):
    """Resize (N, C, H, W) integer levels to (N, C, size, size) with PIL, rounded back onto the grid."""
    from PIL import Image
    mode = Image.Resampling.BILINEAR if resample == "bilinear" else Image.Resampling.NEAREST
    n, c = x.shape[:2]
    out = np.empty((n, c, size, size), dtype=x.dtype)
    for i in range(n):
        for j in range(c):
            im = Image.fromarray(x[i, j].astype(np.float32), mode="F").resize((size, size), mode)
            out[i, j] = np.clip(np.round(np.asarray(im)), 0, levels - 1)
    return out


def _split_indices(n_items, split):
    """A fixed seeded split of range(n_items): the last TEST_FRACTION of a permutation is "test"."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n_items)
    n_test = int(round(TEST_FRACTION * n_items))
    if split == "test" and n_test == 0:
        raise InputError(f"only {n_items} item(s): too few to hold out a test split ({TEST_FRACTION:.0%})")
    idx = perm[n_items - n_test:] if split == "test" else perm[:n_items - n_test]
    return np.sort(idx)


def _load_digits(split):
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise InputError("dataset 'digits' needs scikit-learn: pip install .[data]") from e
    d = load_digits()
    x = d.images.astype(np.uint8)[:, None]                        # (1797, 1, 8, 8), levels 0..16
    idx = _split_indices(len(x), split)
    return x[idx], d.target[idx]


# ---- MNIST / Fashion-MNIST: IDX files -----------------------------------------------------------

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}
# MD5 of the published archives (the values torchvision checks against).
MD5 = {
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    "fashion-mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
}


def _load_idx_pair(name, folder, split, download):
    """(N, 1, 28, 28) uint8 images and (N,) labels of one split from DATA_DIR/<name>/."""
    img_file, lbl_file = (_find_or_download(name, folder, base, download) for base in _IDX_FILES[split])
    images, labels = read_idx(img_file), read_idx(lbl_file)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(f"{img_file}: expected 28x28 images (N, 28, 28), got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise InputError(f"{lbl_file}: expected {images.shape[0]} labels to match {img_file.name}, "
                         f"got shape {labels.shape}")
    return images[:, None], labels.astype(np.int64)


def _find_or_download(name, folder, base, download):
    """The file ``base`` or ``base.gz`` in ``folder``; downloaded (``base.gz``) when missing."""
    for candidate in (folder / base, folder / (base + ".gz")):
        if candidate.is_file():
            return candidate
    if not download:
        raise InputError(f"{name}: {base}[.gz] not found in {folder}; put the file there or allow downloading "
                         "(download=True; the CLI downloads by default)")
    gz = base + ".gz"
    return _download([m + gz for m in MIRRORS[name]], folder / gz, MD5[name][gz])


def read_idx(path):
    """Read an IDX file (optionally gzipped) into a uint8 array, checking the header against the size.

    Header: two zero bytes, type code 0x08 (unsigned byte), ndim; then ndim big-endian int32 sizes.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path} is not an unsigned-byte IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise InputError(f"{path}: IDX header truncated (ndim={ndim})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise InputError(f"{path}: IDX header says shape {dims} ({int(np.prod(dims))} bytes) but the file holds "
                         f"{len(body)} bytes: truncated or corrupt")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


# ---- CIFAR-10: python pickle batches ------------------------------------------------------------

CIFAR_FOLDER, CIFAR_ARCHIVE = "cifar-10-batches-py", "cifar-10-python.tar.gz"
_CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def _load_cifar10(folder, split, download):
    """(N, 3, 32, 32) uint8 and labels from cifar-10-batches-py/ or the tar.gz (read without extracting)."""
    extracted, archive = folder / CIFAR_FOLDER, folder / CIFAR_ARCHIVE
    if not extracted.is_dir() and not archive.is_file():
        if not download:
            raise InputError(f"cifar10: neither {extracted}/ nor {archive} found; put one there or allow "
                             "downloading (download=True; the CLI downloads by default)")
        _download([m + CIFAR_ARCHIVE for m in MIRRORS["cifar10"]], archive, MD5["cifar10"][CIFAR_ARCHIVE])
    xs, ys = [], []
    if extracted.is_dir():
        for b in _CIFAR_BATCHES[split]:
            if not (extracted / b).is_file():
                raise InputError(f"cifar10: batch file {extracted / b} is missing")
            with open(extracted / b, "rb") as f:
                x, y = _read_cifar_batch(f, extracted / b)
            xs.append(x), ys.append(y)
    else:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for b in _CIFAR_BATCHES[split]:
                    member = f"{CIFAR_FOLDER}/{b}"
                    try:
                        f = tar.extractfile(member)
                    except KeyError:
                        f = None
                    if f is None:
                        raise InputError(f"cifar10: {archive} has no member {member}")
                    x, y = _read_cifar_batch(f, f"{archive}:{member}")
                    xs.append(x), ys.append(y)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise InputError(f"cannot read {archive}: {e} (truncated or corrupt archive?)") from e
    return np.concatenate(xs), np.concatenate(ys)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, bytes, NumPy arrays): no arbitrary code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a data file")


def _read_cifar_batch(f, where):
    try:
        d = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means a bad file; name it
        raise InputError(f"cannot read CIFAR batch {where}: {e}") from e
    if not isinstance(d, dict):
        raise InputError(f"CIFAR batch {where} is not a dict of data and labels")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise InputError(f"CIFAR batch {where} lacks 'data' or 'labels' (keys: {sorted(d)})")
    x, y = np.asarray(d["data"], dtype=np.uint8), np.asarray(d["labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (x.shape[0],):
        raise InputError(f"CIFAR batch {where}: data {x.shape} / labels {y.shape}, expected (N, 3072) / (N,)")
    return x.reshape(-1, 3, 32, 32), y                            # rows are R plane, G plane, B plane


# ---- downloads ----------------------------------------------------------------------------------

def _download(urls, dest, md5):
    """Fetch the first URL that works into ``dest`` (atomically), checking its MD5. Else InputError."""
    from tqdm.auto import tqdm
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", leave=False) as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk), digest.update(chunk), bar.update(len(chunk))
            if digest.hexdigest() != md5:
                problems.append(f"{url}: checksum mismatch (MD5 {digest.hexdigest()}, expected {md5})")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as e:
            problems.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise InputError(f"could not download {dest.name} into {dest.parent}:\n  " + "\n  ".join(problems)
                     + f"\nDownload it by hand and put it at {dest}, or check the network connection.")


# ---- any folder of images -----------------------------------------------------------------------

def _folder_files(path):
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}" if not root.exists() else f"not a folder: {root}")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return files


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _folder_channels(files, channels):
    """1 if ``channels`` == 1 or every image is grayscale (read from headers), else 3."""
    if channels is not None:
        if channels not in (1, 3):
            raise InputError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        return channels
    for f in files:
        with _open_image(f) as im:
            if im.mode == "P":
                pal = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
                gray = bool(np.all(pal == pal[:, :1]))
            else:
                gray = im.mode in _GRAY_MODES
        if not gray:
            return 3
    return 1


def _open_image(path):
    from PIL import Image, UnidentifiedImageError
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"cannot read image {path}: {e}") from e


def _image_levels(path, size, channels):
    """(C, size, size) uint8: shorter side resized to ``size`` (Lanczos), then center-cropped.

    ``size=None`` keeps the image as it is.
    """
    from PIL import Image
    with _open_image(path) as im:
        try:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None:
                w, h = im.size
                scale = size / min(w, h)
                rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
                im = im.resize((rw, rh), Image.Resampling.LANCZOS)
                left, top = (rw - size) // 2, (rh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            a = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as e:
            raise InputError(f"cannot decode image {path}: {e}") from e
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)       # (C, H, W)


def _load_folder(path, size, channels, split):
    files = _folder_files(path)
    c = _folder_channels(files, channels)
    keep = _split_indices(len(files), split)
    from tqdm.auto import tqdm
    bar = tqdm(keep, desc=f"reading {path}", unit="img", disable=None if len(keep) > 500 else True, leave=False)
    return np.stack([_image_levels(files[i], size, c) for i in bar])     # (N, C, size, size)


def load_image(path, size=None, channels=None):
    """One image file as (C, H, W) float32 in [-1, 1]; resized and center-cropped to ``size`` if given.

    channels: 1 grayscale, 3 RGB, None: 1 if the file is grayscale else 3.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    c = _folder_channels([path], channels)
    if size is not None:
        size = _check_size(size, None)
    return _levels_to_model_space(_image_levels(path, size, c), 256)
