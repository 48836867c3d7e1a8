"""Classifier guidance through the command line (issue 28): ``train --classifier``, ``sample --classifier CKPT
--class K|all --classifier-scale S`` on both sides, and its refusals.

Tiny float64 runs on moons (T = 20): a model, a classifier from each side. s = 0 must give the unguided samples
exactly (the same x_T and noise, every sampler of the table); NumPy and torch must agree on the guided samples of
one pair of checkpoints. The exactness of the CLI's route is checked with a stand-in trainer whose network is the
labelled mixture's exact eps and the mixture's exact classifier (H5): lab.classifier_sampling.guided_draw must be
the solver run on classifier_guided_denoiser(D, MixtureClassifier.sigma_grad, s, y) (H4, the continuous-sigma
gradient, not the chain's lookup the CLI uses), and Algorithm 2 through ddim must equal it step for step (K7).
"""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from common import sampler_table as table
from lab import checkpoint, cli
from lab.backend import Backend
from lab.classifier_sampling import guided_draw
from lab.sampling import draw
from reference import solvers as RSo
from reference.classifier_guidance import classifier_guided_denoiser, mixture_classifier
from reference.oracle import GaussianMixtureOracle
from reference.schedules import Schedule, make_betas
from tolerances import TOL

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["--steps", "40", "--save-every", "0", "--quiet", "--T", "20", "--hidden", "16", "--num-layers", "1",
         "--dtype", "float64", "--batch-size", "64"]
