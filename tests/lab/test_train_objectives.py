"""`train --objective ddpm|edm|flow` (issue 26 §3): the configuration and its rules (common/rules.py), the recipes,
one validation per run, checkpoints that record the objective and its process, convert's refusal, and training
end to end on both sides (the loss goes down; a resumed run continues bit for bit; class-conditional runs).
Rectified flow's second round (--reflow): tests/lab/test_train_reflow.py.
"""
import dataclasses
import json
import re

import numpy as np
import pytest

from lab import checkpoint, cli, data
from lab import config as C
from lab.backend import Backend
from lab.commands.train import config_from_args
from lab.config import RECIPES, SIGMA_DATA, TrainConfig, config_from_json, make_config, recipe_for
from lab.runner import train
from lab.sampling import load_trainer
from reference import objectives as RO
from reference import train as RT
from reference.errors import InputError

TINY = dict(model=dict(hidden=16, num_layers=1), batch_size=32, save_every=0, sample_every=0, log_every=5,
            final_samples=False)


def _args(tmp_path, *flags):
    return cli.build_parser().parse_args(["train", "--data", "moons", "--out", str(tmp_path / "run"), *flags])


# ---- the configuration and its rules ------------------------------------------------------------------------

def test_the_objective_settings_land_in_the_config_and_an_old_checkpoint_means_ddpm(tmp_path):
    cfg = config_from_args(_args(tmp_path, "--objective", "edm", "--sigma-data", "0.7", "--p-mean", "-1.0",
                                 "--p-std", "1.5"))
    assert (cfg.objective, cfg.sigma_data, cfg.p_mean, cfg.p_std) == ("edm", 0.7, -1.0, 1.5)
    cfg = config_from_args(_args(tmp_path, "--objective", "flow", "--t-sampling", "logit-normal", "--logit-mean",
                                 "0.5", "--logit-std", "0.8", "--shift", "3"))
    assert (cfg.t_sampling, cfg.logit_mean, cfg.logit_std, cfg.shift) == ("logit-normal", 0.5, 0.8, 3.0)
    assert json.loads(cfg.to_json())["objective"] == "flow"
    old = checkpoint.load("tests/data/moons_v0.1.0_4930ead.npz").config   # written before these fields existed
    assert "objective" not in old
    cfg = config_from_json(json.dumps(old)).validate()
    assert cfg.objective == "ddpm" and not Backend("reference").train.Trainer(cfg, (2,)).continuous


@pytest.mark.parametrize("flags,words", [
    (("--objective", "edm", "--sigma-data", "0"), "--sigma-data must be a finite number > 0"),
    (("--objective", "edm", "--sigma-data", "-0.5"), "--sigma-data must be a finite number > 0"),
    (("--objective", "edm", "--p-std", "0"), "--p-std must be a finite number > 0"),
    (("--objective", "edm", "--p-mean", "nan"), "--p-mean must be a finite number"),
    (("--objective", "flow", "--shift", "0"), "--shift must be a finite number > 0"),
    (("--objective", "flow", "--shift", "-2"), "--shift must be a finite number > 0"),
    (("--objective", "flow", "--logit-std", "0"), "--logit-std must be a finite number > 0"),
    (("--objective", "edm", "--prediction", "v"), "--prediction v does not apply to --objective edm"),
    (("--objective", "edm", "--prediction", "eps"), "--prediction eps does not apply to --objective edm"),
    (("--objective", "flow", "--loss", "hybrid"), "--loss hybrid does not apply to --objective flow"),
    (("--objective", "flow", "--loss", "vlb"), "--loss vlb does not apply to --objective flow"),
    (("--objective", "edm", "--variance", "learned"), "--variance learned does not apply to --objective edm"),
    (("--objective", "flow", "--weighting", "snr"), "--weighting snr does not apply to --objective flow"),
    (("--objective", "edm", "--importance-sampling"), "--importance-sampling does not apply to --objective edm"),
    (("--objective", "flow", "--zero-terminal-snr"), "--zero-terminal-snr does not apply to --objective flow"),
    (("--objective", "edm", "--schedule", "linear"), "--schedule linear does not apply to --objective edm"),
    (("--objective", "flow", "--sigma-data", "0.5"), "--sigma-data 0.5 does not apply to --objective flow: it is "
                                                     "a setting of EDM"),
    (("--objective", "edm", "--shift", "3"), "--shift 3.0 does not apply to --objective edm: it is a setting of "
                                             "flow matching"),
    (("--objective", "edm", "--t-sampling", "logit-normal"), "--t-sampling logit-normal does not apply"),
    (("--sigma-data", "0.5"), "--sigma-data 0.5 does not apply to --objective ddpm"),
    (("--shift", "2"), "--shift 2.0 does not apply to --objective ddpm"),
    (("--objective", "flow", "--reflow"), "--reflow trains on the pairs a teacher draws: add --teacher"),
    (("--objective", "flow", "--teacher", "x.npz"), "--teacher x.npz is the teacher of --reflow"),
    (("--objective", "edm", "--reflow", "--teacher", "x.npz"), "--reflow does not apply to --objective edm"),
    (("--reflow", "--teacher", "x.npz"), "--reflow does not apply to --objective ddpm"),
    (("--objective", "flow", "--reflow", "--teacher", "x.npz", "--class-cond"), "drop --class-cond"),
])
def test_each_setting_an_objective_cannot_use_or_a_bad_value_is_refused_naming_the_flag(tmp_path, flags, words):
    with pytest.raises(InputError, match=re.escape(words)):
        config_from_args(_args(tmp_path, *flags))


