"""`train --variance learned [--hybrid-lambda L] --loss vlb --importance-sampling` (issue 16): the flags land in the
run configuration (and so in the checkpoint), learned variances default to L_hybrid, the combinations that would
train nothing are refused naming the flag, and a configuration written before these fields means what it meant.
"""
import json

import pytest

from lab import cli
from lab.commands.train import config_from_args
from lab.config import TrainConfig, config_from_json, make_config
from reference.errors import InputError


def _args(tmp_path, *flags):
    parser = cli.build_parser()
    return parser.parse_args(["train", "--data", "moons", "--out", str(tmp_path / "run"), *flags])


def test_learned_variances_default_to_the_hybrid_loss_and_the_flags_reach_the_config(tmp_path):
    cfg = config_from_args(_args(tmp_path, "--variance", "learned"))
    assert (cfg.variance, cfg.loss, cfg.hybrid_lambda, cfg.importance_sampling) == ("learned", "hybrid", 0.001, False)
    cfg = config_from_args(_args(tmp_path, "--variance", "learned", "--hybrid-lambda", "0.01"))
    assert cfg.hybrid_lambda == 0.01
    cfg = config_from_args(_args(tmp_path, "--variance", "learned", "--loss", "vlb", "--importance-sampling"))
    assert (cfg.loss, cfg.importance_sampling) == ("vlb", True)
    assert json.loads(cfg.to_json())["variance"] == "learned"          # the checkpoint says which
    plain = config_from_args(_args(tmp_path))
    assert (plain.variance, plain.loss, plain.importance_sampling) == ("fixed", "simple", False)
    assert config_from_args(_args(tmp_path, "--loss", "vlb")).variance == "fixed"   # the bound with fixed variances


@pytest.mark.parametrize("flags,words", [
    (("--loss", "hybrid"), "--loss hybrid trains learned variances"),
    (("--variance", "learned", "--loss", "simple"), "--variance learned is trained by the bound"),
    (("--loss", "simple", "--importance-sampling"), "--importance-sampling applies to --loss vlb"),
    (("--variance", "learned", "--importance-sampling"), "--importance-sampling applies to --loss vlb"),
    (("--variance", "learned", "--hybrid-lambda", "-1"), "--hybrid-lambda must be"),
    (("--variance", "learned", "--hybrid-lambda", "nan"), "--hybrid-lambda must be"),
])
def test_combinations_that_train_nothing_are_refused_naming_the_flag(tmp_path, flags, words):
    with pytest.raises(InputError, match=words):
        config_from_args(_args(tmp_path, *flags))


def test_the_cli_refuses_them_with_exit_code_2(tmp_path, capsys):
    assert cli.main(["train", "--data", "moons", "--out", str(tmp_path / "r"), "--loss", "hybrid"]) == 2
    assert "--loss hybrid trains learned variances" in capsys.readouterr().err


def test_a_configuration_without_the_new_fields_means_fixed_variances_and_l_simple():
    d = json.loads(make_config("moons").to_json())
    for k in ("variance", "loss", "hybrid_lambda", "importance_sampling"):
        d.pop(k)
    cfg = config_from_json(json.dumps(d))
    assert (cfg.variance, cfg.loss, cfg.importance_sampling) == ("fixed", "simple", False)
    assert TrainConfig().validate().loss == "simple"
