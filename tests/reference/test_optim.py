"""reference/optim.py against independent routes: closed forms, scalar loops from the papers.

O1 AdamW: the closed-form first step and Loshchilov & Hutter's Algorithm 2 as a scalar loop.
O2 EMA: the weighted-sum closed form. O3 clipping: norms and directions measured directly.
O4 LR schedule: values at known steps.
"""
import math

import numpy as np
import pytest

from reference.errors import InputError
from reference.optim import EMA, AdamW, clip_grad_norm, lr_at
from tolerances import TOL


def _params(rng):
    return {"conv.weight": rng.standard_normal((2, 3, 3, 3)), "conv.bias": rng.standard_normal(2),
            "lin.weight": rng.standard_normal((4, 5))}


def _grads(rng, params, scale=1.0):
    return {k: scale * rng.standard_normal(p.shape) for k, p in params.items()}


# ----------------------------------------------------------------------------- O1 AdamW


def test_O1_first_step_is_lr_sign_g_after_decay(rng):
    # With m = v = 0, step 1 gives m_hat = g, v_hat = g^2, so the Adam step is lr g/(|g| + eps):
    # lr sign(g) up to lr eps/|g|. Decay first: theta_1 = (1 - lr wd) theta_0 - lr g/(|g| + eps).
    params = _params(rng)
    theta0 = {k: p.copy() for k, p in params.items()}
    grads = {k: np.where(rng.random(p.shape) < 0.5, -1, 1) * rng.uniform(0.1, 3, p.shape)
             for k, p in params.items()}
    lr, wd, eps = 0.01, 0.1, 1e-8
    AdamW(params, lr=lr, weight_decay=wd, eps=eps).step(grads)
    for k, g in grads.items():
        closed_form = (1 - lr * wd) * theta0[k] - lr * g / (np.abs(g) + eps)
        np.testing.assert_allclose(params[k], closed_form, rtol=0, atol=TOL["exact64"])
        # |g| >= 0.1, so the eps term moves the step by at most lr eps / 0.1 (a bound, not a tolerance)
        sign_step = (1 - lr * wd) * theta0[k] - lr * np.sign(g)
        assert np.max(np.abs(params[k] - sign_step)) <= lr * eps / 0.1 + TOL["exact64"]


