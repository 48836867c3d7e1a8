"""The bound and the losses (derivations/elbo.md): L1 split, L2 Gaussian KL, L3 weighted eps MSE,
L4 L_simple, L5 SNR weights / min-SNR-gamma, L6 discretised decoder, L7 bits/dim, L8 prior term.

Independent routes: the chain-level bound E_q[log q(x_{1:T}|x_0) - log p(x_{0:T})] by simulating whole
forward chains (L1, L7); numerical integration on a grid (L2, L6); Monte Carlo of the prior KL with x_T
from the iterated chain (L8); the KL of the actual posterior and model Gaussians against the claimed
closed-form weights (L3, L4, L5).
"""
import math

import numpy as np
import pytest

from reference import diffusion, losses
from reference.schedules import Schedule, make_betas
from tolerances import TOL, mc_close

LN2 = math.log(2.0)


def _log_normal(x, mean, log_var):
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * np.exp(-log_var))


def _sum_dims(a):
    return a.reshape(a.shape[0], -1).sum(axis=1)


def _wrong_model(xt, t):
    """Any network will do for the bound's identities; this one is deliberately not the optimum."""
    return 0.5 * xt - 0.1 + 0.05 * t.reshape((-1,) + (1,) * (xt.ndim - 1))


@pytest.mark.parametrize("decoder,variance", [("discretized", "fixed_large"), ("gaussian", "fixed_small")])
def test_L1_L7_split_bound_equals_the_chain_level_bound_monte_carlo(decoder, variance, rng):
    s = Schedule(make_betas("linear", 6, beta_start=0.05, beta_end=0.5), warn=False)
    n, D = 20000, 2
    if decoder == "discretized":   # 8-bit data, including the edge bin -1
        x0 = np.tile(np.array([[-1.0, -1.0 + 2 * 150 / 255]]), (n, 1))
    else:
        x0 = rng.uniform(-1, 1, (n, D))
    # The chain-level bound, by simulating the forward Markov chain (F1): log q(x_{1:T}|x0) - log p(x_{0:T}).
    chain, prev, log_ratio = [], x0, np.zeros(n)
    for t in range(s.T):
        xt = diffusion.q_step(s, prev, t, rng.standard_normal(x0.shape))
        log_ratio += _sum_dims(_log_normal(xt, np.sqrt(s.alphas[t]) * prev, np.log(s.betas[t])))
        chain.append(xt)
        prev = xt
    log_ratio -= _sum_dims(_log_normal(chain[-1], 0.0, 0.0))                      # log p(x_T), N(0, I)
    for t in range(s.T):
        tt = np.full(n, t)
        p = diffusion.p_mean_variance(s, _wrong_model(chain[t], tt), chain[t], tt, "eps", variance)
        if t > 0:
            log_ratio -= _sum_dims(_log_normal(chain[t - 1], p.mean, p.log_variance))
        elif decoder == "discretized":
            log_ratio -= _sum_dims(losses.discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance))
        else:
            log_ratio -= _sum_dims(_log_normal(x0, p.mean, p.log_variance))
    chain_bpd = log_ratio / (D * LN2)                                               # (L7)
    # The split bound (L1): prior KL + per-step KLs + decoder, each from one independent draw of x_t.
    split = losses.vlb_terms(s, _wrong_model, x0, rng, "eps", variance, decoder=decoder)["total"]
    se = math.sqrt(chain_bpd.var() / n + split.var() / n)
    assert mc_close(split.mean(), chain_bpd.mean(), se), (split.mean(), chain_bpd.mean(), se)
    if decoder == "discretized":   # a bound on -log2 of a probability mass: never negative (L7)
        assert np.all(split >= 0)
        # bits_per_dim is the batch mean of the per-example totals (same noise)
        bpd = losses.bits_per_dim(s, _wrong_model, x0[:64], np.random.default_rng(1), "eps", variance)
        per_example = losses.vlb_terms(s, _wrong_model, x0[:64], np.random.default_rng(1), "eps", variance)["total"]
        assert abs(bpd - per_example.mean()) <= TOL["exact64"]


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 1.5), (1.0, 2.0, 0.0, 0.7),
                                         (-0.1, 0.05, 0.0, 0.1)])
