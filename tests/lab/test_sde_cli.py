"""The stochastic samplers through the command line (issue 27): ``sample --sampler <sde>`` and ``eval --sampler <sde>
--nfe`` on a model of every objective, on both sides, their settings flags, and the refusals in the CLI's words.

Tiny float64 moons runs (an MLP of width 16), one per objective, trained by the reference and sampled by both
sides: one checkpoint and one seed must give the same samples (the noise drawn once in NumPy, after x_T, and fed to
either side), for every SDE sampler. The NFE each run prints is the network calls counted on a wrapped trainer.
"""
import json

import numpy as np
import pytest

from common import sampler_table as table
from lab import cli
from lab.backend import Backend
from lab.sampling import draw, load_trainer, ode_denoiser, resolve
from tolerances import TOL

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--steps", "40", "--save-every", "0", "--log-every", "20", "--sample-every", "0", "--sample-steps", "3",
        "--quiet", "--batch-size", "32", "--hidden", "16", "--num-layers", "1", "--dtype", "float64",
        "--no-final-samples"]
OBJECTIVES = ("ddpm", "edm", "flow")
SDE = table.names("sde")
# Settings that keep each run short; langevin at its default step 0.2 sigma_L^2 (Q13), stable on every model's grid
FAST = {"langevin": ["--langevin-steps", "3"], "pc": ["--corrector-steps", "2"]}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root, out = tmp_path_factory.mktemp("sde_cli"), {}
    for objective in OBJECTIVES:
        run = root / objective
        extra = ["--T", "20"] if objective == "ddpm" else []
        assert cli.main(["train", "--data", "moons", "--objective", objective, "--out", str(run), *TINY, *extra]) == 0
        out[objective] = run / "ckpt.npz"
    return out


def _sample(ckpt, out, *flags, backend="reference"):
    dev = ["--device", "cpu"] if backend == "torch" else []
    assert cli.main(["sample", "--ckpt", str(ckpt), "--n", "16", "--out", str(out), *flags, *dev],
                    backend=backend) == 0
    return np.load(out)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("sampler", SDE)
def test_every_sde_sampler_samples_every_objective_alike_on_both_sides(ckpts, tmp_path, capsys, objective, sampler):
    flags = ["--sampler", sampler, "--sample-steps", "4", *FAST.get(sampler, [])]
    ref = _sample(ckpts[objective], tmp_path / "r.npy", *flags, "--seed", "5")
    said = capsys.readouterr().out
    port = _sample(ckpts[objective], tmp_path / "t.npy", *flags, "--seed", "5", backend="torch")
    assert ref.shape == (16, 2) and np.all(np.isfinite(ref))
    # float64 runs written as float32: the sides may differ by a rounding of the file (op32)
    np.testing.assert_allclose(port, ref, rtol=TOL["op32"], atol=TOL["op32"])
    other = _sample(ckpts[objective], tmp_path / "o.npy", *flags, "--seed", "6")
    assert np.abs(other - ref).max() > 1e-6            # the seed moves the noise: the sampler draws it
    want = table.nfe(sampler, 4, **{"langevin_steps": 3} if sampler == "langevin" else
                     {"corrector_steps": 2} if sampler == "pc" else {})
    assert f"NFE {want} per sample" in said


class Counting:
    """A trainer whose network counts its calls (each call one network evaluation of a batch)."""

    def __init__(self, trainer):
        self.trainer, self.calls = trainer, 0

    def __getattr__(self, name):
        return getattr(self.trainer, name)

    def denoiser(self, **kw):
        net = self.trainer.denoiser(**kw)

        def counted(*a, **k):
            self.calls += 1
            return net(*a, **k)

        return counted


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("sampler, sde", [("euler-maruyama", None), ("ancestral", {"eta": 0.5}), ("pc", None),
                                          ("pc", {"corrector_steps": 3, "snr": 0.1}), ("edm-sde", None),
                                          ("edm-sde", {"s_churn": 5.0, "s_tmax": 10.0}), ("dpm++2m-sde", None),
                                          ("langevin", {"langevin_steps": 2, "langevin_eps": 1e-6}),
                                          ("langevin", {"langevin_steps": 4, "langevin_eps": 1e-6,
                                                        "final_denoise": False})])
def test_the_plans_nfe_is_the_network_calls_counted(ckpts, objective, sampler, sde):
    B = Backend("reference")
    trainer = Counting(load_trainer(B, ckpts[objective])[0])
    st = resolve(B, trainer, sampler=sampler, steps=5, sde=sde)
    draw(B, trainer, 4, seed=1, sampler=sampler, steps=5, grid=st.plan.where, sde=sde, warn=False)
    assert trainer.calls == st.plan.nfe, (trainer.calls, st.plan.nfe)


@pytest.mark.parametrize("sampler, sde", [("ancestral", None), ("pc", {"corrector_steps": 2}), ("edm-sde", None),
                                          ("langevin", {"langevin_steps": 2})])
