"""Parameterisations (derivations/parameterisations.md): R1-R5 conversions, R6 loss weights in SNR terms.

Independent routes: the truth is sampled first (x0, eps) and x_t built from it by the forward closed
form; each conversion must recover the sampled truth. v is checked as the derivative of x_t along the
angle phi (central finite difference) and as a rotation (norm preserved). The error identities (R6)
are checked numerically for arbitrary, wrong predictions.
"""
import numpy as np
import pytest

from reference import diffusion
from reference.schedules import Schedule, make_betas
from tolerances import TOL

STEPS = [0, 1, 10, 250, 500, 999]


@pytest.fixture
def sched():
    return Schedule(make_betas("linear", 1000), warn=False)


def _truth(sched, rng, t, n=8):
    x0, eps = rng.uniform(-1, 1, (n, 3, 4, 4)), rng.standard_normal((n, 3, 4, 4))
    return x0, eps, diffusion.q_sample(sched, x0, t, eps)


def _close(sched, t, a, b):
    """float64 exact route; the conversions divide by sqrt(abar_t) or sqrt(1 - abar_t), which amplifies
    rounding by up to 1/sqrt(abar_t) (<= 160 for linear T=1000) or 1/sqrt(1 - abar_t) (100 at t=0),
    so the tolerance carries that condition number."""
    cond = max(sched.sqrt_recip_alpha_bar[t], 1.0 / sched.sqrt_one_minus_alpha_bar[t])
    scale = cond * max(1.0, np.max(np.abs(b)))
    return np.max(np.abs(a - b)) <= TOL["exact64"] * scale


@pytest.mark.parametrize("t", STEPS)
def test_R1_R2_R4_R5_conversions_recover_the_sampled_truth(sched, rng, t):
    x0, eps, xt = _truth(sched, rng, t)
    v = diffusion.v_target(sched, x0, t, eps)
    assert _close(sched, t, diffusion.predict_x0(sched, xt, t, eps, "eps"), x0)      # (R1)
    assert _close(sched, t, diffusion.predict_eps(sched, xt, t, x0, "x0"), eps)      # (R2)
    assert _close(sched, t, diffusion.predict_x0(sched, xt, t, v, "v"), x0)          # (R4)
    assert _close(sched, t, diffusion.predict_eps(sched, xt, t, v, "v"), eps)        # (R5)
    # identities: predicting the quantity itself returns it unchanged
    assert np.array_equal(diffusion.predict_x0(sched, xt, t, x0, "x0"), x0)
    assert np.array_equal(diffusion.predict_eps(sched, xt, t, eps, "eps"), eps)
    # per-sample t in a batch gives the same as one t at a time
    tt = np.full(x0.shape[0], t)
    assert np.array_equal(diffusion.predict_x0(sched, xt, tt, v, "v"), diffusion.predict_x0(sched, xt, t, v, "v"))


@pytest.mark.parametrize("t", STEPS)
def test_R3_v_is_the_angular_derivative_and_the_map_is_a_rotation(sched, rng, t):
    x0, eps, xt = _truth(sched, rng, t)
    v = diffusion.v_target(sched, x0, t, eps)
    phi = np.arccos(np.sqrt(sched.alpha_bar[t]))                 # sqrt(abar) = cos(phi), sqrt(1-abar) = sin(phi)
    h = 1e-6

    def x_of(p):
        return np.cos(p) * x0 + np.sin(p) * eps

    fd = (x_of(phi + h) - x_of(phi - h)) / (2 * h)                # d x_t / d phi, central difference
    assert np.max(np.abs(fd - v)) <= TOL["fd64"] * max(1.0, np.max(np.abs(v)))
    assert np.max(np.abs(x_of(phi) - xt)) <= TOL["exact64"]      # the angle reproduces (F3)
    # rotation: |x_t|^2 + |v|^2 = |x0|^2 + |eps|^2 per sample
    lhs = np.sum(xt**2 + v**2, axis=(1, 2, 3))
    rhs = np.sum(x0**2 + eps**2, axis=(1, 2, 3))
    assert np.max(np.abs(lhs / rhs - 1)) <= TOL["exact64"]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("t", STEPS)
def test_R6_prediction_errors_convert_with_snr_weights(sched, rng, t, prediction):
    """A wrong prediction in any parameterisation; its three errors obey |d_eps|^2 = snr |d_x0|^2 and
    |d_v|^2 = (1 + snr) |d_x0|^2, sample by sample."""
    x0, eps, xt = _truth(sched, rng, t)
    v = diffusion.v_target(sched, x0, t, eps)
    out = {"eps": eps, "x0": x0, "v": v}[prediction] + 0.3 * rng.standard_normal(x0.shape)
    x0_hat = diffusion.predict_x0(sched, xt, t, out, prediction)
    eps_hat = diffusion.predict_eps(sched, xt, t, out, prediction)
    v_hat = diffusion.v_target(sched, x0_hat, t, eps_hat)        # (x0_hat, eps_hat) lie on the same x_t
    assert _close(sched, t, diffusion.q_sample(sched, x0_hat, t, eps_hat), xt)

    def sq(d):
        return np.sum(d**2, axis=(1, 2, 3))

    snr = sched.alpha_bar[t] / (1 - sched.alpha_bar[t])          # (S7) from the product table
    e_x0, e_eps, e_v = sq(x0 - x0_hat), sq(eps - eps_hat), sq(v - v_hat)
    # Rounding sits in the operands, not in their (possibly small) difference: a squared error
    # sum(d^2) with d = x - x_hat carries an absolute error ~ ulp * sum((|x| + |x_hat|)^2).
    tol_x0 = TOL["exact64"] * sq(np.abs(x0) + np.abs(x0_hat))
    assert np.all(np.abs(e_eps - snr * e_x0) <= snr * tol_x0 + TOL["exact64"] * sq(np.abs(eps) + np.abs(eps_hat)))
    assert np.all(np.abs(e_v - (1 + snr) * e_x0) <= (1 + snr) * tol_x0 + TOL["exact64"] * sq(np.abs(v) + np.abs(v_hat)))