def _algorithm2_scalar(theta, grads_seq, lrs, beta1, beta2, eps, wd):
    """Loshchilov & Hutter (2019), Algorithm 2 (AdamW), one scalar at a time, plain floats.

    With alpha = 1 and schedule multiplier eta_t = lr_t (torch's reading of the paper):
    theta_t = theta_{t-1} - eta_t (alpha m_hat_t/(sqrt(v_hat_t) + eps) + lambda theta_{t-1}).
    """
    m, v = 0.0, 0.0
    for t, (g, eta) in enumerate(zip(grads_seq, lrs), start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        theta = theta - eta * (m_hat / (math.sqrt(v_hat) + eps) + wd * theta)
    return theta


def test_O1_adamw_matches_algorithm2_scalar_loop(rng):
    params = _params(rng)
    theta0 = {k: p.copy() for k, p in params.items()}
    beta1, beta2, eps, wd = 0.8, 0.95, 1e-3, 0.3  # large eps and wd so both terms matter
    lrs = [0.05, 0.02, 0.1, 0.03, 0.07, 0.01]
    grads_seq = [_grads(rng, params) for _ in lrs]
    opt = AdamW(params, lr=0.5, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    for g, lr in zip(grads_seq, lrs):
        opt.step(g, lr=lr)
    assert opt.step_count == len(lrs) and opt.lr == lrs[-1]
    for k, p in params.items():
        for idx in np.ndindex(p.shape):
            expect = _algorithm2_scalar(float(theta0[k][idx]), [float(g[k][idx]) for g in grads_seq],
                                        lrs, beta1, beta2, eps, wd)
            assert abs(p[idx] - expect) <= TOL["exact64"] * max(1.0, abs(expect)), (k, idx)


def test_O1_step_updates_the_model_arrays_in_place_and_keeps_dtype(rng):
    params = {k: p.astype(np.float32) for k, p in _params(rng).items()}
    arrays = dict(params)
    before = {k: p.copy() for k, p in params.items()}
    opt = AdamW(params, lr=1e-2, weight_decay=0.1)
    assert opt.step(_grads(rng, params)) is None
    for k, p in params.items():
        assert p is arrays[k] and p.dtype == np.float32
        assert opt.m[k].dtype == opt.v[k].dtype == np.float32
        assert not np.array_equal(p, before[k])


def test_O1_state_dict_round_trip_resumes_bit_for_bit(rng):
    # a fresh optimiser loaded with the state of 3 steps continues exactly as the original
    params = _params(rng)
    grads_seq = [_grads(rng, params) for _ in range(5)]
    opt = AdamW(params, lr=1e-2, weight_decay=0.05)
    for g in grads_seq[:3]:
        opt.step(g)
    state = opt.state_dict()
    assert set(state) == {"step"} | {f"{s}/{k}" for s in "mv" for k in params}
    assert state["step"] == 3
    resumed_params = {k: p.copy() for k, p in params.items()}
    resumed = AdamW(resumed_params, lr=1e-2, weight_decay=0.05)
    resumed.load_state_dict(state)
    state["m/conv.bias"][...] = 99.0  # state_dict returns copies: this must not reach either optimiser
    for g in grads_seq[3:]:
        opt.step(g)
        resumed.step(g)
    assert resumed.step_count == opt.step_count == 5
    for k in params:
        np.testing.assert_array_equal(resumed_params[k], params[k])


def test_O1_load_state_dict_errors_name_the_key(rng):
    params = _params(rng)
    opt = AdamW(params)
    good = opt.state_dict()
    missing = {k: v for k, v in good.items() if k != "v/lin.weight"}
    with pytest.raises(InputError, match="missing.*'v/lin.weight'"):
        opt.load_state_dict(missing)
    with pytest.raises(InputError, match="unexpected.*'m/other'"):
        opt.load_state_dict({**good, "m/other": np.zeros(3)})
    with pytest.raises(InputError, match=r"'m/conv.bias'.*shape \(3,\).*expected \(2,\)"):
        opt.load_state_dict({**good, "m/conv.bias": np.zeros(3)})
    with pytest.raises(InputError, match="'step'"):
        opt.load_state_dict({**good, "step": np.array(-1)})


def test_O1_step_rejects_grads_that_do_not_match(rng):
    params = _params(rng)
    opt = AdamW(params)
    grads = _grads(rng, params)
    with pytest.raises(InputError, match="missing.*'conv.bias'"):
        opt.step({k: g for k, g in grads.items() if k != "conv.bias"})
    with pytest.raises(InputError, match=r"grads\['lin.weight'\] has shape \(5, 4\)"):
        opt.step({**grads, "lin.weight": np.zeros((5, 4))})
    assert opt.step_count == 0


@pytest.mark.parametrize("kw, word", [({"lr": -1.0}, "lr"), ({"betas": (1.0, 0.9)}, "beta1"),
                                      ({"betas": (0.9, -0.1)}, "beta2"), ({"eps": float("nan")}, "eps"),
                                      ({"weight_decay": -0.1}, "weight_decay"), ({"betas": 0.9}, "betas")])
def test_O1_bad_hyperparameters_are_named(rng, kw, word):
    with pytest.raises(InputError, match=word):
        AdamW(_params(rng), **kw)


# ----------------------------------------------------------------------------- O2 EMA


@pytest.mark.parametrize("zero_init", [True, False])
def test_O2_ema_matches_weighted_sum_closed_form(rng, zero_init):
    # shadow_n = d^n x_0 + sum_{k=1..n} (1 - d) d^(n-k) x_k; with x_0 = 0 only the sum remains.
    d, n = 0.9, 7
    shape = {"w": (3, 2), "b": (4,)}
    xs = [{k: rng.standard_normal(s) for k, s in shape.items()} for _ in range(n + 1)]
    if zero_init:
        xs[0] = {k: np.zeros(s) for k, s in shape.items()}
    ema = EMA(xs[0], decay=d)
    for x in xs[1:]:
        ema.update(x)
    assert ema.num_updates == n
    for k in shape:
        closed = d**n * xs[0][k] + sum((1 - d) * d ** (n - j) * xs[j][k] for j in range(1, n + 1))
        np.testing.assert_allclose(ema.params[k], closed, rtol=0, atol=TOL["exact64"])


def test_O2_warmup_decay_follows_num_updates_rule(rng):
    # d_n = min(decay, (1 + n)/(10 + n)): 0.1, 2/11, 3/12, ... The first update keeps 1/10 of the init.
    x0, x1, x2 = (rng.standard_normal(5) for _ in range(3))
    ema = EMA({"w": x0}, decay=0.2, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1, abs=TOL["exact64"])
    ema.update({"w": x1})
    np.testing.assert_allclose(ema.params["w"], 0.1 * x0 + 0.9 * x1, rtol=0, atol=TOL["exact64"])
    assert ema.current_decay() == pytest.approx(2 / 11, abs=TOL["exact64"])
    ema.update({"w": x2})
    assert ema.current_decay() == 0.2  # (1 + 2)/(10 + 2) = 0.25 > decay: capped
    expect = 2 / 11 * (0.1 * x0 + 0.9 * x1) + 9 / 11 * x2
    np.testing.assert_allclose(ema.params["w"], expect, rtol=0, atol=TOL["exact64"])


def test_O2_shadow_is_a_copy_and_copy_to_writes_in_place(rng):
    params = _params(rng)
    ema = EMA(params, decay=0.5)
    snapshot = {k: p.copy() for k, p in params.items()}
    for p in params.values():
        p += 1.0  # training moves the model; the shadow must not move with it
    for k in params:
        np.testing.assert_array_equal(ema.params[k], snapshot[k])
    arrays = dict(params)
    ema.copy_to(params)
    for k in params:
        assert params[k] is arrays[k]
        np.testing.assert_array_equal(params[k], snapshot[k])


def test_O2_state_dict_round_trip_and_errors(rng):
    params = _params(rng)
    ema = EMA(params, decay=0.9, warmup=True)
    ema.update(_grads(rng, params))
    state = ema.state_dict()
    assert set(state) == set(params)  # a params dict: loads straight into a model
    other = EMA({k: np.zeros_like(p) for k, p in params.items()}, decay=0.9, warmup=True)
    other.load_state_dict(state, num_updates=ema.num_updates)
    assert other.num_updates == 1 and other.current_decay() == ema.current_decay()
    state["conv.bias"][...] = 99.0  # copies: must not reach either EMA
    for k in params:
        np.testing.assert_array_equal(other.params[k], ema.params[k])
    with pytest.raises(InputError, match="missing.*'conv.weight'"):
        other.load_state_dict({k: v for k, v in state.items() if k != "conv.weight"})
    with pytest.raises(InputError, match=r"'lin.weight'.*shape \(5, 4\)"):
        other.load_state_dict({**state, "lin.weight": np.zeros((5, 4))})


# ----------------------------------------------------------------------------- O3 clipping


def _flat(d):
    return np.concatenate([np.ravel(v) for v in d.values()])


def test_O3_clipped_norm_is_max_norm_and_direction_unchanged(rng):
    params = _params(rng)
    grads = _grads(rng, params, scale=3.0)
    norm_direct = np.linalg.norm(_flat(grads))  # one vector, one norm: a different route
    max_norm = 1.0
    clipped, total = clip_grad_norm(grads, max_norm)
    assert abs(total - norm_direct) <= TOL["exact64"] * norm_direct
    new_norm = np.linalg.norm(_flat(clipped))
    # torch's rule leaves the norm at max_norm * ||g||/(||g|| + 1e-6): within 1e-6 of max_norm
    assert max_norm - 1e-6 <= new_norm <= max_norm
    assert new_norm == pytest.approx(max_norm * total / (total + 1e-6), rel=TOL["exact64"])
    cosine = _flat(clipped) @ _flat(grads) / (new_norm * norm_direct)
    assert abs(cosine - 1.0) <= TOL["exact64"]


def test_O3_no_clipping_below_the_threshold_and_inputs_untouched(rng):
    params = _params(rng)
    grads = _grads(rng, params, scale=0.01)
    before = {k: g.copy() for k, g in grads.items()}
    clipped, total = clip_grad_norm(grads, max_norm=10.0)
    assert total < 10.0
    for k in grads:
        np.testing.assert_array_equal(clipped[k], grads[k])  # coefficient exactly 1
        assert clipped[k] is not grads[k]
    clipped, _ = clip_grad_norm(grads, max_norm=1e-3)  # now it clips
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])  # but never in place
        assert not np.array_equal(clipped[k], grads[k])


