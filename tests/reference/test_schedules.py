"""Schedules (S1-S7) and the Schedule table, each checked through a route other than its code."""
import math
import warnings

import numpy as np
import pytest

from reference import schedules as S
from reference.errors import InputError
from tolerances import TOL


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def test_S1_linear_is_ho_et_al():
    b = S.make_betas("linear", 1000)
    assert b[0] == pytest.approx(1e-4, rel=TOL["exact64"]) and b[-1] == pytest.approx(0.02, rel=TOL["exact64"])
    # equal increments: the second difference of a linear ramp is zero
    assert np.max(np.abs(np.diff(b, 2))) < TOL["exact64"]


def test_S4_quadratic_has_linear_square_root():
    b = S.make_betas("quadratic", 500, beta_start=1e-4, beta_end=0.02)
    r = np.sqrt(b)
    assert np.max(np.abs(np.diff(r, 2))) < TOL["exact64"]
    assert rel([b[0], b[-1]], [1e-4, 0.02]) < TOL["exact64"]


@pytest.mark.parametrize("T", [10, 1000])
def test_S2_S3_cosine_alpha_bar_follows_the_continuous_function_until_clipped(T):
    b = S.make_betas("cosine", T)
    sched = S.Schedule(b, warn=False)
    s = 0.008
    # independent route: evaluate f(t)/f(0) with scalar math.cos, step by step
    f = [math.cos(((k / T) + s) / (1 + s) * math.pi / 2) ** 2 for k in range(T + 1)]
    want = np.array([f[k + 1] / f[0] for k in range(T)])
    clipped = np.flatnonzero(b >= 0.999)
    upto = clipped[0] if clipped.size else T
    assert rel(sched.alpha_bar[:upto], want[:upto]) < TOL["exact64"] * 100  # ratios of cosines near 0: ~1e-10 relative
    assert np.all(b <= 0.999) and np.all(b > 0)
    # (S3) the clip bites only at the end, where f -> 0 makes beta -> 1
    if T == 1000:
        assert clipped.tolist() == [T - 1]


def test_S3_cosine_max_beta_is_a_real_bound():
    b = S.make_betas("cosine", 100, max_beta=0.5)
    assert b.max() == 0.5


def test_S5_sigmoid_beta_variant_is_monotone_between_endpoints():
    b = S.make_betas("sigmoid", 200)
    assert np.all(np.diff(b) > 0)
    sig = 1 / (1 + math.exp(6.0))
    assert b[0] == pytest.approx(1e-4 + sig * (0.02 - 1e-4), rel=TOL["exact64"])


def test_S5_sigmoid_alpha_bar_variant_matches_its_continuous_alpha_bar():
    T = 300
    sched = S.Schedule(S.make_betas("sigmoid", T, variant="alpha_bar"), warn=False)

    def g(u):
        sg = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
        return (sg(3.0) - sg(u * 6.0 - 3.0)) / (sg(3.0) - sg(-3.0))

    want = np.array([g((k + 1) / T) / g(0.0) for k in range(T)])
    ok = sched.betas < 0.999
    assert rel(sched.alpha_bar[ok], want[ok]) < 1e-9  # differences of sigmoids near 3: cancellation ~1e-12 * 1/g


def test_S6_zero_terminal_snr_pins_both_ends():
    b = S.make_betas("linear", 1000)
    z = S.rescale_zero_terminal_snr(b)
    old, new = S.Schedule(b), S.Schedule(z)
    assert new.alpha_bar[-1] == 0.0 and new.snr[-1] == 0.0 and z[-1] == 1.0
    assert new.alpha_bar[0] == pytest.approx(old.alpha_bar[0], rel=TOL["exact64"])
    # sqrt(abar) is an affine image of the old sqrt(abar): the ratio of differences is constant
    d_old, d_new = np.diff(old.sqrt_alpha_bar), np.diff(new.sqrt_alpha_bar)
    ratio = d_new / d_old
    assert np.max(np.abs(ratio / ratio[0] - 1)) < 1e-9


def test_S7_snr_and_table_identities():
    sched = S.Schedule(S.make_betas("cosine", 100))
    # independent route: run the product as a Python loop
    prod, abar = 1.0, []
    for beta in sched.betas:
        prod *= 1.0 - beta
        abar.append(prod)
    abar = np.array(abar)
    assert rel(sched.alpha_bar, abar) < TOL["exact64"]
    assert rel(sched.snr, abar / (1 - abar)) < TOL["exact64"]
    assert sched.alpha_bar_prev[0] == 1.0 and np.array_equal(sched.alpha_bar_prev[1:], sched.alpha_bar[:-1])
    assert sched.posterior_variance[0] == 0.0
    assert sched.posterior_log_variance_clipped[0] == math.log(sched.posterior_variance[1])
    for name in ("betas", "alpha_bar", "posterior_variance", "snr"):
        assert getattr(sched, name).dtype == np.float64 and getattr(sched, name).shape == (100,)


def test_L8_C6_linear_T50_warns_and_reports_prior_mismatch():
    with pytest.warns(S.PriorMismatchWarning, match="alpha_bar_T = 0.603"):
        sched = S.Schedule(S.make_betas("linear", 50))
    assert sched.alpha_bar_T == pytest.approx(0.603, abs=1e-3)
    # (L8) KL(N(sqrt(a) x0, 1-a) || N(0,1)) per dim at |x0| = 1, computed from the two densities on a grid
    a = sched.alpha_bar_T
    x = np.linspace(-12, 12, 200_001)
    q = np.exp(-0.5 * (x - math.sqrt(a)) ** 2 / (1 - a)) / math.sqrt(2 * math.pi * (1 - a))
    p = np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
    f = q * np.log(q / p)
    kl_bits = np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(x)) / math.log(2)  # trapezoid rule
    assert sched.prior_bpd() == pytest.approx(kl_bits, rel=TOL["grid64"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S.Schedule(S.make_betas("linear", 1000))  # no warning for the standard schedule


def test_custom_betas_accepted_and_T1_works():
    sched = S.Schedule(np.array([0.5]), warn=False)
    assert sched.T == 1 and np.isfinite(sched.posterior_log_variance_clipped).all()
    assert np.array_equal(S.make_betas([0.1, 0.2], None), [0.1, 0.2])


@pytest.mark.parametrize("call, words", [
    (lambda: S.make_betas("cosinus", 10), ["unknown schedule 'cosinus'", "did you mean 'cosine'"]),
    (lambda: S.make_betas("linear", 0), ["T", ">= 1"]),
    (lambda: S.make_betas("linear", 2.5), ["T", "integer"]),
    (lambda: S.make_betas("linear", 10, beta_end=1.5), ["(0, 1]", "betas[6] = 1.00003"]),
    (lambda: S.make_betas("linear", 10, bogus=1), ["unknown option", "bogus"]),
    (lambda: S.Schedule([0.1, 0.0, 0.2]), ["(0, 1]", "betas[1]"]),
    (lambda: S.Schedule([0.1, float("nan")]), ["finite", "betas[1]"]),
    (lambda: S.Schedule(np.full((2, 2), 0.1)), ["1-D"]),
    (lambda: S.Schedule([]), ["empty"]),
    (lambda: S.rescale_zero_terminal_snr([0.1]), ["T >= 2"]),
])
def test_bad_schedule_input_names_the_problem(call, words):
    with pytest.raises(InputError) as e:
        call()
    for w in words:
        assert w in str(e.value)
