"""A learned-variance checkpoint (``train --variance learned --loss hybrid``: the network outputs 2C channels, V1)
through ``lab.sampling.draw`` and ``sample``, with every sampler and both sides (issue 16's sampling path):
ddpm steps with the learned variance by default (respaced by V5 when shortened; fixed_small / fixed_large still
allowed), ddim and the ODE solvers read the C mean channels only, and guidance mixes only the mean channels (the
variance is the conditional pass's).

One tiny class-conditional moons run in float64 (T = 100, 150 steps) serves every test: the samples of the two
sides agree to float32 rounding of a float64 draw, and each route is checked against one built by hand from the
network's raw 2C output.
"""
import numpy as np
import pytest

from lab import cli
from lab.backend import Backend
from lab.sampling import draw, load_trainer, ode_denoiser, plan

torch = pytest.importorskip("torch")

RUN = ["--class-cond", "--variance", "learned", "--loss", "hybrid", "--steps", "150", "--save-every", "0",
       "--sample-every", "0", "--quiet", "--batch-size", "64", "--T", "100", "--hidden", "16", "--num-layers", "1",
       "--dtype", "float64", "--no-final-samples"]
SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpm++2m")
# the direct sample_loop calls below start late (leading spacing, 10 of 100 steps) on purpose: as draw does
LATE = pytest.mark.filterwarnings("ignore:sampling starts at:reference.schedules.PriorMismatchWarning")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("learned_sampling") / "run"
    assert cli.main(["train", "--data", "moons", "--out", str(out), *RUN]) == 0
    return out / "ckpt.npz"


def _sample(ckpt, out, *flags, backend="reference"):
    dev = ["--device", "cpu"] if backend == "torch" else []
    assert cli.main(["sample", "--ckpt", str(ckpt), "--n", "16", "--out", str(out), "--seed", "2", *flags, *dev],
                    backend=backend) == 0
    return np.load(out)


def _trainer(side, ckpt):
    B = Backend(side)
    return B, load_trainer(B, ckpt, **({"device": "cpu"} if side == "torch" else {}))[0]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("guide", [(), ("--class", "1", "--guidance", "2")])
def test_every_sampler_runs_a_learned_variance_checkpoint_alike_on_both_sides(ckpt, tmp_path, sampler, guide):
    """float64 draws written as float32: at most one rounding apart (1 ulp)."""
    flags = ("--sampler", sampler, "--sample-steps", "10", *guide)
    ref = _sample(ckpt, tmp_path / "r.npy", *flags)
    port = _sample(ckpt, tmp_path / "t.npy", *flags, backend="torch")
    assert ref.shape == (16, 2) and np.all(np.isfinite(ref))
    ulp = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(port, ref, rtol=ulp, atol=ulp)


def test_ddpm_defaults_to_the_learned_variance_and_still_takes_the_fixed_ones(ckpt, tmp_path):
    steps = ("--sampler", "ddpm", "--sample-steps", "10")
    default = _sample(ckpt, tmp_path / "d.npy", *steps)
    learned = _sample(ckpt, tmp_path / "l.npy", *steps, "--variance", "learned")
    small = _sample(ckpt, tmp_path / "s.npy", *steps, "--variance", "fixed_small")
    large = _sample(ckpt, tmp_path / "x.npy", *steps, "--variance", "fixed_large")
    assert np.array_equal(default, learned)
    assert not np.allclose(learned, small) and not np.allclose(learned, large) and not np.allclose(small, large)


@LATE
@pytest.mark.parametrize("side", ["reference", "torch"])
def test_ddpm_learned_is_the_chain_on_the_raw_2c_output_and_the_others_read_its_mean(ckpt, side):
    """Independent routes from the network's raw output (all 2C channels, with_variance=True): ddpm is sample_loop
    with variance "learned" on it; an ODE solver is model_denoiser on its first C channels, sliced by hand; ddim
    is sample_loop on the sliced output. Same float64 arithmetic on the same side: equal to rounding (1e-12)."""
    B, trainer = _trainer(side, ckpt)
    full = trainer.denoiser(with_variance=True)
    mean = lambda x, t: full(x, t)[:, :2]   # noqa: E731
    assert tuple(full(B.from_numpy(np.zeros((3, 2))), B.from_numpy(np.zeros(3, dtype=np.int64))).shape) == (3, 4)

    def x_T():
        rng = np.random.default_rng(4)
        return B.from_numpy(rng.standard_normal((12, 2))), rng

    x, rng = x_T()
    want = B.samplers.sample_loop(trainer.sched, full, x, rng, sampler="ddpm", steps=10, variance="learned",
                                  prediction="eps").x
    np.testing.assert_allclose(draw(B, trainer, 12, 4, "ddpm", 10, warn=False), B.to_numpy(want), rtol=1e-12,
                               atol=1e-12)
    x, rng = x_T()
    want = B.samplers.sample_loop(trainer.sched, mean, x, rng, sampler="ddim", steps=10, prediction="eps").x
    np.testing.assert_allclose(draw(B, trainer, 12, 4, "ddim", 10, warn=False), B.to_numpy(want), rtol=1e-12,
                               atol=1e-12)
    p = plan(B, trainer.sched, "heun", 5, clip_x0=False)
    x, _ = x_T()
    want = B.solvers.sample(ode_denoiser(B, trainer, mean), x, p.sigmas, "heun").x
    np.testing.assert_allclose(draw(B, trainer, 12, 4, "heun", 5, warn=False), B.to_numpy(want), rtol=1e-12,
                               atol=1e-12)


@LATE
@pytest.mark.parametrize("side", ["reference", "torch"])
def test_guided_ddpm_mixes_the_mean_channels_and_keeps_the_conditional_variance(ckpt, side):
    """By hand: two separate passes, eps_null + s (eps_c - eps_null) on channels 0..C-1 (W2), channels C..2C-1
    the conditional pass's; the chain with variance "learned" on that, against draw's one batched guided pass."""
    B, trainer = _trainer(side, ckpt)
    full, s = trainer.denoiser(with_variance=True), 3.0
    cls, null = B.from_numpy(np.ones(12, dtype=np.int64)), B.from_numpy(np.full(12, 2, dtype=np.int64))
    cat = np.concatenate if side == "reference" else torch.cat

    def by_hand(x, t):
        oc, o0 = full(x, t, cls), full(x, t, null)
        return cat([o0[:, :2] + s * (oc[:, :2] - o0[:, :2]), oc[:, 2:]], 1)

    rng = np.random.default_rng(6)
    x = B.from_numpy(rng.standard_normal((12, 2)))
    want = B.samplers.sample_loop(trainer.sched, by_hand, x, rng, sampler="ddpm", steps=10, variance="learned").x
    got = draw(B, trainer, 12, 6, "ddpm", 10, y=1, guidance=s, warn=False)
    np.testing.assert_allclose(got, B.to_numpy(want), rtol=1e-10, atol=1e-10)
