"""The bound as a training loss (reference/vlb.py): its hand-written gradients against central finite
differences in float64 (V2, V3, V4), through a whole network too; the importance-sampling Trainer step; the
refusals. Independent route throughout: perturb the input, re-run the forward, difference.
"""
import math

import numpy as np
import pytest

from gradcheck import directional_derivative, numeric_grad, rel_error, rel_max_error
from reference import diffusion as D
from reference import losses, vlb
from reference.errors import InputError
from reference.schedules import Schedule, make_betas
from reference.train import Trainer, build_model, train_step
from reference.optim import EMA, AdamW
from tolerances import TOL

PREDS = ("eps", "x0", "v")


def _sched(T=40):
    return Schedule(make_betas("linear", T, beta_end=0.3), warn=False)


def _batch(rng, sched, levels, C=1, n=6):
    """Data on the grid (both edge levels present), t with three t = 0 rows, x_t from q_sample."""
    if levels is None:
        x0 = rng.uniform(-1, 1, (n, C, 2, 2))
    else:
        x0 = -1.0 + 2.0 * rng.integers(0, levels, (n, C, 2, 2)) / (levels - 1)
        x0[0, 0, 0, 0], x0[1, 0, 0, 0] = -1.0, 1.0
    eps = rng.standard_normal(x0.shape)
    t = np.array([0, 0, 3, 10, sched.T - 1, 0][:n])
    return x0, D.q_sample(sched, x0, t, eps), t, eps