def test_the_cli_refuses_with_exit_code_2_and_the_configuration_refuses_the_same_values(tmp_path, capsys):
    assert cli.main(["train", "--data", "moons", "--out", str(tmp_path / "r"), "--objective", "flow", "--shift",
                     "0"]) == 2
    assert "--shift must be a finite number > 0" in capsys.readouterr().err
    # built by hand (no flags): a value away from the neutral one is refused in the fields' flag words
    for bad, words in [(dict(objective="edm", prediction="v"), "--prediction v does not apply to --objective edm"),
                       (dict(objective="flow", p_mean=0.0), "--p-mean 0.0 does not apply to --objective flow"),
                       (dict(objective="ncsm"), "unknown --objective 'ncsm'")]:
        with pytest.raises(InputError, match=re.escape(words)):
            TrainConfig(**bad).validate()
    TrainConfig(objective="edm", T=50, schedule="linear").validate()   # no neutral value: only a given flag is refused


def test_a_run_validates_its_configuration_once(tmp_path, monkeypatch):
    calls = []
    real = C._check_fields
    monkeypatch.setattr(C, "_check_fields", lambda c: (c.data == "moons" and calls.append(1)) or real(c))
    assert cli.main(["train", "--data", "moons", "--out", str(tmp_path / "r"), "--objective", "edm", "--steps", "2",
                     "--hidden", "8", "--num-layers", "1", "--no-final-samples", "--quiet"]) == 0
    assert len(calls) == 1
    cfg = make_config("moons", **TINY)                  # built and validated once; the runner's edges find it done
    calls.clear()
    train(dataclasses.replace(cfg, steps=1), tmp_path / "s", progress=False)
    assert len(calls) == 1
    cfg.steps = 0                                       # a field changed since: checked again, and refused
    with pytest.raises(InputError, match="--steps must be a positive integer"):
        cfg.validate()


# ---- recipes --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["moons", "digits", "cifar10", "folder:/x"])
@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_the_recipes_of_the_continuous_objectives_train_as_long_as_ddpm_s(name, objective):
    base, own = recipe_for(name), recipe_for(name, objective)
    for k in ("steps", "batch_size", "lr", "warmup", "ema_decay", "model"):
        assert own.get(k) == base.get(k), k
    assert own["objective"] == objective and "objective" not in base and recipe_for(name) in RECIPES.values()


@pytest.mark.parametrize("name", data.POINT_SETS + ("digits",))
def test_the_edm_recipe_s_sigma_data_is_the_std_of_the_data_it_trains_on(name):
    """The paper's 0.5 is CIFAR-10's; each recipe takes the measured std of its own data in model space."""
    x = data.load(name)
    assert abs(float(np.std(x)) - SIGMA_DATA[name]) <= 0.02
    assert make_config(name, objective="edm").sigma_data == SIGMA_DATA[name]


def test_show_recipe_shows_the_objective_and_its_settings(capsys):
    assert cli.main(["train", "--data", "digits", "--objective", "edm", "--show-recipe"]) == 0
    rows = dict(re.findall(r"^  (\S+)\s+(.+)$", capsys.readouterr().out, flags=re.M))
    assert json.loads(rows["objective"]) == "edm" and json.loads(rows["sigma_data"]) == 0.75
    assert json.loads(rows["steps"]) == RECIPES["digits"]["steps"]


