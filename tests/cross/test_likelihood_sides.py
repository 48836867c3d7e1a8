"""The ODE likelihood (derivations/likelihood.md, E3-E5) on both sides against routes that are not its code.

Each test runs the same check on the reference and on the port, so a bug written the same way on both sides
(a misread paper) fails it, where the NumPy-vs-torch cross-tests see two equal answers: Hutchinson with K
probes (E4) against the exact divergence by Monte Carlo; the start state at a sigma_min large enough to show
its scale (E3) against the blurred mixture's closed-form density; the label interpolation of a discrete-step
network (E5) against the network's own outputs at the two neighbouring trained steps, weighted in log sigma
by the test; and each side's defaults, called as they are, against score_sde's values. Noise is drawn once in
NumPy and fed to both sides. Tolerances: tests/tolerances.py (mc_z, ode_default, net64, cross64).
"""
import inspect
import math

import numpy as np
import pytest
import torch

from crosscheck import close, schedule_pair
from reference import likelihood as RL
from reference import oracle as RO
from reference import schedules as RS
from reference import unet as RU
from tolerances import TOL, mc_close
from torch_port import likelihood as TL
from torch_port import oracle as TO
from torch_port import unet as TU

pytestmark = pytest.mark.usefixtures("one_torch_thread")
tt = torch.from_numpy
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = np.array([[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]])
SCHEDS = {name: schedule_pair(RS.make_betas(name, 1000)) for name in ("linear", "cosine")}