@pytest.mark.parametrize("levels", [17, 256, None])
@pytest.mark.parametrize("variance", ["learned", "fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", PREDS)
def test_V2_V3_vlb_term_gradient_matches_central_differences(prediction, variance, levels, rng):
    s = _sched()
    x0, xt, t, _ = _batch(rng, s, levels)
    out = 0.5 * rng.standard_normal((6, 2 if variance == "learned" else 1, 2, 2))
    terms, grad = vlb.vlb_term_and_grad(s, out, x0, xt, t, prediction, variance, levels)
    decoder = "gaussian" if levels is None else "discretized"
    # the value is the bound's own term (losses.vlb_term, the route of vlb_terms)
    assert np.array_equal(terms, losses.vlb_term(s, out, x0, xt, t, prediction, variance, False, decoder,
                                                 levels or 256))
    fd = numeric_grad(lambda: vlb.vlb_term_and_grad(s, out, x0, xt, t, prediction, variance, levels)[0].sum(), out)
    # fd64: central differences, h = 1e-6, on smooth functions (measured <= 7e-9 relative)
    assert rel_max_error(grad, fd) <= TOL["fd64"]


def test_V2_normal_kl_grads_match_central_differences(rng):
    m1, l1, m2, l2 = rng.standard_normal((4, 50))
    d_mean, d_logvar = vlb.normal_kl_grads(m1, l1, m2, l2)
    h = 1e-6
    fd_mean = (losses.normal_kl(m1, l1, m2 + h, l2) - losses.normal_kl(m1, l1, m2 - h, l2)) / (2 * h)
    fd_logvar = (losses.normal_kl(m1, l1, m2, l2 + h) - losses.normal_kl(m1, l1, m2, l2 - h)) / (2 * h)
    assert rel_max_error(d_mean, fd_mean) <= TOL["fd64"] and rel_max_error(d_logvar, fd_logvar) <= TOL["fd64"]


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_V3_decoder_gradients_match_high_precision_derivatives_in_both_tails(levels):
    """Edge and interior levels, means inside, at the edges and far outside [-1, 1], sigma from 1e-4 to 5: the
    derivatives of -log P (L9) against mpmath's numerical derivative of the mass at 40 digits (float64 central
    differences are not an independent route here: in the far tails log P ~ -8e10 and its rounding swamps them)."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    grid = -1.0 + 2.0 * np.arange(levels) / (levels - 1)
    half = mp.mpf(1) / (levels - 1)
    worst = 0.0
    for k in sorted({0, 1, levels // 2, levels - 2, levels - 1}):
        for mu in (-40.0, -1.0, -0.31, 0.0, 0.52, 1.0, 40.0):
            for sigma in (1e-4, 0.003, 0.4, 5.0):
                lv = 2 * math.log(sigma)
                nll, d_mean, d_logvar = vlb.discretized_nll_grads(np.array([grid[k]]), np.array([mu]),
                                                                  np.array([lv]), levels)

                def mass_nll(m, l, x=mp.mpf(grid[k]), k=k):
                    s = mp.exp(l / 2)
                    a = (x - half - m) / s if k > 0 else mp.ninf
                    b = (x + half - m) / s if k < levels - 1 else mp.inf
                    if a > 0:  # the upper tail: Phi(b) - Phi(a) = Phi(-a) - Phi(-b), or 1 - 1 at 40 digits
                        return -mp.log(mp.ncdf(-a) - mp.ncdf(-b))
                    return -mp.log(mp.ncdf(b) - mp.ncdf(a))

                m0, l0 = mp.mpf(mu), mp.mpf(lv)
                for got, want in ((nll[0], mass_nll(m0, l0)), (d_mean[0], mp.diff(lambda m: mass_nll(m, l0), m0)),
                                  (d_logvar[0], mp.diff(lambda l: mass_nll(m0, l), l0))):
                    # relative above 1, absolute below (near a zero of the derivative, or where P ~ 1, float64
                    # rounds to ~1e-15 of the O(1) terms it cancels)
                    worst = max(worst, abs(got - float(want)) / max(abs(float(want)), 1.0))
    # fd64 as the bar (measured: <= 4e-10, the tails included: the Mills ratios are taken by erfcx)
    assert worst <= TOL["fd64"], worst


def test_V3_gaussian_decoder_gradients_match_central_differences(rng):
    x, mu, lv = rng.standard_normal((3, 40))
    nll, d_mean, d_logvar = vlb.gaussian_nll_grads(x, mu, lv)
    h = 1e-6
    f = lambda m, l: -losses.gaussian_log_likelihood(x, m, 0.5 * l)  # noqa: E731
    assert np.array_equal(nll, f(mu, lv))
    assert rel_max_error(d_mean, (f(mu + h, lv) - f(mu - h, lv)) / (2 * h)) <= TOL["fd64"]
    assert rel_max_error(d_logvar, (f(mu, lv + h) - f(mu, lv - h)) / (2 * h)) <= TOL["fd64"]


@pytest.mark.parametrize("prediction", PREDS)
def test_V4_training_losses_gradients_match_central_differences(prediction, rng):
    """vlb (with weights): the whole loss's gradient. hybrid: the gradient of L_simple(out) + lambda T mean L_t(frozen
    mean, u), the function whose derivative the stop-gradient defines (the frozen mean a constant copy)."""
    s = _sched()
    x0, xt, t, eps = _batch(rng, s, 17)
    out = 0.5 * rng.standard_normal((6, 2, 2, 2))
    w = rng.uniform(0.2, 3.0, 6)
    val, grad, terms = vlb.training_loss_and_grad(s, out, x0, xt, t, eps, prediction, "vlb", "learned", weights=w,
                                                  levels=17)
    assert val == pytest.approx(np.mean(w * s.T * terms), rel=TOL["exact64"])
    fd = numeric_grad(lambda: vlb.training_loss(s, out, x0, xt, t, eps, prediction, "vlb", "learned", weights=w,
                                                levels=17)[0], out)
    assert rel_max_error(grad, fd) <= TOL["fd64"]
    _, grad, _ = vlb.training_loss_and_grad(s, out, x0, xt, t, eps, prediction, "hybrid", "learned", 0.01, levels=17)
    frozen = out[:, :1].copy()

    def hybrid():
        simple = losses.simple_loss(s, out[:, :1], x0, t, eps, prediction)
        bound = vlb.training_loss(s, np.concatenate([frozen, out[:, 1:]], 1), x0, xt, t, eps, prediction, "vlb",
                                  "learned", levels=17)[0]
        return simple + 0.01 * bound          # lambda T mean_n L_t = lambda (mean_n T L_t)
    assert rel_max_error(grad, numeric_grad(hybrid, out)) <= TOL["fd64"]


@pytest.mark.parametrize("loss", ["hybrid", "vlb"])
def test_V4_unet_gradients_of_the_bound_losses_match_directional_finite_differences(loss, rng):
    """The whole network: train_step's hand-written chain (loss gradient -> UNet backward) along a random direction
    of every parameter, against a fourth-order directional difference of the loss (hybrid: its frozen-mean form)."""
    from reference.unet import UNet
    model = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=(False, True),
                 groups=4, out_channels=2, dtype=np.float64, seed=3)
    for k, v in model.params.items():
        v[...] = rng.uniform(-0.3, 0.3, v.shape) + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
    s = _sched(1000)
    x0 = -1.0 + 2.0 * rng.integers(0, 17, (3, 1, 8, 8)) / 16
    t, eps = np.array([0, 60, 400]), rng.standard_normal(x0.shape)
    xt = D.q_sample(s, x0, t, eps)
    out, cache = model.forward(xt, t)
    frozen = out[:, :1].copy()
    _, dout, _ = vlb.training_loss_and_grad(s, out, x0, xt, t, eps, "eps", loss, "learned", levels=17)
    _, grads = model.backward(dout, cache, input_grad=False)

    def f():
        o = model.forward(xt, t)[0]
        if loss == "vlb":
            return vlb.training_loss(s, o, x0, xt, t, eps, "eps", "vlb", "learned", levels=17)[0]
        bound = vlb.training_loss(s, np.concatenate([frozen, o[:, 1:]], 1), x0, xt, t, eps, "eps", "vlb", "learned",
                                  levels=17)[0]
        return losses.simple_loss(s, o[:, :1], x0, t, eps, "eps") + vlb.HYBRID_LAMBDA * bound

    worst = {}
    names = sorted(model.params)
    # the output layer, and every fourth tensor of the body (the layers' own backwards have their own tests)
    for k in [n for i, n in enumerate(names) if n.startswith("conv_out") or i % 4 == 0]:
        arr = model.params[k]  # one random direction per parameter tensor, as the UNet's own check
        d = rng.standard_normal(arr.shape)
        # h = 1e-4, not the default 1e-3: the bound's terms curve on the scale of sigma_t (KL ~ dmu^2 / sigma^2), so
        # the stencil's h^4 truncation is ~1e-5 at 1e-3 (it falls as h^4: 1e-7 at 3e-4, 1e-9 at 1e-4, measured)
        worst[k] = rel_error(directional_derivative(f, [arr], [d], h=1e-4), np.sum(grads[k] * d))
    assert max(worst.values()) <= TOL["fd64_dir"], max(worst, key=worst.get)


def test_I2_trainer_passes_the_importance_weights_into_the_loss(rng):
    """Once warm, Trainer.step draws t ~ p and weights 1/(T p_t) and its loss is mean(w T L_t) at those draws."""
    from lab.config import make_config
    cfg = make_config("digits", T=8, steps=10, batch_size=16, variance="learned", loss="vlb", importance_sampling=True,
                      dtype="float64", model=dict(base_channels=8, channel_mults=(1,), attention=(False,), groups=4))
    x = -1.0 + 2.0 * rng.integers(0, 17, (64, 1, 8, 8)) / 16
    tr = Trainer(cfg, (1, 8, 8), levels=17)
    k = 0
    while not tr.resampler.warmed_up:
        tr.step(x[rng.integers(0, 64, 16)], k)
        k += 1
    assert k < 10 and tr.resampler.counts.min() == 10
    batch = x[rng.integers(0, 64, 16)]
    twin = np.random.default_rng()
    twin.bit_generator.state = tr.rng.bit_generator.state
    t, w = tr.resampler.sample(twin, 16)
    eps = twin.standard_normal(batch.shape)
    xt = D.q_sample(tr.sched, batch, t, eps)
    want = vlb.training_loss(tr.sched, tr.model.forward(xt, t)[0], batch, xt, t, eps, "eps", "vlb", "learned",
                             weights=w, levels=17)[0]
    assert np.all(w != 1.0)
    assert tr.step(batch, k)[0] == pytest.approx(want, rel=TOL["exact64"])


def test_learned_variance_models_have_2c_outputs_and_the_denoiser_the_mean_channels(rng):
    from lab.config import make_config
    cfg = make_config("moons", T=10, variance="learned", loss="hybrid", model=dict(hidden=16, num_layers=2))
    tr = Trainer(cfg, (2,))
    x = rng.standard_normal((5, 2))
    full = tr.denoiser(with_variance=True)(x, np.arange(5))
    assert full.shape == (5, 4) and np.array_equal(tr.denoiser()(x, np.arange(5)), full[:, :2])
    assert build_model(make_config("digits", model=dict(base_channels=8, channel_mults=(1,), attention=(False,),
                                                        groups=4)), (1, 8, 8)).forward(
        np.zeros((1, 1, 8, 8), np.float32), np.zeros(1, int))[0].shape == (1, 1, 8, 8)


def test_bound_losses_refuse_what_they_cannot_train(rng):
    s = _sched()
    x0, xt, t, eps = _batch(rng, s, 17)
    out1, out2 = rng.standard_normal((6, 1, 2, 2)), rng.standard_normal((6, 2, 2, 2))
    cases = [
        (lambda: vlb.training_loss(s, out1, x0, xt, t, eps, loss="hybrid"), "hybrid' trains learned variances"),
        (lambda: vlb.training_loss(s, out2, x0, xt, t, eps, loss="simple", variance="learned"), "trained by the bound"),
        (lambda: vlb.training_loss(s, out1, x0, xt, t, eps, loss="bound"), "unknown loss"),
        (lambda: vlb.training_loss(s, out2, x0, xt, t, eps, loss="hybrid", variance="learned", hybrid_lambda=-1),
         "hybrid_lambda"),
        (lambda: vlb.training_loss(s, out2, x0, xt, t, eps, loss="hybrid", variance="learned", weights=np.ones(6),
                                   levels=17), "apply to loss 'vlb' only"),
        (lambda: vlb.training_loss(s, out1, x0, xt, t, eps, loss="vlb", weights=np.ones(5), levels=17), "weights"),
        (lambda: vlb.training_loss(s, out1, x0, xt, t, eps, loss="vlb"), "8-bit data on the grid"),
        (lambda: vlb.training_loss(s, out1[:, :, :1], x0, xt, t, eps, loss="vlb", variance="learned", levels=17),
         "2C channels"),
        (lambda: D.split_output(out1, "learned"), "2C channels"),
    ]
    for call, words in cases:
        with pytest.raises(InputError, match=words):
            call()
    from types import SimpleNamespace as NS
    for cfg, words in [(NS(variance="learnt"), "unknown variance"), (NS(loss="hybrid"), "hybrid' trains learned"),
                       (NS(loss="simple", importance_sampling=True), "importance sampling of t applies to loss 'vlb'")]:
        with pytest.raises(InputError, match=words):
            vlb.loss_settings(cfg)
    assert vlb.loss_settings(NS()) == ("simple", "fixed_small", 1e-3, False)   # a config of an older release


def test_train_step_with_the_default_loss_is_the_l_simple_step(rng):
    """The default step (fixed variance, L_simple) through the new dispatcher gives the numbers of L_simple."""
    from reference.unet import MLP
    s = _sched(100)
    model = MLP(hidden=16, num_layers=2, time_dim=8, dtype=np.float64, seed=0)
    opt, ema = AdamW(model.params, lr=1e-3), EMA(model.params, 0.9)
    x0, eps, t = rng.standard_normal((8, 2)), rng.standard_normal((8, 2)), rng.integers(0, 100, 8)
    out = model.forward(D.q_sample(s, x0, t, eps), t)[0]
    want = losses.simple_loss(s, out, x0, t, eps, "eps")
    assert train_step(model, opt, ema, s, x0, t, eps)[0] == want
    assert math.isfinite(want)
