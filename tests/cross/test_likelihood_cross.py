"""NumPy reference vs torch port, float64: the ODE likelihood (derivations/likelihood.md, E1-E8).

The port's Dormand-Prince is its own code with scipy's RK45 controller: on the same field both take the same
steps (NFE and accepted steps asserted equal), so whole solves agree to TOL["ode_cross"] (the reason is in
tests/tolerances.py); fields and their VJPs to TOL["cross64"] (oracle) or TOL["net64"] (networks: the
reference's hand-written backward against autograd). Noise is drawn once in NumPy and fed to both sides.
"""
import math

import numpy as np
import pytest
import torch

from crosscheck import close, schedule_pair
from reference import likelihood as RL
from reference import oracle as RO
from reference import schedules as RS
from reference import unet as RU
from reference.errors import InputError
from tolerances import TOL
from torch_port import likelihood as TL
from torch_port import oracle as TO
from torch_port import unet as TU

pytestmark = pytest.mark.usefixtures("one_torch_thread")
tt = torch.from_numpy
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]
LINEAR = schedule_pair(RS.make_betas("linear", 1000))
COSINE = schedule_pair(RS.make_betas("cosine", 1000))


def _twins(ref_cls, port_cls, kw, rng, scale=0.3):
    ref = ref_cls(**kw, dtype=np.float64)
    ref.load_params({k: v + scale * rng.standard_normal(v.shape) for k, v in ref.params.items()})
    port = port_cls(**kw, dtype=torch.float64)
    port.load_state_dict({k: tt(v) for k, v in ref.params.items()})
    return ref, port


def test_E8_torch_dormand_prince_takes_scipys_steps():
    A = np.array([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.0, -0.3, -0.1]])

    def f_np(t, y):
        return A @ y - 0.2 * y**3 + math.sin(3 * t)

    def f_t(t, y):
        return tt(A) @ y - 0.2 * y**3 + math.sin(3 * t)

    y0 = np.array([1.0, -0.5, 2.0])
    for tol in (1e-3, 1e-6, 1e-10):
        seen = {"np": [], "t": []}
        rec = lambda key: (lambda it: (seen[key].append(t) or t for t in it))  # noqa: E731
        y_np, nfe_np, n_np = RL.rk45(f_np, 0.0, y0, 7.5, tol, tol, progress=rec("np"))
        y_t, nfe_t, n_t = TL.rk45(f_t, 0.0, tt(y0), 7.5, tol, tol, progress=rec("t"))
        assert (nfe_np, n_np) == (nfe_t, n_t)
        # the error estimate is a difference of stage sums, known to ~eps / tol relative, and the next step scales
        # with its -1/5th power: the step times agree to 3e-9 at tol 1e-10 (1e-13 at 1e-3), the solution to 5e-16
        np.testing.assert_allclose(seen["t"], seen["np"], rtol=0, atol=1e-7)
        close(y_t, y_np, 1e-12)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_E3_E6_mixture_nll_matches(divergence, rng):
    ro, to = RO.GaussianMixtureOracle(W, MEANS, cov=COVS), TO.GaussianMixtureOracle(W, MEANS, cov=COVS)
    x = 2 * rng.integers(0, 17, size=(16, 2)) / 16 - 1
    u = rng.uniform(size=x.shape)
    P = rng.integers(0, 2, size=(2, 16, 2)) * 2.0 - 1.0 if divergence == "hutchinson" else None
    for levels in (None, 17):
        kw = dict(divergence=divergence, levels=levels)
        a = RL.ode_nll(RL.mixture_field(ro), x, 1e-3, 1e4, probes=P, dequant_noise=u if levels else None, **kw)
        b = TL.ode_nll(TL.mixture_field(to), tt(x), 1e-3, 1e4, probes=None if P is None else tt(P),
                       dequant_noise=tt(u) if levels else None, **kw)
        assert (a.nfe, a.steps, a.n_probes, a.divergence) == (b.nfe, b.steps, b.n_probes, b.divergence)
        for name in ("nats", "bpd", "prior_nats", "x_T"):
            close(getattr(b, name), getattr(a, name), TOL["ode_cross"])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_E5_network_fields_their_vjps_and_the_ode_match(prediction):
    rng = np.random.default_rng(0)
    ref = RU.MLP(hidden=32, num_layers=2, time_dim=16, dtype=np.float64)
    ref.load_params({k: v + 0.1 * rng.standard_normal(v.shape) * (0.1 if k.startswith("out_proj") else 1)
                     for k, v in ref.params.items()})                 # a tame random network: small outputs
    port = TU.MLP(hidden=32, num_layers=2, time_dim=16, dtype=torch.float64)
    port.load_state_dict({k: tt(v) for k, v in ref.params.items()})
    x, P = rng.standard_normal((5, 2)), rng.standard_normal((3, 5, 2))
    for ref_s, port_s in (COSINE, LINEAR):
        fr, fp = RL.network_field(ref_s, ref, prediction), TL.network_field(port_s, port, prediction)
        rr, rp = RL.pf_ode_rhs(fr, P, 0.5, x.shape), TL.pf_ode_rhs(fp, tt(P), 0.5, x.shape)
        y = np.concatenate([x.reshape(-1), np.zeros(5)])
        for sigma in (RL.sigma_range(ref_s)[0], 0.05, 2.0, 150.0, RL.sigma_range(ref_s)[1]):
            (Dr, Vr), (Dp, Vp) = fr(x, sigma, P), fp(tt(x), sigma, tt(P))
            close(Dp, Dr, TOL["net64"])
            close(Vp, Vr, TOL["net64"])
            close(rp(math.log(sigma), tt(y)), rr(math.log(sigma), y), TOL["net64"])
    a = RL.model_nll(LINEAR[0], ref, x, prediction)
    b = TL.model_nll(LINEAR[1], port, tt(x), prediction)
    np.testing.assert_allclose(b.nats.numpy(), a.nats, rtol=TOL["ode_cross_net"])