def _nll(side, x, s_lo, s_hi, **kw):
    """ode_nll of the mixture on ``side``: NumPy in, per-example nats (N,) NumPy out."""
    if side == "reference":
        return RL.ode_nll(RL.mixture_field(RO.GaussianMixtureOracle(W, MEANS, cov=COVS)), x, s_lo, s_hi, **kw).nats
    kw = {k: tt(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    return TL.ode_nll(TL.mixture_field(TO.GaussianMixtureOracle(W, MEANS, cov=COVS)), tt(x), s_lo, s_hi,
                      **kw).nats.numpy()


def _var_and_se(z):
    """The sample variance of z and its standard error from the fourth central moment."""
    c = z - z.mean()
    return float(np.mean(c**2)), math.sqrt(max(float(np.var(c**2)), 0.0) / z.size)


@pytest.mark.parametrize("side", ["reference", "torch_port"])
def test_E4_hutchinson_with_four_probes_is_unbiased_and_halves_the_spread(side):
    """K Rademacher probes, fixed along the solve and averaged with weight 1/K (E4): the error of the divergence
    integral is the mean of K independent zero-mean errors, so its variance is the one-probe variance over K
    and its spread (standard deviation) falls by sqrt(4) = 2 at K = 4. The bound is Monte Carlo (mc_z standard
    errors, the ratio's standard error by the delta method from each variance's fourth moment); weighting each
    probe 1 instead of 1/K would put the K = 4 mean 3 traces off and its spread 4 times the K = 1 one's."""
    rng = np.random.default_rng(41)
    x = np.repeat(RO.GaussianMixtureOracle(W, MEANS, cov=COVS).sample(rng, 16)[0], 32, axis=0)   # (512, 2)
    tol = dict(rtol=1e-7, atol=1e-7)          # solve errors ~ode_per_tol x 1e-7: far below the probes' spread
    exact = _nll(side, x, 1e-3, 1e4, divergence="exact", **tol)
    err = {}
    for K in (1, 4):
        probes = rng.integers(0, 2, size=(K,) + x.shape) * 2.0 - 1.0
        err[K] = _nll(side, x, 1e-3, 1e4, divergence="hutchinson", probes=probes, **tol) - exact
    for K in (1, 4):
        assert mc_close(err[K].mean(), 0.0, err[K].std() / math.sqrt(x.shape[0])), (K, err[K].mean())
    (v1, se1), (v4, se4) = _var_and_se(err[1]), _var_and_se(err[4])
    ratio = math.sqrt(v4 / v1)
    se_ratio = 0.5 * ratio * math.hypot(se4 / v4, se1 / v1)
    assert err[1].std() > 0.01 and mc_close(ratio, 0.5, se_ratio), (ratio, se_ratio, err[1].std())


@pytest.mark.parametrize("side", ["reference", "torch_port"])
def test_E3_a_large_sigma_min_starts_the_vp_state_at_x0_over_sqrt_one_plus_sigma_min_squared(side, rng):
    """At sigma_min = 0.5 the start x(rho_min) = x_0 / sqrt(1 + sigma_min^2) = 0.894 x_0 (a wrong power of it
    moves the start by ~0.1 x_0); the density is then the mixture's with every covariance + sigma_min^2 I (G3)."""
    x, _ = RO.GaussianMixtureOracle(W, MEANS, cov=COVS).sample(rng, 32)
    for s_lo in (0.5, 2.0):
        want = -RO.GaussianMixtureOracle(W, MEANS, cov=COVS + s_lo**2 * np.eye(2)).log_prob(x, 1.0)
        np.testing.assert_allclose(_nll(side, x, s_lo, 1e8), want, atol=TOL["ode_default"])


def _twin_mlps():
    """A reference MLP and its port with the same float64 weights, perturbed so the output moves with t."""
    rng = np.random.default_rng(2)
    ref = RU.MLP(hidden=32, num_layers=2, time_dim=16, dtype=np.float64, seed=4)
    ref.load_params({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in ref.params.items()})
    port = TU.MLP(hidden=32, num_layers=2, time_dim=16, dtype=torch.float64)
    port.load_state_dict({k: tt(v) for k, v in ref.params.items()})
    return ref, port


@pytest.mark.parametrize("sname", ["linear", "cosine"])
@pytest.mark.parametrize("side", ["reference", "torch_port"])
def test_E5_the_field_between_trained_levels_blends_the_two_steps_linearly_in_log_sigma(side, sname):
    """At an untrained sigma in (sigma_t, sigma_{t+1}), eps(x, sigma) = (1 - w) eps_t + w eps_{t+1} with
    w = (log sigma - log sigma_t) / (log sigma_{t+1} - log sigma_t), both at x_vp = x~ / sqrt(1 + sigma^2), and
    x0_hat = x~ - sigma eps (R1 at abar = 1 / (1 + sigma^2)). The levels come from the schedule's alpha_bar here.
    Weights linear in sigma differ by up to 0.35 (cosine's top gap sigma 642 -> 2.0e4) and by 0.01-0.07 at the
    linear schedule's lowest steps, against a tolerance of net64 on D."""
    ref_s, port_s = SCHEDS[sname]
    ref, port = _twin_mlps()
    ab = np.asarray(ref_s.alpha_bar, dtype=np.float64)
    table = np.sqrt((1.0 - ab) / ab)                                             # sigma_t of the trained steps
    x = np.random.default_rng(8).standard_normal((6, 2))
    field = RL.network_field(ref_s, ref) if side == "reference" else TL.network_field(port_s, port)
    for t, frac in [(0, 0.5), (1, 0.3), (10, 0.8), (500, 0.5), (997, 0.6), (998, 0.5)]:
        sigma = math.exp((1 - frac) * math.log(table[t]) + frac * math.log(table[t + 1]))
        w = (math.log(sigma) - math.log(table[t])) / (math.log(table[t + 1]) - math.log(table[t]))
        xv = x / math.sqrt(1.0 + sigma**2)
        eps = [ref.forward(xv, np.full(6, k))[0] for k in (t, t + 1)]
        want = x - sigma * ((1 - w) * eps[0] + w * eps[1])
        if side == "reference":
            got, vjps = field(x, sigma, np.zeros((0, 6, 2)))
        else:
            got, vjps = field(tt(x), sigma, torch.zeros((0, 6, 2), dtype=torch.float64))
            got, vjps = got.numpy(), vjps.numpy()
        assert vjps.shape == (0, 6, 2)                                           # no probes: no VJPs
        np.testing.assert_allclose(got, want, rtol=TOL["net64"], atol=TOL["net64"] * max(1.0, sigma))


def test_E4_E6_a_field_called_without_probes_returns_the_denoiser_and_no_vjps_on_both_sides(rng):
    """The field's empty-probe branch (x0_hat alone, VJPs of shape (0, N, ...)), used to read D without its
    Jacobian: the oracle's field and the network's, on both sides, equal the denoiser."""
    ro, to = RO.GaussianMixtureOracle(W, MEANS, cov=COVS), TO.GaussianMixtureOracle(W, MEANS, cov=COVS)
    ref, port = _twin_mlps()
    x = rng.standard_normal((5, 2))
    for sigma in (0.05, 1.3, 40.0):
        pairs = [(RL.mixture_field(ro), TL.mixture_field(to), ro.denoise_sigma(x, sigma)),
                 (RL.network_field(SCHEDS["linear"][0], ref), TL.network_field(SCHEDS["linear"][1], port), None)]
        for fr, fp, want in pairs:
            (Dr, Vr) = fr(x, sigma, np.zeros((0, 5, 2)))
            (Dp, Vp) = fp(tt(x), sigma, torch.zeros((0, 5, 2), dtype=torch.float64))
            assert Vr.shape == (0, 5, 2) and tuple(Vp.shape) == (0, 5, 2)
            close(Dp, Dr, TOL["net64"])
            if want is not None:
                close(Dr, want, TOL["exact64"])
            with_probes = fr(x, sigma, np.ones((1, 5, 2)))[0]                    # the same D with a probe
            close(Dr, with_probes, TOL["exact64"])


# score_sde's likelihood (run_lib / likelihood.py): RK45 at rtol = atol = 1e-5, one Hutchinson probe per example
SCORE_SDE_RTOL, SCORE_SDE_PROBES = 1e-5, 1


def test_E3_E4_both_sides_defaults_are_score_sdes_and_equal():
    """Every default of the functions both likelihood modules share is the same value on both sides, and
    ode_nll called with its defaults (images: Hutchinson) reports score_sde's tolerances and one probe. Data
    N(0, I): D = x~ / (1 + sigma^2), J = I / (1 + sigma^2), for which one Rademacher probe is exact (v.v = d),
    so both sides' values match the closed form -log N(x; 0, (1 + sigma_min^2) I) whatever probes they draw."""
    skip = {"rng", "generator", "device"}          # each side's own source of noise and its device
    for name in TL.__all__:
        f_r, f_t = getattr(RL, name, None), getattr(TL, name)
        if not (inspect.isfunction(f_r) and inspect.isfunction(f_t)):
            continue
        d_r = {k: p.default for k, p in inspect.signature(f_r).parameters.items() if k not in skip}
        d_t = {k: p.default for k, p in inspect.signature(f_t).parameters.items() if k not in skip}
        assert d_r == d_t, (name, d_r, d_t)
    x = np.random.default_rng(9).standard_normal((4, 1, 2, 2))

    def field_np(x_, sigma, probes):
        c = 1.0 / (1.0 + sigma**2)
        return c * x_, c * probes

    lo, hi = 0.01, 1e4
    a = RL.ode_nll(field_np, x, lo, hi, rng=np.random.default_rng(0))
    b = TL.ode_nll(TL.denoiser_field(lambda x_, s: x_ / (1.0 + s**2)), tt(x), lo, hi,
                   generator=torch.Generator().manual_seed(0))
    for r in (a, b):
        assert (r.divergence, r.n_probes, r.rtol, r.atol) == ("hutchinson", SCORE_SDE_PROBES, SCORE_SDE_RTOL,
                                                              SCORE_SDE_RTOL)
    assert (a.nfe, a.steps) == (b.nfe, b.steps)
    want = 0.5 * np.sum(x.reshape(4, -1) ** 2, axis=1) / (1 + lo**2) + 2 * math.log(2 * math.pi * (1 + lo**2))
    np.testing.assert_allclose(a.nats, want, atol=TOL["ode_default"])
    close(b.nats, a.nats, TOL["ode_cross"])
