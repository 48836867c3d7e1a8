"""NumPy reference vs torch port: forward process (F1, F3), posterior (P2-P4), parameterisations
(R1-R5) and the reverse step's moments (M1, M2), on data and noise drawn once in NumPy (float64).

Tolerance: TOL["cross64"] (same math, different op order and libm), as
``assert_allclose(rtol=tol, atol=tol)``: relative above 1, absolute below 1.
"""
import warnings

import numpy as np
import pytest
import torch

from reference import diffusion as RD
from reference import schedules as RS
from reference.errors import InputError
from torch_port import diffusion as TD
from torch_port import schedules as TS
from tolerances import TOL

TOLX = TOL["cross64"]
PREDS = ("eps", "x0", "v")


def close(torch_value, np_value, tol=TOLX):
    assert isinstance(torch_value, torch.Tensor)
    np.testing.assert_allclose(torch_value.detach().cpu().numpy(), np_value, rtol=tol, atol=tol)


def _schedules():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RS.PriorMismatchWarning)
        out = {}
        for name, betas in [("linear", RS.make_betas("linear", 1000)), ("cosine", RS.make_betas("cosine", 1000)),
                            ("zero-terminal", RS.rescale_zero_terminal_snr(RS.make_betas("linear", 1000))),
                            ("T=1", np.array([0.3]))]:
            out[name] = (RS.Schedule(betas), TS.Schedule(torch.as_tensor(betas)))
        return out


SCHEDS = _schedules()


def _draw(T, shape=(4, 3, 5, 5), seed=0):
    """Data, noise, model outputs and timesteps drawn ONCE in NumPy; t covers 0 and T-1 (paper 1 and T)."""
    rng = np.random.default_rng(seed)
    x0 = np.clip(rng.normal(0, 0.7, shape), -1.3, 1.3)
    eps, out = rng.normal(size=shape), rng.normal(size=shape)
    t = np.array([0, min(1, T - 1), T // 2, T - 1])[: shape[0]]
    return x0, eps, out, t


def _t_variants(t):
    """(numpy t, torch t) pairs: a batch of indices as a LongTensor, and a scalar int on both sides."""
    return [(t, torch.as_tensor(t)), (int(t[-1]), int(t[-1])), (t, t)]  # last: an array handed to torch


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (4, 2)])
@pytest.mark.parametrize("sname", list(SCHEDS))
def test_F1_F3_R3_forward_process_matches_reference(sname, shape):
    ref, port = SCHEDS[sname]
    x0, eps, _, t = _draw(ref.T, shape)
    X0, E = torch.from_numpy(x0), torch.from_numpy(eps)
    for t_np, t_pt in _t_variants(t):
        close(TD.q_sample(port, X0, t_pt, E), RD.q_sample(ref, x0, t_np, eps))
        for got, want in zip(TD.q_mean_variance(port, X0, t_pt), RD.q_mean_variance(ref, x0, t_np)):
            close(got, want)
        close(TD.q_step(port, X0, t_pt, E), RD.q_step(ref, x0, t_np, eps))
        close(TD.v_target(port, X0, t_pt, E), RD.v_target(ref, x0, t_np, eps))


@pytest.mark.parametrize("sname", list(SCHEDS))
def test_P2_P3_P4_posterior_matches_reference(sname):
    ref, port = SCHEDS[sname]
    x0, eps, _, t = _draw(ref.T)
    xt = RD.q_sample(ref, x0, t, eps)
    for t_np, t_pt in _t_variants(t):
        got = TD.q_posterior(port, torch.from_numpy(x0), torch.from_numpy(xt), t_pt)
        for g, w in zip(got, RD.q_posterior(ref, x0, xt, t_np)):
            assert g.shape == w.shape
            close(g, w)


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("sname", list(SCHEDS))
def test_R1_R2_R4_R5_conversions_match_reference(sname, pred):
    ref, port = SCHEDS[sname]
    x0, eps, out, t = _draw(ref.T)
    if sname == "zero-terminal" and pred == "eps":
        t = t[:-1].copy(); x0, eps, out = x0[:-1], eps[:-1], out[:-1]  # x0 from eps undefined at SNR 0
    xt = RD.q_sample(ref, x0, t, eps)
    Xt, O, T_ = torch.from_numpy(xt), torch.from_numpy(out), torch.as_tensor(t)
    close(TD.predict_x0(port, Xt, T_, O, pred), RD.predict_x0(ref, xt, t, out, pred))
    close(TD.predict_eps(port, Xt, T_, O, pred), RD.predict_eps(ref, xt, t, out, pred))


@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("sname", ["linear", "cosine", "T=1"])
def test_M1_M2_p_mean_variance_matches_reference(sname, pred, variance, clip_x0):
    ref, port = SCHEDS[sname]
    x0, eps, out, t = _draw(ref.T)
    xt = RD.q_sample(ref, x0, t, eps)
    want = RD.p_mean_variance(ref, out, xt, t, pred, variance, clip_x0)
    got = TD.p_mean_variance(port, torch.from_numpy(out), torch.from_numpy(xt), torch.as_tensor(t),
                             pred, variance, clip_x0)
    assert got._fields == want._fields
    for field in want._fields:
        assert getattr(got, field).shape == getattr(want, field).shape, field
        close(getattr(got, field), getattr(want, field))


