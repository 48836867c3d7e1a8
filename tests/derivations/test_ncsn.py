"""derivations/ncsn.md (J1-J7), each through an independent route: the mixture oracle's exact score (its density's
gradient, reference/oracle.py) as the Bayes-optimal network, its posterior mean as the denoiser, Monte Carlo within
5 standard errors against closed forms, a brute-force maximum over pairs, the exact chi distribution of a Gaussian's
norm, Song & Ermon's printed ladders, and the VE and VP processes of reference/processes.py."""
import itertools
import math
from types import SimpleNamespace as NS

import numpy as np
import pytest
from scipy import stats

from common.errors import InputError
from reference import ladder as LD
from reference import objectives as O
from reference import processes as P
from reference.oracle import GaussianMixtureOracle
from tolerances import TOL, mc_close

# a 1-D mixture, skewed and bimodal (design_space's), and one Gaussian of variance V for the closed forms
MIX = GaussianMixtureOracle([0.3, 0.7], [[-1.0], [0.8]], var=[[0.05], [0.2]])
V = 0.3
GAUSS = GaussianMixtureOracle([1.0], [[0.2]], var=[[V]])
CFG = NS(objective="ncsn", sigma_min=0.05, sigma_max=3.0, num_levels=8)


def _abar(sigma):
    """The VP coordinates of NCSN's sigma (K6): abar = 1 / (1 + sigma^2), x_t = sqrt(abar) x~."""
    return 1.0 / (1.0 + np.asarray(sigma, dtype=np.float64) ** 2)


def oracle_F(oracle, x, sigma):
    """The Bayes-optimal F = sigma s*(x~, sigma) from the oracle's density gradient (not Tweedie): x~ = x_t /
    sqrt(abar), so grad_x~ log q~(x~) = sqrt(abar) grad_x log q_VP(x_t)."""
    a = _abar(sigma)
    ra = np.sqrt(a).reshape((-1, 1) if np.ndim(a) else ())
    s = np.asarray(sigma, dtype=np.float64).reshape((-1, 1) if np.ndim(sigma) else ())
    return s * ra * oracle.score(x * ra, a)


def oracle_net(oracle, cfg):
    """net(x, tau) -> F*: the ladder's sigma read back from the time input tau = 1000 t of the VE process (J5)."""
    ve = P.make_process("ve", sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)

    def net(x, tau):
        sigma = ve.sigma(np.asarray(tau, dtype=np.float64) / 1000.0)
        return oracle_F(oracle, np.asarray(x, dtype=np.float64), sigma)

    return net


def _batch(oracle, cfg, n, seed):
    rng = np.random.default_rng(seed)
    x0 = oracle.sample(rng, n)[0]
    eps, u = rng.standard_normal(x0.shape), rng.uniform(size=n)
    lv = O.level(cfg, u)
    net_in, time_in, target, weight = O.training_target(cfg, x0, eps, lv)
    return x0, eps, lv, net_in, time_in, target, weight


def _per_example(out, target, weight):
    return weight * ((out - target) ** 2).reshape(out.shape[0], -1).mean(axis=1)


# ---- the loss and its minimiser (J1) ----------------------------------------------------------------

def test_J1_the_loss_is_least_at_the_oracle_score_and_equals_the_irreducible_value():
    """Gaussian data: the loss at the exact score is E_i[v / (v + sigma_i^2)] (levels uniform over the ladder). Mixture:
    F* + delta h loses exactly E[delta^2 h^2] more (the cross term vanishes: F* is E[target | x~]) for every h."""
    n = 200_000
    x0, eps, lv, net_in, time_in, target, weight = _batch(GAUSS, CFG, n, 1)
    per = _per_example(oracle_F(GAUSS, net_in, lv), target, weight)
    want = np.mean(V / (V + LD.sigma_ladder(CFG.sigma_max, CFG.sigma_min, CFG.num_levels) ** 2))
    assert mc_close(per.mean(), want, per.std() / math.sqrt(n)), (per.mean(), want)
    assert O.loss(oracle_F(GAUSS, net_in, lv), target, weight) == pytest.approx(per.mean(), rel=TOL["exact64"])

    x0, eps, lv, net_in, time_in, target, weight = _batch(MIX, CFG, n, 2)
    best = _per_example(oracle_F(MIX, net_in, lv), target, weight)
    for delta, h in ((0.1, np.sin(net_in)), (-0.2, np.ones_like(net_in)), (0.15, np.tanh(3 * net_in))):
        worse = _per_example(oracle_F(MIX, net_in, lv) + delta * h, target, weight)
        gap, extra = worse - best, weight * (delta * h[:, 0]) ** 2
        assert gap.mean() > 0
        assert mc_close(gap.mean(), extra.mean(), (gap - extra).std() / math.sqrt(n)), (delta, gap.mean(), extra.mean())


# ---- the ladder (J2, J3) ---------------------------------------------------------------------------

