"""(N7) The Karras grid over trained steps whose top step is coarser than the grid (derivations/solvers.md).

The cosine schedule clips beta_{T-1} to 0.999, so sigma jumps from sigma_998 = 642 to sigma_999 = 2.0e4 in
one trained step; a rho = 7 grid over [sigma_0, sigma_999] puts 44% of its levels inside that step, where
snapping (K8) can only move them onto its ends. The checks, on both sides:

- where no level falls inside the top trained step (linear, quadratic, sigmoid at the usual n), the grid's
  levels are Karras' (N5) exactly, written here from the paper's formula;
- on the cosine schedule, no level but sigma_{T-1} lies inside the clipped step, the top levels taken alone
  are consecutive trained steps from T-1 down, and the rest are uniform in sigma^(1/7) down to sigma_0;
- the sigmas are computed in the test from prod(1 - beta) (F2), not read from the module's table;
- against a fine solve with the mixture's exact continuous denoiser: snapping the N7 levels changes the
  global error by at most TOL["snap_cost"], and the N7 grid beats plain Karras-then-snap by 1.5x at n >= 20.
"""
import numpy as np
import pytest

from reference import solvers as RS
from reference.oracle import GaussianMixtureOracle
from reference.schedules import Schedule, make_betas
from tolerances import TOL

torch = pytest.importorskip("torch")
from torch_port import schedules as TSch  # noqa: E402
from torch_port import solvers as TS  # noqa: E402

RHO = 7.0  # Karras et al. 2022, eq. (5): the paper's value, not the module's constant
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]


def _sigmas(name, T=1000):
    """sigma_t = sqrt((1 - abar_t) / abar_t) with abar_t = prod_{s <= t} (1 - beta_s) (F2), increasing in t."""
    abar = np.cumprod(1.0 - make_betas(name, T))
    return np.sqrt((1.0 - abar) / abar)


def _paper_karras(n, lo, hi):
    """Karras et al. (2022), eq. (5), i = 0..n-1, from sigma_max down to sigma_min."""
    i = np.arange(n)
    return (hi ** (1 / RHO) + i / (n - 1) * (lo ** (1 / RHO) - hi ** (1 / RHO))) ** RHO


def _levels(side, name, n):
    """The unsnapped N7 levels and the snapped grid of one side, as float64 numpy arrays."""
    if side == "reference":
        sched = Schedule(make_betas(name, 1000))
        table = np.asarray(RS.sigma_grid(sched, 1000, "leading")[:-1][::-1])   # every trained sigma, increasing
        return np.asarray(RS.karras_levels(table, n)), np.asarray(RS.sigma_grid(sched, n, "karras"))
    sched = TSch.Schedule(TSch.make_betas(name, 1000))
    table = TS.sigma_grid(sched, 1000, "leading")[:-1].flip(0)
    return TS.karras_levels(table, n).numpy(), TS.sigma_grid(sched, n, "karras").numpy()


@pytest.mark.parametrize("side", ["reference", "torch"])
@pytest.mark.parametrize("name", ["linear", "quadratic", "sigmoid"])
@pytest.mark.parametrize("n", [2, 5, 10, 25, 50, 200])
def test_N7_without_a_coarse_top_step_the_levels_are_karras_eq_5(side, name, n):
    sig = _sigmas(name)
    levels, _ = _levels(side, name, n)
    want = _paper_karras(n, sig[0], sig[-1])
    assert levels[-1] == 0.0
    assert np.max(np.abs(levels[:-1] / want - 1.0)) <= TOL["exact64"]


