"""Property-based tests (hypothesis) of the Schedule tables, the posterior and the conversions
over random VALID schedules: random betas, a beta of exactly 1 at the end, zero-terminal-SNR
rescaled schedules (S6) and every named schedule at random T with random valid options.

Every property is an identity or a bound derived independently of the code's formulas (the tower
rule and the law of total variance for the posterior, round trips for the conversions, ordering
for the tables), so a typo in one closed form cannot agree with itself.

The domain. Betas are drawn from [1e-8, 1] (T in 1..300). Two corners of what check_betas accepts
have their own tests at the bottom, where the tables once broke: a beta below half an ulp of 1
(alpha = 1 exactly: 1 - alpha_bar must come from expm1 of a log-space sum, not 1 - cumprod) and
alpha_bar in the subnormals (1/sqrt(abar) must not be computed as sqrt(1/abar), which overflows).
The strategies still filter out schedules whose alpha_bar has subnormal entries, since products of
such values lose all relative precision.

Reproducible: derandomize=True (examples are a hash of the test) and no example database.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from reference import diffusion as D
from reference import schedules as S
from reference.errors import InputError
from tolerances import TOL

PROPS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

BETA_MIN = 1e-8           # "tiny" betas: 1 - alpha_bar then keeps ~8 significant digits
T_MAX = 300
TINY = np.finfo(np.float64).tiny  # smallest normal float64, ~2.2e-308


# ---- strategies ------------------------------------------------------------------------------

def _alpha_bar_normal_or_zero(b):
    """alpha_bar (computed as the Schedule does) has no subnormal entries (see module docstring)."""
    abar = np.cumprod(1.0 - np.asarray(b, dtype=np.float64))
    return bool(np.all((abar == 0) | (abar >= TINY)))


def _beta_arrays(hi=1.0, min_T=1):
    return hnp.arrays(np.float64, st.integers(min_T, T_MAX), elements=st.floats(BETA_MIN, hi))


@st.composite
def _terminal_one(draw):
    """Random betas with the last one exactly 1: alpha_bar[T-1] = 0 (zero terminal SNR)."""
    b = draw(_beta_arrays())
    b[-1] = 1.0
    return b


@st.composite
def _zero_terminal(draw):
    """(S6) rescale_zero_terminal_snr of random betas whose alpha_bar stays > 0 and decreases."""
    b = draw(_beta_arrays(hi=0.999, min_T=2).filter(_alpha_bar_normal_or_zero))
    try:
        return S.rescale_zero_terminal_snr(b)
    except InputError:   # an interior step would lose all signal: refused (test_S6_rescale_refuses_...)
        assume(False)


@st.composite
def _named(draw):
    """Each named schedule at random T with random valid options."""
    name = draw(st.sampled_from(S.SCHEDULES))
    T = draw(st.integers(1, T_MAX))
    kw = {}
    if name == "cosine":
        kw = {"s": draw(st.floats(1e-6, 0.1, exclude_max=True)), "max_beta": draw(st.floats(0.5, 0.999))}
    elif name == "sigmoid" and draw(st.booleans()):
        kw = {"variant": "alpha_bar", "start": draw(st.floats(-6.0, -1.0)), "end": draw(st.floats(1.0, 6.0)),
              "tau": draw(st.floats(0.3, 2.0)), "max_beta": draw(st.floats(0.5, 0.999))}
    else:  # linear, quadratic, sigmoid variant="beta": beta_start < beta_end in (0, 1]
        start = draw(st.floats(BETA_MIN, 1.0, exclude_max=True))
        kw = {"beta_start": start, "beta_end": draw(st.floats(start, 1.0, exclude_min=True))}
    return S.make_betas(name, T, **kw)


valid_betas = st.one_of(_beta_arrays(), _terminal_one(), _zero_terminal(), _named()).filter(
    _alpha_bar_normal_or_zero)


def _sched(b):
    return S.Schedule(b, warn=False)  # the prior-mismatch warning is a diagnostic, not under test here


# ---- Schedule tables -------------------------------------------------------------------------

# Tables that must be finite everywhere; the two sqrt_recip tables and log_snr may be infinite
# only where alpha_bar = 0 (x_t holds no signal there).
FINITE_TABLES = ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar",
                 "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef_x0",
                 "posterior_mean_coef_xt", "snr")
INF_AT_ZERO_SNR = ("sqrt_recip_alpha_bar", "sqrt_recipm1_alpha_bar")


@PROPS
@given(valid_betas)
def test_F1_F2_S7_tables_finite_except_inverse_tables_at_zero_alpha_bar(b):
    s = _sched(b)
    for name in FINITE_TABLES + INF_AT_ZERO_SNR + ("log_snr",):
        tab = getattr(s, name)
        assert tab.dtype == np.float64 and tab.shape == (s.T,), name
        assert not np.any(np.isnan(tab)), name
    for name in FINITE_TABLES:
        assert np.all(np.isfinite(getattr(s, name))), name
    zero = s.alpha_bar == 0
    for name in INF_AT_ZERO_SNR:
        tab = getattr(s, name)
        assert np.all(np.isfinite(tab[~zero])), name        # finite wherever alpha_bar > 0
        assert np.all(np.isposinf(tab[zero])), name         # +inf exactly where alpha_bar = 0
    assert np.all(np.isfinite(s.log_snr[~zero])) and np.all(np.isneginf(s.log_snr[zero]))


@PROPS
@given(valid_betas)
def test_F2_alpha_bar_decreasing_in_0_1_with_alpha_bar_prev_0_equal_1(b):
    s = _sched(b)
    abar = s.alpha_bar
    assert np.all(abar >= 0) and np.all(abar < 1)           # every beta >= 1e-8 > 0, so abar_0 < 1
    # (F2)  abar_t = alpha_t abar_{t-1} with alpha_t < 1: strictly decreasing while abar_{t-1} > 0;
    #       once abar hits 0 (a beta of 1) it stays 0. Every beta here is >= 1e-8 >> 2^-53, so the
    #       float product drops by far more than an ulp and the strict inequality survives rounding.
    alive = abar[:-1] > 0
    assert np.all(abar[1:][alive] < abar[:-1][alive])
    assert np.all(abar[1:][~alive] == 0)
    # abar_{t-1} with the empty product abar_{-1} = 1 at t = 0
    assert s.alpha_bar_prev[0] == 1.0
    np.testing.assert_array_equal(s.alpha_bar_prev[1:], abar[:-1])


# ---- posterior (P2, P3, P4) -------------------------------------------------------------------

def _cancellation_scale(s):
    """1 / (1 - abar_t): the posterior tables divide by 1 - abar_t = fl(1 - abar_t), whose absolute
    rounding (~ a few ulp of 1) becomes a relative error ~ u / (1 - abar_t) when abar_t -> 1
    (tiny betas at the first steps: beta_0 = 1e-8 gives 1e8). Tolerances are TOL["exact64"] times
    this condition number: they are exact64 wherever 1 - abar_t is O(1)."""
    return 1.0 / (1.0 - s.alpha_bar)


@PROPS
@given(valid_betas)
def test_P3_P4_posterior_variance_in_0_beta_and_clipped_log_variance_finite(b):
    s = _sched(b)
    pv = s.posterior_variance
    # (P3)  beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) and 1 - abar_{t-1} <= 1 - abar_t, so
    #       0 <= beta~_t <= beta_t; the float ratio is <= 1 exactly, the product and quotient round
    #       twice: allow beta_t (1 + exact64) above.
    assert np.all(pv >= 0)
    assert np.all(pv <= s.betas * (1.0 + TOL["exact64"]))
    # (P3)  beta~_0 = 0: at t = 0 the "previous" sample is x_0 itself, a point mass.
    assert pv[0] == 0.0
    # (P4)  log beta~ is finite everywhere: entry 0 is log beta~_1 (log beta_0 when T = 1).
    lv = s.posterior_log_variance_clipped
    assert np.all(np.isfinite(lv))
    assert lv[0] == (lv[1] if s.T > 1 else np.log(s.betas[0]))


@PROPS
@given(valid_betas)
def test_P2_posterior_mean_coefficients_finite_in_0_1(b):
    s = _sched(b)
    for c in (s.posterior_mean_coef_x0, s.posterior_mean_coef_xt):
        # (P2)  c_x0 = sqrt(abar_{t-1}) beta_t / (1 - abar_t) <= beta_t / (1 - abar_t) <= 1 since
        #       1 - abar_t >= 1 - alpha_t = beta_t; c_xt = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) <= 1.
        assert np.all(np.isfinite(c)) and np.all(c >= 0)
        assert np.all(c <= 1.0 + TOL["exact64"] * _cancellation_scale(s))


@PROPS
@given(valid_betas)
def test_P1_P2_posterior_mean_averages_back_to_the_prior_mean(b):
    # Independent route (tower rule): for fixed x_0, E[x_{t-1} | x_0] = E[ E[x_{t-1} | x_t, x_0] | x_0 ]
    #   = E[ c_x0 x_0 + c_xt x_t | x_0 ] = c_x0 x_0 + c_xt sqrt(abar_t) x_0          (P2, then F3)
    # and the left side is sqrt(abar_{t-1}) x_0 (F3; abar_{-1} = 1 gives x_0 at t = 0). For every x_0:
    #   c_x0 + c_xt sqrt(abar_t) = sqrt(abar_{t-1}).
    s = _sched(b)
    lhs = s.posterior_mean_coef_x0 + s.posterior_mean_coef_xt * s.sqrt_alpha_bar
    tol = TOL["exact64"] * _cancellation_scale(s)
    assert np.all(np.abs(lhs - np.sqrt(s.alpha_bar_prev)) <= tol)


@PROPS
@given(valid_betas)
def test_P1_P3_posterior_variance_plus_mean_spread_is_the_prior_variance(b):
    # Independent route (law of total variance), per dimension, for fixed x_0:
    #   Var[x_{t-1} | x_0] = E[ Var[x_{t-1} | x_t, x_0] ] + Var[ E[x_{t-1} | x_t, x_0] ]
    #   1 - abar_{t-1}     = beta~_t + c_xt^2 Var[x_t | x_0] = beta~_t + c_xt^2 (1 - abar_t)   (P3, P2, F3)
    s = _sched(b)
    lhs = s.posterior_variance + s.posterior_mean_coef_xt**2 * (1.0 - s.alpha_bar)
    tol = TOL["exact64"] * _cancellation_scale(s)
    assert np.all(np.abs(lhs - (1.0 - s.alpha_bar_prev)) <= tol)


# ---- conversions (R1-R5) ----------------------------------------------------------------------

@st.composite
def _case(draw, need_zero=False):
    """A schedule, data (N, 3) and t (N,): 0-based steps with abar_t > 0 (or = 0 if need_zero)."""
    if need_zero:  # schedules that end with no signal: a beta of 1 at the end, or the S6 rescale
        b = draw(st.one_of(_terminal_one(), _zero_terminal()).filter(_alpha_bar_normal_or_zero))
    else:          # any valid schedule with signal at some step (beta_0 < 1)
        b = draw(valid_betas.filter(lambda b: b[0] < 1.0))
    s = _sched(b)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    N = draw(st.integers(1, 5))
    steps = np.flatnonzero((s.alpha_bar == 0) if need_zero else (s.alpha_bar > 0))
    t = rng.choice(steps, size=N)                              # (N,)
    x0, eps = rng.standard_normal((N, 3)), rng.standard_normal((N, 3))
    return s, t, x0, eps


def _close(got, want, tol):
    assert np.all(np.isfinite(got))
    assert np.all(np.abs(got - want) <= tol)


@PROPS
@given(_case())
def test_R1_R2_R3_R4_R5_conversions_round_trip_where_alpha_bar_positive(case):
    s, t, x0, eps = case
    xt = D.q_sample(s, x0, t, eps)                           # (F3)  x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps
    v = D.v_target(s, x0, t, eps)                            # (R3)
    a = s.alpha_bar[t][:, None]                              # (N, 1)
    scale = TOL["exact64"] * (1.0 + np.max(np.abs(x0)) + np.max(np.abs(eps)))
    # Conditioning. Rounding in x_t (~ u |x_t|) is divided by sqrt(abar_t) to recover x_0 from eps (R1),
    # and by sqrt(1 - abar_t) to recover eps from x_0 (R2); R1's tables sqrt(1/abar - 1), computed apart
    # from sqrt(1 - abar), also differ by a relative u / (1 - abar). So R1 gets 1/sqrt(abar (1 - abar)),
    # R2 1/sqrt(1 - abar). The v routes (R4, R5) are a rotation by the angle with cos = sqrt(abar):
    # no division, no amplification.
    _close(D.predict_x0(s, xt, t, eps, "eps"), x0, scale / np.sqrt(a * (1.0 - a)))   # (R1)
    _close(D.predict_eps(s, xt, t, x0, "x0"), eps, scale / np.sqrt(1.0 - a))         # (R2)
    _close(D.predict_x0(s, xt, t, v, "v"), x0, scale)                                # (R4)
    _close(D.predict_eps(s, xt, t, v, "v"), eps, scale)                              # (R5)
    # the identity conversions hand the output back untouched
    np.testing.assert_array_equal(D.predict_x0(s, xt, t, x0, "x0"), x0)
    np.testing.assert_array_equal(D.predict_eps(s, xt, t, eps, "eps"), eps)


@PROPS
@given(_case(need_zero=True))
def test_R1_R4_R5_at_zero_alpha_bar_eps_prediction_raises_and_v_still_round_trips(case):
    s, t, x0, eps = case
    xt = D.q_sample(s, x0, t, eps)                           # abar_t = 0: x_t = eps, no signal
    with pytest.raises(InputError, match="alpha_bar = 0"):
        D.predict_x0(s, xt, t, eps, "eps")                   # (R1) divides by sqrt(abar_t) = 0: refuse, never NaN
    v = D.v_target(s, x0, t, eps)                            # (R3)  v = -x_0 at abar_t = 0
    # (R4, R5) at abar_t = 0 the coefficients are exactly 0 and 1: the round trip is exact.
    np.testing.assert_array_equal(D.predict_x0(s, xt, t, v, "v"), x0)
    np.testing.assert_array_equal(D.predict_eps(s, xt, t, v, "v"), eps)
    np.testing.assert_array_equal(D.predict_eps(s, xt, t, x0, "x0"), eps)   # (R2) divides by sqrt(1) = 1


# ---- SNR (S7) and the zero-terminal rescale (S6) ----------------------------------------------

@PROPS
@given(valid_betas)
def test_S7_snr_non_increasing_and_log_snr_is_its_log(b):
    s = _sched(b)
    # (S7)  SNR_t = abar_t / (1 - abar_t): numerator non-increasing, denominator non-decreasing, and
    #       float division/subtraction are monotone, so the ordering holds exactly in float64.
    assert np.all(s.snr[1:] <= s.snr[:-1]) and np.all(s.log_snr[1:] <= s.log_snr[:-1])  # -inf <= -inf holds
    assert np.all(s.snr >= 0)
    pos = s.snr > 0
    # log of the table snr vs the table log_snr = log abar - log(1 - abar): one rounding apart
    # (|log abar| <= 710, so the absolute error stays far below exact64).
    np.testing.assert_allclose(s.log_snr[pos], np.log(s.snr[pos]), rtol=TOL["exact64"], atol=TOL["exact64"])
    assert np.all(np.isneginf(s.log_snr[~pos]))
    assert np.all(s.alpha_bar[~pos] == 0)                    # SNR 0 exactly where no signal is left


@PROPS
@given(_zero_terminal().filter(_alpha_bar_normal_or_zero))
def test_S6_rescale_pins_both_ends_and_is_idempotent(b):
    s = _sched(b)
    assert s.betas[-1] == 1.0 and s.alpha_bar[-1] == 0.0 and s.snr[-1] == 0.0
    assert np.all(s.alpha_bar[:-1] > 0)                      # only the last step loses all signal
    # Rescaling again: the first step is kept and the last is already 0, so the map is the identity
    # (shift by sqrt(abar_T) = 0, scale by sqrt(abar_1) / sqrt(abar_1) = 1), up to the rounding of
    # alpha_t = abar_t / abar_{t-1} -> beta_t = 1 - alpha_t, absolute ~ u per beta.
    np.testing.assert_allclose(S.rescale_zero_terminal_snr(b), b, rtol=TOL["exact64"], atol=TOL["exact64"])


# ---- corners of the valid domain that once broke the tables ----------------------------------------

def test_P2_P3_subulp_first_beta_gives_finite_tables():
    s = _sched([1e-17, 0.5])                                 # check_betas accepts it: every beta in (0, 1]
    for name in FINITE_TABLES:
        assert np.all(np.isfinite(getattr(s, name))), name


def test_R1_subnormal_alpha_bar_keeps_finite_inverse_tables():
    s = _sched(np.full(52, 1.0 - 1e-6))                      # abar_51 = 1e-312 > 0, subnormal
    assert s.alpha_bar[-1] > 0
    assert np.all(np.isfinite(s.sqrt_recip_alpha_bar)) and np.all(np.isfinite(s.sqrt_recipm1_alpha_bar))


def test_S6_rescale_refuses_a_schedule_that_already_reaches_zero_early():
    from reference.errors import InputError

    with pytest.raises(InputError, match="already reaches 0 at step 1"):
        S.rescale_zero_terminal_snr([0.5, 1.0, 0.5])


def test_S6_rescale_refuses_betas_below_float_resolution_at_the_end():
    with pytest.raises(InputError, match=r"no signal at step 1 \(of 3\)"):
        S.rescale_zero_terminal_snr([0.3, 0.2, 1e-17])


def test_S6_rescale_refuses_an_interior_beta_that_rounds_to_one():
    with pytest.raises(InputError, match=r"beta_1 rounds to 1"):
        S.rescale_zero_terminal_snr([1e-8, 0.75, 1e-8])
