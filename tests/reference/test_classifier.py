"""The noise-conditional classifier of reference/classifier.py (derivations/classifier_guidance.md, H7, H8).

Independent routes: central finite differences in float64 of the network's forward for every parameter tensor
and for the input (tests/gradcheck.py), of log p(y | x_t) for the input gradient guidance uses, of the loss for
the cross-entropy's gradient and of each pool step; a log-sum-exp written with scipy for the loss; and, for a
trained classifier, the exact classifier of the mixture oracle (its responsibilities, G4) as the judge of the
accuracy and the cross-entropy at moderate noise.
"""
from types import SimpleNamespace

import numpy as np
import pytest
from gradcheck import directional_derivative, numeric_grad, rel_error, same, snapshot
from scipy.special import logsumexp
from tolerances import TOL

from reference import classifier as C
from reference import optim
from reference.classifier_guidance import mixture_classifier
from reference.errors import InputError
from reference.oracle import GaussianMixtureOracle
from reference.schedules import Schedule, make_betas

SMALL = dict(in_channels=2, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4)
NETS = {
    "avg": lambda: C.Classifier(3, **SMALL, dtype=np.float64, seed=1),
    "attention_pool": lambda: C.Classifier(3, **SMALL, pool="attention", image_size=4, dtype=np.float64, seed=1),
    "two_blocks_no_mid_attention": lambda: C.Classifier(4, **dict(SMALL, num_res_blocks=2, attention=(True, False)),
                                                         mid_attention=False, dtype=np.float64, seed=1),
    "points": lambda: C.PointClassifier(3, hidden=16, num_layers=2, time_dim=8, dtype=np.float64, seed=1),
}
SHAPES = {"points": (5, 2)}


def _net(name, rng):
    """A classifier with random parameters everywhere (the zero head would make every other gradient zero)."""
    net = NETS[name]()
    net.load_params({k: rng.uniform(-0.5, 0.5, v.shape) + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
                     for k, v in net.params.items()})
    return net, rng.standard_normal(SHAPES.get(name, (2, 2, 4, 4)))


@pytest.mark.parametrize("name", list(NETS))
def test_H7_H8_classifier_backward_matches_directional_finite_differences(name, rng):
    """Input and every parameter tensor, one random direction each, fourth-order central differences."""
    net, x = _net(name, rng)
    t = np.arange(x.shape[0]) * 199
    out, cache = net.forward(x, t)
    R = rng.standard_normal(out.shape)
    dx, grads = net.backward(R, cache)
    f = lambda: float(np.sum(net.forward(x, t)[0] * R))  # noqa: E731
    errors = {}
    for key, arr, g in [("x", x, dx)] + [(k, net.params[k], grads[k]) for k in net.params]:
        d = rng.standard_normal(arr.shape)
        errors[key] = rel_error(directional_derivative(f, [arr], [d]), np.sum(g * d))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL["fd64_dir"], f"worst gradient: {worst} ({errors[worst]:.2e})"


@pytest.mark.parametrize("name", list(NETS))
def test_H7_grad_log_prob_is_the_finite_difference_of_log_prob_per_example(name, rng):
    """grad_{x_t} log p(y | x_t, t), element by element: each example's log-probability by central differences."""
    net, x = _net(name, rng)
    t, y = np.arange(x.shape[0]) * 101, np.arange(x.shape[0]) % 3
    g = net.grad_log_prob(x, t, y)
    num = numeric_grad(lambda: float(np.sum(net.log_prob(x, t, y))), x)
    assert g.shape == x.shape and rel_error(g, num) <= TOL["fd64"]
    # one example's log-probability does not move with another's input: the sum's gradient is each one's own
    first = numeric_grad(lambda: float(net.log_prob(x, t, y)[0]), x)
    assert np.all(first[1:] == 0) and rel_error(g[0], first[0]) <= TOL["fd64"]


