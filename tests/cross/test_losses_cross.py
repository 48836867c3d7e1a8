"""NumPy reference vs torch port: L_simple and its weightings (L4, L5, R6), the Gaussian KL (L2), the
decoder likelihood (L6), the prior term (L8), every term of the bound (L1, L7) and the Gaussian
oracle (G1, G2). Inputs drawn ONCE in NumPy, float64; the bound runs the NumPy oracle on the
reference side and the port's torch oracle (torch_port.oracle) on the torch side.

Tolerance: TOL["cross64"] as ``assert_allclose(rtol=tol, atol=tol)`` (relative above 1, absolute
below), except the tanh decoder in its tails (see test_L6_tanh_decoder_in_the_tails...).
"""

import numpy as np
import pytest
import torch

from reference import losses as RL
from reference import oracle as RO
from reference import schedules as RS
from reference.errors import InputError
from torch_port import losses as TL
from torch_port import oracle as TO
from crosscheck import close, schedule_pair
from tolerances import TOL

TOLX = TOL["cross64"]
PREDS = ("eps", "x0", "v")
tt = torch.from_numpy


SCHEDS = {"linear": schedule_pair(RS.make_betas("linear", 1000)),
          "zero-terminal": schedule_pair(RS.rescale_zero_terminal_snr(RS.make_betas("cosine", 1000)))}
SMALL = {"linear-20": schedule_pair(RS.make_betas("linear", 20, beta_end=0.4)), "cosine-40": schedule_pair(RS.make_betas("cosine", 40))}


def _grid8(rng, shape):
    """8-bit data on the grid -1 + 2k/255, with both edge bins present."""
    x = rng.integers(0, 256, shape) / 127.5 - 1.0
    x.flat[0], x.flat[1] = -1.0, 1.0
    return x


# ---- L_simple -------------------------------------------------------------------------------

@pytest.mark.parametrize("weighting,gamma", [(None, 5.0), ("snr", 5.0), ("min_snr", 5.0), ("min_snr", 0.5)])
@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("sname", list(SCHEDS))
def test_L4_L5_R6_simple_loss_and_grad_match_reference(sname, pred, weighting, gamma):
    ref, port = SCHEDS[sname]
    rng = np.random.default_rng(1)
    x0, eps, out = (rng.normal(size=(3, 5, 2, 2)) for _ in range(3))
    t = np.array([0, 417, 999])  # includes paper steps 1 and T (snr = 0 for the zero-terminal schedule)
    want = RL.simple_loss(ref, out, x0, t, eps, pred, weighting, gamma)
    got = TL.simple_loss(port, tt(out), tt(x0), tt(t), tt(eps), pred, weighting, gamma)
    assert got.ndim == 0
    close(got, want)
    want_l, want_g = RL.simple_loss_and_grad(ref, out, x0, t, eps, pred, weighting, gamma)
    got_l, got_g = TL.simple_loss_and_grad(port, tt(out), tt(x0), tt(t), tt(eps), pred, weighting, gamma)
    close(got_l, want_l)
    close(got_g, want_g)
    for t_w in (t, 417):  # the weights themselves, for a batch of indices and for one int
        close(TL.snr_weights(port, tt(np.asarray(t_w)) if np.ndim(t_w) else t_w, pred, weighting, gamma),
              RL.snr_weights(ref, t_w, pred, weighting, gamma))


# ---- the Gaussian KL and the decoders --------------------------------------------------------

def test_L2_normal_kl_matches_reference_with_broadcasting():
    rng = np.random.default_rng(2)
    m1, lv1 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    m2, lv2 = rng.normal(size=(3,)), rng.normal(size=(4, 1)) * 3
    close(TL.normal_kl(tt(m1), tt(lv1), tt(m2), tt(lv2)), RL.normal_kl(m1, lv1, m2, lv2))
    close(TL.normal_kl(tt(m1), tt(lv1), 0.0, 0.0), RL.normal_kl(m1, lv1, 0.0, 0.0))


@pytest.mark.parametrize("case", ["typical", "far-means", "tiny-scales", "wide-scales"])
def test_L6_exact_decoder_matches_reference(case):
    rng = np.random.default_rng(3)
    x = _grid8(rng, (4, 3, 4, 4))
    means = {"typical": x + rng.normal(0, 0.02, x.shape), "far-means": rng.normal(0, 30, x.shape),
             "tiny-scales": x + rng.normal(0, 0.01, x.shape), "wide-scales": rng.normal(0, 1, x.shape)}[case]
    log_scales = {"typical": np.full(x.shape, -4.0), "far-means": rng.normal(-2, 1, x.shape),
                  "tiny-scales": np.full(x.shape, -12.0), "wide-scales": rng.normal(1, 1, x.shape)}[case]
    want = RL.discretized_gaussian_log_likelihood(x, means, log_scales, "exact")
    got = TL.discretized_gaussian_log_likelihood(tt(x), tt(means), tt(log_scales), "exact")
    assert np.all(np.isfinite(want))
    # log_ndtr in both libraries: ~1e-15 relative, so relative to |log P| (up to ~1e5 far in the tails)
    close(got, want)


