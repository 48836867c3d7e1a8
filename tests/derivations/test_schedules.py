"""Schedules (derivations/schedules.md): S1 linear, S2 cosine, S3 betas from alpha_bar and the clip,
S4 quadratic, S5 sigmoid, S6 zero terminal SNR, S7 SNR; and the L_T-vs-T table printed on the page.

Independent routes: the continuous alpha_bar function against the telescoped product of the betas
(S2, S3, S5); the closed-form end-of-schedule betas from the identity cos(pi/2 - x) = sin(x) (S3);
inverting each schedule back to the grid it was built on (S4, S5); collinearity of the rescaled
sqrt(alpha_bar) (S6); the forward closed form's coefficients (S7); a plain Python product and the
Gaussian KL for the table (S1, L8).
"""
import math
from pathlib import Path

import numpy as np
import pytest

from reference import diffusion, losses
from reference.schedules import Schedule, make_betas, rescale_zero_terminal_snr
from tolerances import TOL

PAGE = Path(__file__).resolve().parents[2] / "derivations" / "schedules.md"


def _table_rows():
    rows = []
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows.append((int(cells[0]), [float(c) for c in cells[1:]]))
    return rows


def _three_digits(x):
    return float(f"{x:.3g}")


def test_S1_L8_prior_table_in_schedules_md_matches_the_code():
    rows = _table_rows()
    assert [T for T, _ in rows] == [50, 100, 250, 500, 1000]
    for T, cells in rows:
        want = []
        for name in ("linear", "cosine"):
            betas = make_betas(name, T).tolist()
            abar = math.prod(1.0 - b for b in betas)                                  # (F2) by hand
            # (L8) via the Gaussian KL (L2): q(x_T | x0) = N(sqrt(abar) x0, 1 - abar) against N(0, 1)
            worst = float(losses.normal_kl(math.sqrt(abar) * 1.0, math.log1p(-abar), 0.0, 0.0)) / math.log(2)
            grey = float(losses.normal_kl(0.0, math.log1p(-abar), 0.0, 0.0)) / math.log(2)
            want += [abar, math.sqrt(abar), worst, grey] if name == "linear" else [abar, worst]
        assert cells == [_three_digits(w) for w in want], (T, cells, want)
        # and the Schedule's own diagnostics agree with the page
        s = Schedule(make_betas("linear", T), warn=False)
        assert _three_digits(s.alpha_bar_T) == cells[0] and _three_digits(s.prior_bpd()) == cells[2]
    # (S1): the betas are an arithmetic progression from 1e-4 to 0.02 (second differences vanish)
    b = make_betas("linear", 1000)
    assert b[0] == 1e-4 and abs(b[-1] - 0.02) <= TOL["exact64"]
    assert np.max(np.abs(np.diff(b, 2))) <= TOL["exact64"]


@pytest.mark.parametrize("T", [10, 1000])
def test_S2_S3_cosine_betas_telescope_to_the_continuous_alpha_bar_and_the_clip_bounds_the_last_step(T):
    s_off = 0.008
    s = Schedule(make_betas("cosine", T), warn=False)
    u = np.arange(1, T + 1) / T                                                        # paper t / T

    def abar_fn(x):                                                                    # (S2), continuous
        return np.cos((x + s_off) / (1 + s_off) * np.pi / 2) ** 2 / np.cos(s_off / (1 + s_off) * np.pi / 2) ** 2

    # (S3): every product equals the continuous function, except the last (clipped) one
    assert np.max(np.abs(s.alpha_bar[:-1] - abar_fn(u[:-1]))) <= TOL["exact64"]
    assert s.betas[-1] == 0.999 and abs(s.alpha_bar[-1] - 0.001 * s.alpha_bar[-2]) <= TOL["exact64"]
    assert np.max(1 / np.sqrt(s.alphas)) <= math.sqrt(1000) * (1 + TOL["exact64"])
    # The end-of-schedule betas from cos(pi/2 - x) = sin(x): beta_{T-k+1} = 1 - sin^2((k-1)c)/sin^2(kc)
    c = np.pi / (2 * T * (1 + s_off))
    for k in range(2, min(T, 6)):
        want = 1 - math.sin((k - 1) * c) ** 2 / math.sin(k * c) ** 2
        # near u = 1 the argument of cos sits next to pi/2, where cos has a zero: rounding of the argument
        # (~ulp(pi/2)) is amplified by 1/(k c) in the relative error of alpha_bar, hence that condition number
        assert abs(s.betas[T - k] - want) <= TOL["exact64"] / (k * c), k
    # Without the clip the last beta is 1: alpha_T = 0, the singularity of (M1)
    assert make_betas("cosine", T, max_beta=1.0)[-1] == 1.0