def test_H7_cross_entropy_is_the_log_sum_exp_loss_and_its_gradient_the_finite_difference(rng):
    """The loss against scipy's logsumexp, stable for logits of 1e3; dlogits against central differences."""
    logits, y = rng.standard_normal((6, 4)) * 3, np.array([0, 1, 2, 3, 3, 1])
    loss, d = C.cross_entropy(logits, y)
    assert abs(loss - np.mean(logsumexp(logits, axis=1) - logits[np.arange(6), y])) <= TOL["exact64"]
    assert rel_error(d, numeric_grad(lambda: C.cross_entropy(logits, y)[0], logits)) <= TOL["fd64"]
    big = logits + 1e3
    assert abs(C.cross_entropy(big, y)[0] - loss) <= 1e3 * TOL["exact64"]   # no overflow: shifted by the row max


def test_H8_each_pool_step_backward_matches_finite_differences(rng):
    """avgpool, tokens (mean token first), posemb (+ P, dP summed over the batch) and first, one by one."""
    h = rng.standard_normal((2, 2, 3, 4))                      # NHWC, L = 6 positions, C = 4
    P = rng.standard_normal((7, 4))
    run = SimpleNamespace(p={"pool.pos_emb.weight": P})
    chain = [("avgpool", ""), ("tokens", ""), ("posemb", "pool.pos_emb"), ("first", "")]
    tok = C.CLASSIFIER_STEPS["tokens"][0](h, None, run)[0]
    assert tok.shape == (2, 1, 7, 4) and np.allclose(tok[:, 0, 0], h.mean(axis=(1, 2)), atol=TOL["exact64"])
    for op, name in chain:
        forward, backward = C.CLASSIFIER_STEPS[op]
        x = tok if op in ("posemb", "first") else h
        out, cache = forward(x, SimpleNamespace(name=name), run)
        R, grads = rng.standard_normal(out.shape), {}
        dx = backward(R, cache, name, grads, run)
        f = lambda: float(np.sum(forward(x, SimpleNamespace(name=name), run)[0] * R))  # noqa: B023,E731
        assert rel_error(dx, numeric_grad(f, x)) <= TOL["fd64"], op
        if op == "posemb":
            assert rel_error(grads["pool.pos_emb.weight"], numeric_grad(f, P)) <= TOL["fd64"]


def test_H7_backward_mutates_neither_dlogits_nor_cache_and_input_grad_false_keeps_the_gradients(rng):
    net, x = _net("attention_pool", rng)
    out, cache = net.forward(x, np.array([3, 900]))
    d = rng.standard_normal(out.shape)
    d0, cache0 = d.copy(), snapshot(cache)
    dx, g = net.backward(d, cache)
    assert np.array_equal(d, d0) and same(cache, cache0)
    none, g2 = net.backward(d, cache, input_grad=False)
    assert none is None and all(rel_error(g[k], g2[k]) <= TOL["net64"] for k in g)


def test_classifier_parameter_names_share_the_unets_and_the_head_starts_at_zero():
    net = C.Classifier(10, **SMALL, pool="attention", image_size=(8, 4))
    names = set(net.params)
    assert {"conv_in.weight", "down.0.res.0.norm1.weight", "down.1.attn.0.qkv.weight", "mid.attn.proj.bias",
            "norm_out.weight", "pool.qkv.weight", "pool.pos_emb.weight", "head.weight"} <= names
    assert net.params["pool.pos_emb.weight"].shape == (4 * 2 + 1, 16) and net.params["head.weight"].shape == (10, 16)
    assert not np.any(net.params["head.weight"]) and not np.any(net.params["head.bias"])
    lp = net.log_prob(np.zeros((2, 2, 8, 4), np.float32), 5, [0, 9])
    assert np.allclose(lp, -np.log(10), atol=TOL["op32"])                   # a new classifier is uniform