@pytest.mark.parametrize("side", ["reference", "torch"])
@pytest.mark.parametrize("n", [5, 10, 20, 25, 50])
def test_N7_on_the_clipped_cosine_no_level_lies_inside_a_trained_step_coarser_than_the_grid(side, n):
    sig = _sigmas("cosine")
    assert sig[-1] / sig[-2] > 30.0                 # the clipped last step: 642 -> 2.0e4 in one step
    levels, grid = _levels(side, "cosine", n)
    levels = levels[:-1]
    # the levels above the Karras part are trained sigmas from the top, one per step: T-1, T-2, ...
    k = 0
    while k < n and np.any(np.abs(sig / levels[k] - 1.0) <= TOL["exact64"]) and \
            abs(levels[k] / sig[len(sig) - 1 - k] - 1.0) <= TOL["exact64"]:
        k += 1
    assert k >= 1 and np.sum(levels > sig[-2]) == 1       # sigma_{T-1} once; nothing inside (642, 2.0e4)
    rest = levels[k - 1:]                                   # the Karras part starts at the last taken step
    assert abs(rest[0] / sig[len(sig) - k] - 1.0) <= TOL["exact64"] and abs(rest[-1] / sig[0] - 1.0) <= TOL["exact64"]
    if rest.size > 2:
        assert np.allclose(np.diff(rest ** (1 / RHO)), (rest[-1] ** (1 / RHO) - rest[0] ** (1 / RHO)) / (rest.size - 1),
                           rtol=1e-9, atol=0.0)               # uniform in sigma^(1/rho) (N5)
    # the first Karras level below the taken steps lies below the next trained step: none was taken too many
    assert rest.size < 2 or rest[1] <= sig[len(sig) - 1 - k]
    # and none too few: every taken step had the grid's next level inside it
    for j in range(1, k):
        top = len(sig) - j                                  # the step sig[top] was taken as level j
        nxt = _paper_karras(n - j, sig[0], sig[top])[1]
        assert nxt > sig[top - 1]
    # snapped, every level is a trained sigma within one trained step of its level (no 15x moves)
    steps = np.array([int(np.argmin(np.abs(np.log(sig) - np.log(g)))) for g in grid[:-1]])
    assert np.allclose(grid[:-1], sig[steps], rtol=1e-12, atol=0.0) and np.all(np.diff(steps) < 0)
    assert np.max(np.abs(np.log(grid[:-1] / levels))) <= np.log(2.0)


def test_N7_reference_and_torch_give_the_same_grid_on_every_schedule():
    for name in ("linear", "cosine", "quadratic", "sigmoid"):
        for n in (1, 2, 3, 5, 10, 20, 50, 999, 1000):
            a = _levels("reference", name, n)
            b = _levels("torch", name, n)
            for x, y in zip(a, b):
                assert x.shape == y.shape and np.max(np.abs(x - y) / np.maximum(x, 1e-300)) <= TOL["cross64"]


@pytest.mark.parametrize("sampler", ["euler", "dpm++2m", "heun"])
def test_N7_snapping_costs_little_on_the_cosine_and_beats_plain_karras_then_snap(sampler):
    """Against a 4000-level continuous Karras solve with the mixture's exact denoiser at every sigma."""
    sched = Schedule(make_betas("cosine", 1000))
    sig = _sigmas("cosine")
    mix = GaussianMixtureOracle(W, MEANS, cov=COVS)
    x_T = np.random.default_rng(0).normal(size=(64, 2))
    fine = RS.sample(mix.denoise_sigma, x_T, np.concatenate([_paper_karras(4000, sig[0], sig[-1]), [0.0]]),
                     "dpm++2m").x

    def err(g):
        return float(np.sqrt(np.mean((RS.sample(mix.denoise_sigma, x_T, g, sampler).x - fine) ** 2)))

    for n in (5, 10, 20, 50):
        levels = RS.karras_levels(sig, n)
        snapped = RS.sigma_grid(sched, n, "karras")
        assert abs(err(snapped) / err(levels) - 1.0) <= TOL["snap_cost"], n
        # plain Karras over [sigma_0, sigma_{T-1}] spends its top levels inside the clipped step; the margin
        # 1.5: at n = 20 and 50 the N7 grid's error is 1.7-2.2x (Euler) and 2.5-5.4x (dpm++2m, Heun) smaller
        # over seeds 0-2 (at n = 10 dpm++2m's is 9% larger: the plain grid's pushed steps happen to help there)
        if n >= 20:
            plain = RS.snap_sigmas(sched, np.concatenate([_paper_karras(n, sig[0], sig[-1]), [0.0]]))
            assert err(snapped) * 1.5 <= err(plain), n