def test_E4_E5_unet_field_and_hutchinson_vjps_match(rng):
    ref_s, port_s = LINEAR
    kw = dict(in_channels=1, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4)
    ref, port = _twins(RU.UNet, TU.UNet, kw, rng)
    x = rng.standard_normal((2, 1, 4, 4))
    P, _ = RL.make_probes("hutchinson", x.shape, n_probes=2, rng=rng)
    for sigma in (0.013, 1.7):
        (Dr, Vr), (Dp, Vp) = RL.network_field(ref_s, ref)(x, sigma, P), TL.network_field(port_s, port)(tt(x), sigma, tt(P))
        close(Dp, Dr, TOL["net64"])
        close(Vp, Vr, TOL["net64"])


def test_helpers_match():
    for levels in (2, 3, 17, 256):
        assert RL.bin_width(levels) == TL.bin_width(levels) and RL.bpd_offset(levels) == TL.bpd_offset(levels)
    ls = np.log(RL.trained_sigmas(LINEAR[0]))
    for sigma in (*RL.sigma_range(LINEAR[0]), 0.0123, 1.0, float(np.exp(ls[500]))):
        assert RL.level_blend(ls, sigma) == TL.level_blend(ls, sigma)
    for p in ("eps", "x0", "v"):
        assert RL.x0_coefficients(0.3, p) == TL.x0_coefficients(0.3, p)
    assert RL.sigma_range(COSINE[0]) == pytest.approx(TL.sigma_range(COSINE[1]), rel=1e-13)
    x, u = np.array([[-1.0, 0.0], [1.0, 0.5]]), np.array([[0.0, 0.3], [0.99, 0.5]])
    close(TL.dequantize(tt(x), 5, tt(u)), RL.dequantize(x, 5, u), TOL["exact64"])
    close(TL.nats_to_bpd(tt(np.array([1.0, 2.0])), 4, 17), RL.nats_to_bpd(np.array([1.0, 2.0]), 4, 17),
          TOL["exact64"])


def _message(fn):
    with pytest.raises(InputError) as e:
        fn()
    return str(e.value)


def test_both_sides_refuse_the_same_inputs_with_the_same_messages():
    ro, to = RO.GaussianMixtureOracle(W, MEANS, cov=COVS), TO.GaussianMixtureOracle(W, MEANS, cov=COVS)
    x = np.zeros((2, 2))
    cases = [dict(rtol=0.0), dict(rtol=1e-20), dict(atol=-1.0), dict(divergence="hutchinsn"),
             dict(divergence="hutchinson"), dict(probes=np.ones((1, 2, 2))), dict(divergence="hutchinson",
             probes=np.ones((1, 3, 2))), dict(levels=17), dict(levels=17, dequant_noise=np.ones((2, 2))),
             dict(levels=1, dequant_noise=np.zeros((2, 2))), dict(progress=3)]
    for kw in cases:
        kt = {k: (tt(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        a = _message(lambda: RL.ode_nll(RL.mixture_field(ro), x, 0.01, 100.0, **kw))
        b = _message(lambda: TL.ode_nll(TL.mixture_field(to), tt(x), 0.01, 100.0, **kt))
        assert a.replace("a generator rng (np.random.default_rng(seed))", "GEN").replace("a generator rng", "GEN") \
            .split("GEN")[0] == b.replace("a torch.Generator", "GEN").split("GEN")[0], (kw, a, b)
    for bad in (np.full((2, 2), 1.5), np.full((2, 2), 0.03)):
        a = _message(lambda: RL.ode_nll(RL.mixture_field(ro), bad, 0.01, 100.0, levels=17, dequant_noise=x))
        b = _message(lambda: TL.ode_nll(TL.mixture_field(to), tt(bad), 0.01, 100.0, levels=17, dequant_noise=tt(x)))
        assert a == b
    zsnr = schedule_pair(RS.rescale_zero_terminal_snr(RS.make_betas("linear", 100)))
    net_r, net_p = RU.MLP(hidden=8, num_layers=1, time_dim=8), TU.MLP(hidden=8, num_layers=1, time_dim=8)
    assert _message(lambda: RL.network_field(zsnr[0], net_r)) == _message(lambda: TL.network_field(zsnr[1], net_p))
    lo, hi = RL.sigma_range(LINEAR[0])
    assert _message(lambda: RL.model_nll(LINEAR[0], net_r, x, rtol=1e-3) if False else
                    RL.ode_nll(RL.network_field(LINEAR[0], net_r), x, lo / 2, hi)) == \
        _message(lambda: TL.ode_nll(TL.network_field(LINEAR[1], net_p), tt(x), lo / 2, hi))
