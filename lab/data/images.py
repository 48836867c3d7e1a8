"""The image datasets as integer levels (N, C, H, W): digits, MNIST / Fashion-MNIST (IDX), CIFAR-10
(pickle batches), any folder of images, and single image files (see lab/data/__init__.py)."""
from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from reference.errors import InputError

from . import downloads

FOLDER_PREFIX = "folder:"
RESAMPLE = ("bilinear", "nearest")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
TEST_FRACTION = 0.1          # digits and folder: fixed held-out share
SPLIT_SEED = 20200619        # the fixed split never depends on the user's seed (DDPM arXiv date)
DEFAULT_FOLDER_SIZE = 32
NATIVE = {  # name: (channels, size, levels, num_classes)
    "digits": (1, 8, 17, 10), "mnist": (1, 28, 256, 10),
    "fashion-mnist": (1, 28, 256, 10), "cifar10": (3, 32, 256, 10),
}


def default_data_dir():
    """$DDPM_DATA_DIR if set, else ~/.cache/ddpm-executable."""
    return Path(os.environ.get("DDPM_DATA_DIR") or Path.home() / ".cache" / "ddpm-executable")


def check_size(image_size, default):
    """image_size as a positive int, or ``default`` when None."""
    if image_size is None:
        return default
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise InputError(f"image_size must be a positive integer (pixels per side), got {image_size!r}")
    return int(image_size)


def levels_to_model_space(k, levels):
    """Level k in {0..L-1} -> (2k - (L-1)) / (L-1) in [-1, 1], float32.

    Integer numerator, one correctly rounded float32 division: -1 and 1 are hit exactly.
    """
    x = k.astype(np.float32)                                      # in place below: one float32 copy in memory
    x *= 2
    x -= levels - 1
    x /= levels - 1
    return x


# ---- image sets: integer levels (N, C, H, W), labels, number of levels --------------------------

def read_levels(name, data_dir, split, image_size, download, channels, resample):
    """(N, C, H, W) integer levels (uint8), labels or None, number of levels."""
    if name.startswith(FOLDER_PREFIX):
        size = check_size(image_size, DEFAULT_FOLDER_SIZE)
        x, y = _load_folder(name[len(FOLDER_PREFIX):], size, channels, split)
        return x, y, 256
    if channels is not None:
        raise InputError(f"channels= applies to folder:PATH datasets only, not {name!r}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if name == "digits":
        x, y = _load_digits(split)
    elif name == "cifar10":
        x, y = _load_cifar10(root / "cifar10", split, download)
    else:
        x, y = _load_idx_pair(name, root / name, split, download)
    c, size, levels, _ = NATIVE[name]
    s = check_size(image_size, size)
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


def _load_idx_pair(name, folder, split, download):
    """(N, 1, 28, 28) uint8 images and (N,) labels of one split from DATA_DIR/<name>/."""
    img_file, lbl_file = (downloads.find_or_download(name, folder, base, download) for base in _IDX_FILES[split])
    images, labels = read_idx(img_file), read_idx(lbl_file)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(f"{img_file}: expected 28x28 images (N, 28, 28), got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise InputError(f"{lbl_file}: expected {images.shape[0]} labels to match {img_file.name}, "
                         f"got shape {labels.shape}")
    return images[:, None], labels.astype(np.int64)


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
        downloads.download([m + CIFAR_ARCHIVE for m in downloads.MIRRORS["cifar10"]], archive,
                           downloads.MD5["cifar10"][CIFAR_ARCHIVE])
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


# ---- any folder of images -----------------------------------------------------------------------

def folder_files(path):
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}" if not root.exists() else f"not a folder: {root}")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return files


def folder_classes(path, files):
    """Sub-folder names as classes: (sorted class names, labels (N,) int64 in 0..K-1 for ``files``) when every
    image lies inside a sub-folder of PATH (its first folder below PATH names its class, at any depth);
    (None, None) when some image lies directly under PATH (no labels then)."""
    root = Path(path).expanduser()
    parts = [f.relative_to(root).parts for f in files]
    if any(len(p) < 2 for p in parts):
        return None, None
    names = sorted({p[0] for p in parts})
    index = {n: k for k, n in enumerate(names)}
    return names, np.array([index[p[0]] for p in parts], dtype=np.int64)


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def folder_channels(files, channels):
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
    files = folder_files(path)
    c = folder_channels(files, channels)
    keep = _split_indices(len(files), split)
    from tqdm.auto import tqdm
    bar = tqdm(keep, desc=f"reading {path}", unit="img", disable=None if len(keep) > 500 else True, leave=False)
    labels = folder_classes(path, files)[1]                              # sub-folders as classes, or None
    x = np.stack([_image_levels(files[i], size, c) for i in bar])        # (N, C, size, size)
    return x, (None if labels is None else labels[keep])


def load_image(path, size=None, channels=None):
    """One image file as (C, H, W) float32 in [-1, 1]; resized and center-cropped to ``size`` if given.

    channels: 1 grayscale, 3 RGB, None: 1 if the file is grayscale else 3.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    c = folder_channels([path], channels)
    if size is not None:
        size = check_size(size, None)
    return levels_to_model_space(_image_levels(path, size, c), 256)