MODEL = SMALL + ["--sample-every", "0", "--no-final-samples"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier_cli")

    def train(name, *flags, backend="reference"):
        dev = ["--device", "cpu"] if backend == "torch" else []
        assert cli.main(["train", "--out", str(root / name), *flags, *dev], backend=backend) == 0
        return root / name / "ckpt.npz"

    return {"model": train("model", "--data", "moons", *MODEL),
            "clf": train("clf", "--data", "moons", "--classifier", *SMALL),
            "clf_torch": train("clf_torch", "--data", "moons", "--classifier", *SMALL, backend="torch"),
            "clf_T30": train("clf_T30", "--data", "moons", "--classifier", *SMALL, "--T", "30"),
            "clf_g8": train("clf_g8", "--data", "gaussians8", "--classifier", *SMALL),
            "edm": train("edm", "--data", "moons", "--objective", "edm", *[f for f in MODEL if f not in ("--T", "20")])}


def _sample(runs, out, *flags, clf="clf", backend="reference"):
    dev = ["--device", "cpu"] if backend == "torch" else []
    assert cli.main(["sample", "--ckpt", str(runs["model"]), "--classifier", str(runs[clf]), "--out", str(out),
                     *flags, *dev], backend=backend) == 0
    return np.load(out)


# ---- train --classifier ---------------------------------------------------------------------------------

@pytest.mark.parametrize("clf,backend", [("clf", "reference"), ("clf_torch", "torch")])
def test_train_classifier_checkpoint_says_what_it_is(runs, clf, backend):
    ck = checkpoint.load(runs[clf])
    assert ck.extra["kind"] == "classifier" and ck.extra["classes"] == 2 and ck.extra["item_shape"] == [2]
    assert ck.extra["schedule"] == {"name": "cosine", "T": 20, "zero_terminal_snr": False}
    assert ck.extra["backend"] == backend and ck.step == 40 and ck.config["model"]["num_classes"] == 2


def test_train_classifier_prints_held_out_accuracy_and_resumes(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["train", "--data", "moons", "--classifier", "--out", str(out), "--quiet", "--T", "20", "--hidden", "8",
            "--num-layers", "1", "--save-every", "0"]
    assert cli.main(args + ["--steps", "5"]) == 0
    text = capsys.readouterr().out
    assert "held-out accuracy of the EMA classifier" in text and "t=0:" in text and "t=19:" not in text
    assert cli.main(args + ["--steps", "8", "--resume"]) == 0
    assert checkpoint.load(out / "ckpt.npz").step == 8
    # resuming a classifier's run as a denoiser's (or the other way) is refused by name
    assert cli.main(args[:3] + args[4:] + ["--steps", "9", "--resume"]) == 2
    assert "is a classifier's run: add --classifier" in capsys.readouterr().err


@pytest.mark.parametrize("flags,words", [
    (["--data", "swissroll"], "train --classifier needs a dataset with labels, and 'swissroll' has none"),
    (["--data", "moons", "--objective", "edm"], "--objective applies to a denoiser's run"),
    (["--data", "moons", "--class-cond"], "--class-cond applies to a denoiser's run"),
    (["--data", "moons", "--base-channels", "8"], "--base-channels does not apply to the 2-D classifier"),
])
def test_train_classifier_refusals(tmp_path, capsys, flags, words):
    assert cli.main(["train", "--classifier", "--out", str(tmp_path / "c"), "--steps", "2", "--quiet",
                     *flags]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "c" / "ckpt.npz").exists()


# ---- sample --classifier ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", table.names())
def test_scale_zero_is_the_unguided_sample_exactly(runs, tmp_path, sampler):
    steps = ["--sampler", sampler, "--sample-steps", "20" if sampler == "ddpm" else "6", "--seed", "3", "--n", "10"]
    guided = _sample(runs, tmp_path / "g.npy", "--class", "1", "--classifier-scale", "0", *steps)
    assert cli.main(["sample", "--ckpt", str(runs["model"]), "--out", str(tmp_path / "u.npy"), *steps]) == 0
    np.testing.assert_array_equal(guided, np.load(tmp_path / "u.npy"))
    pushed = _sample(runs, tmp_path / "p.npy", "--class", "1", "--classifier-scale", "2", *steps)
    assert np.abs(pushed - guided).max() > 1e-3           # the classifier's gradient moved the samples
    assert np.load(tmp_path / "p_labels.npy").tolist() == [1] * 10


@pytest.mark.parametrize("sampler", table.names())
def test_numpy_and_torch_agree_on_guided_samples(runs, tmp_path, sampler):
    steps = ["--sampler", sampler, "--sample-steps", "20" if sampler == "ddpm" else "6", "--class", "all", "--n",
             "4", "--classifier-scale", "2"]
    a = _sample(runs, tmp_path / "a.npy", *steps)
    b = _sample(runs, tmp_path / "b.npy", *steps, backend="torch")
    assert a.shape == (8, 2)
    np.testing.assert_allclose(a, b, rtol=0, atol=TOL["solve64"])


@pytest.mark.parametrize("flags,words", [
    (["--class", "1", "--classifier-scale", "-1"], "--classifier-scale must be a finite scale >= 0"),
    ([], "--classifier needs --class K (or all)"),
    (["--class", "1", "--guidance", "2"], "--guidance (classifier-free) and --classifier (classifier guidance) are "
                                          "two guidances"),
    (["--class", "1", "--trajectory"], "--trajectory does not apply with --classifier"),
])
def test_sample_classifier_flag_refusals_before_reading(tmp_path, capsys, flags, words):
    code = cli.main(["sample", "--ckpt", str(tmp_path / "none.npz"), "--classifier", str(tmp_path / "c.npz"),
                     "--out", str(tmp_path / "s.npy"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "not found" not in err, err


def test_classifier_scale_without_classifier_is_refused(tmp_path, capsys):
    code = cli.main(["sample", "--ckpt", str(tmp_path / "none.npz"), "--classifier-scale", "2", "--out",
                     str(tmp_path / "s.npy")])
    assert code == 2 and "--classifier-scale needs --classifier CKPT" in capsys.readouterr().err


@pytest.mark.parametrize("ckpt,clf,words", [
    ("model", "clf_T30", "was trained on the chain with T=30, and"),
    ("model", "clf_g8", "has 8 classes, and"),
    ("model", "model", "is not a classifier checkpoint"),
    ("clf", "clf", "is a classifier checkpoint (train --classifier), not a model to sample from"),
    ("edm", "clf", "a model of the continuous objective 'edm'"),
])
def test_sample_refuses_a_mismatched_pair_by_name(runs, tmp_path, capsys, ckpt, clf, words):
    code = cli.main(["sample", "--ckpt", str(runs[ckpt]), "--classifier", str(runs[clf]), "--class", "1",
                     "--out", str(tmp_path / "s.npy"), "--n", "4", "--sampler", "euler"])
    err = capsys.readouterr().err
    assert code == 2 and words in err, err
    assert not (tmp_path / "s.npy").exists()


# ---- the CLI's route against the exact classifier ----------------------------------------------------------

MIX = GaussianMixtureOracle([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.25]], var=[[0.05, 0.1], [0.1, 0.02]])


class StandIn:
    """A trainer of the chain (cfg, sched, item_shape, denoiser()) whose network is MIX's exact eps."""

    def __init__(self, T=40):
        self.cfg = SimpleNamespace(objective="ddpm", T=T, prediction="eps", dtype="float64", data="moons")
        self.sched, self.item_shape, self.num_classes, self.device = Schedule(make_betas("cosine", T)), (2,), None, "cpu"
        self.variance = "fixed"

    def denoiser(self, with_variance=False):
        eps = MIX.denoiser(self.sched, "eps")
        return lambda xt, t, y=None: eps(xt, t)


@pytest.mark.parametrize("sampler", table.names("ode"))
@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_cli_route_with_the_exact_classifier_is_the_guided_denoisers_solve(sampler, scale):
    st, mc, n, y = StandIn(), mixture_classifier(MIX), 8, np.array([0, 1] * 6)
    B = Backend("reference")
    x = guided_draw(B, st, len(y), mc.chain_grad(st.sched), y, scale, seed=4, sampler=sampler, steps=n,
                    grid="leading", warn=False)
    D = RSo.model_denoiser(st.sched, st.denoiser(), "eps")
    sigmas = RSo.sigma_grid(st.sched, n, "leading")
    x_T = np.random.default_rng(4).standard_normal((len(y), 2))
    want = RSo.sample(classifier_guided_denoiser(D, mc.sigma_grad, scale, y), x_T, sigmas, sampler).x
    np.testing.assert_allclose(x, want, rtol=0, atol=TOL["solve64"])
    if scale == 0:
        np.testing.assert_array_equal(x, draw(B, st, len(y), seed=4, sampler=sampler, steps=n, grid="leading",
                                               warn=False))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_algorithm_2_through_ddim_is_the_guided_euler_solve(backend):
    """(H3 = H4 by K7) Algorithm 2's eps through DDIM (eta 0) equals Euler on D + s sigma^2 grad, same steps."""
    st, y, B = StandIn(), np.array([1, 0] * 5), Backend(backend)
    grad, eps = mixture_classifier(MIX).chain_grad(st.sched), MIX.denoiser(st.sched, "eps")
    if backend == "torch":   # the port's samplers around the same exact eps and gradient, computed in NumPy
        st.sched = B.schedules.Schedule(B.schedules.make_betas("cosine", st.cfg.T))
        st.denoiser = lambda with_variance=False: (lambda xt, t, y=None: torch.as_tensor(eps(xt.numpy(), t.numpy())))
        g_np = grad
        grad = lambda x, t, yy: torch.as_tensor(g_np(x.numpy(), t.numpy(), yy))   # noqa: E731
    a = guided_draw(B, st, len(y), grad, y, 2.0, seed=9, sampler="ddim", steps=8, spacing="leading", warn=False)
    b = guided_draw(B, st, len(y), grad, y, 2.0, seed=9, sampler="euler", steps=8, grid="leading", warn=False)
    np.testing.assert_allclose(a, b, rtol=0, atol=TOL["solve64"])


# ---- eval --classifier ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_eval_classifier_reports_accuracy_and_quality_per_scale(runs, tmp_path, capsys, backend):
    js, plot = tmp_path / "e.json", tmp_path / "c.png"
    dev = ["--device", "cpu"] if backend == "torch" else []
    assert cli.main(["eval", "--ckpt", str(runs["model"]), "--classifier", str(runs["clf"]), "--classifier-scale",
                     "0,2", "--bpd-n", "0", "--n", "40", "--repeats", "1", "--sample-steps", "5", "--json", str(js),
                     "--plot", str(plot), *dev], backend=backend) == 0
    text = capsys.readouterr().out
    assert "classifier guidance: 40 samples of 2 balanced classes" in text and "accuracy on real test items" in text
    g = json.loads(js.read_text())["classifier_guidance"]
    assert [r["scale"] for r in g["rows"]] == [0.0, 2.0] and g["chance"] == 0.5 and plot.exists()
    assert all(0 <= r["accuracy"] <= 1 and r["ratio_to_floor"] > 0 and r["nfe"] == 5 for r in g["rows"])
    assert g["rows"][0]["value"] != g["rows"][1]["value"]     # the same seed: only the gradient tells them apart


@pytest.mark.parametrize("flags,words", [
    (["--classifier-scale", "0,1"], "--classifier-scale needs --classifier CKPT"),
    (["--classifier", "c.npz", "--classifier-scale", "0,-1"], "--classifier-scale needs finite scales >= 0"),
    (["--classifier", "c.npz", "--nfe", "5"], "--classifier and --nfe are two sweeps"),
])
def test_eval_classifier_refusals_name_the_flag(runs, tmp_path, capsys, flags, words):
    code = cli.main(["eval", "--ckpt", str(runs["model"]), "--bpd-n", "0", "--n", "20", *flags])
    assert code == 2 and words in capsys.readouterr().err


def test_eval_refuses_a_classifier_of_other_noise_levels(runs, capsys):
    code = cli.main(["eval", "--ckpt", str(runs["model"]), "--classifier", str(runs["clf_T30"]), "--bpd-n", "0",
                     "--n", "20"])
    assert code == 2 and "was trained on the chain with T=30" in capsys.readouterr().err


def test_a_biased_classifier_gradient_ruins_a_start_at_T_minus_1_and_not_the_default_grid():
    """derivations/classifier_guidance.md, "Where a guided solve starts": at T-1 of the clipped cosine H4 multiplies
    the classifier's gradient by (1 - abar) / sqrt(abar) ~ 2e4. The exact gradient is ~ sqrt(abar) there; a small
    constant bias (a trained classifier's error at pure noise) is not, and from T-1 it throws the samples far off."""
    st, mc, y = StandIn(T=1000), mixture_classifier(MIX), np.array([0, 1] * 16)
    B, exact = Backend("reference"), mc.chain_grad(st.sched)
    biased = lambda x, t, yy: exact(x, t, yy) + 0.01   # noqa: E731
    kw = dict(seed=3, sampler="dpm++2m", steps=20, warn=False)
    want = guided_draw(B, st, len(y), exact, y, 1.0, grid="leading", **kw)
    default = guided_draw(B, st, len(y), biased, y, 1.0, **kw)
    from_top = guided_draw(B, st, len(y), biased, y, 1.0, grid="trailing", **kw)
    # 0.5: the bias's honest effect from the leading start (0.01 times the levels' sigma^2 sqrt(abar), at most ~0.1)
    # is small beside the mixture's spread (its means at -1 and 1); from T-1 the first step moves x~ by ~2e4 * 0.01,
    # which the later levels pull only part of the way back: the samples end beyond 2, off the mixture's support
    assert np.max(np.abs(default - want)) < 0.5
    assert np.max(np.abs(from_top - want)) > 2.0
