"""The eval judge's 2-D floor is stable from seed to seed (issue 19 §1: a single real-vs-real pair at n = 2000
moves by +-30%, which once read as a "3.2x" gaussians8 model)."""
import numpy as np

from lab import data, metrics
from lab.config import make_config
from lab.quality import FLOOR_PAIRS, Quality


def test_the_2d_floor_is_the_mean_of_independent_real_pairs_and_stable_across_seeds():
    judges = [Quality("gaussians8", 2000, make_config("gaussians8"), seed=s) for s in range(4)]
    q = judges[0]
    assert len(q.floor_values) == FLOOR_PAIRS and np.isclose(q.floor, np.mean(q.floor_values))
    # each pair is two disjoint real sets: recompute one pair from the data loader directly
    a = data.load("gaussians8", n=2000, seed=101 + 3, split="train")
    b = data.load("gaussians8", n=2000, seed=202 + 3, split="test")
    assert np.isclose(q.floor_values[3], metrics.sliced_wasserstein(b, a))
    floors = np.array([j.floor for j in judges])
    # measured: relative spread 0.05 over 6 seeds with 8 pairs; one pair per seed gives 0.31. 0.15 separates them
    # with room for 4 seeds' sampling error of the spread itself (~35% relative).
    assert floors.std() / floors.mean() < 0.15, floors


def test_a_2d_score_is_the_mean_over_the_same_reference_sets():
    q = Quality("moons", 500, make_config("moons"), seed=1)
    x = data.load("moons", n=500, seed=7)
    want = np.mean([metrics.sliced_wasserstein(x, r) for r in q.reals])
    assert np.isclose(q.score(x), want)
    # real data of its own scores at its floor: within 3 standard errors of the floor's pairs
    se = np.std(q.floor_values, ddof=1) / np.sqrt(FLOOR_PAIRS)
    assert abs(q.score(x) - q.floor) < 3 * se + 0.1 * q.floor
