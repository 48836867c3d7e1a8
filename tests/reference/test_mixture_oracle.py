"""The Gaussian-mixture oracle (derivations/gaussian_oracle.md, G3, G4): the exact route of the solvers.

Independent routes: the density integrated on a 2-D grid (normalisation and the forward moments F4);
Bayes' rule for x_0 integrated on a 2-D grid against scipy's multivariate normal (G4); the score by
central differences of log q (G4); responsibilities from scipy's component densities; a one-component
mixture against GaussianOracle (G1, G2); Monte Carlo for the sampler; a point far from every mode,
where a naive exp-then-normalise gives 0/0.
"""
import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from reference.errors import InputError
from reference.oracle import GaussianMixtureOracle, GaussianOracle
from reference.schedules import Schedule, make_betas
from tolerances import TOL, mc_close

W = [0.3, 0.5, 0.2]
MEANS = [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]


@pytest.fixture
def mix():
    return GaussianMixtureOracle(W, MEANS, cov=COVS)


def _grid(lo=-4.5, hi=4.5, n=721):
    g = np.linspace(lo, hi, n)
    X, Y = np.meshgrid(g, g, indexing="ij")
    return g, np.column_stack([X.ravel(), Y.ravel()])


def _integrate(g, values):
    return np.trapezoid(np.trapezoid(values.reshape(g.size, g.size, *values.shape[1:]), g, axis=1), g, axis=0)


@pytest.mark.parametrize("abar", [1.0, 0.6, 0.05])
def test_G3_mixture_density_is_normalised_with_the_forward_moments_on_a_grid(mix, abar):
    """q at a continuous abar integrates to 1, with mean sqrt(abar) E x_0 and cov abar Cov x_0 + (1 - abar) I (F4)."""
    g, pts = _grid(-7.0, 7.0, 561) if abar < 1 else _grid(n=401)
    p = np.exp(mix.log_prob(pts, abar))
    assert abs(_integrate(g, p) - 1.0) <= TOL["grid64"]
    mean = _integrate(g, pts * p[:, None])
    c = pts - mean
    cov = _integrate(g, c[:, :, None] * c[:, None, :] * p[:, None, None])
    assert np.max(np.abs(mean - math.sqrt(abar) * mix.mean)) <= TOL["grid64"]
    assert np.max(np.abs(cov - (abar * mix.cov + (1 - abar) * np.eye(2)))) <= TOL["grid64"]


@pytest.mark.parametrize("abar", [0.9, 0.3])
def test_G4_posterior_mean_and_responsibilities_are_bayes_rule_on_a_grid(mix, abar):
    """E[x_0 | x_t] by integrating x_0 p_0(x_0) N(x_t; sqrt(abar) x_0, (1 - abar) I) over an x_0 grid;
    P(k | x_t) from scipy's component densities of x_t."""
    g, x0 = _grid(-3.0, 3.5, 651)
    p0 = sum(w * multivariate_normal(m, c).pdf(x0) for w, m, c in zip(W, MEANS, COVS))
    xt = np.array([[-0.7, 0.3], [0.2, 0.1], [1.1, -0.9], [0.0, 1.5]])
    want = []
    for x in xt:
        lik = np.exp(-0.5 * np.sum((x - math.sqrt(abar) * x0) ** 2, axis=1) / (1 - abar))
        want.append(_integrate(g, x0 * (lik * p0)[:, None]) / _integrate(g, lik * p0))
    assert np.max(np.abs(mix.x0_mean(xt, abar) - np.array(want))) <= TOL["grid64"]
    joint = np.column_stack([w * multivariate_normal(math.sqrt(abar) * np.array(m),
                                                     abar * np.array(c) + (1 - abar) * np.eye(2)).pdf(xt)
                             for w, m, c in zip(W, MEANS, COVS)])
    r = mix.responsibilities(xt, abar)
    assert np.max(np.abs(r - joint / joint.sum(axis=1, keepdims=True))) <= TOL["exact64"]


def test_G4_score_is_the_gradient_of_the_log_density(mix, rng):
    x = rng.normal(size=(6, 2))
    a = np.array([0.95, 0.8, 0.5, 0.3, 0.1, 0.01])          # one continuous abar per example
    h = 1e-5
    fd = np.stack([(mix.log_prob(x + h * e, a) - mix.log_prob(x - h * e, a)) / (2 * h) for e in np.eye(2)], axis=1)
    assert np.max(np.abs(mix.score(x, a) - fd) / np.maximum(1.0, np.abs(fd))) <= TOL["fd64"]