def test_O3_float32_grads_stay_float32_and_bad_max_norm_is_named(rng):
    grads = {"w": rng.standard_normal(10).astype(np.float32)}
    clipped, _ = clip_grad_norm(grads, 0.5)
    assert clipped["w"].dtype == np.float32
    with pytest.raises(InputError, match="max_norm"):
        clip_grad_norm(grads, 0.0)
    clipped, total = clip_grad_norm(grads, float("inf"))  # inf: measure only, as torch allows
    np.testing.assert_array_equal(clipped["w"], grads["w"])
    assert total == pytest.approx(np.linalg.norm(grads["w"].astype(np.float64)), rel=TOL["exact64"])


# ----------------------------------------------------------------------------- O4 LR schedule


def test_O4_warmup_gives_the_lambdalr_values():
    # LambdaLR(lambda s: min(1, (s + 1)/W)) at W = 4: 1/4, 2/4, 3/4, 1, 1, ...
    expect = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    got = [lr_at(s, 2.0, warmup_steps=4) / 2.0 for s in range(6)]
    assert got == pytest.approx(expect, abs=TOL["exact64"])
    assert lr_at(0, 3e-4) == 3e-4  # no warmup: constant from step 0


def test_O4_cosine_decay_hits_known_points():
    base, W, total = 1e-3, 10, 110
    at = [lr_at(s, base, W, total, "cosine") for s in range(total + 20)]
    assert at[W - 1] == pytest.approx(base, abs=TOL["exact64"])  # end of warmup
    assert at[W] == pytest.approx(base, abs=TOL["exact64"])  # cos 0 = 1
    assert at[W + 50] == pytest.approx(base / 2, abs=TOL["exact64"])  # cos(pi/2) = 0: halfway
    assert at[W + 25] == pytest.approx(base * (2 + math.sqrt(2)) / 4, abs=TOL["exact64"])  # cos(pi/4)
    assert all(lr == pytest.approx(0.0, abs=TOL["exact64"]) for lr in at[total:])  # cos pi = -1, then held
    assert all(a >= b for a, b in zip(at[W:], at[W + 1:]))  # monotone after warmup


def test_O4_bad_schedule_arguments_are_named():
    with pytest.raises(InputError, match="did you mean 'cosine'"):
        lr_at(0, 1e-3, schedule="cosin")
    with pytest.raises(InputError, match="total_steps"):
        lr_at(0, 1e-3, schedule="cosine")
    with pytest.raises(InputError, match="total_steps"):
        lr_at(0, 1e-3, warmup_steps=10, total_steps=10, schedule="cosine")
    with pytest.raises(InputError, match="step"):
        lr_at(-1, 1e-3)
