"""NumPy reference vs torch port in float64 for issue 16's quantities: the decoder on L levels (L9), the learned
variance's split and interpolation (V1), one term of the bound for a batch of mixed t (L1), the training losses
and their gradients (V2-V4: the reference's hand-written gradient against the port's autograd, two independent
routes), the importance sampler (I1, I2), learned-variance sampling with respacing (V5), and the same refusals.

Inputs drawn once in NumPy. Tolerance TOL["cross64"] (relative above 1, absolute below: tests/crosscheck.py).
"""
import numpy as np
import pytest
import torch

from crosscheck import close, schedule_pair
from reference import diffusion as RD
from reference import losses as RL
from reference import resample as RR
from reference import samplers as RS
from reference import vlb as RV
from reference.errors import InputError
from reference.schedules import make_betas
from torch_port import diffusion as TD
from torch_port import losses as TL
from torch_port import resample as TR
from torch_port import samplers as TS
from torch_port import vlb as TV

tt = torch.from_numpy
PREDS = ("eps", "x0", "v")
SCHEDS = {"linear-40": schedule_pair(make_betas("linear", 40, beta_end=0.3)),
          "cosine-1000": schedule_pair(make_betas("cosine", 1000))}


def _grid(rng, levels, shape):
    x = -1.0 + 2.0 * rng.integers(0, levels, shape) / (levels - 1)
    x.flat[0], x.flat[1] = -1.0, 1.0
    return x


