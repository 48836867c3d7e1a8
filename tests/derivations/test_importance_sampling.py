"""Importance-sampled L_vlb (derivations/importance_sampling.md): I1 the proposal from the loss history, I2 the
weighted estimator (unbiased, lower variance).

Independent routes: a history kept in Python deques; the draws' frequencies (Monte Carlo); the simplex searched
numerically for a better proposal; the bound computed step by step by ``vlb_terms`` as the truth that the
estimator's mean over many draws must hit.
"""
import math
from collections import deque

import numpy as np
import pytest

from reference import losses
from reference import resample
from reference.resample import ImportanceSampler
from reference.schedules import Schedule, make_betas
from tolerances import TOL, mc_close

# improved-diffusion's LossSecondMomentResampler(history_per_term=10, uniform_prob=0.001): typed from the paper's
# code, not imported from the module under test, so a wrong constant there fails these tests
HISTORY, UNIFORM_PROB = 10, 0.001


def test_I1_the_modules_constants_are_improved_diffusions_on_both_sides():
    torch_resample = pytest.importorskip("torch_port.resample")
    for mod in (resample, torch_resample):
        assert (mod.HISTORY, mod.UNIFORM_PROB) == (HISTORY, UNIFORM_PROB), mod.__name__
        s = mod.ImportanceSampler(5)                                    # the constructor's defaults are them too
        assert (s.history.shape[1], s.uniform_prob) == (HISTORY, UNIFORM_PROB), mod.__name__


def test_I1_a_history_of_one_loss_per_step_is_accepted_and_warms_after_one_round_on_both_sides():
    """history = 1 is the smallest history (p_t from the last loss alone, |L_t|); 0 and non-integers are refused."""
    torch_resample = pytest.importorskip("torch_port.resample")
    losses_ = np.array([1.0, 4.0, 0.5, 2.0])
    want = (1 - UNIFORM_PROB) * losses_ / losses_.sum() + UNIFORM_PROB / 4
    for mod in (resample, torch_resample):
        s = mod.ImportanceSampler(4, history=1)
        assert not s.warmed_up
        s.update(np.arange(4), -losses_)                                # the second moment ignores the sign
        assert s.warmed_up, mod.__name__
        np.testing.assert_allclose(np.asarray(s.probabilities()), want, rtol=TOL["exact64"])
        for bad in (0, -1, 1.5, True):
            with pytest.raises(resample.InputError, match="history"):
                mod.ImportanceSampler(4, history=bad)


def test_I1_history_keeps_the_last_ten_losses_and_p_is_uniform_until_warm(rng):
    T = 7
    s = ImportanceSampler(T)
    kept = {t: deque(maxlen=HISTORY) for t in range(T)}
    while True:
        t = rng.integers(0, T, size=5)
        t[:2] = 3                                  # duplicates in one batch are recorded in order
        losses_ = rng.exponential(1.0 + t)
        full_before = all(len(kept[k]) == HISTORY for k in range(T))
        assert s.warmed_up == full_before
        if not full_before:
            assert np.array_equal(s.probabilities(), np.full(T, 1.0 / T))
        s.update(t, losses_)
        for ti, li in zip(t, losses_):
            kept[int(ti)].append(float(li))
        if full_before:
            break
    for k in range(T):
        assert s.history[k].tolist() == list(kept[k]) and s.counts[k] == HISTORY
    root = np.array([math.sqrt(sum(v * v for v in kept[k]) / HISTORY) for k in range(T)])
    want = (1 - UNIFORM_PROB) * root / root.sum() + UNIFORM_PROB / T
    np.testing.assert_allclose(s.probabilities(), want, rtol=TOL["exact64"])
    assert abs(s.probabilities().sum() - 1.0) <= TOL["exact64"]


def test_I1_warm_up_takes_about_370_steps_at_T_1000_and_batch_64():
    """The page's figure: the rarest of 1000 steps is drawn 10 times after ~370 uniform batches of 64."""
    s, rng, steps = ImportanceSampler(1000), np.random.default_rng(0), 0
    while not s.warmed_up:
        t, w = s.sample(rng, 64)
        assert np.all(w == 1.0)
        s.update(t, np.ones(64))
        steps += 1
    assert 330 <= steps <= 420, steps


