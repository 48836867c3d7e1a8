"""Datasets in model space, shared by both sides (not math: written once). The contract: ``lab.data.load``.

``load(name, ...)`` returns float32 NumPy arrays:
  2-D sets   (N, 2) points, standardised to zero mean and unit variance per coordinate with the
             distribution's exact moments (closed form or Gauss-Legendre quadrature, never the sample's).
  image sets (N, C, H, W) in [-1, 1]: an integer level k of L levels maps to 2 k / (L - 1) - 1.

Names (``DATASETS``):
  moons, swissroll, gaussians8, checkerboard   procedural, drawn from np.random.default_rng([seed, split])
  digits          scikit-learn's 8x8 handwritten digits (17 levels, 0..16); fixed 10% test split
  mnist, fashion-mnist   28x28 IDX files (optionally .gz) in DATA_DIR/<name>/, downloaded when missing
  cifar10         32x32 RGB: DATA_DIR/cifar10/cifar-10-batches-py/ or DATA_DIR/cifar10/cifar-10-python.tar.gz
  folder:PATH     every image under PATH (recursive), resized and center-cropped to image_size (default 32);
                  labelled by sub-folder (sorted names -> 0..K-1) when every image lies in one, else unlabelled

DATA_DIR is ``data_dir``, else $DDPM_DATA_DIR, else ~/.cache/ddpm-executable.

Resizing (``image_size``) happens on the integer levels with PIL (bilinear by default, or "nearest")
and the result is rounded back to the level grid, so every image set stays discrete with
``info(name).levels`` levels and the discretised decoder and bits/dim (L6, L7) apply to it.
Nearest upsampling by an integer factor (e.g. digits 8 -> 16) is an exact pixel repeat.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reference.errors import InputError, check_choice

from . import points as _points
from .images import (DEFAULT_FOLDER_SIZE, FOLDER_PREFIX, IMAGE_EXTENSIONS, NATIVE, RESAMPLE, TEST_FRACTION,
                     check_size, default_data_dir, folder_channels, folder_classes, folder_files,
                     levels_to_model_space, load_image, read_idx, read_levels)

POINT_SETS = ("moons", "swissroll", "gaussians8", "checkerboard")
IMAGE_SETS = ("digits", "mnist", "fashion-mnist", "cifar10")
DATASETS = POINT_SETS + IMAGE_SETS + (FOLDER_PREFIX + "PATH",)
SPLITS = ("train", "test")
DEFAULT_N_POINTS = {"train": 10_000, "test": 2_000}

__all__ = ["POINT_SETS", "IMAGE_SETS", "DATASETS", "SPLITS", "DEFAULT_N_POINTS", "FOLDER_PREFIX", "RESAMPLE",
           "IMAGE_EXTENSIONS", "TEST_FRACTION", "DEFAULT_FOLDER_SIZE", "DatasetInfo", "check_name", "is_image",
           "info", "load", "to_uint8", "load_image", "read_idx", "default_data_dir"]


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


_POINT_CLASSES = {"moons": 2, "swissroll": 0, "gaussians8": 8, "checkerboard": 8}


def info(name, image_size=None, channels=None):
    """DatasetInfo for ``name`` at the given ``image_size`` (folder: scans image headers for channels)."""
    name = check_name(name)
    if name in POINT_SETS:
        return DatasetInfo(name, "points", (2,), 0, None, _POINT_CLASSES[name])
    if name.startswith(FOLDER_PREFIX):
        files = folder_files(name[len(FOLDER_PREFIX):])
        c = folder_channels(files, channels)
        s = check_size(image_size, DEFAULT_FOLDER_SIZE)
        classes = folder_classes(name[len(FOLDER_PREFIX):], files)[0]
        return DatasetInfo(name, "image", (c, s, s), c, 256, len(classes or ()))
    c, size, levels, k = NATIVE[name]
    s = check_size(image_size, size)
    return DatasetInfo(name, "image", (c, s, s), c, levels, k)


# ---- the public loader -------------------------------------------------------------------------

def load(name, n=None, seed=0, data_dir=None, split="train", image_size=None, download=True,
         return_labels=False, channels=None, resample="bilinear"):
    """Load a dataset as float32 arrays in model space.

    Returns ``x`` of shape (N, 2) (points) or (N, C, H, W) in [-1, 1] (images), or ``(x, y)`` with
    int64 labels y of shape (N,) when ``return_labels`` (moons: which moon, gaussians8: which
    mode, checkerboard: which square, image sets: the class, folder: the sub-folder, sorted names -> 0..K-1).

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
        x, y = _points.draw(name, _check_n(n, DEFAULT_N_POINTS[split]), seed, split)
    else:
        x, y, levels = read_levels(name, data_dir, split, image_size, download, channels, resample)
        if n is not None:
            keep = np.random.default_rng(seed).choice(len(x), size=_check_n(n, None, len(x), name), replace=False)
            x, y = x[keep], (None if y is None else y[keep])
        x = levels_to_model_space(x, levels)
    if not return_labels:
        return x
    if y is None:
        why = (": some images lie directly under the folder; labels come from one sub-folder per class"
               if name.startswith(FOLDER_PREFIX) else "")
        raise InputError(f"dataset {name!r} has no labels{why}; call load(..., return_labels=False)")
    return x, y.astype(np.int64)


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


