"""`sample` and `eval` of models of the continuous objectives (edm, flow) through the samplers' table.

The stand-in trainer's network is the exact one for a Gaussian mixture (EDM's F, or flow's velocity u, solved from
the mixture's exact denoiser), so the model's D(x~, sigma~) is the oracle's: lab.sampling.draw of it must then be
the exact oracle's ODE solve, on the objective's default grid (written out here from its definition), from the same
x_T (default_rng(seed), VP variables). Guidance mixes the network's raw outputs; the route here mixes the oracle's
conditional denoisers in D instead. The chain samplers, the chain's grids and the discrete bound are refused by
name. The end-to-end test trains 20 steps of a tiny MLP of each objective on moons on both sides, then runs
`sample` and `eval` on the checkpoint.
"""
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common import sampler_table as table
from lab import cli
from lab.backend import Backend
from lab.inversion import encode_decode
from lab.likelihood_eval import check_model
from lab.sampling import draw, resolve
from reference import objectives as RO
from reference import solvers as RSo
from reference.errors import InputError
from reference.oracle import GaussianMixtureOracle
from reference.schedules import PriorMismatchWarning
from tolerances import TOL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MIX = GaussianMixtureOracle([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.25]], var=[[0.05, 0.1], [0.1, 0.02]])
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002   # EDM's range (Karras et al. 2022), the range both objectives sample over
DEFAULT_GRID = {"edm": "karras", "flow": "linspace"}   # each objective's own: Karras et al.'s; uniform in flow's t


class StandIn:
    """A trainer of a continuous objective (cfg, item_shape, denoiser()) whose network is exact for MIX."""

    def __init__(self, objective, num_classes=None, dtype="float64"):
        self.cfg = SimpleNamespace(objective=objective, sigma_data=0.5, p_mean=-1.2, p_std=1.2,
                                   t_sampling="uniform", logit_mean=0.0, logit_std=1.0, shift=1.0, T=1000,
                                   prediction="eps", dtype=dtype, data="moons", seed=0, sample_steps=4)
        self.item_shape, self.num_classes, self.device = (2,), num_classes, "cpu"

    def denoiser(self):
        objective, sd, K = self.cfg.objective, self.cfg.sigma_data, self.num_classes

        def net(net_in, time_in, y=None):
            is_torch = isinstance(net_in, torch.Tensor)
            x, lv = (np.asarray(a.cpu().numpy() if is_torch else a, np.float64) for a in (net_in, time_in))
            labels = None if y is None else np.asarray(y.cpu().numpy() if is_torch else y)
            rows = []
            for i in range(len(x)):   # one noise level per example (a guided batch repeats them)
                lab = None if labels is None or labels[i] == K else labels[i:i + 1]
                if objective == "edm":   # time_in = TIME_SCALE c_noise, c_noise = ln(sigma) / 4 (Karras, Table 1)
                    sigma = math.exp(4.0 * lv[i] / RO.TIME_SCALE)
                    c_skip, c_out, c_in, _ = (float(c) for c in RO.edm_precond(sigma, sd))
                    xt = x[i:i + 1] / c_in
                    rows.append((MIX.denoise_sigma(xt, sigma, lab) - c_skip * xt) / c_out)   # D = c_skip x + c_out F
                else:                    # time_in = TIME_SCALE t; x_t = (1 - t) x~, sigma~ = t / (1 - t)
                    t = lv[i] / RO.TIME_SCALE
                    d = MIX.denoise_sigma(x[i:i + 1] / (1.0 - t), t / (1.0 - t), lab)
                    rows.append((x[i:i + 1] - d) / t)                                           # u = (x_t - D) / t
            out = np.concatenate(rows)
            return torch.as_tensor(out, dtype=net_in.dtype) if is_torch else out.astype(net_in.dtype)

        return net


def flow_linspace(n):
    """Uniform in flow's own t from t(sigma~_max) = 80 / 81 down to 0, as sigma~ = t / (1 - t)."""
    t = (SIGMA_MAX / (1.0 + SIGMA_MAX)) * (1.0 - np.arange(n + 1) / n)
    s = t / (1.0 - t)
    s[0], s[-1] = SIGMA_MAX, 0.0
    return s


