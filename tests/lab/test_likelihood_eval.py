"""eval's likelihood (lab/likelihood_eval.py): the bound on any level count (the digits' 17), the variance it
used, the probability-flow ODE's exact likelihood through the CLI against the library call, both sides
agreeing, and every refusal before any work."""
import json

import numpy as np
import pytest

from lab import cli
from lab import data as datasets
from lab import likelihood_eval as le
from lab.backend import Backend
from lab.sampling import load_trainer
from reference import likelihood as rlik
from reference import losses as rlosses
from tests.tolerances import TOL

TINY = ["--steps", "4", "--save-every", "0", "--sample-every", "0", "--no-final-samples", "--quiet", "--T", "20"]
UNET = ["--batch-size", "8", "--base-channels", "8", "--channel-mults", "1", "--num-res-blocks", "1",
        "--groups", "4"]
MLP = ["--batch-size", "16", "--hidden", "16", "--num-layers", "1"]
QUICK = ["--n", "20", "--sampler", "ddim", "--sample-steps", "10", "--spacing", "trailing"]


def _train(path, data, *flags):
    assert cli.main(["train", "--data", data, "--out", str(path), *TINY, *flags]) == 0
    return path / "ckpt.npz"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("lik")
    return {"digits": _train(d / "digits", "digits", *UNET),
            "learned": _train(d / "learned", "digits", *UNET, "--variance", "learned"),
            "points64": _train(d / "g8", "gaussians8", *MLP, "--dtype", "float64")}


def _eval(ckpt, tmp_path, *flags, backend="reference"):
    js = tmp_path / f"eval_{backend}.json"
    assert cli.main(["eval", "--ckpt", str(ckpt), *QUICK, "--json", str(js), *flags], backend=backend) == 0
    return json.loads(js.read_text())


def test_digits_bits_per_dim_by_the_bound_on_17_levels_with_its_variance(ckpts, tmp_path, capsys):
    res = _eval(ckpts["digits"], tmp_path, "--bpd-n", "4", "--bpd-variance", "all")
    out = capsys.readouterr().out
    assert "n/a" not in out
    assert res["levels"] == 17 and res["bits_per_dim_variance"] == "fixed_small"
    assert "bound, fixed_small variance, x0_hat clipped:" in out and "bound, fixed_large variance, x0_hat" in out
    assert "bits/dim (discretised decoder, 17 levels)" in out
    # independent of the hook's plumbing: the library's bound on the same 4 test images, the same eps stream,
    # x0_hat clipped as the sampler clips images
    trainer, _ = load_trainer(Backend("reference"), ckpts["digits"])
    x = datasets.load("digits", split="test")[:4]
    for v in ("fixed_small", "fixed_large"):
        assert res["bound"][v]["clip_x0"] is True
        want = rlosses.bits_per_dim(trainer.sched, trainer.denoiser(), x, np.random.default_rng(0),
                                    variance=v, levels=17, clip_x0=True)
        # the same float32 computation in the same order: equal to rounding of the mean
        assert res["bound"][v]["bits_per_dim"] == pytest.approx(want, rel=TOL["exact64"])
    assert res["bits_per_dim"] == res["bound"]["fixed_small"]["bits_per_dim"]
    # bits of discrete data: every term is a KL or -log2 of a probability, so >= 0 per item
    assert res["bound"]["fixed_large"]["bits_per_dim"] > 0 and res["bound"]["fixed_small"]["prior_bits_per_dim"] >= 0


def test_a_learned_variance_checkpoint_is_bounded_with_its_learned_variances(ckpts, tmp_path, capsys):
    res = _eval(ckpts["learned"], tmp_path, "--bpd-n", "3")
    assert list(res["bound"]) == ["learned"] and "bound, learned variance, x0_hat clipped:" in capsys.readouterr().out
    trainer, _ = load_trainer(Backend("reference"), ckpts["learned"])
    x = datasets.load("digits", split="test")[:3]
    want = rlosses.bits_per_dim(trainer.sched, trainer.denoiser(with_variance=True), x, np.random.default_rng(0),
                                variance="learned", levels=17, clip_x0=True)
    assert res["bits_per_dim"] == pytest.approx(want, rel=TOL["exact64"])


def test_no_bpd_clip_scores_the_unclipped_network_and_is_refused_for_the_ode(ckpts, tmp_path, capsys):
    res = _eval(ckpts["digits"], tmp_path, "--bpd-n", "3", "--no-bpd-clip")
    out = capsys.readouterr().out
    assert res["bound"]["fixed_small"]["clip_x0"] is False and "clipped" not in out
    trainer, _ = load_trainer(Backend("reference"), ckpts["digits"])
    x = datasets.load("digits", split="test")[:3]
    want = {c: rlosses.bits_per_dim(trainer.sched, trainer.denoiser(), x, np.random.default_rng(0), levels=17,
                                    clip_x0=c) for c in (False, True)}
    assert res["bits_per_dim"] == pytest.approx(want[False], rel=TOL["exact64"])
    assert want[False] != pytest.approx(want[True], rel=1e-6)   # the 4-step network's x0_hat leaves [-1, 1]
    code = cli.main(["eval", "--ckpt", str(ckpts["digits"]), "--nll", "ode", "--bpd-clip", "--bpd-n", "2", *QUICK])
    err = capsys.readouterr()
    assert code == 2 and "--bpd-clip sets the bound's reverse means" in err.err and "ODE (" not in err.out
    # 2-D points are not clipped by default (the sampler does not clip them)
    pts = _eval(ckpts["points64"], tmp_path, "--bpd-n", "4")
    assert pts["bound"]["fixed_small"]["clip_x0"] is False


