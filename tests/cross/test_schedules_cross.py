"""NumPy reference vs torch port: schedules (S1-S7) and every Schedule table (F1, F2, P2-P4, S7).

Both sides compute the same closed forms independently (NumPy vs torch ops, different linspace,
cos, sigmoid, cumprod, log). Comparison is ``assert_allclose(rtol=tol, atol=tol)``: relative above
1, absolute below 1. The absolute floor is needed because betas derived as 1 - ratio (S3, S6)
carry an absolute rounding error ~ ulp(1) ~ 1e-16 on either side, which is a large *relative*
error on a beta of 1e-4 (measured: cosine T=1000 3e-14 relative, zero-terminal rescale 2e-12
relative, both ~1e-15 absolute) — the closed form itself cannot do better in float64.
"""
import warnings

import numpy as np
import pytest
import torch

from reference import schedules as RS
from reference.errors import InputError
from torch_port import schedules as TS
from tolerances import TOL

TOL64 = TOL["exact64"]  # same closed forms, op-by-op; measured worst 2e-15 absolute (see module docstring)

TABLES = ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar",
          "sqrt_recip_alpha_bar", "sqrt_recipm1_alpha_bar", "posterior_variance",
          "posterior_log_variance_clipped", "posterior_mean_coef_x0", "posterior_mean_coef_xt", "snr", "log_snr")

NAMED = [("linear", {}), ("cosine", {}), ("quadratic", {}), ("sigmoid", {}),
         ("sigmoid", {"variant": "alpha_bar"}), ("linear", {"beta_start": 1e-3, "beta_end": 0.05}),
         ("cosine", {"s": 0.02, "max_beta": 0.5}), ("sigmoid", {"variant": "alpha_bar", "start": -2.0, "tau": 0.7})]


def close(torch_value, np_value, tol=TOL64):
    a = torch_value.detach().cpu().numpy() if isinstance(torch_value, torch.Tensor) else np.asarray(torch_value)
    np.testing.assert_allclose(a, np_value, rtol=tol, atol=tol)  # inf == inf and -inf == -inf pass


def both_schedules(betas_np, betas_t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RS.PriorMismatchWarning)
        return RS.Schedule(betas_np), TS.Schedule(betas_t)


@pytest.mark.parametrize("name,kw", NAMED, ids=lambda v: str(v))
@pytest.mark.parametrize("T", [1, 2, 10, 1000])
def test_S1_S2_S3_S4_S5_make_betas_matches_reference(name, kw, T):
    b_t = TS.make_betas(name, T, **kw)
    assert isinstance(b_t, torch.Tensor) and b_t.dtype == torch.float64 and b_t.shape == (T,)
    close(b_t, RS.make_betas(name, T, **kw))


@pytest.mark.parametrize("T", [2, 10, 1000])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_S6_zero_terminal_snr_rescale_matches_reference(name, T):
    b = RS.make_betas(name, T)
    b_t = TS.rescale_zero_terminal_snr(torch.as_tensor(b))
    close(b_t, RS.rescale_zero_terminal_snr(b))
    assert float(b_t[-1]) == 1.0  # (S6) abar_T = 0 exactly, on the torch side too


def _schedule_cases():
    rng = np.random.default_rng(7)
    custom = np.sort(rng.uniform(1e-4, 0.3, 50))
    cases = {f"{n}-{T}-{kw}": (lambda n=n, T=T, kw=kw: (RS.make_betas(n, T, **kw), TS.make_betas(n, T, **kw)))
             for n, kw in NAMED[:5] for T in (1, 10, 1000)}
    cases["custom"] = lambda: (custom, TS.make_betas(torch.as_tensor(custom), None))
    cases["zero-terminal"] = lambda: (RS.rescale_zero_terminal_snr(RS.make_betas("linear", 1000)),
                                      TS.rescale_zero_terminal_snr(TS.make_betas("linear", 1000)))
    return cases