def test_draw_feeds_the_sampler_the_generators_draws_after_x_T(ckpts, sampler, sde):
    """The promise behind the cross-test: x_T, then noise(0), noise(1), ... from one default_rng(seed)."""
    B = Backend("reference")
    trainer = load_trainer(B, ckpts["ddpm"])[0]
    st = resolve(B, trainer, sampler=sampler, steps=4, sde=sde)
    got = draw(B, trainer, 8, seed=9, sampler=sampler, steps=4, grid=st.plan.where, sde=sde, warn=False)
    rng = np.random.default_rng(9)
    x_T = rng.standard_normal((8, 2))
    Z = rng.standard_normal((400, 8, 2))
    D = ode_denoiser(B, trainer)
    if table.row(sampler).leaves_grid:   # a chain model answers an off-grid level at its nearest trained one
        D = (lambda D0: lambda x, s: D0(x, float(B.solvers.snap_sigmas(trainer.sched, [s, 0.0])[0])))(D)
    want = B.sde.sample(D, x_T, np.asarray(st.plan.sigmas), sampler, lambda k: Z[k], **st.sde).x
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL["exact64"])


def test_the_trajectory_keeps_one_frame_a_level_named_by_trained_steps(ckpts, tmp_path):
    B = Backend("reference")
    trainer = load_trainer(B, ckpts["ddpm"])[0]
    for sampler, sde in (("langevin", {"langevin_steps": 3}), ("edm-sde", None)):
        x, traj = draw(B, trainer, 4, seed=0, sampler=sampler, steps=4, grid="trailing", sde=sde, record=True,
                       warn=False)
        ts = [t for t, _, _ in traj]
        assert len(ts) == 4 and ts == sorted(ts, reverse=True) and all(isinstance(t, int) for t in ts), ts
    _sample(ckpts["edm"], tmp_path / "s.npy", "--sampler", "pc", "--sample-steps", "3", "--trajectory")
    assert (tmp_path / "s_trajectory.png").is_file() and (tmp_path / "s_trajectory.gif").is_file()


def test_eval_nfe_of_an_sde_sampler_buys_steps_through_the_table(ckpts, tmp_path):
    js = tmp_path / "e.json"
    for sampler, flags, rows in (("pc", [], [(10, 5, 10), (20, 10, 20)]),
                                 ("langevin", ["--langevin-steps", "2"], [(10, 4, 9), (20, 9, 19)]),
                                 ("edm-sde", [], [(10, 5, 9), (20, 10, 19)])):
        assert cli.main(["eval", "--ckpt", str(ckpts["ddpm"]), "--n", "20", "--repeats", "1", "--sampler", sampler,
                         "--nfe", "10,20", "--no-baseline", "--bpd-n", "0", "--json", str(js), "--plot",
                         str(tmp_path / "q.png"), *flags]) == 0
        sw = json.loads(js.read_text())["sweep"]
        assert [(r["nfe_asked"], r["steps"], r["nfe"]) for r in sw["rows"]] == rows, sampler


@pytest.mark.parametrize("objective, flags, words", [
    ("ddpm", ["--sampler", "edm-sde", "--s-churn", "-1"], "--s-churn must be a finite number >= 0"),
    ("edm", ["--sampler", "langevin", "--langevin-eps", "2e-5"], "--langevin-eps 2e-05 diverges on the first level"),
    ("edm", ["--sampler", "langevin", "--langevin-eps", "2e-5"],
     "The largest stable --langevin-eps here is 4 sigma_L^2 = 1.6e-05"),
    ("edm", ["--sampler", "langevin", "--langevin-eps", "2e-5"], "the default (--langevin-eps omitted), 0.2 sigma_L^2 "
     "= 8e-07"),
    ("ddpm", ["--sampler", "ancestral", "--eta", "0"], "it is then --sampler euler exactly"),
    ("flow", ["--sampler", "dpm++2m-sde", "--eta", "0"], "it is then --sampler dpm++2m exactly"),
    ("ddpm", ["--sampler", "edm-sde", "--s-churn", "0"], "it is then --sampler heun exactly"),
    ("ddpm", ["--sampler", "ancestral", "--snr", "0.2"], "--snr applies to --sampler pc only"),
    ("edm", ["--sampler", "euler", "--s-noise", "1.0"], "--s-noise applies to --sampler edm-sde only"),
    ("ddpm", ["--sampler", "pc", "--corrector-steps", "-1"], "--corrector-steps must be an integer >= 0"),
    ("ddpm", ["--sampler", "edm-sde", "--s-tmin", "5", "--s-tmax", "1"], "--s-tmax 1 is below --s-tmin 5"),
    ("ddpm", ["--sampler", "ddim", "--final-denoise"], "--final-denoise applies to --sampler langevin only"),
])
def test_bad_sde_settings_are_refused_by_name(ckpts, tmp_path, capsys, objective, flags, words):
    assert cli.main(["sample", "--ckpt", str(ckpts[objective]), "--out", str(tmp_path / "s.npy"), *flags]) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert not (tmp_path / "s.npy").exists()