def test_learned_variances_of_a_fixed_variance_checkpoint_are_refused_before_any_work(ckpts, capsys):
    code = cli.main(["eval", "--ckpt", str(ckpts["digits"]), "--bpd-variance", "learned", "--bpd-n", "2", *QUICK])
    err = capsys.readouterr()
    assert code == 2 and "--variance learned" in err.err and "bound (" not in err.err


def test_ode_nll_of_2d_points_through_the_cli_equals_the_library_call(ckpts, tmp_path, capsys):
    res = _eval(ckpts["points64"], tmp_path, "--bpd-n", "16", "--nll", "both", "--ode-rtol", "1e-6",
                "--ode-atol", "1e-6")
    out = capsys.readouterr().out
    assert res["bits_per_dim"] is None and "continuous 2-D points" in res["bits_per_dim_note"]
    assert "nats per point" in out and "exact divergence" in out and "rtol 1e-06 atol 1e-06" in out
    o = res["ode"]
    assert o["divergence"] == "exact" and o["probes"] == 2 and not o["dequantized"] and o["seconds"] > 0
    # the library on its own: reference.likelihood.model_nll of the checkpoint's EMA network, exact divergence
    trainer, _ = load_trainer(Backend("reference"), ckpts["points64"])
    x = datasets.load("gaussians8", n=16, seed=0, split="test")
    want = rlik.model_nll(trainer.sched, rlik.trainer_model(trainer), x, divergence="exact", rtol=1e-6, atol=1e-6)
    # the same float64 solve: only the mean over 16 items differs in its rounding
    assert o["nats"] == pytest.approx(float(want.nats.mean()), rel=TOL["exact64"])
    assert o["nfe"] == want.nfe
    # bits/dim of a density: nats / (d ln 2), d = 2
    assert o["bits_per_dim"] == pytest.approx(o["nats"] / (2 * np.log(2)), rel=TOL["exact64"])
    # the bound of continuous points is a density bound too: -ELBO >= -log p (the ODE's is exact)
    assert res["bound"]["fixed_small"]["nats"] > o["nats"]


@pytest.mark.slow
def test_ode_bits_per_dim_of_digits_are_dequantised_with_the_offset(ckpts, tmp_path, capsys):
    res = _eval(ckpts["digits"], tmp_path, "--bpd-n", "2", "--nll", "ode", "--ode-rtol", "1e-3", "--ode-atol",
                "1e-3", backend="torch")
    out = capsys.readouterr().out
    o = res["ode"]
    assert o["divergence"] == "hutchinson" and o["probes"] == 1 and o["dequantized"] and o["bpd_offset"] == 3.0
    assert "offset log2((17 - 1) / 2) = 3 included" in out and "bound" not in res
    # (E7) bits/dim = nats / (d ln 2) + log2((L - 1) / 2), d = 64
    assert o["bits_per_dim"] == pytest.approx(o["nats"] / (64 * np.log(2)) + 3.0, rel=TOL["exact64"])
    assert res["bits_per_dim"] == o["bits_per_dim"]


def test_both_sides_give_the_same_likelihood_of_a_float64_checkpoint(ckpts, tmp_path):
    flags = ("--bpd-n", "8", "--nll", "both", "--bpd-variance", "fixed_small,fixed_large")
    ref = _eval(ckpts["points64"], tmp_path, *flags)
    port = _eval(ckpts["points64"], tmp_path, *flags, backend="torch")
    for v in ("fixed_small", "fixed_large"):
        # float64 networks NumPy vs torch, T = 20 steps of the bound: net64 (relative)
        assert port["bound"][v]["nats"] == pytest.approx(ref["bound"][v]["nats"], rel=TOL["net64"])
    # a whole ODE solve through a float64 network: a step decision may flip near a trained level (ode_cross_net)
    assert port["ode"]["nats"] == pytest.approx(ref["ode"]["nats"], rel=TOL["ode_cross_net"])


@pytest.mark.parametrize("flags, needle", [
    (["--bpd-n", "-1"], "--bpd-n must be >= 0"),
    (["--bpd-n", "0", "--nll", "ode"], "needs held-out items"),
    (["--ode-rtol", "1e-3"], "applies with --nll ode or both"),
    (["--ode-probes", "4", "--ode-batch", "8"], "--ode-probes, --ode-batch applies with --nll ode"),
    (["--nll", "ode", "--ode-rtol", "0"], "--ode-rtol must be a positive number"),
    (["--nll", "ode", "--ode-atol", "nan"], "--ode-atol must be a positive number"),
    (["--nll", "ode", "--ode-rtol", "1e-20"], "below what float64 can hold"),
    (["--nll", "ode", "--ode-probes", "0"], "--ode-probes must be >= 1"),
    (["--nll", "ode", "--ode-divergence", "exact", "--ode-probes", "2"], "Hutchinson's divergence"),
    (["--nll", "both", "--ode-batch", "0"], "--ode-batch must be >= 1"),
    (["--bpd-variance", "fixed_smal"], "--bpd-variance must be a comma-separated list"),
    (["--bpd-variance", ","], "--bpd-variance must be a comma-separated list"),
    (["--nll", "ode", "--bpd-variance", "fixed_small"], "applies with --nll bound or both"),
])
def test_bad_likelihood_flags_are_refused_before_the_checkpoint_is_read(tmp_path, capsys, flags, needle):
    code = cli.main(["eval", "--ckpt", str(tmp_path / "no_such.npz"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err


def test_parse_variances():
    assert le.parse_variances("fixed_large, fixed_small,fixed_large") == ("fixed_large", "fixed_small")
    assert le.parse_variances("all") == ("all",)
