"""Property-based NumPy-vs-torch tests (hypothesis): random valid schedules give the same Schedule
tables on both sides (F1, F2, P2, P3, P4, S6, S7) and the same named betas (S1-S5).

Comparison is ``assert_allclose(rtol=TOL["cross64"], atol=TOL["cross64"])`` (relative above 1,
absolute below), as in test_schedules_cross.py; +-inf must sit at the same places on both sides.

Domain: betas in [1e-8, 1] (T in 1..300), a beta of exactly 1 at the end, the S6 rescale, and the
named schedules with random options; schedules whose alpha_bar underflows into the subnormals are
left out (see tests/reference/test_properties.py: the inverse tables overflow there on both sides).
For the end-to-end route (each side makes its own betas) beta_start is kept <= 0.5: with every beta
within a few ulps of 1, alpha_t = 1 - beta_t is itself a few ulps, and sqrt(alpha_t) in
posterior_mean_coef_xt turns a 1-ulp difference of the two linspaces into ~1e-8 (measured with
beta_start = 1 - 2^-53, beta_end = 1, T = 75): the conditioning of sqrt at 0, not a port bug.

Reproducible: derandomize=True and no example database.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from reference.errors import InputError

torch = pytest.importorskip("torch")
TS = pytest.importorskip("torch_port.schedules")

from reference import schedules as RS  # noqa: E402
from tolerances import TOL  # noqa: E402

PROPS = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

TABLES = ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar",
          "sqrt_recip_alpha_bar", "sqrt_recipm1_alpha_bar", "posterior_variance",
          "posterior_log_variance_clipped", "posterior_mean_coef_x0", "posterior_mean_coef_xt", "snr", "log_snr")
BETA_MIN, T_MAX = 1e-8, 300


def _alpha_bar_normal_or_zero(b):
    abar = np.cumprod(1.0 - np.asarray(b, dtype=np.float64))
    return bool(np.all((abar == 0) | (abar >= np.finfo(np.float64).tiny)))


def _beta_arrays(hi=1.0, min_T=1):
    return hnp.arrays(np.float64, st.integers(min_T, T_MAX), elements=st.floats(BETA_MIN, hi))


@st.composite
def _terminal_one(draw):
    b = draw(_beta_arrays())
    b[-1] = 1.0  # alpha_bar[T-1] = 0: inf / -inf entries must match too
    return b


@st.composite
def _zero_terminal(draw):
    try:
        return RS.rescale_zero_terminal_snr(draw(_beta_arrays(hi=0.999, min_T=2).filter(_alpha_bar_normal_or_zero)))
    except InputError:   # an interior step would lose all signal: refused on both sides
        assume(False)


@st.composite
def _named_args(draw):
    """(name, T, kw): each named schedule at random T with random valid options (beta_start <= 0.5)."""
    name = draw(st.sampled_from(RS.SCHEDULES))
    T = draw(st.integers(1, T_MAX))
    if name == "cosine":
        return name, T, {"s": draw(st.floats(1e-6, 0.1, exclude_max=True)), "max_beta": draw(st.floats(0.5, 0.999))}
    if name == "sigmoid" and draw(st.booleans()):
        return name, T, {"variant": "alpha_bar", "start": draw(st.floats(-6.0, -1.0)),
                         "end": draw(st.floats(1.0, 6.0)), "tau": draw(st.floats(0.3, 2.0)),
                         "max_beta": draw(st.floats(0.5, 0.999))}
    start = draw(st.floats(BETA_MIN, 0.5))
    end = draw(st.one_of(st.just(1.0), st.floats(start, 1.0, exclude_min=True)))
    return name, T, {"beta_start": start, "beta_end": end}


valid_betas = st.one_of(_beta_arrays(), _terminal_one(), _zero_terminal(),
                        _named_args().map(lambda a: RS.make_betas(a[0], a[1], **a[2]))).filter(_alpha_bar_normal_or_zero)


def close(torch_value, np_value, tol=TOL["cross64"]):
    np.testing.assert_allclose(torch_value.detach().cpu().numpy(), np_value, rtol=tol, atol=tol)


def both(b_np, b_t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RS.PriorMismatchWarning)
        return RS.Schedule(b_np, warn=False), TS.Schedule(b_t, warn=False)


def _check_tables(ref, port):
    assert port.T == ref.T
    for name in TABLES:
        tab = getattr(port, name)
        assert tab.dtype == torch.float64 and tab.shape == (ref.T,), name
        close(tab, getattr(ref, name))  # inf == inf and -inf == -inf pass; a lone inf fails


@PROPS
@given(valid_betas)
def test_F1_F2_P2_P3_P4_S7_random_schedules_give_equal_tables_from_the_same_betas(b):
    _check_tables(*both(b, torch.as_tensor(b)))


@PROPS
@given(_named_args())
def test_S1_S2_S3_S4_S5_F2_P2_P3_P4_S7_named_schedules_with_random_options_agree_end_to_end(args):
    name, T, kw = args
    b_np, b_t = RS.make_betas(name, T, **kw), TS.make_betas(name, T, **kw)
    assert isinstance(b_t, torch.Tensor) and b_t.dtype == torch.float64 and b_t.shape == (T,)
    close(b_t, b_np)
    if _alpha_bar_normal_or_zero(b_np) and _alpha_bar_normal_or_zero(b_t.numpy()):
        _check_tables(*both(b_np, b_t))


@PROPS
@given(_beta_arrays(hi=0.999, min_T=2).filter(_alpha_bar_normal_or_zero))
def test_S6_random_rescale_agrees_and_ends_at_exactly_zero_on_both_sides(b):
    out = []
    for f, arg in ((RS.rescale_zero_terminal_snr, b), (TS.rescale_zero_terminal_snr, torch.as_tensor(b))):
        try:
            out.append(np.asarray(f(arg), dtype=np.float64))
        except InputError:   # an interior rescaled beta rounds to 1: refused (see test_properties.py)
            out.append(None)
    if any(o is None for o in out):
        # both refuse, or the other side's interior beta is within rounding of 1 (a borderline input)
        other = [o for o in out if o is not None]
        assert not other or np.max(other[0][:-1]) > 1 - 1e-9
        assume(False)
    b_np, b_t = out[0], torch.as_tensor(out[1])
    # (S6) subtracts L = sqrt(abar_{T-1}) from every sqrt(abar_t): the rounding of sqrt(abar_t) (~ T u
    # relative, different on each side) is divided by sqrt(abar_t) - L, so each rescaled beta carries an
    # error up to cond = sqrt(abar_{T-2}) / (sqrt(abar_{T-2}) - L) = 1 / (1 - sqrt(alpha_{T-1})) ~ 2 / beta_{T-1}
    # times T u. Measured: betas [0.29, 0.25, 1e-8 x 8] (cond 2e8) differ by 7.6e-9 = 4e-17 cond. The
    # tolerance is TOL["cross64"] scaled by this condition number (cond = 1 once the last beta is 1).
    sqrt_abar = np.sqrt(np.cumprod(1.0 - b))
    cond = sqrt_abar[-2] / (sqrt_abar[-2] - sqrt_abar[-1])
    close(b_t, b_np, TOL["cross64"] * cond)
    assert float(b_t[-1]) == 1.0 and b_np[-1] == 1.0  # (S6) abar_T = 0 exactly, not just small
