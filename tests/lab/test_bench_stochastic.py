"""benchmarks/bench_stochastic.py's reading of a paired comparison (issue 27's "beats"), on hand-computed draws."""
import math
import os
import sys

from tolerances import TOL

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))
import bench_stochastic as bench  # noqa: E402


def _row(seeds, values):
    return {"seeds": seeds, "values": values}


def test_paired_difference_pairs_by_seed_and_its_standard_error_is_of_the_differences():
    # d = (a - b) / floor on seeds 0, 1, 2 = 1, 1.5, 1: mean 7/6; sample variance 1/12, so SE sqrt(1/36) = 1/6.
    # b lists its seeds in another order and has one a lacks: pairing is by seed, not by position.
    a, b = _row([0, 1, 2], [3.0, 5.0, 4.0]), _row([2, 7, 0, 1], [2.0, 9.0, 1.0, 2.0])
    d, se, k = bench.paired(a, b, 2.0)
    assert k == 3
    assert abs(d - 7 / 6) <= TOL["exact64"] and abs(se - 1 / 6) <= TOL["exact64"]


def test_beats_reads_the_paired_standard_error_not_the_rows_own():
    # Each seed's x_T moves both samplers alike (offsets 0, 10, 20, 30): the rows' own SEs (~6.5) make the
    # 1-unit gap a tie, the differences (all -1 +- 0.1) make it a clear win.
    ode = _row([0, 1, 2, 3], [10.0, 20.0, 30.0, 40.0])
    sde = _row([0, 1, 2, 3], [8.9, 19.1, 28.9, 39.1])
    d, se, _ = bench.paired(sde, ode, 1.0)
    assert bench.verdict(d, se) == "beats"
    assert se < 0.1 < bench.mean_se(ode["values"])[1]
    assert bench.verdict(-0.1, 0.1) == "tie" and bench.verdict(0.3, 0.1) == "loses"
    assert bench.verdict(-0.3, 0.1) == "beats" and bench.verdict(math.inf, math.inf) == "loses"
    assert bench.verdict(math.nan, math.nan) == "loses"     # both diverged (inf - inf): no win to claim


def test_a_diverged_draw_makes_the_mean_infinite_not_a_number():
    m, se = bench.mean_se([1.0, math.inf])
    assert m == math.inf and se == math.inf


def test_a_row_of_more_seeds_is_pooled_from_runs_that_measured_them_and_only_when_all_are_there():
    base = {"sampler": "euler", "steps": 20, "n": 500, "grid": "karras"}
    first = dict(base, seeds=[0, 1], values=[1.0, 2.0], ms_per_sample=4.0)
    second = dict(base, seeds=[2, 3], values=[3.0, 4.0], ms_per_sample=6.0)
    other = dict(base, steps=50, seeds=[4], values=[9.0], ms_per_sample=1.0)   # another NFE: never taken
    (row,) = bench.pooled([first, second, other], dict(base, seeds=[3, 0, 1, 2]))
    assert row["seeds"] == [3, 0, 1, 2] and row["values"] == [4.0, 1.0, 2.0, 3.0]
    assert row["ms_per_sample"] == 5.0 and row["pooled_from"] == [[0, 1], [2, 3]]
    assert bench.pooled([first, second, other], dict(base, seeds=[0, 4])) == []   # seed 4 is of another row