def test_I1_draws_follow_p_and_the_weights_are_bounded_by_one_over_u(rng):
    T, n = 12, 400_000
    s = ImportanceSampler(T)
    s.history[...] = rng.exponential(1.0, (T, HISTORY)) * np.arange(T)[:, None]   # step 0: all-zero history
    s.counts[...] = HISTORY
    p = s.probabilities()
    assert p[0] == pytest.approx(UNIFORM_PROB / T, rel=TOL["exact64"])        # the uniform share alone
    t, w = s.sample(np.random.default_rng(1), n)
    freq = np.bincount(t, minlength=T) / n
    assert mc_close(freq, p, np.sqrt(p * (1 - p) / n))
    np.testing.assert_allclose(w, 1.0 / (T * p[t]), rtol=TOL["exact64"])
    assert w.max() <= 1.0 / UNIFORM_PROB * (1 + TOL["exact64"]) and w.max() == pytest.approx(1.0 / UNIFORM_PROB)
    # before warm-up the draw is exactly uniform training's: rng.integers(0, T, n), weight 1
    cold = ImportanceSampler(T)
    t1, w1 = cold.sample(np.random.default_rng(5), 100)
    assert np.array_equal(t1, np.random.default_rng(5).integers(0, T, size=100)) and np.all(w1 == 1.0)


def test_I1_I2_second_moment_proposal_minimises_the_variance_on_the_simplex(rng):
    """sum_t m_t / p_t over the simplex: p proportional to sqrt(m) attains (sum sqrt m)^2, and no other p does
    better (random proposals and small perturbations of it); uniform's excess is T sum m - (sum sqrt m)^2."""
    T = 50
    m = rng.lognormal(0.0, 2.0, T)                       # second moments spread over orders of magnitude

    def second_moment(p):
        return float(np.sum(m / p))

    best = np.sqrt(m) / np.sqrt(m).sum()
    floor = np.sqrt(m).sum() ** 2
    assert second_moment(best) == pytest.approx(floor, rel=TOL["exact64"])
    for _ in range(200):
        q = rng.dirichlet(np.ones(T))
        assert second_moment(q) >= floor
        near = best * np.exp(0.05 * rng.standard_normal(T))
        assert second_moment(near / near.sum()) >= floor
    uniform = np.full(T, 1.0 / T)
    assert second_moment(uniform) - floor == pytest.approx(T * m.sum() - floor, rel=TOL["exact64"])
    assert second_moment(uniform) > 2 * floor          # for these m, uniform doubles it (measured 2.2x)


def _model(xt, t):
    tt = t.reshape((-1,) + (1,) * (xt.ndim - 1))
    return np.concatenate([0.6 * xt + 0.02 * np.sin(tt), np.tanh(xt) - 0.3], axis=1)


def test_I2_weighted_estimate_is_unbiased_and_beats_uniform_sampling_monte_carlo(rng):
    """A fixed model and batch, one fixed noise draw per t, so L_t is a table (vlb_terms). The sampler is warmed on
    the losses of fresh noise (as training records them); then the estimate L_t / p_t = w T L_t of the bound's
    sum, over many draws of t: its mean is the sum (5 standard errors, I2), its variance is the exact
    sum_t L_t^2 / p_t - (sum L_t)^2 (5 standard errors of a variance), and below uniform sampling's."""
    s = Schedule(make_betas("cosine", 100), warn=False)
    x0 = -1.0 + 2.0 * rng.integers(0, 17, (8, 1, 3, 3)) / 16
    table = losses.vlb_terms(s, _model, x0, rng.standard_normal((s.T,) + x0.shape), variance="learned",
                             levels=17)["terms"].mean(axis=1)                     # L_t (T,), batch means
    truth = table.sum()
    sampler = ImportanceSampler(s.T)
    for _ in range(HISTORY):                                                      # the history of training
        fresh = losses.vlb_terms(s, _model, x0, rng, variance="learned", levels=17)["terms"]   # (T, N)
        sampler.update(np.arange(s.T), fresh.mean(axis=1))
    assert sampler.warmed_up
    M = 200_000
    cold = ImportanceSampler(s.T)                                                 # uniform: not warmed, w = 1
    for name, smp in (("importance", sampler), ("uniform", cold)):
        probs = smp.probabilities()
        t, w = smp.sample(np.random.default_rng(7), M)
        est = w * s.T * table[t]                                                  # (I2)  w T L_t
        assert mc_close(est.mean(), truth, est.std() / math.sqrt(M)), name
        var = float(np.sum(table**2 / probs) - truth**2)                         # (I2)
        mu4 = float(np.sum(probs * (table / probs - truth) ** 4))
        assert mc_close(est.var(), var, math.sqrt(max(mu4 - var**2, 0.0) / M)), name
        if name == "importance":
            var_is = var
    var_uniform = float(s.T * np.sum(table**2) - truth**2)
    # measured 2.3e-5: the bound's few large terms (V4) are what the history learns to draw
    assert var_is < 1e-3 * var_uniform, (var_is, var_uniform)