def grid_of(objective, grid, n):
    if grid == "karras":
        return RSo.karras_sigmas(n, SIGMA_MIN, SIGMA_MAX)
    return flow_linspace(n) if objective == "flow" else SIGMA_MAX * (1.0 - np.arange(n + 1) / n)


def x_T(seed, n):
    return np.random.default_rng(seed).standard_normal((n, 2))


BACKENDS = ["reference", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective, grid", [("edm", None), ("flow", None), ("edm", "linspace"),
                                             ("flow", "karras")])
@pytest.mark.parametrize("sampler", table.names("ode"))
def test_draw_of_an_exact_continuous_model_is_the_oracles_ode_on_the_objectives_grid(backend, objective, grid,
                                                                                       sampler):
    B, n = Backend(backend), 6
    x = draw(B, StandIn(objective), 32, seed=5, sampler=sampler, steps=n, grid=grid)
    want_grid = grid_of(objective, grid or DEFAULT_GRID[objective], n)
    want = RSo.sample(MIX.denoise_sigma, x_T(5, 32), want_grid, sampler).x
    np.testing.assert_allclose(x, want, rtol=0, atol=TOL["exact64"])


def test_the_default_grid_per_objective_is_karras_for_edm_and_linspace_for_flow():
    for objective in ("edm", "flow"):
        st = resolve(Backend("reference"), StandIn(objective), sampler="euler")
        assert st.plan.where == DEFAULT_GRID[objective] and st.plan.T is None and st.plan.t_start is None
        assert st.plan.steps == 50 and st.plan.nfe == 50          # 2-D points: 50 steps, one call each
        np.testing.assert_allclose(np.asarray(st.plan.sigmas), grid_of(objective, st.plan.where, 50), rtol=0,
                                   atol=TOL["exact64"])
    st = resolve(Backend("reference"), StandIn("flow"), sampler="heun", steps=5)
    assert st.plan.nfe == 9 and st.variance is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_trajectory_is_labelled_by_sigma_and_starts_at_x_T_in_vp_variables(backend):
    B, n = Backend(backend), 5
    x, traj = draw(B, StandIn("edm"), 8, seed=2, sampler="dpm++2m", steps=n, record=True)
    g = grid_of("edm", "karras", n)
    assert [s for s, _, _ in traj] == pytest.approx(list(g[:-1]), rel=TOL["exact64"])
    # (K6)  the first state is x~ = x_T sqrt(1 + sigma_max^2), recorded in VP variables: x_T itself
    np.testing.assert_allclose(traj[0][1], x_T(2, 8), rtol=0, atol=TOL["exact64"])
    np.testing.assert_allclose(traj[0][2], MIX.denoise_sigma(x_T(2, 8) * math.sqrt(1 + g[0] ** 2), g[0]), rtol=0,
                               atol=TOL["exact64"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_guidance_mixes_the_outputs_which_is_the_same_mix_of_the_denoisers(backend, objective):
    B, n, K = Backend(backend), 4, 2
    y = np.array([0, 1, 1, 0, 1, 0], dtype=np.int64)
    for s in (0.0, 1.0, 2.5):
        x = draw(B, StandIn(objective, num_classes=K), len(y), seed=7, sampler="euler", steps=n, y=y, guidance=s)

        def D(z, sigma):   # (W2) in D: D_null + s (D_y - D_null), from the oracle's conditional denoisers
            null, cond = MIX.denoise_sigma(z, sigma), np.concatenate(
                [MIX.denoise_sigma(z[i:i + 1], sigma, y[i:i + 1]) for i in range(len(z))])
            return null + s * (cond - null)

        want = RSo.sample(D, x_T(7, len(y)), grid_of(objective, DEFAULT_GRID[objective], n), "euler").x
        np.testing.assert_allclose(x, want, rtol=0, atol=TOL["exact64"])


def test_the_chain_samplers_and_grids_and_the_bound_are_refused_for_a_continuous_model():
    B = Backend("reference")
    for objective in ("edm", "flow"):
        st = StandIn(objective)
        for sampler in table.names("chain"):
            with pytest.raises(InputError, match=f"--sampler {sampler} steps the discrete chain.*use --sampler "
                                                 "euler, which is DDIM with eta 0"):
                resolve(B, st, sampler=sampler)
            with pytest.raises(InputError, match="use --sampler euler"):
                draw(B, st, 4, sampler=sampler)
        for grid in ("leading", "trailing"):
            with pytest.raises(InputError, match=f"--grid {grid} is a grid of the trained chain's integer steps; "
                                                 f"this {objective} model .* takes --grid karras or linspace"):
                resolve(B, st, sampler="euler", grid=grid)
        with pytest.raises(InputError, match="--spacing applies to --sampler ddpm/ddim"):
            resolve(B, st, sampler="euler", spacing="leading")
        for route in ("bound", "both"):
            with pytest.raises(InputError, match="the discrete bound needs the trained chain"):
                check_model(st, SimpleNamespace(nll=route, bpd_n=8))
        with pytest.raises(InputError, match="--bpd-variance sets the discrete bound"):
            check_model(st, SimpleNamespace(nll=None, bpd_n=8, bpd_variance="fixed_small"))
        args = SimpleNamespace(nll=None, bpd_n=64)
        check_model(st, args)
        assert (args.nll, args.bpd_n) == ("ode", 64)   # omitted: the ODE's likelihood (E9), its one route


def test_no_late_start_warning_for_a_continuous_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorMismatchWarning)
        draw(Backend("reference"), StandIn("flow"), 4, sampler="euler", steps=2, warn=True)


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_inversion_of_a_continuous_model_runs_euler_up_and_down_its_own_grid(objective):
    B, n = Backend("reference"), 40
    x0 = MIX.sample(np.random.default_rng(1), 16)[0]
    r = encode_decode(B, StandIn(objective), x0, n)
    g = grid_of(objective, DEFAULT_GRID[objective], n)
    np.testing.assert_allclose(r.latents, RSo.invert(MIX.denoise_sigma, x0, g).x, rtol=0, atol=TOL["exact64"])
    assert r.grid == DEFAULT_GRID[objective] and (r.nfe, r.nfe_encode) == (n, n - 1)


# ---- end to end: train 20 steps of a tiny MLP of each objective on moons, on both sides, then sample and eval

TINY = ["--steps", "20", "--save-every", "0", "--log-every", "10", "--sample-every", "0", "--sample-steps", "3",
        "--quiet", "--batch-size", "32", "--hidden", "16", "--num-layers", "1", "--no-final-samples"]


@pytest.mark.parametrize("side", ["reference", "torch_port"])
@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_end_to_end_train_sample_and_eval_a_continuous_model(side, objective, tmp_path, capsys):
    main = cli.main if side == "reference" else (lambda a: cli.main(a, backend="torch"))
    run = tmp_path / "run"
    assert main(["train", "--data", "moons", "--objective", objective, "--out", str(run), *TINY]) == 0
    ckpt = str(run / "ckpt.npz")
    out = tmp_path / "s.npy"
    assert main(["sample", "--ckpt", ckpt, "--n", "40", "--out", str(out), "--sampler", "heun", "--sample-steps", "4",
                 "--trajectory"]) == 0
    x = np.load(out)
    assert x.shape == (40, 2) and np.all(np.isfinite(x))
    said = capsys.readouterr().out
    assert f"(heun, 4 steps of a {objective} model, {DEFAULT_GRID[objective]} grid" in said and "NFE 7 per" in said
    assert (tmp_path / "s_trajectory.png").is_file()
    assert main(["sample", "--ckpt", ckpt, "--out", str(tmp_path / "d.npy"), "--sampler", "ddim"]) == 2
    assert "use --sampler euler" in capsys.readouterr().err
    js = tmp_path / "e.json"
    assert main(["eval", "--ckpt", ckpt, "--n", "50", "--repeats", "1", "--nfe", "3,5", "--json", str(js)]) == 0
    import json
    res = json.loads(js.read_text())
    assert [r["nfe"] for r in res["sweep"]["rows"]] == [3, 5] and res["sweep"]["baseline"] is None
    # --nll omitted: the ODE's likelihood (E9), the one route of a model without a chain; no bound
    assert res["nll"] == "ode" and "bound" not in res and np.isfinite(res["ode"]["nats"])
    assert main(["eval", "--ckpt", ckpt, "--nll", "bound", "--n", "50"]) == 2
    assert "the discrete bound needs the trained chain" in capsys.readouterr().err