def test_eval_refuses_what_sample_refuses(ckpts, tmp_path, capsys):
    base = ["eval", "--ckpt", str(ckpts["ddpm"]), "--n", "20", "--bpd-n", "0"]
    assert cli.main([*base, "--sampler", "ancestral", "--eta", "0"]) == 2
    assert "it is then --sampler euler exactly" in capsys.readouterr().err
    assert cli.main([*base, "--sampler", "pc", "--nfe", "1"]) == 2
    assert "--nfe 1 is too small for --sampler pc" in capsys.readouterr().err
    assert cli.main([*base, "--guidance", "0,1", "--sampler", "pc", "--snr", "0.2"]) == 2
    assert "--snr do(es) not apply with --guidance" in capsys.readouterr().err
    js = tmp_path / "e.json"
    assert cli.main([*base, "--sampler", "ancestral", "--eta", "0.5", "--sample-steps", "6", "--repeats", "1",
                     "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert (res["sampler"], res["sample_steps"], res["nfe"]) == ("ancestral", 6, 6) and np.isfinite(res["value"])


def test_invert_refuses_the_sde_settings(ckpts, tmp_path, capsys):
    data = tmp_path / "d.npy"
    np.save(data, np.zeros((4, 2), np.float32))
    assert cli.main(["sample", "--ckpt", str(ckpts["ddpm"]), "--out", str(tmp_path / "z.npy"), "--invert", str(data),
                     "--s-churn", "3"]) == 2
    assert "--s-churn does not apply with --invert" in capsys.readouterr().err


def test_edm_sde_starts_on_the_leading_grid_where_heun_does_and_the_others_on_heuns_rule():
    """lab.late_start.default_grid's rule for the samplers that evaluate ahead: on the cosine schedule (sigma_{T-1}
    ~ 2e4) a trapezoid from T-1 is harmful, so edm-sde (Heun's step after the churn) starts leading as heun does."""
    from lab.late_start import default_grid
    from reference.schedules import Schedule, make_betas
    abar = Schedule(make_betas("cosine", 1000)).alpha_bar
    assert default_grid(abar, True, "eps", "heun") == default_grid(abar, True, "eps", "edm-sde") == "leading"
    # euler-maruyama and pc: their first step's noise is about sigma_{T-1} (the table's noise_of_the_step)
    assert default_grid(abar, True, "eps", "euler-maruyama") == default_grid(abar, True, "eps", "pc") == "leading"
    for name in ("ancestral", "dpm++2m-sde", "langevin"):
        assert default_grid(abar, True, "eps", name) == default_grid(abar, True, "eps", "euler") == "trailing"


def test_a_reverse_diffusion_step_from_T_minus_1_overshoots_and_the_leading_start_does_not():
    """Why euler-maruyama and pc start on leading on the cosine chain: with the mixture oracle's exact D, 20 steps
    from sigma_{T-1} ~ 2e4 (trailing) draw a first step's noise of std ~ sigma_{T-1}, far above the next level; pc
    ends with a spread many times the data's, and euler-maruyama further from the data's spread than from leading.
    Ancestral keeps its noise below the next level (Q4) and is right from either start."""
    from reference import sde as RS, solvers as RSo
    from reference.oracle import GaussianMixtureOracle
    from reference.schedules import Schedule, make_betas
    mix = GaussianMixtureOracle([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.25]], var=[[0.05, 0.1], [0.1, 0.02]])
    sched = Schedule(make_betas("cosine", 1000))
    D = RSo.model_denoiser(sched, mix.denoiser(sched, "eps"), "eps")
    rng = np.random.default_rng(0)
    x_T, Z = rng.standard_normal((2000, 2)), rng.standard_normal((100, 2000, 2))
    # the mixture's exact standard deviations: Var = sum_k w_k (Sigma_k + (mu_k - mu)^2)
    want = np.sqrt([0.4 * (0.05 + 1.44) + 0.6 * (0.1 + 0.64), 0.4 * (0.1 + 0.3025) + 0.6 * (0.02 + 0.04)])

    def err(name, grid):
        x = RS.sample(D, x_T, RSo.sigma_grid(sched, 20, grid), name, lambda k: Z[k]).x
        return float(np.max(np.abs(x.std(axis=0) / want - 1.0)))
    assert err("pc", "trailing") > 5.0 > 10 * err("pc", "leading")
    assert err("euler-maruyama", "trailing") > 2 * err("euler-maruyama", "leading")


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_help_lists_the_sde_samplers_and_their_flags(command, capsys):
    assert cli.main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in SDE:
        assert name in text, name
    for key in table.SDE_FLAGS:
        assert table.flag(key) in text, key
    assert "--no-final-denoise" in text and "--eta" in text
