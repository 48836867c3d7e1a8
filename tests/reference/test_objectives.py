"""reference/objectives.py and reference/processes.py at their edges: input errors that name the flag, shapes,
dtypes, defaults (the math itself: tests/derivations/test_design_space.py)."""
from types import SimpleNamespace as NS

import numpy as np
import pytest

from common.choices import EDM_DEFAULTS, PROCESSES
from reference import objectives as O
from reference import processes as P
from reference.errors import InputError
from reference.schedules import Schedule, make_betas
from tolerances import TOL

EDM, FLOW = NS(objective="edm"), NS(objective="flow")
CFGS = [EDM, FLOW, NS(objective="flow", t_sampling="logit-normal", shift=3.0)]


@pytest.mark.parametrize("field, value, flag", [
    ("sigma_data", 0.0, "--sigma-data"), ("sigma_data", -1.0, "--sigma-data"), ("shift", 0.0, "--shift"),
    ("shift", -2.0, "--shift"), ("p_std", 0.0, "--p-std"), ("t_sampling", "normal", "--t-sampling"),
    ("logit_std", -1.0, "--logit-std")])
def test_bad_settings_name_their_flag(field, value, flag):
    cfg = NS(objective="edm" if field in ("sigma_data", "p_std") else "flow", **{field: value})
    with pytest.raises(InputError, match=flag):
        O.level(cfg, np.array([0.5]))


def test_ddpm_and_unknown_objectives_are_refused_where_only_continuous_ones_apply():
    for bad in ("ddpm", "ncsm"):
        with pytest.raises(InputError, match="continuous objective"):
            O.training_target(NS(objective=bad), np.zeros((2, 2)), np.zeros((2, 2)), np.array([0.5, 0.5]))
    with pytest.raises(InputError, match="objective"):
        O.weighting("edmm", np.zeros(3))


@pytest.mark.parametrize("u", [np.array([0.0, 0.5]), np.array([0.5, 1.0]), np.array([[0.5]]), np.array([np.nan])])
def test_level_refuses_uniforms_outside_the_open_interval(u):
    with pytest.raises(InputError, match="u must be"):
        O.level(FLOW, u)


def test_edm_precond_refuses_sigma_zero_and_bad_sigma_data():
    with pytest.raises(InputError, match="sigma must be > 0"):
        O.edm_precond(np.array([0.0, 1.0]), 0.5)
    with pytest.raises(InputError, match="--sigma-data"):
        O.edm_precond(1.0, 0.0)


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_target_shapes_and_dtypes(cfg, dtype):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((5, 1, 4, 4)).astype(dtype)
    eps = rng.standard_normal(x0.shape).astype(dtype)
    lv = O.level(cfg, rng.uniform(size=5))
    assert lv.shape == (5,) and lv.dtype == np.float64
    net_in, time_in, target, weight = O.training_target(cfg, x0, eps, lv)
    assert net_in.shape == target.shape == x0.shape and net_in.dtype == target.dtype == dtype
    assert time_in.shape == (5,) and time_in.dtype == np.float64
    assert weight.shape == (5,) and weight.dtype == dtype
    loss, grad = O.loss_and_grad(target + 1, target, weight)
    assert isinstance(loss, float) and grad.shape == x0.shape and grad.dtype == dtype
    with pytest.raises(InputError, match="shape mismatch"):
        O.training_target(cfg, x0, eps[:, :, :2], lv)
    with pytest.raises(InputError, match="N=5"):
        O.training_target(cfg, x0, eps, lv[:3])


def test_flow_t_must_lie_inside_the_open_interval():
    with pytest.raises(InputError, match=r"strictly inside \(0, 1\)"):
        O.training_target(FLOW, np.zeros((2, 2)), np.zeros((2, 2)), np.array([0.5, 1.0]))


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("grid", ["karras", "linspace"])
def test_sigma_grid_is_decreasing_ends_at_zero_and_spans_the_range(cfg, grid):
    g = O.sigma_grid(cfg, 7, grid)
    assert g.shape == (8,) and g.dtype == np.float64 and g[-1] == 0.0 and np.all(np.diff(g) < 0)
    assert g[0] == EDM_DEFAULTS["sigma_max"] and O.sigma_range(cfg) == (0.002, 80.0)


