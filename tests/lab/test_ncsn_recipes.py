"""`train --objective ncsn` (issue 27): the ladder's recipes against the data they were measured on (J2, J3), its
flags and their refusals by name, a short run on both sides whose checkpoint records the VE process, samples with
an ODE sampler, resumes bit for bit, and convert's refusal."""
import dataclasses
import json
import math

import numpy as np
import pytest

from common import objective_table
from lab import checkpoint, cli, data
from lab import config as C
from lab.backend import Backend
from lab.commands.train import config_from_args
from lab.config import make_config, recipe_for
from lab.runner import train
from lab.sampling import load_trainer
from reference import ladder as LD
from reference import objectives as RO
from reference import train as RT
from reference.errors import InputError
from tolerances import TOL

TINY = dict(model=dict(hidden=16, num_layers=1), batch_size=32, save_every=0, sample_every=0, log_every=5,
            final_samples=False)


def _args(tmp_path, *flags, data_name="moons"):
    return cli.build_parser().parse_args(["train", "--data", data_name, "--out", str(tmp_path / "run"), *flags])


# ---- the recipes (J2, J3) -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", data.POINT_SETS + ("digits",))
def test_J2_each_measured_sigma_max_is_the_datas_largest_distance_rounded_up(name):
    x = data.load(name)
    measured = LD.max_pairwise_distance(x)
    r = recipe_for(name, "ncsn")
    assert measured <= r["sigma_max"] <= measured + 0.1, (name, measured, r["sigma_max"])
    dim = int(np.prod(x.shape[1:]))
    assert r["num_levels"] == LD.num_levels_for(r["sigma_max"], r["sigma_min"], dim, fallback=C.NCSN_LEVELS_2D)


@pytest.mark.parametrize("name", data.POINT_SETS + data.IMAGE_SETS)
def test_J3_every_named_dataset_has_an_ncsn_recipe_that_validates(name):
    cfg = make_config(name, objective="ncsn")
    assert cfg.objective == "ncsn" and cfg.sigma_max > cfg.sigma_min > 0 and cfg.num_levels >= 2
    base = recipe_for(name)
    assert (cfg.steps, cfg.lr, cfg.batch_size) == (base["steps"], base["lr"], base["batch_size"])
    if name in ("mnist", "fashion-mnist"):   # no files to measure: the largest distance in [-1, 1]^D, an upper bound
        assert cfg.sigma_max == pytest.approx(2 * math.sqrt(int(np.prod(data.info(name).shape))), abs=0.1)
    lad = LD.sigma_ladder(cfg.sigma_max, cfg.sigma_min, cfg.num_levels)
    if name not in data.POINT_SETS:          # the overlap rule binds: the ratio is at most its gamma
        assert lad[0] / lad[1] <= LD.ladder_ratio(int(np.prod(data.info(name).shape))) * (1 + TOL["exact64"])


def test_a_folder_recipe_has_no_sigma_max_and_the_first_use_names_the_flag():
    assert C._ncsn_recipe("folder:/nowhere")["sigma_max"] is None
    cfg = C.TrainConfig(objective="ncsn").validate()
    with pytest.raises(InputError, match="--sigma-max"):
        RO.level(cfg, np.array([0.5]))


# ---- the flags ----------------------------------------------------------------------------------------------

def test_every_continuous_rows_setting_is_a_train_flag():
    p = cli.build_parser()
    train_parser = next(a for a in p._subparsers._group_actions[0].choices.values() if a.prog.endswith("train"))
    dests = {a.dest for a in train_parser._actions}
    for r in objective_table.ROWS:
        if r.continuous:
            assert set(r.settings) <= dests, (r.name, set(r.settings) - dests)


def test_the_ladder_flags_land_in_the_config(tmp_path):
    cfg = config_from_args(_args(tmp_path, "--objective", "ncsn", "--sigma-max", "6", "--sigma-min", "0.02",
                                 "--num-levels", "30"))
    assert (cfg.objective, cfg.sigma_max, cfg.sigma_min, cfg.num_levels) == ("ncsn", 6.0, 0.02, 30)
    assert config_from_args(_args(tmp_path, "--objective", "ncsn")).sigma_max == C.NCSN_SIGMA_MAX["moons"]