def test_G3_G4_one_component_is_the_gaussian_oracle(rng):
    sched = Schedule(make_betas("cosine", 1000), warn=False)
    mean, cov = np.array([0.2, -0.4]), np.array([[0.3, 0.1], [0.1, 0.2]])
    one, gauss = GaussianMixtureOracle([1.0], [mean], cov=[cov]), GaussianOracle(mean, cov=cov)
    x, t = rng.normal(size=(5, 2)), np.array([0, 10, 300, 700, 999])
    for pred in ("eps", "x0", "v"):
        assert np.max(np.abs(one.predict(sched, x, t, pred) - gauss.predict(sched, x, t, pred))) <= TOL["exact64"] * 10
    nats = gauss.nll_bpd(x) * 2 * math.log(2.0)                                    # (G2) in nats per example
    assert np.max(np.abs(-one.log_prob(x, 1.0) - nats)) <= TOL["exact64"]
    diag = GaussianMixtureOracle([1.0], np.zeros((1, 1, 2, 2)), var=np.full((1, 1, 2, 2), 0.3))
    img = rng.normal(size=(3, 1, 2, 2))
    assert np.max(np.abs(diag.predict(sched, img, 200) - GaussianOracle(0.0, var=np.full((1, 2, 2), 0.3))
                         .predict(sched, img, 200))) <= TOL["exact64"]


def test_G4_far_from_every_mode_the_posterior_is_the_nearest_component_without_underflow(mix):
    """Every component density underflows to 0 at x = (60, -40): naive normalisation is 0/0, log-sum-exp is not."""
    x = np.array([[60.0, -40.0]])
    with np.errstate(under="ignore"):
        naive = [w * multivariate_normal(m, c).pdf(x[0]) for w, m, c in zip(W, MEANS, COVS)]
    assert max(naive) == 0.0                                                       # the trap is real
    r = mix.responsibilities(x, 1.0)
    assert np.all(np.isfinite(r)) and abs(r.sum() - 1.0) <= TOL["exact64"]
    k = int(np.argmax(r[0]))
    single = GaussianMixtureOracle([1.0], [MEANS[k]], cov=[COVS[k]])
    assert r[0, k] >= 1 - 1e-12
    assert np.allclose(mix.x0_mean(x, 0.7), single.x0_mean(x, 0.7), rtol=TOL["exact64"], atol=TOL["exact64"])
    assert np.isfinite(mix.log_prob(x, 1.0)).all() and np.isfinite(mix.score(x, 0.7)).all()


def test_G3_sampling_draws_components_with_their_weights_and_moments(mix, rng):
    n = 200000
    x0, labels = mix.sample(rng, n)
    assert x0.shape == (n, 2) and labels.dtype == np.int64
    for k, (w, m, c) in enumerate(zip(W, MEANS, COVS)):
        freq = np.mean(labels == k)
        assert mc_close(freq, w, math.sqrt(w * (1 - w) / n))
        xk = x0[labels == k]
        assert mc_close(xk.mean(axis=0), m, np.sqrt(np.diag(c) / len(xk)))
        se = np.sqrt((np.array(c) ** 2 + np.outer(np.diag(c), np.diag(c))) / len(xk))  # Gaussian Var of S_ij
        assert mc_close(np.cov(xk.T), c, se)
    # point masses (variance 0) are allowed: a mixture of deltas is the ideal denoiser of a finite set
    deltas = GaussianMixtureOracle([0.5, 0.5], [[-1.0], [1.0]], var=0.0)
    assert np.allclose(deltas.sample(rng, 10)[0] ** 2, 1.0)
    assert abs(deltas.x0_mean(np.array([[0.3]]), 0.5)[0, 0] - math.tanh(0.3 * math.sqrt(0.5) / 0.5)) <= TOL["exact64"]


def test_mixture_bad_inputs_are_refused(mix):
    with pytest.raises(InputError, match="exactly one of var"):
        GaussianMixtureOracle(W, MEANS)
    with pytest.raises(InputError, match="positive"):
        GaussianMixtureOracle([0.5, -0.5, 1.0], MEANS, var=0.1)
    with pytest.raises(InputError, match="symmetric"):
        GaussianMixtureOracle([1.0], [[0.0, 0.0]], cov=[[[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(InputError, match="semi-definite"):
        GaussianMixtureOracle([1.0], [[0.0, 0.0]], cov=[[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(InputError, match="shape"):
        mix.x0_mean(np.zeros((3, 3)), 0.5)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        mix.score(np.zeros((3, 2)), 1.5)
    with pytest.raises(InputError, match="alpha_bar < 1"):
        mix.eps_mean(np.zeros((3, 2)), 1.0)
    with pytest.raises(InputError, match="point-mass"):
        GaussianMixtureOracle([1.0], [[0.0]], var=0.0).log_prob(np.zeros((2, 1)), 1.0)