def test_sigma_grid_refuses_the_chains_grids_naming_what_continuous_models_take():
    for bad in ("trailing", "leading", "ddim"):
        with pytest.raises(InputError, match="'karras', 'linspace'"):
            O.sigma_grid(EDM, 5, bad)
    with pytest.raises(InputError, match="n"):
        O.sigma_grid(FLOW, 0, "karras")


@pytest.mark.parametrize("cfg", CFGS)
def test_denoiser_keeps_dtype_feeds_time_as_float_and_clips(cfg):
    seen = {}

    def net(x, t):
        seen["t"] = t
        return 10.0 * np.ones_like(x)

    x = np.ones((3, 2), dtype=np.float32)
    out = O.denoiser(cfg, net, clip_x0=True)(x, 1.5)
    assert out.dtype == np.float32 and np.all(np.abs(out) <= 1.0)
    assert seen["t"].shape == (3,) and seen["t"].dtype == np.float64
    with pytest.raises(InputError, match="sigma~"):
        O.denoiser(cfg, net)(x, 0.0)


def test_network_time_is_1000_times_the_noise_coordinate():
    assert np.allclose(O.network_time(EDM, np.array([1.0, np.e])), [0.0, 250.0], rtol=0, atol=TOL["exact64"] * 1e3)
    assert np.allclose(O.network_time(FLOW, np.array([0.25])), [250.0], rtol=TOL["exact64"])


def test_defaults_come_from_common_choices():
    s = O.settings(NS(objective="edm"))
    assert (s.sigma_data, s.p_mean, s.p_std, s.t_sampling, s.shift) == (0.5, -1.2, 1.2, "uniform", 1.0)


def test_weighting_options_are_checked():
    for kw, what in [({"process": "ve"}, "process"), ({"prediction": "score"}, "prediction"),
                     ({"loss_weighting": "p2"}, "loss_weighting"),
                     ({"loss_weighting": "min_snr", "gamma": 0.0}, "gamma")]:
        with pytest.raises(InputError, match=what):
            O.weighting("ddpm", np.zeros(3), **kw)
    with pytest.raises(InputError, match="--shift"):
        O.weighting("flow", np.zeros(3), shift=0.0)


# ---- processes: the constructor and the conversions' edges ----------------------------------------

def test_make_process_names_the_choices_and_refuses_foreign_settings():
    with pytest.raises(InputError, match="'vp-linear'"):
        P.make_process("vp")
    with pytest.raises(InputError, match="does not take"):
        P.make_process("flow", beta_max=3.0)
    assert {P.make_process(n).name for n in PROCESSES} == set(PROCESSES)


@pytest.mark.parametrize("name", PROCESSES)
def test_process_shapes_ranges_and_refusals(name):
    proc = P.make_process(name)
    t = np.linspace(0.1, 0.9, 5) * proc.t_max
    for f in (proc.alpha, proc.sigma, proc.log_snr, proc.dlambda_dt, proc.drift, proc.g2, proc.sigma_tilde):
        assert f(t).shape == (5,) and f(t).dtype == np.float64
    with pytest.raises(InputError, match="t must be"):
        proc.alpha(np.array([-0.1]))
    with pytest.raises(InputError, match="sigma~ must lie"):
        proc.t_of_sigma_tilde(np.array([-1.0]))


def test_to_tilde_refuses_the_pure_noise_end_and_round_trips_dtype():
    with pytest.raises(InputError, match="alpha"):
        P.to_tilde(P.make_process("flow"), np.ones((1, 2)), 1.0)
    x = np.ones((2, 2), dtype=np.float32)
    xt, s = P.to_tilde(P.make_process("vp-linear"), x, np.array([0.3, 0.6]))
    assert xt.dtype == np.float32 and s.shape == (2,)


def test_the_chain_view_has_only_its_steps_and_no_derivatives():
    sched = Schedule(make_betas("cosine", 10))
    chain = P.chain_process(sched)
    assert chain.alpha(0.3) == sched.sqrt_alpha_bar[2] and chain.sigma(0.0) == 0.0
    with pytest.raises(InputError, match="only at t = k / T"):
        chain.alpha(0.35)
    with pytest.raises(InputError, match="no t-derivative"):
        chain.drift(0.3)
    with pytest.raises(InputError, match="not a level"):
        chain.t_of_sigma_tilde(0.5)