def test_L2_gaussian_kl_matches_grid_integration(m1, s1, m2, s2):
    """KL = integral of p1 log(p1/p2), by the trapezoid rule on a grid covering p1's mass."""
    x = np.linspace(m1 - 14 * s1, m1 + 14 * s1, 400001)
    lp1 = _log_normal(x, m1, 2 * math.log(s1))
    lp2 = _log_normal(x, m2, 2 * math.log(s2))
    kl_grid = np.trapezoid(np.exp(lp1) * (lp1 - lp2), x)
    kl = losses.normal_kl(m1, 2 * math.log(s1), m2, 2 * math.log(s2))
    assert abs(kl - kl_grid) <= TOL["grid64"] * max(1.0, kl_grid)
    assert kl >= 0


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_L3_fixed_variance_kl_is_weighted_eps_mse(variance, rng):
    s = Schedule(make_betas("linear", 1000), warn=False)
    t = np.array([1, 2, 10, 100, 500, 999])
    x0, eps = rng.uniform(-1, 1, (6, 3, 4, 4)), rng.standard_normal((6, 3, 4, 4))
    xt = diffusion.q_sample(s, x0, t, eps)
    eps_theta = eps + 0.2 * rng.standard_normal(eps.shape)              # a wrong prediction
    q_mean, q_var, q_log_var = diffusion.q_posterior(s, x0, xt, t)
    p = diffusion.p_mean_variance(s, eps_theta, xt, t, "eps", variance)
    kl = _sum_dims(losses.normal_kl(q_mean, q_log_var, p.mean, p.log_variance))
    D = x0[0].size
    sigma2 = np.exp(p.log_variance[:, 0, 0, 0])
    r = s.posterior_variance[t] / sigma2
    C = 0.5 * D * (r - 1 - np.log(r))                                   # theta-free part
    lam = s.betas[t] ** 2 / (2 * sigma2 * s.alphas[t] * (1 - s.alpha_bar[t]))   # (L3) weight
    mse = _sum_dims((eps - eps_theta) ** 2)
    # normal_kl adds O(1) terms (the ratio of variances, -1) per element, so its absolute rounding is a
    # few ulp per element: the tolerance scales with D and with the size of the terms compared.
    assert np.all(np.abs((kl - C) - lam * mse) <= TOL["exact64"] * (D + kl + C))


def test_L4_simple_loss_is_the_kl_without_its_weight(rng):
    """Per example: (KL - C) / lambda_t = ||eps - eps_theta||^2 = D * simple_loss (a mean over elements)."""
    s = Schedule(make_betas("cosine", 1000), warn=False)
    for t in [1, 50, 500, 998]:
        x0, eps = rng.uniform(-1, 1, (1, 2, 3, 3)), rng.standard_normal((1, 2, 3, 3))
        xt = diffusion.q_sample(s, x0, t, eps)
        out = eps + 0.3 * rng.standard_normal(eps.shape)
        q_mean, _, q_log_var = diffusion.q_posterior(s, x0, xt, t)
        p = diffusion.p_mean_variance(s, out, xt, t, "eps", "fixed_large")
        kl = float(losses.normal_kl(q_mean, q_log_var, p.mean, p.log_variance).sum())
        sigma2 = s.betas[t]
        r = s.posterior_variance[t] / sigma2
        C = 0.5 * x0.size * (r - 1 - math.log(r))
        lam = s.betas[t] ** 2 / (2 * sigma2 * s.alphas[t] * (1 - s.alpha_bar[t]))
        loss = losses.simple_loss(s, out, x0, t, eps, "eps")
        # absolute rounding of normal_kl: a few ulp per element (see the L3 test)
        assert abs((kl - C) - lam * x0.size * loss) <= TOL["exact64"] * (x0.size + kl + C)


def test_L5_kl_is_half_the_snr_drop_times_x0_error(rng):
    """sigma^2 = beta~: KL(q(x_{t-1}|x_t,x0) || p) = (snr_{t-1} - snr_t)/2 ||x0 - x0_hat||^2 exactly (C_t = 0)."""
    s = Schedule(make_betas("linear", 1000), warn=False)
    t = np.array([1, 2, 10, 100, 500, 999])
    x0, eps = rng.uniform(-1, 1, (6, 2, 5)), rng.standard_normal((6, 2, 5))
    xt = diffusion.q_sample(s, x0, t, eps)
    x0_hat = x0 + 0.1 * rng.standard_normal(x0.shape)
    q_mean, _, q_log_var = diffusion.q_posterior(s, x0, xt, t)
    p = diffusion.p_mean_variance(s, x0_hat, xt, t, "x0", "fixed_small")
    kl = _sum_dims(losses.normal_kl(q_mean, q_log_var, p.mean, p.log_variance))
    # SNR from the product table (S7), evaluated by hand: abar / (1 - abar)
    snr = s.alpha_bar / (1 - s.alpha_bar)
    want = 0.5 * (snr[t - 1] - snr[t]) * _sum_dims((x0 - x0_hat) ** 2)
    # absolute rounding of normal_kl: a few ulp per element (see the L3 test); at t = 999 the KL is
    # ~1e-8 per element, so a relative comparison would measure only that rounding.
    D = x0[0].size
    assert np.all(np.abs(kl - want) <= TOL["exact64"] * (D + want))


