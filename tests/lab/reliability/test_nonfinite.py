"""A non-finite loss or gradient stops training with a message naming the step and a non-zero exit
code, and the last good checkpoint stays byte for byte as it was. NaN data is refused before step 1.

Failures are injected the way they happen: a learning rate that blows the weights up (O1 with a huge
step), a NaN gradient from the backward pass, NaN values in the data. On the torch side the CPU
trainer checks every step; on CUDA it does not (a check is a host sync) and the shared runner reads
the loss at log time and before every checkpoint: simulated here by switching the per-step check off.
"""
import re

import numpy as np
import pytest

from lab import runner
from lab.config import make_config
from reference.errors import InputError
from reliability_runs import run, train_argv

torch = pytest.importorskip("torch")
from torch_port import train as torch_train  # noqa: E402

GOOD = dict(steps=20, save_every=10, log_every=10, sample_every=0, sample_steps=2, batch_size=16,
            model=dict(hidden=16, num_layers=1))
BLOW_UP = dict(lr=1e30, warmup=0)        # one AdamW step moves every weight by ~1e30: the next forward overflows


def _stopped_at(message):
    m = re.search(r"step (\d+)", message)
    assert m, f"the message names no step: {message}"
    return int(m.group(1))


def test_O1_cli_huge_lr_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    rc, _, err = run(train_argv("reference", out, 20, 10))
    assert rc == 0, err
    good = (out / "ckpt.npz").read_bytes()
    rc, so, err = run(train_argv("reference", out, 60, 10, "--resume", "--lr", "1e30", "--warmup", "0"))
    assert rc == 1 and "Traceback" not in err
    assert "error: training stopped at step" in err and "non-finite" in err and "intact" in err
    assert 20 < _stopped_at(err.split("error:")[1]) <= 22
    assert (out / "ckpt.npz").read_bytes() == good


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_O1_a_fresh_run_that_diverges_says_no_checkpoint_exists_and_suggests_a_lower_lr(tmp_path, backend):
    """Before the first save there is no checkpoint to point at; the one line names the flag to change, and
    no NumPy overflow warnings come before it."""
    out = tmp_path / "run"
    rc, _, err = run(train_argv(backend, out, 20, 10, "--lr", "1e6", "--warmup", "0"))
    assert rc == 1 and "Traceback" not in err and "overflow" not in err and "invalid value" not in err
    assert "No checkpoint of this run was written" in err and "intact" not in err
    assert "try a lower --lr (this run: 1e+06, the recipe's: 0.002)" in err
    assert not (out / "ckpt.npz").exists()


def _phase_one(tmp_path, make_trainer):
    cfg = make_config("moons", **GOOD)
    x = np.random.default_rng(0).standard_normal((256, 2)).astype(np.float32)
    out = tmp_path / "run"
    runner.run(make_trainer(cfg), x, out, progress=False)
    return x, out, (out / "ckpt.npz").read_bytes()


def _torch_trainer(cfg, check_finite=True):
    tr = torch_train.Trainer(cfg, (2,), device="cpu")
    tr.check_finite = check_finite
    return tr


def test_O1_torch_eager_and_lazy_checks_name_the_same_step_and_never_save_a_bad_state(tmp_path, monkeypatch):
    x, out, good = _phase_one(tmp_path, _torch_trainer)
    # save_every 15 is not a multiple of log_every 50: the lazy path must check before saving
    cfg = make_config("moons", **{**GOOD, "steps": 100, "save_every": 15, "log_every": 50, **BLOW_UP})
    with pytest.raises(runner.TrainingDiverged) as eager:
        runner.run(_torch_trainer(cfg, check_finite=True), x, out, resume=True, progress=False)
    assert (out / "ckpt.npz").read_bytes() == good
    # as on CUDA: no per-step check and no value checks inside the math (each would be a host sync)
    import torch_port.diffusion

    monkeypatch.setattr(torch_port.diffusion, "_check_values", lambda sched, x: False)
    with pytest.raises(runner.TrainingDiverged) as lazy:
        runner.run(_torch_trainer(cfg, check_finite=False), x, out, resume=True, progress=False)
    assert (out / "ckpt.npz").read_bytes() == good                 # the step-30 save was refused
    step = _stopped_at(str(eager.value))
    assert 20 < step <= 22 and _stopped_at(str(lazy.value)) == step
    assert "non-finite loss or gradient at step" in str(lazy.value)   # found by the runner, not the step
    assert "last good checkpoint (step 20)" in str(lazy.value)
    assert max(r["step"] for r in _log(out)) == 20                 # no line of the failed stretch


def _log(out):
    import json
    return [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]


def test_O3_reference_nan_gradient_is_refused_before_the_update(tmp_path):
    from reference import train as ref_train

    x, out, good = _phase_one(tmp_path, lambda cfg: ref_train.Trainer(cfg, (2,)))
    tr = ref_train.Trainer(make_config("moons", **{**GOOD, "steps": 40}), (2,))
    real_backward, calls = tr.model.backward, []

    def backward_with_a_nan_at_call_3(dout, cache, **kwargs):
        dx, grads = real_backward(dout, cache, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            grads["layers.0.weight"][0, 0] = np.nan                # e.g. an overflow deep in the network
        return dx, grads

    tr.model.backward = backward_with_a_nan_at_call_3
    with pytest.raises(runner.TrainingDiverged, match=r"step 23: non-finite gradient norm"):
        runner.run(tr, x, out, resume=True, progress=False)
    assert (out / "ckpt.npz").read_bytes() == good
    assert all(np.isfinite(p).all() for p in tr.model.params.values())   # the bad update was not applied


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_nan_data_is_refused_before_step_1_naming_the_item(tmp_path, backend):
    from reference import train as ref_train

    cfg = make_config("moons", **GOOD)
    tr = ref_train.Trainer(cfg, (2,)) if backend == "reference" else _torch_trainer(cfg)
    x = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    x[17, 1] = np.nan
    x[40, 0] = np.inf
    with pytest.raises(InputError, match=r"non-finite.*2 item\(s\), first item 17"):
        runner.run(tr, x, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "ckpt.npz").exists() and not (tmp_path / "run" / "log.jsonl").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_O1_cuda_path_refuses_on_the_device_and_the_runner_stops_before_saving(tmp_path):
    """On CUDA there is no per-step host check: fused AdamW skips the non-finite update (found_inf) and the
    runner reads the pending losses before the next checkpoint, naming the first bad step."""
    cuda = lambda cfg: torch_train.Trainer(cfg, (2,), device="cuda", compile=False)  # noqa: E731
    x, out, good = _phase_one(tmp_path, cuda)
    cfg = make_config("moons", **{**GOOD, "steps": 100, "save_every": 15, "log_every": 50, **BLOW_UP})
    tr = cuda(cfg)
    assert tr.check_finite is False
    with pytest.raises(runner.TrainingDiverged, match="non-finite loss or gradient at step") as e:
        runner.run(tr, x, out, resume=True, progress=False)
    assert 20 < _stopped_at(str(e.value)) <= 22
    assert (out / "ckpt.npz").read_bytes() == good
