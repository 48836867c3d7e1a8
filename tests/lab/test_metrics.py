"""Sample-quality figures against closed forms reached another way."""
import math

import numpy as np
import pytest
from scipy import linalg

from lab import metrics
from reference.errors import InputError


def test_frechet_distance_matches_scipy_sqrtm_and_is_zero_on_itself(rng):
    a = rng.standard_normal((4000, 12))
    b = rng.standard_normal((4000, 12)) @ rng.standard_normal((12, 12)) * 0.5 + 0.3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # independent route: scipy's general matrix square root of the (non-symmetric) product
    want = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert metrics.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
    assert abs(metrics.frechet_distance(a, a)) < 1e-9


def test_frechet_distance_is_finite_with_fewer_samples_than_dimensions(rng):
    a, b = rng.standard_normal((20, 64)), rng.standard_normal((20, 64))
    assert np.isfinite(metrics.frechet_distance(a, b)) and metrics.frechet_distance(a, b) > 0


def test_sliced_wasserstein_of_a_shift_is_its_mean_projection():
    """Shifting a cloud by s moves every projection by <s, theta>: SW_1 = |s| E|cos|, and for a uniform
    direction on the circle E|cos| = 2/pi; SW_2 = |s| sqrt(E cos^2) = |s| / sqrt(2)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 2))
    s = np.array([0.6, -0.8])
    got = metrics.sliced_wasserstein(x, x + s, n_proj=4000, seed=2, p=1)
    # the projection directions are random: |cos| has std ~0.31, so the mean of 4000 is within ~0.005*5
    assert got == pytest.approx(1.0 * 2 / math.pi, abs=5 * 0.31 / math.sqrt(4000))
    # cos^2 has std ~0.35 around 1/2: the mean of 4000 within 5 * 0.35 / sqrt(4000), its root half that relative
    got2 = metrics.sliced_wasserstein(x, x + s, n_proj=4000, seed=2)
    assert got2 == pytest.approx(1.0 / math.sqrt(2), rel=5 * 0.35 / math.sqrt(4000))
    assert metrics.sliced_wasserstein(x, x) == 0.0


def test_sliced_wasserstein_rejects_bad_shapes():
    with pytest.raises(InputError, match=r"\(N, D\)"):
        metrics.sliced_wasserstein(np.zeros((5, 2)), np.zeros((5, 3)))


def test_feature_net_learns_the_digits_and_is_cached(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from lab import data

    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path))
    x, y = data.load("digits", split="train", return_labels=True)
    xt, yt = data.load("digits", split="test", return_labels=True)
    net = metrics.feature_net("digits", x, y)
    assert net.accuracy(xt, yt) > 0.9          # a classifier whose features know what a digit is
    assert len(list(tmp_path.glob("featurenet*_digits_*.npz"))) == 1
    again = metrics.feature_net("digits", x, y)
    assert all(np.array_equal(again.params[k], net.params[k]) for k in net.params)