@pytest.mark.parametrize("gamma", [1.0, 5.0, 1e6])
def test_L5_min_snr_weights_agree_across_parameterisations(gamma, rng):
    """Outputs describing the SAME x0_hat in the three parameterisations give the same min-SNR loss,
    and it is min(snr, gamma) ||x0 - x0_hat||^2 (averaged over elements)."""
    s = Schedule(make_betas("cosine", 1000), warn=False)
    t = np.array([0, 3, 100, 400, 700, 999])
    x0, eps = rng.uniform(-1, 1, (6, 2, 4)), rng.standard_normal((6, 2, 4))
    xt = diffusion.q_sample(s, x0, t, eps)
    x0_hat = x0 + 0.1 * rng.standard_normal(x0.shape)
    eps_hat = diffusion.predict_eps(s, xt, t, x0_hat, "x0")                 # (R2)
    out = {"x0": x0_hat, "eps": eps_hat, "v": diffusion.v_target(s, x0_hat, t, eps_hat)}   # (R3)
    snr = s.alpha_bar[t] / (1 - s.alpha_bar[t])
    want = np.mean(np.minimum(snr, gamma)[:, None, None] * (x0 - x0_hat) ** 2)
    for prediction, o in out.items():
        got = losses.simple_loss(s, o, x0, t, eps, prediction, weighting="min_snr", gamma=gamma)
        assert abs(got / want - 1) <= TOL["exact64"], prediction
    # "snr" weighting turns every parameterisation into the plain eps-MSE (gamma = inf)
    eps_mse = losses.simple_loss(s, out["eps"], x0, t, eps, "eps")
    for prediction, o in out.items():
        got = losses.simple_loss(s, o, x0, t, eps, prediction, weighting="snr")
        assert abs(got / eps_mse - 1) <= TOL["exact64"], prediction


def test_L6_discretised_decoder_is_a_distribution_and_integrates_the_density(rng):
    levels = -1.0 + 2.0 * np.arange(256) / 255.0                                 # the 256 bin centres
    for mean, log_scale in [(0.0, math.log(0.5)), (0.93, math.log(0.01)), (-1.4, math.log(0.2)),
                            (0.2, math.log(1e-3)), (3.0, 0.0)]:
        ll = losses.discretized_gaussian_log_likelihood(levels, mean, log_scale)
        assert abs(np.exp(ll).sum() - 1.0) <= TOL["exact64"]                  # telescoping over the bins
        sigma = math.exp(log_scale)
        for k in [0, 1, 127, 200, 254, 255]:
            lo = levels[k] - 1 / 255 if k > 0 else min(mean, levels[k]) - 14 * sigma    # edge bins: to -inf
            hi = levels[k] + 1 / 255 if k < 255 else max(mean, levels[k]) + 14 * sigma  # and to +inf
            x = np.linspace(lo, hi, 200001)
            mass = np.trapezoid(np.exp(_log_normal(x, mean, 2 * log_scale)), x)
            assert abs(math.exp(ll[k]) - mass) <= TOL["grid64"] * max(mass, 1e-3), (mean, sigma, k)


def test_L8_prior_term_matches_monte_carlo_kl(rng):
    """KL(q(x_T|x0) || N(0,1)) = E[log q(x_T|x0) - log N(x_T; 0, 1)], with x_T from the iterated chain."""
    s = Schedule(make_betas("linear", 50), warn=False)                  # alpha_bar_T ~ 0.6: a big L_T
    n = 40000
    x0 = np.tile(np.array([[1.0, -0.3, 0.0]]), (n, 1))
    x = x0
    for t in range(s.T):
        x = diffusion.q_step(s, x, t, rng.standard_normal(x.shape))    # (F1), not the closed form
    a = np.prod(1.0 - s.betas)                                           # (F2) by hand
    log_q = _log_normal(x, math.sqrt(a) * x0, math.log(1 - a))
    sample = log_q - _log_normal(x, 0.0, 0.0)                            # (n, 3) per-dimension log-ratios
    kl = losses.prior_kl(s, x0[:1])[0]                                   # (L8)
    assert mc_close(sample.mean(0), kl, sample.std(0) / math.sqrt(n)), (sample.mean(0), kl)
    # Schedule.prior_bpd is the same term in bits per dimension, for x0^2 = 1 (the default) and 0
    assert abs(s.prior_bpd() - kl[0] / LN2) <= TOL["exact64"]
    assert abs(s.prior_bpd(0.0) - kl[2] / LN2) <= TOL["exact64"]