def test_S4_S5_quadratic_and_sigmoid_invert_to_their_linear_grids():
    T, b0, b1 = 1000, 1e-4, 0.02
    # (S4): sqrt(beta) is an arithmetic progression from sqrt(b0) to sqrt(b1)
    q = np.sqrt(make_betas("quadratic", T))
    assert np.max(np.abs(np.diff(q, 2))) <= TOL["exact64"]
    assert abs(q[0] - math.sqrt(b0)) <= TOL["exact64"] and abs(q[-1] - math.sqrt(b1)) <= TOL["exact64"]
    # (S5), beta variant: logit((beta - b0) / (b1 - b0)) is linspace(-6, 6, T)
    p = (make_betas("sigmoid", T) - b0) / (b1 - b0)
    logit = np.log(p) - np.log1p(-p)
    # rounding of beta (relative) becomes an error in p of beta/(b1 - b0) ulp, which the logit amplifies
    # by 1/(p (1 - p)) (up to ~400 at the ends): that is the condition number of this route
    cond = make_betas("sigmoid", T) / (b1 - b0) / (p * (1 - p))
    assert np.all(np.abs(logit - np.linspace(-6, 6, T)) <= TOL["exact64"] * cond)
    # (S5), alpha_bar variant: the products follow the continuous alpha_bar (S3) until the clip
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    u = np.arange(1, T + 1) / T
    want = (sig(3.0) - sig(u * 6.0 - 3.0)) / (sig(3.0) - sig(-3.0))
    s = Schedule(make_betas("sigmoid", T, variant="alpha_bar"), warn=False)
    assert np.max(np.abs(s.alpha_bar[:-1] - want[:-1])) <= TOL["exact64"]


@pytest.mark.parametrize("name", ["linear", "cosine", "quadratic"])
def test_S6_zero_terminal_snr_is_affine_in_sqrt_alpha_bar_and_makes_the_prior_exact(name, rng):
    old = Schedule(make_betas(name, 1000), warn=False)
    new = Schedule(rescale_zero_terminal_snr(old.betas), warn=False)
    assert new.snr[-1] == 0.0 and new.betas[-1] == 1.0 and new.prior_bpd() == 0.0
    assert abs(new.alpha_bar[0] - old.alpha_bar[0]) <= TOL["exact64"]             # first step unchanged
    # affine: the points (sqrt(abar_old), sqrt(abar_new)) lie on the line through the two end points
    x, y = old.sqrt_alpha_bar, new.sqrt_alpha_bar
    slope = (y[0] - y[-1]) / (x[0] - x[-1])
    assert np.max(np.abs(y - (y[-1] + slope * (x - x[-1])))) <= TOL["exact64"]
    assert np.all(np.diff(new.alpha_bar) < 0)                                     # still decreasing
    # at SNR 0 the v prediction still determines x0 (R4: x0 = -v), the eps prediction cannot (R1)
    x0, eps = rng.uniform(-1, 1, (3, 2)), rng.standard_normal((3, 2))
    xt = diffusion.q_sample(new, x0, 999, eps)
    v = diffusion.v_target(new, x0, 999, eps)
    assert np.max(np.abs(diffusion.predict_x0(new, xt, 999, v, "v") - x0)) <= TOL["exact64"]
    assert np.array_equal(v, -x0)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_S7_snr_is_the_squared_coefficient_ratio_and_decreases(name):
    s = Schedule(make_betas(name, 1000), warn=False)
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    for t in [0, 1, 100, 500, 998, 999]:
        signal = diffusion.q_sample(s, one, t, zero)[0, 0]                          # sqrt(abar_t)   (F3)
        noise = diffusion.q_sample(s, zero, t, one)[0, 0]                           # sqrt(1-abar_t) (F3)
        assert abs(s.snr[t] / (signal / noise) ** 2 - 1) <= TOL["exact64"]
        # abar = sigmoid(log snr), 1 - abar = sigmoid(-log snr)
        lam = s.log_snr[t]
        assert abs(1 / (1 + math.exp(-lam)) - s.alpha_bar[t]) <= TOL["exact64"]
        assert abs(1 / (1 + math.exp(lam)) / (1 - s.alpha_bar[t]) - 1) <= TOL["exact64"]
    assert np.all(np.diff(s.snr) < 0)