def test_classifier_refuses_bad_input_naming_the_problem(rng):
    cases = [
        (lambda: C.Classifier(1, **SMALL), "num_classes"),
        (lambda: C.Classifier(3, **SMALL, pool="max"), "classifier pool"),
        (lambda: C.Classifier(3, **SMALL, pool="attention"), "image_size"),
        (lambda: C.Classifier(3, **SMALL, pool="attention", image_size=5), "image_size"),
        (lambda: C.PointClassifier(0), "num_classes"),
        (lambda: C.Classifier(3, **SMALL).forward(np.zeros((2, 3, 4, 4)), 0), "(N, 2, H, W)"),
        (lambda: C.Classifier(3, **SMALL).forward(np.zeros((2, 2, 5, 4)), 0), "divisible by 2"),
        (lambda: C.Classifier(3, **SMALL, pool="attention", image_size=4).forward(np.zeros((1, 2, 8, 8)), 0), "4"),
        (lambda: C.Classifier(3, **SMALL).log_prob(np.zeros((2, 2, 4, 4)), 0.5, 0), "integer time index"),
        (lambda: C.Classifier(3, **SMALL).log_prob(np.zeros((2, 2, 4, 4)), 0, 3), "class 3 is out of range"),
        (lambda: C.PointClassifier(3).grad_log_prob(np.zeros((2, 2)), 0, [0, 1, 2]), "shape (2,)"),
        (lambda: C.PointClassifier(3).forward(np.zeros((2, 3)), 0), "(N, 2)"),
        (lambda: C.cross_entropy(np.zeros((2, 3)), [0, -1]), "class -1"),
    ]
    for make, words in cases:
        with pytest.raises(InputError) as e:
            make()
        assert words in str(e.value), (words, str(e.value))


# ---- a trained classifier against the exact one ----------------------------------------------------------

W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]


def test_H7_a_small_classifier_trained_400_steps_approaches_the_exact_classifier_at_moderate_noise():
    """400 AdamW steps of 256 noised mixture samples (t uniform in 0..599 of the linear T = 1000 schedule) on the
    points' classifier; on 4000 fresh samples at t = 200 and 300 (abar 0.66, 0.39) its accuracy is within
    TOL["clf_acc"] of the Bayes classifier's (argmax of the oracle's responsibilities) and its cross-entropy within
    TOL["clf_ce"] nats of the exact one, which no classifier can beat in expectation; its input gradient is within
    TOL["clf_grad"] of the exact classifier's (H5), norm-wise."""
    mix, sched = GaussianMixtureOracle(W, MEANS, cov=COVS), Schedule(make_betas("linear", 1000))
    rng, clf = np.random.default_rng(0), C.PointClassifier(3, hidden=64, num_layers=2, time_dim=32, dtype=np.float64)
    opt = optim.AdamW(clf.params, lr=3e-3)
    for _ in range(400):
        x0, y = mix.sample(rng, 256)
        C.train_step(clf, opt, sched, x0, rng.integers(0, 600, 256), rng.standard_normal(x0.shape), y)
    exact, (x0, y) = mixture_classifier(mix), mix.sample(rng, 4000)
    for t in (200, 300):
        a = sched.alpha_bar[t]
        xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal(x0.shape)
        bayes = np.mean(mix.responsibilities(xt, a).argmax(axis=1) == y)
        acc = np.mean(clf.forward(xt, t)[0].argmax(axis=1) == y)
        ce, ce_exact = -np.mean(clf.log_prob(xt, t, y)), -np.mean(exact.log_prob(xt, a, y))
        assert acc >= bayes - TOL["clf_acc"] and ce - ce_exact <= TOL["clf_ce"], (t, acc, bayes, ce, ce_exact)
        # the gradient guidance uses: the trained classifier's against the exact one (H5)
        assert rel_error(clf.grad_log_prob(xt, t, y), exact.grad_log_prob(xt, a, y)) <= TOL["clf_grad"], t