def test_L6_tanh_decoder_matches_reference_where_well_conditioned():
    rng = np.random.default_rng(4)
    x = _grid8(rng, (4, 3, 4, 4))
    means, log_scales = x + rng.normal(0, 0.01, x.shape), rng.uniform(-3, -1, x.shape)
    want = RL.discretized_gaussian_log_likelihood(x, means, log_scales, "tanh")
    assert np.exp(want).min() > 1e-4  # no bin mass below 1e-4: rounding in P stays << 1e-10 relative
    close(TL.discretized_gaussian_log_likelihood(tt(x), tt(means), tt(log_scales), "tanh"), want)


def test_L6_tanh_decoder_in_the_tails_agrees_to_its_conditioning():
    """The tanh CDF is 1/2 (1 + tanh(.)): an absolute rounding error ~ eps64 per CDF value (np.tanh
    and torch.tanh differ by up to 1/2 ulp), so a bin mass P made as a difference of two such
    values carries a relative error ~ 4 eps64 / P: |delta log P| <= cross64 + 4 eps64 / P."""
    rng = np.random.default_rng(5)
    x = _grid8(rng, (4, 3, 4, 4))
    means, log_scales = rng.normal(0, 0.5, x.shape), rng.normal(-3, 1, x.shape)
    want = RL.discretized_gaussian_log_likelihood(x, means, log_scales, "tanh")
    got = TL.discretized_gaussian_log_likelihood(tt(x), tt(means), tt(log_scales), "tanh").numpy()
    bound = TOLX + 4 * np.finfo(np.float64).eps / np.exp(want)
    assert np.all(np.abs(got - want) <= bound)
    assert np.exp(want).min() < 1e-8  # the tails are really exercised


def test_gaussian_decoder_and_L8_prior_match_reference():
    rng = np.random.default_rng(6)
    x, m, ls = rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    close(TL.gaussian_log_likelihood(tt(x), tt(m), tt(ls)), RL.gaussian_log_likelihood(x, m, ls))
    for ref, port in SCHEDS.values():
        close(TL.prior_kl(port, tt(x)), RL.prior_kl(ref, x))


# ---- the bound, term by term, with the Gaussian oracle as the network -----------------------

def _oracles(kind):
    if kind == "diag":
        mean, var = np.array([[0.1, -0.2], [0.3, 0.0]]), np.array([[0.05, 0.1], [0.2, 0.08]])
        return RO.GaussianOracle(mean, var=var), TO.GaussianOracle(mean, var=var)
    mean, cov = np.array([0.2, -0.1, 0.0]), np.array([[0.3, 0.1, 0.0], [0.1, 0.2, 0.05], [0.0, 0.05, 0.1]])
    return RO.GaussianOracle(mean, cov=cov), TO.GaussianOracle(mean, cov=cov)


@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("decoder", ["discretized", "gaussian"])
def test_L1_L7_every_vlb_term_matches_reference(decoder, pred, variance, clip_x0):
    ref, port = SMALL["linear-20"]
    r_or, t_or = _oracles("diag" if decoder == "discretized" else "full")
    rng = np.random.default_rng(7)
    x0 = r_or.sample(rng, 3)
    if decoder == "discretized":
        x0 = np.round((np.clip(x0, -1, 1) + 1) * 127.5) / 127.5 - 1.0  # onto the 8-bit grid
    noise = rng.normal(size=(ref.T,) + x0.shape)
    args = (pred, variance, clip_x0, decoder)
    want = RL.vlb_terms(ref, r_or.denoiser(ref, pred), x0, noise, *args)
    got = TL.vlb_terms(port, t_or.denoiser(port, pred), tt(x0), tt(noise), *args)
    assert got.keys() == want.keys() and got["terms"].shape == want["terms"].shape
    for k in want:
        close(got[k], want[k])


def test_L7_bits_per_dim_matches_reference():
    ref, port = SMALL["cosine-40"]
    r_or, t_or = _oracles("diag")
    rng = np.random.default_rng(9)
    x0 = np.round((np.clip(r_or.sample(rng, 3), -1, 1) + 1) * 127.5) / 127.5 - 1.0
    noise = rng.normal(size=(ref.T,) + x0.shape)
    got = TL.bits_per_dim(port, t_or.denoiser(port, "v"), tt(x0), tt(noise), "v", "fixed_large", True)
    assert isinstance(got, float)
    close(got, RL.bits_per_dim(ref, r_or.denoiser(ref, "v"), x0, noise, "v", "fixed_large", True))


