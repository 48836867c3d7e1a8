"""The classifier and classifier guidance, NumPy reference vs torch port in float64 (derivations/
classifier_guidance.md, H1-H8): the reference's hand-written backward against the port's autograd for the logits,
log p(y | x_t), its input gradient and every parameter gradient; two training steps (cross-entropy, clipping,
AdamW); one .npz loading on both sides; the mixture's exact classifier (closed form against autograd); every
guided step (Algorithm 1, Algorithm 2, D_s through a solver, the respaced loop); the refusals.

Tolerances: TOL["net64"] for whole networks and training steps (two routes with different op order, as
test_network_cross.py and test_train_cross.py); TOL["cross64"] for the oracle's classifier and the guided steps;
TOL["solve64"] for a whole solve, whose state x~ is up to 157 times x.
"""
import numpy as np
import pytest
from crosscheck import close, schedule_pair
from gradcheck import rel_max_error
from tolerances import TOL

torch = pytest.importorskip("torch")

from reference import classifier as RC  # noqa: E402
from reference import classifier_guidance as RG  # noqa: E402
from reference import optim as RO  # noqa: E402
from reference import oracle as ROr  # noqa: E402
from reference import solvers as RS  # noqa: E402
from reference.errors import InputError  # noqa: E402
from reference.schedules import make_betas  # noqa: E402
from torch_port import classifier as TC  # noqa: E402
from torch_port import classifier_guidance as TG  # noqa: E402
from torch_port import optim as TO  # noqa: E402
from torch_port import oracle as TOr  # noqa: E402
from torch_port import solvers as TS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
tt = torch.from_numpy
SMALL = dict(in_channels=2, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4)
CONFIGS = {
    "avg": (RC.Classifier, TC.Classifier, dict(SMALL), (3, 2, 4, 4)),
    "attention_pool": (RC.Classifier, TC.Classifier, dict(SMALL, pool="attention", image_size=(8, 4)), (3, 2, 8, 4)),
    "three_levels_two_blocks": (RC.Classifier, TC.Classifier, dict(SMALL, channel_mults=(1, 2, 2), num_res_blocks=2,
                                                                   attention=(True, False, False)), (2, 2, 8, 8)),
    "points": (RC.PointClassifier, TC.PointClassifier, dict(hidden=16, num_layers=2, time_dim=8), (7, 2)),
}
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]


@pytest.fixture(scope="module")
def scheds():
    return schedule_pair(make_betas("linear", 1000))


def twins(name, rng, k=3):
    ref_cls, port_cls, kw, shape = CONFIGS[name]
    ref = ref_cls(k, **kw, dtype=np.float64)
    ref.load_params({n: rng.uniform(-0.4, 0.4, v.shape) + (1.0 if "norm" in n and n.endswith("weight") else 0.0)
                     for n, v in ref.params.items()})
    port = port_cls(k, **kw, dtype=torch.float64)
    assert list(port.state_dict()) and set(port.state_dict()) == set(ref.params)
    port.load_state_dict({n: tt(v.copy()) for n, v in ref.params.items()})
    return ref, port, shape