@pytest.mark.parametrize("flags,words", [
    (("--objective", "ncsn", "--sigma-min", "5"), "--sigma-min 5.0 must lie below --sigma-max 4.0"),
    (("--objective", "ncsn", "--sigma-min", "0.1", "--sigma-max", "0.1"), "--sigma-min 0.1 must lie below"),
    (("--objective", "ncsn", "--num-levels", "1"), "--num-levels must be an integer >= 2"),
    (("--objective", "ncsn", "--sigma-max", "-1"), "--sigma-max must be a finite number > 0"),
    (("--objective", "ncsn", "--sigma-min", "0"), "--sigma-min must be a finite number > 0"),
    (("--objective", "ncsn", "--shift", "2"), "--shift 2.0 does not apply to --objective ncsn"),
    (("--objective", "ncsn", "--sigma-data", "0.5"), "--sigma-data 0.5 does not apply to --objective ncsn"),
    (("--objective", "ncsn", "--prediction", "v"), "--prediction v does not apply to --objective ncsn"),
    (("--objective", "edm", "--num-levels", "5"), "--num-levels 5 does not apply to --objective edm: it is a "
                                                   "setting of NCSN's sigma ladder"),
    (("--objective", "flow", "--sigma-max", "3"), "--sigma-max 3.0 does not apply to --objective flow"),
    (("--sigma-min", "0.1",), "--sigma-min 0.1 does not apply to --objective ddpm"),
])
def test_bad_ladder_settings_and_foreign_flags_are_refused_by_name(tmp_path, flags, words):
    with pytest.raises(InputError, match=words.replace(".", r"\.").replace("(", r"\(")):
        config_from_args(_args(tmp_path, *flags))


def test_show_recipe_prints_the_ladder(capsys):
    assert cli.main(["train", "--data", "digits", "--objective", "ncsn", "--show-recipe"]) == 0
    out = capsys.readouterr().out
    assert "sigma_max" in out and "num_levels" in out and '"ncsn"' in out


# ---- training, checkpoints, sampling, convert ---------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_a_short_run_lowers_the_loss_records_ve_samples_with_euler_and_resumes(backend, tmp_path):
    kw, B = ({"device": "cpu"} if backend == "torch" else {}), Backend(backend)
    cfg = make_config("moons", objective="ncsn", steps=200, warmup=20,
                      **{**TINY, "model": dict(hidden=32, num_layers=2), "batch_size": 128, "log_every": 50})
    x0 = data.load("moons", n=4096, seed=7)
    rng = np.random.default_rng(3)
    u, eps = RT.uniforms(rng, x0.shape[0]), rng.standard_normal(x0.shape).astype(np.float32)
    net_in, time_in, target, weight = RO.training_target(cfg, x0, eps, RO.level(cfg, u))

    def held_out(trainer):
        out = B.to_numpy(trainer.denoiser(use_ema=False)(B.from_numpy(net_in), B.from_numpy(time_in)))
        return RO.loss(out, target, weight)

    before = held_out(B.train.Trainer(cfg, (2,), **kw))
    res = train(cfg, tmp_path / "whole", backend=backend, progress=False, **kw)
    ck = checkpoint.load(res["ckpt"])
    assert ck.config["objective"] == "ncsn" and ck.extra["process"] == "ve"
    trainer, _ = load_trainer(B, res["ckpt"], **kw)
    # the untrained network's zero last layer gives E[target^2] = E[eps^2] = 1; the irreducible loss is well below
    assert abs(before - 1.0) < 0.1 and held_out(trainer) < 0.9 * before
    out = tmp_path / "s.npy"
    assert cli.main(["sample", "--ckpt", res["ckpt"], "--n", "64", "--out", str(out), "--sampler", "euler",
                     "--sample-steps", "10"]) == 0
    s = np.load(out)
    assert s.shape == (64, 2) and np.all(np.isfinite(s)) and np.abs(s).max() < 10
    train(dataclasses.replace(cfg, steps=5), tmp_path / "cut", backend=backend, progress=False, **kw)
    train(dataclasses.replace(cfg, steps=10), tmp_path / "cut", backend=backend, resume=True, progress=False, **kw)
    train(dataclasses.replace(cfg, steps=10), tmp_path / "ten", backend=backend, progress=False, **kw)
    a, b = checkpoint.load(tmp_path / "ten" / "ckpt.npz"), checkpoint.load(tmp_path / "cut" / "ckpt.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert json.loads(json.dumps(a.config))["num_levels"] == cfg.num_levels


def test_convert_refuses_an_ncsn_checkpoint_naming_it_and_why(tmp_path):
    from lab.convert import to_diffusers
    res = train(make_config("moons", objective="ncsn", steps=1, **TINY), tmp_path / "n", progress=False)
    with pytest.raises(InputError, match="--objective ncsn.*score F / sigma"):
        to_diffusers(res["ckpt"], tmp_path / "pipe")
    assert not (tmp_path / "pipe").exists()