# ---- training, checkpoints, convert -----------------------------------------------------------------------------

def _held_out_loss(B, trainer, x0, rng):
    """The objective's loss of the trainer's network (raw weights: the EMA lags a short run) on x0 at fixed uniforms
    and noise (the same for every model it is asked about, so that two models' values differ by the models alone)."""
    u, eps = RT.uniforms(rng, x0.shape[0]), rng.standard_normal(x0.shape).astype(np.float32)
    net_in, time_in, target, weight = RO.training_target(trainer.cfg, x0, eps, RO.level(trainer.cfg, u))
    out = B.to_numpy(trainer.denoiser(use_ema=False)(B.from_numpy(net_in), B.from_numpy(time_in)))
    return RO.loss(out, target, weight)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_a_short_run_brings_the_loss_down_and_its_checkpoint_records_the_objective(objective, backend, tmp_path):
    """The recipe (warmup shortened) for 300 steps: the held-out loss falls below the untrained network's (its zero
    last layer gives E[weight target^2]: 1 for EDM, whose target has unit variance, 2 for flow). EDM's loss has a
    floor close to that start (at high sigma the posterior keeps the data's variance: lambda ||D - x0||^2 stays
    near 1), so a short run moves it by a few percent; the paired held-out evaluation makes that drop exact."""
    kw, B = ({"device": "cpu"} if backend == "torch" else {}), Backend(backend)
    cfg = make_config("moons", objective=objective, steps=300, warmup=20,
                      **{**TINY, "model": dict(hidden=32, num_layers=2), "batch_size": 128, "log_every": 50})
    x0 = data.load("moons", n=4096, seed=7)
    before = _held_out_loss(B, B.train.Trainer(cfg, (2,), **kw), x0, np.random.default_rng(3))
    res = train(cfg, tmp_path, backend=backend, progress=False, **kw)
    ck = checkpoint.load(res["ckpt"])
    assert ck.config["objective"] == objective and ck.extra["process"] == objective
    trainer, _ = load_trainer(B, res["ckpt"], **kw)
    assert trainer.continuous and trainer.cfg == config_from_json(json.dumps(ck.config))
    after = _held_out_loss(B, trainer, x0, np.random.default_rng(3))
    assert abs(before - {"edm": 1.0, "flow": 2.0}[objective]) < 0.1
    assert after < 0.97 * before, (objective, before, after)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_a_resumed_edm_run_continues_bit_for_bit_and_refuses_other_settings(backend, tmp_path):
    kw = {"device": "cpu"} if backend == "torch" else {}
    cfg = make_config("moons", objective="edm", steps=10, **TINY)
    train(cfg, tmp_path / "whole", backend=backend, progress=False, **kw)
    train(dataclasses.replace(cfg, steps=5), tmp_path / "cut", backend=backend, progress=False, **kw)
    train(cfg, tmp_path / "cut", backend=backend, resume=True, progress=False, **kw)
    a, b = checkpoint.load(tmp_path / "whole" / "ckpt.npz"), checkpoint.load(tmp_path / "cut" / "ckpt.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    with pytest.raises(InputError, match="checkpoint has sigma_data=1.0 but --sigma-data 0.5"):
        train(dataclasses.replace(cfg, steps=12, sigma_data=0.5), tmp_path / "cut", backend=backend, resume=True,
              progress=False, **kw)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_class_conditional_training_works_for_the_continuous_objectives(objective, backend, tmp_path):
    kw = {"device": "cpu"} if backend == "torch" else {}
    cfg = make_config("moons", objective=objective, steps=3, class_cond=True, **TINY)
    res = train(cfg, tmp_path, backend=backend, progress=False, **kw)
    ck = checkpoint.load(res["ckpt"])
    assert ck.config["model"]["num_classes"] == 2 and "time_mlp.embed.weight" in ck.params or any(
        "embed" in k for k in ck.params)


def test_convert_refuses_a_continuous_checkpoint_naming_the_objective_and_why(tmp_path):
    from lab.convert import to_diffusers
    for objective, why in (("edm", "preconditioning"), ("flow", "velocity")):
        res = train(make_config("moons", objective=objective, steps=1, **TINY), tmp_path / objective,
                    progress=False)
        with pytest.raises(InputError, match=f"--objective {objective}.*{why}"):
            to_diffusers(res["ckpt"], tmp_path / f"{objective}_pipe")
        assert not (tmp_path / f"{objective}_pipe").exists()