@pytest.mark.parametrize("kind", ["diag", "full"])
@pytest.mark.parametrize("sname", list(SMALL))
def test_G1_G2_oracle_matches_reference(sname, kind):
    ref, port = SMALL[sname]
    r_or, t_or = _oracles(kind)
    rng = np.random.default_rng(8)
    xt, t = r_or.sample(rng, 4), np.array([0, 5, ref.T // 2, ref.T - 1])
    close(t_or.x0_mean(port, tt(xt), tt(t)), r_or.x0_mean(ref, xt, t))
    close(t_or.x0_var(port, tt(t)), r_or.x0_var(ref, t))
    for pred in PREDS:
        close(t_or.predict(port, tt(xt), tt(t), pred), r_or.predict(ref, xt, t, pred))
    close(t_or.nll_bpd(tt(xt)), r_or.nll_bpd(xt))
    close(t_or.entropy_bpd(), r_or.entropy_bpd())
    close(t_or.mean, r_or.mean)
    close(t_or.cov, r_or.cov)
    for variance in ("fixed_small", "fixed_large"):
        want, got = r_or.expected_vlb_bpd(ref, variance), t_or.expected_vlb_bpd(port, variance)
        for k in want:
            close(got[k], want[k])
        close(t_or.vlb_gap_bpd(port, variance), r_or.vlb_gap_bpd(ref, variance))


# ---- the same bad inputs raise the same InputError on both sides ---------------------------

X, E = np.zeros((2, 3)), np.ones((2, 3))
G = np.full((2, 3), 1.0 / 255.0 * 2 - 1.0)  # on the 8-bit grid
BAD = [
    ("unknown prediction", lambda m, s: m.simple_loss(s, E, X, 0, E, "epsilon")),
    ("unknown weighting", lambda m, s: m.simple_loss(s, E, X, 0, E, "eps", "snr_min")),
    ("bad gamma", lambda m, s: m.simple_loss(s, E, X, 0, E, "v", "min_snr", 0.0)),
    ("inf gamma", lambda m, s: m.snr_weights(s, 0, "v", "min_snr", float("inf"))),
    ("loss shape", lambda m, s: m.simple_loss(s, E[:, :2], X, 0, E, "eps")),
    ("noise shape", lambda m, s: m.simple_loss_and_grad(s, E, X, 0, E[:1], "eps")),
    ("t batch", lambda m, s: m.simple_loss(s, E, X, np.array([1, 2, 3]), E, "eps")),
    ("t range", lambda m, s: m.simple_loss(s, E, X, np.array([1, 1000]), E, "eps")),
    ("nan output", lambda m, s: m.simple_loss(s, E * np.nan, X, 0, E, "eps")),
    ("kl nan", lambda m, s: m.normal_kl(X, np.nan, 0.0, 0.0)),
    ("kl string", lambda m, s: m.normal_kl(X, "a", 0.0, 0.0)),
    ("off grid", lambda m, s: m.discretized_gaussian_log_likelihood(X + 0.001, X, X)),
    ("out of range", lambda m, s: m.discretized_gaussian_log_likelihood(X + 1.5, X, X)),
    ("unknown approx", lambda m, s: m.discretized_gaussian_log_likelihood(G, X, X, "erf")),
    ("no broadcast", lambda m, s: m.discretized_gaussian_log_likelihood(G, X[:, :2], X)),
    ("unknown decoder", lambda m, s: m.vlb_terms(s, lambda x, t: x, G, None, decoder="logistic")),
    ("unknown variance", lambda m, s: m.vlb_terms(s, lambda x, t: x, G, None, variance="learned_range")),
    ("vlb off grid", lambda m, s: m.vlb_terms(s, lambda x, t: x, X + 0.3, np.zeros((1000, 2, 3)))),
    ("vlb noise shape", lambda m, s: m.vlb_terms(s, lambda x, t: x, G, np.zeros((999, 2, 3)))),
]


@pytest.mark.parametrize("what,call", BAD, ids=[b[0] for b in BAD])
def test_same_bad_loss_inputs_raise_the_same_InputError(what, call):
    ref, port = SCHEDS["linear"]
    with pytest.raises(InputError) as ref_err:
        call(RL, ref)
    with pytest.raises(InputError) as port_err:
        call(TL, port)
    assert str(port_err.value) == str(ref_err.value)
