"""The sample-quality judge of a dataset, shared by ``eval``, the benchmarks and the guidance sweep: the real
sets, the image classifier whose features the Frechet distance reads, and the real-vs-real floor."""
from __future__ import annotations

import numpy as np

from reference.errors import InputError

from . import data as datasets
from . import metrics

FLOOR_PAIRS = 8   # 2-D data: the floor is the mean of this many real-vs-real distances


class Quality:
    """The sample-quality judge of one dataset at n samples, built once: the real sets, the feature
    classifier (images) and the real-vs-real floor. ``score(samples)`` is the model's figure."""

    def __init__(self, name, n, cfg, seed=0):
        self.n = n
        if name in datasets.POINT_SETS:
            # One real-vs-real pair moves far from seed to seed (benchmarks/README.md has the spread), enough to
            # misjudge a model by a factor. So both figures are means over FLOOR_PAIRS independent real reference
            # sets: the samples are scored against each, and the floor pairs each with a fresh set.
            self.metric = "sliced Wasserstein"
            self.reals = [datasets.load(name, n=n, seed=seed + 101 + k, split="train") for k in range(FLOOR_PAIRS)]
            self.real = self.reals[0]
            self.floor_values = [metrics.sliced_wasserstein(datasets.load(name, n=n, seed=seed + 202 + k,
                                                                          split="test"), real)
                                 for k, real in enumerate(self.reals)]
            self.floor = float(np.mean(self.floor_values))
            self._figure = lambda a, _real: float(np.mean([metrics.sliced_wasserstein(a, r) for r in self.reals]))
            return
        kw = dict(data_dir=cfg.data_dir, image_size=cfg.image_size)
        x_tr, y_tr = datasets.load(name, split="train", return_labels=True, **kw)
        pool = np.concatenate([x_tr, datasets.load(name, split="test", **kw)])
        if len(pool) < 2 * n:
            raise InputError(f"--n {n} is too many for {name!r}: the floor needs 2n = {2 * n} real images, "
                             f"the dataset has {len(pool)}")
        net = metrics.feature_net(name, x_tr, y_tr)
        perm = np.random.default_rng(seed).permutation(len(pool))
        self.real, real2 = pool[perm[:n]], pool[perm[n:2 * n]]
        self.metric = "Frechet distance (classifier features)"
        self._figure = lambda a, b: metrics.image_fd(net, a, b)
        self.floor = metrics.floor_image_fd(net, real2, self.real)

    def score(self, samples):
        return self._figure(np.asarray(samples, np.float64), self.real)