def test_J2_sigma_1_is_the_brute_force_largest_distance_and_the_ratio_is_constant():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 2, 2)) * [[1.0, 3.0], [0.5, 2.0]] + 5.0
    brute = max(np.linalg.norm(a - b) for a, b in itertools.combinations(x.reshape(9, -1), 2))
    for chunk in (1, 4, 512):
        assert LD.max_pairwise_distance(x, chunk=chunk) == pytest.approx(brute, rel=TOL["exact64"])
    sub = LD.max_pairwise_distance(x, max_points=4, seed=1)
    assert sub <= brute * (1 + TOL["exact64"]) <= LD.radius_bound(x) * (1 + TOL["exact64"])
    lad = LD.sigma_ladder(4.0, 0.01, 7)
    assert lad.shape == (7,) and lad[0] == 4.0 and lad[-1] == pytest.approx(0.01, rel=TOL["exact64"])
    np.testing.assert_allclose(lad[:-1] / lad[1:], (4.0 / 0.01) ** (1 / 6), rtol=TOL["exact64"])
    for args, flag in (((0.01, 0.01, 5), "--sigma-min"), ((1.0, 2.0, 5), "--sigma-min"),
                       ((4.0, 0.01, 1), "--num-levels"), ((4.0, 0.0, 5), "--sigma-min"),
                       ((float("nan"), 0.01, 5), "--sigma-max")):
        with pytest.raises(InputError, match=flag):
            LD.sigma_ladder(*args)
    with pytest.raises(InputError, match="2 points"):
        LD.max_pairwise_distance(x[:1])


def _chi_overlap(gamma, dim):
    """The exact probability that ||x||, x ~ N(0, I_dim) (level i, sigma_i = 1), lies within 3 gamma / sqrt(2) of
    sqrt(dim) gamma (level i - 1's typical norm), from the chi distribution's CDF."""
    c, half = math.sqrt(dim) * gamma, 3.0 * gamma / math.sqrt(2.0)
    return stats.chi(dim).cdf(c + half) - stats.chi(dim).cdf(c - half)


def test_J3_the_overlap_is_the_chi_distributions_and_song_and_ermons_ladders_share_it():
    for dim in (64, 784, 3072, 12288):
        g = LD.ladder_ratio(dim)
        assert g > 1 and LD.shell_overlap(g, dim) == pytest.approx(0.5, abs=TOL["exact64"] * 100)
        for gamma in (1.0, 1 + 0.5 * (g - 1), g, 1 + 1.5 * (g - 1)):
            assert abs(LD.shell_overlap(gamma, dim) - _chi_overlap(gamma, dim)) <= TOL["chi_gauss"] / math.sqrt(dim)
    # Song & Ermon 2020's ladders: CIFAR-10 (d 3072, sigma_1 50, L 232), CelebA 64 (d 12288, sigma_1 90, L 500)
    papers = [(3072, 50.0, 232), (12288, 90.0, 500)]
    overlaps = [_chi_overlap((s1 / 0.01) ** (1 / (L - 1)), d) for d, s1, L in papers]
    assert abs(overlaps[0] - overlaps[1]) <= TOL["paper_overlap"] and all(0.5 < o < 0.6 for o in overlaps)
    for d, s1, L in papers:
        ours = LD.num_levels_for(s1, 0.01, d)
        assert (1 - TOL["paper_levels"]) * L <= ours <= L, (d, ours, L)
        # the round trip: at the overlap of the paper's own ratio, the rule gives back the paper's L
        assert LD.num_levels_for(s1, 0.01, d, overlap=float(LD.shell_overlap((s1 / 0.01) ** (1 / (L - 1)), d))) == L
    # in 2-D the overlap never falls to 1/2: the rule does not bind
    assert LD.ladder_ratio(2) is None and LD.num_levels_for(4.0, 0.01, 2, fallback=50) == 50
    assert min(LD.shell_overlap(np.linspace(1, 100, 1000), 2)) > 0.99


# ---- s = F / sigma, the denoiser and the time input (J4, J5, J6) -------------------------------------

def test_J4_J6_the_bayes_optimal_network_gives_the_oracles_denoiser_at_every_level():
    """With F* from the oracle's density gradient, objectives.denoiser is the oracle's posterior mean E[x0 | x~] at
    every ladder level (Tweedie through s = F / sigma); the training target of F is -eps at weight 1."""
    rng = np.random.default_rng(4)
    D = O.denoiser(CFG, oracle_net(MIX, CFG))
    for sigma in LD.sigma_ladder(CFG.sigma_max, CFG.sigma_min, CFG.num_levels):
        x = MIX.sample(rng, 64)[0] + sigma * rng.standard_normal((64, 1))
        np.testing.assert_allclose(D(x, float(sigma)), MIX.denoise_sigma(x, sigma), rtol=TOL["equiv64"],
                                   atol=TOL["equiv64"])
    x0, eps, lv, net_in, _, target, weight = _batch(MIX, CFG, 16, 5)
    np.testing.assert_allclose(net_in, x0 + lv[:, None] * eps, rtol=TOL["exact64"])
    np.testing.assert_allclose(target, -eps, rtol=TOL["exact64"], atol=TOL["exact64"])
    np.testing.assert_allclose(weight, 1.0, rtol=TOL["exact64"])