CASES = _schedule_cases()


def _check_tables(ref, port, tol):
    assert port.T == ref.T
    for name in TABLES:
        tab = getattr(port, name)
        assert tab.dtype == torch.float64 and tab.shape == (ref.T,), name
        close(tab, getattr(ref, name), tol)
    d_ref, d_port = ref.diagnostics(), port.diagnostics()
    assert d_port.keys() == d_ref.keys()
    for k in d_ref:
        close(d_port[k], d_ref[k], tol)


@pytest.mark.parametrize("case", list(CASES))
def test_F1_F2_P2_P3_P4_S7_every_schedule_table_matches_reference_from_the_same_betas(case):
    b_np, _ = CASES[case]()
    _check_tables(*both_schedules(b_np, torch.as_tensor(b_np)), TOL64)


@pytest.mark.parametrize("case", list(CASES))
def test_F1_F2_P2_P3_P4_S7_every_schedule_table_matches_reference_end_to_end(case):
    # Each side from its own betas: their ~1e-16 absolute difference is amplified by 1/(1 - abar_0)
    # = 1/beta_0 (up to 1e4) in snr and sqrt_recipm1_alpha_bar at the first steps (measured 1e-12
    # relative for the zero-terminal rescale), so this route gets TOL["cross64"].
    _check_tables(*both_schedules(*CASES[case]()), TOL["cross64"])


@pytest.mark.parametrize("T,warns", [(50, True), (1000, False)])
def test_L8_prior_mismatch_warning_on_both_sides(T, warns):
    b = RS.make_betas("linear", T)
    for side in (RS, TS):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            side.Schedule(side.make_betas("linear", T))
        got = [w for w in caught if issubclass(w.category, RS.PriorMismatchWarning)]
        assert bool(got) == warns, side.__name__
    close(TS.Schedule(b, warn=False).prior_bpd(0.3), RS.Schedule(b, warn=False).prior_bpd(0.3))


BAD = [
    ("unknown name", lambda m: m.make_betas("cosin", 10)),
    ("T zero", lambda m: m.make_betas("linear", 0)),
    ("T float", lambda m: m.make_betas("linear", 10.0)),
    ("T bool", lambda m: m.make_betas("linear", True)),
    ("unknown option", lambda m: m.make_betas("linear", 10, beta_stop=0.1)),
    ("option of another schedule", lambda m: m.make_betas("cosine", 10, beta_start=0.1)),
    ("bad sigmoid variant", lambda m: m.make_betas("sigmoid", 10, variant="alphabar")),
    ("beta_end > 1", lambda m: m.make_betas("linear", 10, beta_end=1.5)),
    ("beta zero", lambda m: m.make_betas([0.0, 0.1], None)),
    ("beta nan", lambda m: m.Schedule([0.1, np.nan])),
    ("beta 2-D", lambda m: m.Schedule(np.full((2, 3), 0.1))),
    ("betas empty", lambda m: m.Schedule([])),
    ("beta negative", lambda m: m.Schedule([0.1, -0.1])),
    ("rescale T=1", lambda m: m.rescale_zero_terminal_snr([0.1])),
    ("rescale not decreasing", lambda m: m.rescale_zero_terminal_snr([1.0, 1.0])),
]


@pytest.mark.parametrize("what,call", BAD, ids=[b[0] for b in BAD])
def test_same_bad_schedule_inputs_raise_the_same_InputError(what, call):
    with pytest.raises(InputError) as ref_err:
        call(RS)
    with pytest.raises(InputError) as port_err:
        call(TS)
    assert str(port_err.value) == str(ref_err.value)


def test_torch_tensor_betas_are_accepted_and_checked_like_arrays():
    with pytest.raises(InputError, match="every beta must lie in"):
        TS.Schedule(torch.tensor([0.1, 1.5]))
    b = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    close(TS.Schedule(b).alpha_bar, RS.Schedule(b.numpy()).alpha_bar)