def _batch(rng, ref, levels, C=2, n=6):
    x0 = _grid(rng, levels, (n, C, 2, 2)) if levels else rng.uniform(-1, 1, (n, C, 2, 2))
    eps = rng.standard_normal(x0.shape)
    t = np.array([0, 0, 3, ref.T // 2, ref.T - 1, 0][:n])
    return x0, RD.q_sample(ref, x0, t, eps), t, eps


@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("approx", ["exact", "tanh"])
def test_L9_decoder_on_L_levels_matches_reference(levels, approx):
    rng = np.random.default_rng(levels)
    x = _grid(rng, levels, (40,))
    # tanh only where it is well conditioned: a small mass is a difference of two tanh CDFs near 1, which
    # amplifies ulps (tests/cross/test_losses_cross.py::test_L6_tanh_decoder_in_the_tails_agrees_to_its_conditioning)
    mu, log_scale = rng.normal(0, 1.5, 40), rng.uniform(-6, 1, 40)
    want = RL.discretized_gaussian_log_likelihood(x, mu, log_scale, approx, levels)
    got = TL.discretized_gaussian_log_likelihood(tt(x), tt(mu), tt(log_scale), approx, levels)
    ok = want > -9.0 if approx == "tanh" else np.ones(40, bool)   # tanh: masses below 1e-4 cancel its CDFs
    close(got[ok], want[ok])


@pytest.mark.parametrize("sname", list(SCHEDS))
def test_V1_split_and_learned_log_variance_match_reference(sname):
    ref, port = SCHEDS[sname]
    rng = np.random.default_rng(2)
    out, xt = rng.standard_normal((6, 4, 2, 2)), rng.standard_normal((6, 2, 2, 2))
    t = np.array([0, 1, 2, ref.T // 3, ref.T - 2, ref.T - 1])
    r_mean, r_u = RD.split_output(out, "learned")
    p_mean, p_u = TD.split_output(tt(out), "learned")
    close(p_mean, r_mean), close(p_u, r_u)
    close(TD.learned_log_variance(port, tt(r_u.copy()), tt(t)), RD.learned_log_variance(ref, r_u, t))
    for pred in PREDS:
        r = RD.p_mean_variance(ref, out, xt, t, pred, "learned")
        p = TD.p_mean_variance(port, tt(out), tt(xt), tt(t), pred, "learned")
        for k in ("mean", "variance", "log_variance", "x0", "eps"):
            close(getattr(p, k), getattr(r, k))


@pytest.mark.parametrize("levels", [17, 256, None])
@pytest.mark.parametrize("variance", ["learned", "fixed_small", "fixed_large"])
@pytest.mark.parametrize("pred", PREDS)
def test_L1_V2_V3_vlb_term_and_gradient_match_reference(pred, variance, levels):
    ref, port = SCHEDS["linear-40"]
    rng = np.random.default_rng(3)
    x0, xt, t, _ = _batch(rng, ref, levels, C=1)
    out = 0.5 * rng.standard_normal((6, 2 if variance == "learned" else 1, 2, 2))
    for stop in (False, True):
        r_terms, r_grad = RV.vlb_term_and_grad(ref, out, x0, xt, t, pred, variance, levels, stop_mean=stop)
        p_terms, p_grad = TV.vlb_term_and_grad(port, tt(out), tt(x0), tt(xt), tt(t), pred, variance, levels,
                                               stop_mean=stop)
        close(p_terms, r_terms)
        close(p_grad, r_grad)          # hand-written (reference) against autograd (port)
    decoder = "gaussian" if levels is None else "discretized"
    close(TL.vlb_term(port, tt(out), tt(x0), tt(xt), tt(t), pred, variance, False, decoder, levels or 256),
          RL.vlb_term(ref, out, x0, xt, t, pred, variance, False, decoder, levels or 256))


@pytest.mark.parametrize("loss,variance", [("hybrid", "learned"), ("vlb", "learned"), ("vlb", "fixed_small"),
                                           ("simple", "fixed_small")])
@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("sname", list(SCHEDS))
def test_V4_I2_training_losses_and_gradients_match_reference(sname, pred, loss, variance):
    ref, port = SCHEDS[sname]
    rng = np.random.default_rng(4)
    x0, xt, t, eps = _batch(rng, ref, 17, C=1)
    out = 0.5 * rng.standard_normal((6, 2 if variance == "learned" else 1, 2, 2))
    w = rng.uniform(0.1, 5.0, 6) if loss == "vlb" else None
    r_val, r_grad, r_terms = RV.training_loss_and_grad(ref, out, x0, xt, t, eps, pred, loss, variance, 0.01, w,
                                                       levels=17)
    p_val, p_grad, p_terms = TV.training_loss_and_grad(port, tt(out), tt(x0), tt(xt), tt(t), tt(eps), pred, loss,
                                                       variance, 0.01, None if w is None else tt(w), levels=17)
    close(p_val, r_val)
    close(p_grad, r_grad)
    assert (p_terms is None) == (r_terms is None)
    if r_terms is not None:
        close(p_terms, r_terms)


def test_I1_I2_importance_sampler_matches_reference():
    rng = np.random.default_rng(5)
    T = 30
    r, p = RR.ImportanceSampler(T), TR.ImportanceSampler(T)
    while not r.warmed_up:
        t = rng.integers(0, T, 16)
        t[:3] = 4                                               # repeats within a batch, in order
        losses = rng.exponential(1.0 + t)
        r.update(t, losses)
        p.update(tt(t), tt(losses))
        assert p.warmed_up == r.warmed_up
        close(p.probabilities(), r.probabilities())
    close(p.history, r.history)
    assert np.array_equal(p.counts.numpy(), r.counts)
    t = rng.integers(0, T, 50)
    close(p.weights(tt(t)), r.weights(t))
    state = r.state_dict()                                      # one checkpoint format: either side loads it
    q = TR.ImportanceSampler(T)
    q.load_state_dict(state)
    assert q.warmed_up
    close(q.probabilities(), r.probabilities())
    t_p, w_p = p.sample(torch.Generator().manual_seed(0), 1000)
    close(w_p, r.weights(t_p.numpy()))                          # draws differ by generator; weights are (I2)'s


@pytest.mark.filterwarnings("ignore::reference.schedules.PriorMismatchWarning")  # leading starts at 900 on purpose
@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_V5_learned_variance_sampling_with_respacing_matches_reference(spacing):
    ref, port = SCHEDS["cosine-1000"]
    rng = np.random.default_rng(6)
    x_T = rng.standard_normal((8, 1, 2, 2))
    noises = [rng.standard_normal(x_T.shape) for _ in range(10)]

    def r_net(xt, t):
        return np.concatenate([0.4 * xt, np.tanh(xt)], axis=1)

    def p_net(xt, t):
        return torch.cat([0.4 * xt, torch.tanh(xt)], dim=1)

    for sampler in ("ddpm", "ddim"):
        want = RS.sample_loop(ref, r_net, x_T, noises, sampler, 10, spacing, eta=0.5, variance="learned").x
        got = TS.sample_loop(port, p_net, tt(x_T), [tt(z) for z in noises], sampler, 10, spacing, eta=0.5,
                             variance="learned").x
        close(got, want)


def test_L9_V1_bound_with_learned_variances_on_17_levels_matches_reference():
    ref, port = SCHEDS["linear-40"]
    rng = np.random.default_rng(7)
    x0 = _grid(rng, 17, (4, 1, 2, 2))
    noise = rng.standard_normal((ref.T,) + x0.shape)
    r = RL.vlb_terms(ref, lambda x, t: np.concatenate([0.3 * x, 0 * x + 0.2], 1), x0, noise, variance="learned",
                     levels=17)
    p = TL.vlb_terms(port, lambda x, t: torch.cat([0.3 * x, 0 * x + 0.2], 1), tt(x0), tt(noise), variance="learned",
                     levels=17)
    for k in ("prior", "terms", "total"):
        close(p[k], r[k])


G17 = np.full((2, 3), -1.0 + 2.0 / 16)


@pytest.mark.parametrize("what,call", [
    ("levels too few", lambda m, s: m.discretized_gaussian_log_likelihood(G17, 0.0, 0.0, levels=1)),
    ("off the 17 grid", lambda m, s: m.discretized_gaussian_log_likelihood(G17 + 0.01, 0.0, 0.0, levels=17)),
    ("digits on the 8-bit grid", lambda m, s: m.discretized_gaussian_log_likelihood(G17, 0.0, 0.0)),
    ("odd channels", lambda m, s: m.vlb_terms(s, lambda x, t: x, G17, None, variance="learned", levels=17)),
])
def test_same_bad_inputs_raise_the_same_InputError(what, call):
    ref, port = SCHEDS["linear-40"]
    msgs = []
    for mod, sched in ((RL, ref), (TL, port)):
        with pytest.raises(InputError) as e:
            call(mod, sched)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1], what
    for mod in (RV, TV):
        with pytest.raises(InputError, match="hybrid' trains learned variances"):
            mod.check_loss("hybrid", "fixed_small")


@pytest.mark.parametrize("name", sorted(SCHEDS))
def test_best_step_variance_same_on_both_sides(name, rng):
    """(V6) The best-variance terms and variances from one set of fixed_small terms, and the same refusal."""
    ref, port = SCHEDS[name]
    small = rng.uniform(0.0, 2.0, ref.T)
    r_terms, r_var = RV.best_step_variance(ref, small)
    p_terms, p_var = TV.best_step_variance(port, tt(small))
    close(p_terms, r_terms)
    close(p_var[1:], r_var[1:])
    assert torch.isnan(p_var[0]) and np.isnan(r_var[0])
    msgs = []
    for mod, sched in ((RV, ref), (TV, port)):
        with pytest.raises(InputError) as e:
            mod.best_step_variance(sched, -small)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