def test_J5_levels_are_uniform_over_the_ladders_indices_and_the_time_is_ve_t():
    L, per = CFG.num_levels, 100
    u = (np.arange(L * per) + 0.5) / (L * per)                 # an exact stratification of (0, 1)
    lad = LD.sigma_ladder(CFG.sigma_max, CFG.sigma_min, L)
    counts = [(O.level(CFG, u) == s).sum() for s in lad]
    assert counts == [per] * L
    ve = P.make_process("ve", sigma_min=CFG.sigma_min, sigma_max=CFG.sigma_max)
    tau = O.network_time(CFG, lad)
    np.testing.assert_allclose(tau, 1000.0 * ve.t_of_sigma_tilde(lad), rtol=TOL["exact64"], atol=TOL["exact64"] * 1e3)
    np.testing.assert_allclose(tau, 1000.0 * (L - 1 - np.arange(L)) / (L - 1), atol=TOL["exact64"] * 1e3)
    grid = O.sigma_grid(CFG, L, "linspace")                     # the ladder itself at n = L, then 0
    np.testing.assert_allclose(grid[:-1], lad, rtol=TOL["exact64"])
    assert grid[-1] == 0.0 and O.sigma_range(CFG) == (CFG.sigma_min, CFG.sigma_max)
    karras = O.sigma_grid(CFG, 5, "karras")
    assert karras[0] == pytest.approx(CFG.sigma_max) and karras[-2] == pytest.approx(CFG.sigma_min)


# ---- w(lambda), the VE limit and the VP link (J6, J7) -----------------------------------------------

def test_J7_each_ladder_cells_weight_is_recovered_from_the_loss_by_monte_carlo():
    """Per level, 2 E[loss; level = sigma_i] / eps-MSE at a prediction off by delta, against the integral of
    objectives.weighting over the level's cell in lambda; w integrates to 2 and tends to 1 / ln(max / min)."""
    n, delta = 200_000, 0.3
    x0, eps, lv, net_in, _, target, weight = _batch(MIX, CFG, n, 6)
    eps_hat = eps + delta
    loss = _per_example(-eps_hat, target, weight)              # F = -eps_hat (J4)
    lam = -2.0 * np.log(lv)
    fine = np.linspace(-2 * math.log(CFG.sigma_max) - 1, -2 * math.log(CFG.sigma_min) + 1, 200_001)
    w = O.weighting("ncsn", fine, sigma_min=CFG.sigma_min, sigma_max=CFG.sigma_max, num_levels=CFG.num_levels)
    d = 2 * math.log(CFG.sigma_max / CFG.sigma_min) / (CFG.num_levels - 1)
    for s in LD.sigma_ladder(CFG.sigma_max, CFG.sigma_min, CFG.num_levels):
        y = 2.0 * loss * (lv == s) / delta ** 2
        cell = (fine >= -2 * math.log(s) - d / 2) & (fine <= -2 * math.log(s) + d / 2)
        want = np.trapezoid(w[cell], fine[cell])
        assert mc_close(y.mean(), want, y.std() / math.sqrt(n)), (s, y.mean(), want)
    # the trapezoid's only error is at the two jumps of w: at most one grid step times w's height each
    assert abs(np.trapezoid(w, fine) - 2.0) <= 2 * (fine[1] - fine[0]) * w.max()
    assert lam.min() >= fine[0] and lam.max() <= fine[-1]
    big = 10_000                                               # the VE limit: a finite ladder is ~1/L short of it
    many = O.weighting("ncsn", np.array([0.0]), sigma_min=0.01, sigma_max=4.0, num_levels=big)
    assert abs(many[0] * math.log(400.0) - 1.0) <= 2.0 / big


def test_J6_J7_at_equal_lambda_the_vp_oracle_and_the_ncsn_denoiser_agree():
    """A VP (cosine) x_t = alpha x0 + sigma eps, as x~ = x_t / alpha at sigma~ = sigma / alpha: NCSN's denoiser with
    the Bayes-optimal F gives the VP oracle's E[x0 | x_t], and -F* is the VP oracle's E[eps | x_t]."""
    rng = np.random.default_rng(7)
    vp = P.make_process("vp-cosine")
    D = O.denoiser(CFG, oracle_net(MIX, CFG))
    for t in (0.1, 0.4, 0.7):
        a, s = float(vp.alpha(t)), float(vp.sigma(t))
        x0 = MIX.sample(rng, 32)[0]
        xt = a * x0 + s * rng.standard_normal(x0.shape)
        np.testing.assert_allclose(D(xt / a, s / a), MIX.x0_mean(xt, a * a), rtol=TOL["equiv64"], atol=TOL["equiv64"])
        np.testing.assert_allclose(-oracle_F(MIX, xt / a, s / a), MIX.eps_mean(xt, a * a), rtol=TOL["equiv64"],
                                   atol=TOL["equiv64"])
