"""The objectives' table against what the code does: each row's facts are checked by the code that uses them."""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from common import choices, objective_table, rules, sampler_table
from common.errors import InputError


def test_names_and_unknown_name():
    assert objective_table.names() == choices.OBJECTIVES
    assert objective_table.names(continuous=True) == choices.CONTINUOUS_OBJECTIVES
    assert objective_table.names(continuous=False) == (objective_table.chain_objective(),)
    with pytest.raises(InputError, match="objective.*'ddpm'"):
        objective_table.row("ddpn")


def test_grids_are_the_choice_lists_and_accepted_by_sigma_grid():
    from reference import objectives as ref
    for r in objective_table.ROWS:
        assert set(r.grids) == set(choices.CONTINUOUS_GRIDS if r.continuous else choices.GRIDS)
        assert r.default_grid in r.grids
        assert sampler_table.DEFAULT_GRIDS[r.name] == r.default_grid
        if r.continuous:
            g = ref.sigma_grid(SimpleNamespace(objective=r.name), 4, r.default_grid)
            assert g.shape == (5,) and g[-1] == 0.0 and np.all(np.diff(g) < 0)


def test_settings_are_train_config_fields():
    from lab.config import TrainConfig
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for r in objective_table.ROWS:
        assert set(r.settings) <= fields, r.name
        for name, kind, _ in r.checks:
            assert name in r.settings and kind in objective_table.CHECK_KINDS


def test_process_is_what_a_run_records():
    for r in objective_table.ROWS:
        assert rules.process_of(SimpleNamespace(objective=r.name)) == r.process
        assert rules.is_continuous(SimpleNamespace(objective=r.name)) == r.continuous


@pytest.mark.parametrize("name,field,bad", [("edm", "sigma_data", 0.0), ("edm", "p_std", -1.0),
                                            ("edm", "p_mean", float("nan")), ("flow", "shift", 0.0),
                                            ("flow", "logit_std", 0.0), ("flow", "t_sampling", "logit")])
def test_row_checks_refuse_bad_values(name, field, bad):
    with pytest.raises(InputError, match=field.replace("_", "-")):
        rules.check_objective_values(SimpleNamespace(objective=name, **{field: bad}))
    rules.check_objective_values(SimpleNamespace(objective=name))