@pytest.mark.parametrize("name", list(CONFIGS))
def test_H7_H8_logits_log_prob_input_gradient_and_every_parameter_gradient_agree_with_torch(name, rng):
    ref, port, shape = twins(name, rng)
    x, t, y = rng.standard_normal(shape), rng.integers(0, 1000, shape[0]), np.arange(shape[0]) % 3
    logits, cache = ref.forward(x, t)
    d = rng.standard_normal(logits.shape)
    dx, grads = ref.backward(d, cache)
    xt = tt(x).requires_grad_()
    out = port(xt, tt(t))
    out.backward(tt(d))
    assert rel_max_error(out.detach().numpy(), logits) <= TOL["net64"]
    assert rel_max_error(xt.grad.numpy(), dx) <= TOL["net64"]
    errors = {n: rel_max_error(p.grad.numpy(), grads[n]) for n, p in port.named_parameters()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL["net64"], f"worst parameter gradient {worst}: {errors[worst]:.2e}"
    assert rel_max_error(port.log_prob(tt(x), t, y).detach().numpy(), ref.log_prob(x, t, y)) <= TOL["net64"]
    assert rel_max_error(port.grad_log_prob(tt(x), tt(t), tt(y)).numpy(), ref.grad_log_prob(x, t, y)) <= TOL["net64"]


@pytest.mark.parametrize("name", ["attention_pool", "points"])
def test_H7_two_training_steps_agree_with_torch_in_float64(name, scheds, rng):
    """train_step on both sides from the same parameters, x0, t, eps and labels: cross-entropy, clipping at 0.5
    (which binds), AdamW with weight decay, twice (the moments and bias corrections past step 1)."""
    ref, port, shape = twins(name, rng)
    ropt = RO.AdamW(ref.params, lr=1e-2, weight_decay=0.1)
    popt = TO.AdamW(port, lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        x0, eps = rng.standard_normal(shape), rng.standard_normal(shape)
        t, y = rng.integers(0, 1000, shape[0]), rng.integers(0, 3, shape[0])
        lr_ = RC.train_step(ref, ropt, scheds[0], x0, t, eps, y, grad_clip=0.5)
        lp = TC.train_step(port, popt, scheds[1], tt(x0), tt(t), tt(eps), tt(y), grad_clip=0.5)
        assert abs(float(lp) - lr_) <= TOL["net64"] * max(1.0, abs(lr_))
    state = port.state_dict()
    errors = {n: rel_max_error(state[n].numpy(), v) for n, v in ref.params.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL["net64"], f"worst parameter {worst}: {errors[worst]:.2e}"


def test_one_npz_of_the_reference_loads_on_both_sides(tmp_path, rng):
    ref, _, shape = twins("attention_pool", rng, k=5)
    np.savez(tmp_path / "clf.npz", **ref.params)
    port = TC.Classifier(5, **CONFIGS["attention_pool"][2], dtype=torch.float64)
    with np.load(tmp_path / "clf.npz") as f:
        port.load_state_dict({n: tt(f[n].copy()) for n in f.files})
    x = rng.standard_normal(shape)
    assert rel_max_error(port(tt(x), 10).detach().numpy(), ref.forward(x, 10)[0]) <= TOL["net64"]


def test_H5_the_exact_mixture_classifier_closed_form_equals_torchs_autograd(rng):
    rc = RG.mixture_classifier(ROr.GaussianMixtureOracle(W, MEANS, cov=COVS))
    tc = TG.mixture_classifier(TOr.GaussianMixtureOracle(W, MEANS, cov=COVS))
    x, y = rng.standard_normal((8, 2)) * 1.5, np.arange(8) % 3
    for a in (0.999, 0.5, 0.02, rng.uniform(0.01, 0.99, 8)):
        at = tt(a) if isinstance(a, np.ndarray) else a
        close(tc.log_prob(tt(x), at, tt(y)), rc.log_prob(x, a, y))
        close(tc.grad_log_prob(tt(x), at, y), rc.grad_log_prob(x, a, y))
    close(tc.sigma_grad(tt(x), 3.0, y), rc.sigma_grad(x, 3.0, y))


def test_H1_H3_H4_every_guided_step_agrees_with_torch(scheds, rng):
    """Algorithm 1 (one step and the respaced loop), Algorithm 2's eps and D_s under DPM-Solver++(2M) over trained
    levels, guided by the mixture's exact classifier (chain form) and by a random trained-shape classifier moved
    to (x~, sigma) by sigma_grad."""
    rs, ts = scheds
    ro, to = ROr.GaussianMixtureOracle(W, MEANS, cov=COVS), TOr.GaussianMixtureOracle(W, MEANS, cov=COVS)
    rc, tc = RG.mixture_classifier(ro), TG.mixture_classifier(to)
    rden, tden = ro.denoiser(rs), to.denoiser(ts)
    x, z, y, t = rng.standard_normal((6, 2)), rng.standard_normal((6, 2)), np.arange(6) % 3, np.array([0, 3, 50, 400,
                                                                                                        800, 999])
    for variance in ("fixed_small", "fixed_large"):
        got = TG.classifier_guided_ddpm_step(ts, tden(tt(x), tt(t)), tt(x), tt(t), tt(z), tc.chain_grad(ts), y, 2.5,
                                             variance=variance)
        want = RG.classifier_guided_ddpm_step(rs, rden(x, t), x, t, z, rc.chain_grad(rs), y, 2.5, variance=variance)
        close(got[0], want[0])
        close(got[1], want[1])
    close(TG.classifier_guided_eps(ts, tden(tt(x), tt(t)), tt(x), tt(t), tc.chain_grad(ts), y, 2.5),
          RG.classifier_guided_eps(rs, rden(x, t), x, t, rc.chain_grad(rs), y, 2.5))
    noises = rng.standard_normal((10, 6, 2))
    got = TG.classifier_guided_sample_loop(ts, tden, tc.chain_grad(ts), y, 2.0, tt(x), [tt(n) for n in noises],
                                           steps=10, spacing="trailing").x
    close(got, RG.classifier_guided_sample_loop(rs, rden, rc.chain_grad(rs), y, 2.0, x, list(noises), steps=10,
                                                spacing="trailing").x)
    ref, port, _ = twins("points", rng)
    rD = RG.classifier_guided_denoiser(RS.model_denoiser(rs, rden), RG.sigma_grad(rs, ref.grad_log_prob), 3.0, y)
    tD = TG.classifier_guided_denoiser(TS.model_denoiser(ts, tden), TG.sigma_grad(ts, port.grad_log_prob), 3.0, y)
    grid = RS.sigma_grid(rs, 15, "karras")
    got = TS.sample(tD, tt(x), grid, "dpm++2m").x
    assert np.max(np.abs(got.numpy() - RS.sample(rD, x, grid, "dpm++2m").x)) <= TOL["solve64"]


def test_H1_H7_the_port_refuses_what_the_reference_refuses(scheds):
    ts, x = scheds[1], torch.zeros(2, 2, dtype=torch.float64)
    tc = TG.mixture_classifier(TOr.GaussianMixtureOracle(W, MEANS, cov=COVS))
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(InputError, match="classifier scale"):
            TG.classifier_guided_denoiser(lambda z, s: z, tc.sigma_grad, bad, 0)
        with pytest.raises(InputError, match="classifier scale"):
            TG.classifier_guided_ddpm_step(ts, x, x, 5, x, tc.chain_grad(ts), 0, bad)
    cases = [
        (lambda: TC.Classifier(1, **SMALL), "num_classes"),
        (lambda: TC.Classifier(3, **SMALL, pool="attention"), "image_size"),
        (lambda: TC.Classifier(3, **SMALL)(torch.zeros(2, 3, 4, 4), 0), "(N, 2, H, W)"),
        (lambda: TC.Classifier(3, **SMALL).log_prob(torch.zeros(2, 2, 4, 4), 0.5, 0), "integer time index"),
        (lambda: TC.Classifier(3, **SMALL).log_prob(torch.zeros(2, 2, 4, 4), 0, 3), "class 3 is out of range"),
        (lambda: TC.PointClassifier(3)(torch.zeros(2, 3), 0), "(N, 2)"),
        (lambda: tc.grad_log_prob(x, 0.5, 3), "class 3 is out of range"),
    ]
    for make, words in cases:
        with pytest.raises(InputError) as e:
            make()
        assert words in str(e.value), (words, str(e.value))
