"""Sample-quality figures, shared by both sides (not model math).

- 2-D points: the sliced Wasserstein-2 distance (SW2) between two point clouds.
- Images: a Fréchet distance (FD) between Gaussians fitted to features of a small classifier
  trained on the dataset itself (like FID, whose Inception features make no sense for 8x8
  digits). The classifier is an MLP trained once per dataset and cached.

Each figure means something only beside its floor: the same figure between two independent
real sets of the same size (`floor_*`). A model is good when its figure is near that floor.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from reference import layers as L
from reference.errors import InputError
from reference.optim import AdamW


def sliced_wasserstein(a, b, n_proj=512, seed=0, p=2):
    """SW_p between point clouds a (N, D) and b (M, D): (mean over n_proj random directions of the 1-D
    W_p^p of the projections)^(1/p), each 1-D distance exact through sorted samples (quantiles when
    N != M). p = 2 by default (the sliced Wasserstein-2 distance); p = 1 is the mean absolute gap."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"sliced_wasserstein needs (N, D) and (M, D) arrays, got {a.shape} and {b.shape}")
    if p not in (1, 2):
        raise InputError(f"sliced_wasserstein: p must be 1 or 2, got {p!r}")
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((a.shape[1], n_proj))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
    if pa.shape[0] != pb.shape[0]:  # compare on a common quantile grid
        q = (np.arange(1000) + 0.5) / 1000
        pa, pb = np.quantile(pa, q, axis=0), np.quantile(pb, q, axis=0)
    return float(np.mean(np.abs(pa - pb) ** p) ** (1.0 / p))


def _psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(f1, f2):
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) between Gaussians fitted to two feature sets.

    tr (S1 S2)^{1/2} is computed as sum sqrt(eig(S1^{1/2} S2 S1^{1/2})), a symmetric PSD matrix with
    the same eigenvalues as S1 S2: exact, real, and fine when the covariances are singular (fewer
    samples than feature dimensions), where scipy.linalg.sqrtm of S1 S2 is ill-conditioned.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    r1 = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


FEATURE_DIM = 32


class FeatureNet:
    """A small MLP classifier (flattened image -> 256 -> 32 -> classes) trained on the dataset's labels
    with the reference's own layers (reference.layers.linear_forward/backward, B7) and AdamW (O1, weight
    decay 0: Adam), ReLU between the layers. Its 32-d penultimate layer gives the features: few enough
    dimensions that covariances estimated from a few hundred samples are meaningful (the Frechet
    distance's sampling noise grows with dimension / sample count). ``params``: w1, b1, w2, b2, w3, b3."""

    def __init__(self, params):
        self.params = params

    def _forward(self, x):
        """Logits and the caches of the three linear layers and two ReLUs."""
        h, caches = np.asarray(x, np.float64).reshape(len(x), -1), []
        for i in (1, 2, 3):
            h, c = L.linear_forward(h, self.params[f"w{i}"], self.params[f"b{i}"])
            caches.append(c)
            if i < 3:
                h = np.maximum(h, 0.0)  # ReLU
                caches.append(h > 0)
        return h, caches

    def features(self, x):
        """The 32-d penultimate activations (N, FEATURE_DIM)."""
        h = np.asarray(x, np.float64).reshape(len(x), -1)
        for i in (1, 2):
            h = np.maximum(L.linear_forward(h, self.params[f"w{i}"], self.params[f"b{i}"])[0], 0.0)
        return h

    def logits(self, x):
        return self._forward(x)[0]

    def accuracy(self, x, y):
        return float(np.mean(np.argmax(self.logits(x), 1) == y))

    def _grads(self, xb, yb):
        """Gradients of the mean softmax cross-entropy on one batch."""
        z, caches = self._forward(xb)
        z = z - z.max(1, keepdims=True)
        d = np.exp(z)
        d /= d.sum(1, keepdims=True)
        d[np.arange(len(yb)), yb] -= 1.0  # d(mean CE)/d logits = (softmax - onehot) / N
        d /= len(yb)
        g = {}
        for i in (3, 2, 1):
            if i < 3:
                d = d * caches.pop()  # ReLU
            d, g[f"w{i}"], g[f"b{i}"] = L.linear_backward(d, caches.pop())
        return g

    @classmethod
    def fit(cls, x, y, epochs=30, batch=128, lr=1e-3, seed=0):
        rng = np.random.default_rng(seed)
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        y = np.asarray(y, np.int64)
        k, dims = int(y.max()) + 1, [x.shape[1], 256, FEATURE_DIM]
        p = {}
        for i, (a, b) in enumerate(zip(dims, dims[1:] + [k]), start=1):
            p[f"w{i}"] = rng.standard_normal((b, a)) * np.sqrt(2.0 / a)  # He initialisation for ReLU
            p[f"b{i}"] = np.zeros(b)
        net, opt = cls(p), AdamW(p, lr=lr)
        for _ in range(epochs):
            for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // batch)):
                opt.step(net._grads(x[idx], y[idx]))
        return net


def _cache_dir():
    return Path(os.environ.get("DDPM_CACHE_DIR", Path.home() / ".cache" / "ddpm-executable"))


def feature_net(name, x_train, y_train, cache=True):
    """The dataset's feature classifier, trained on first use and cached by a hash of the data."""
    key = hashlib.sha1(np.ascontiguousarray(x_train, np.float32).tobytes()).hexdigest()[:16]
    path = _cache_dir() / f"featurenet{FEATURE_DIM}_{name.replace('/', '_').replace(':', '_')}_{key}.npz"
    if cache and path.exists():
        try:
            with np.load(path) as f:
                return FeatureNet({k: f[k] for k in f.files})
        except (OSError, ValueError):
            pass  # a corrupt cache file: train again
    net = FeatureNet.fit(x_train, y_train)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **net.params)
        os.replace(tmp, path)
    return net


def image_fd(net, samples, real):
    """Fréchet distance between the classifier features of samples and of real images."""
    return frechet_distance(net.features(samples), net.features(real))


def floor_image_fd(net, real_a, real_b):
    """The real-vs-real Fréchet distance at the same sample count: the best a model can hope for."""
    return frechet_distance(net.features(real_a), net.features(real_b))