def test_M1_M2_p_mean_variance_zero_terminal_v_prediction_matches_reference():
    ref, port = SCHEDS["zero-terminal"]
    x0, eps, out, t = _draw(ref.T)
    xt = RD.q_sample(ref, x0, t, eps)
    for variance in ("fixed_small", "fixed_large"):
        want = RD.p_mean_variance(ref, out, xt, t, "v", variance, True)
        got = TD.p_mean_variance(port, torch.from_numpy(out), torch.from_numpy(xt), torch.as_tensor(t),
                                 "v", variance, True)
        for g, w in zip(got, want):
            close(g, w)


def test_float32_data_keeps_its_dtype_and_matches_reference_in_float32():
    ref, port = SCHEDS["cosine"]
    x0, eps, out, t = (a.astype(np.float32) if a.dtype == np.float64 else a for a in _draw(ref.T))
    got = TD.p_mean_variance(port, torch.from_numpy(out), torch.from_numpy(x0), torch.as_tensor(t), "v", "fixed_large")
    want = RD.p_mean_variance(ref, out, x0, t, "v", "fixed_large")
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and w.dtype == np.float32
        close(g, w, TOL["op32"])  # float32 per op: coefficients cast to float32 on both sides


# ---- the same bad inputs raise the same InputError on both sides ---------------------------
# Each case is call(module, sched, A): A turns an array into what that side is handed: NumPy arrays
# for the reference; NumPy arrays or torch tensors for the port (its host path and its tensor path).

X, E = np.zeros((2, 3)), np.ones((2, 3))
BAD = [
    ("t out of range", "linear", lambda m, s, A: m.q_sample(s, A(X), A(1000), A(E))),
    ("t negative", "linear", lambda m, s, A: m.q_sample(s, A(X), A([-1, 0]), A(E))),
    ("t batch length", "linear", lambda m, s, A: m.q_sample(s, A(X), A([1, 2, 3]), A(E))),
    ("t 2-D", "linear", lambda m, s, A: m.q_step(s, A(X), A([[1, 2]]), A(E))),
    ("t not integral", "linear", lambda m, s, A: m.q_posterior(s, A(X), A(E), A([1.5, 2.0]))),
    ("t bool", "linear", lambda m, s, A: m.v_target(s, A(X), A(True), A(E))),
    ("shape mismatch", "linear", lambda m, s, A: m.q_sample(s, A(X), 0, A(E[:, :2]))),
    ("scalar data", "linear", lambda m, s, A: m.q_mean_variance(s, A(1.0), 0)),
    ("bool data", "linear", lambda m, s, A: m.q_mean_variance(s, A(X > 0), 0)),
    ("nan data", "linear", lambda m, s, A: m.q_step(s, A(np.array([[np.nan, 0.0]])), 0, A(np.zeros((1, 2))))),
    ("inf noise", "linear", lambda m, s, A: m.q_sample(s, A(X), 0, A(np.full((2, 3), np.inf)))),
    ("unknown prediction", "linear", lambda m, s, A: m.predict_x0(s, A(X), 0, A(E), "epsilon")),
    ("unknown prediction eps", "linear", lambda m, s, A: m.predict_eps(s, A(X), 0, A(E), "noise")),
    ("unknown variance", "linear", lambda m, s, A: m.p_mean_variance(s, A(E), A(X), 0, "eps", "learned_range")),
    ("output shape", "linear", lambda m, s, A: m.p_mean_variance(s, A(E[:1]), A(X), 0)),
    ("eps at zero SNR", "zero-terminal", lambda m, s, A: m.predict_x0(s, A(X), A([0, 999]), A(E), "eps")),
    ("eps at zero SNR int t", "zero-terminal", lambda m, s, A: m.p_mean_variance(s, A(E), A(X), 999)),
]


@pytest.mark.parametrize("A", [np.asarray, lambda a: torch.as_tensor(np.asarray(a))], ids=["arrays", "tensors"])
@pytest.mark.parametrize("what,sname,call", BAD, ids=[b[0] for b in BAD])
def test_same_bad_inputs_raise_the_same_InputError(what, sname, call, A):
    ref, port = SCHEDS[sname]
    with pytest.raises(InputError) as ref_err:
        call(RD, ref, np.asarray)
    with pytest.raises(InputError) as port_err:
        call(TD, port, A)
    assert str(port_err.value) == str(ref_err.value)


def test_string_data_raises_InputError_on_both_sides():
    for m, (s, _) in ((RD, SCHEDS["linear"]), (TD, SCHEDS["linear"][::-1])):
        with pytest.raises(InputError, match="numeric array"):
            m.q_mean_variance(s, ["a", "b"], 0)
