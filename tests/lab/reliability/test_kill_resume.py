"""No run loses work: a real `train` process killed (SIGKILL) or stopped (Ctrl-C, SIGTERM) mid-run and
resumed ends bit for bit where an uninterrupted run with the same flags ends (O1, O2: the optimiser
and EMA state travel in the checkpoint), and its log has every step once.

The independent route is the uninterrupted run itself, started in parallel with the same flags.
"""
import random

import pytest

from lab import checkpoint, cli
from reliability_runs import (SIGINT, SIGKILL, SIGTERM, assert_same_checkpoint, finish, read_log,
                                          run, signal_after_checkpoint, start, temp_files, train_argv)

STEPS, SAVE_EVERY = 300, 20


def _log_rows(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_log(run_dir)]


def _assert_log_has_every_step_once(run_dir, steps=STEPS, log_every=10):
    logged = [r["step"] for r in read_log(run_dir)]
    assert logged == list(range(log_every, steps + 1, log_every)), "log.jsonl steps duplicated or missing"


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_O1_O2_sigkill_then_resume_equals_the_uninterrupted_run_bit_for_bit(tmp_path, backend):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    baseline = start(train_argv(backend, whole, STEPS, SAVE_EVERY))
    victim = start(train_argv(backend, broken, STEPS, SAVE_EVERY))
    seen = signal_after_checkpoint(victim, broken / "ckpt.npz", SAVE_EVERY, SIGKILL)
    rc, _, _ = finish(victim)
    assert rc == -SIGKILL, "the process must really have been killed"
    killed_at = checkpoint.load(broken / "ckpt.npz").step          # the checkpoint survives the kill
    assert SAVE_EVERY < seen <= killed_at < STEPS and killed_at % SAVE_EVERY == 0

    rc, out, err = run(train_argv(backend, broken, STEPS, SAVE_EVERY, "--resume"))
    assert rc == 0, err
    assert finish(baseline)[0] == 0
    assert_same_checkpoint(broken / "ckpt.npz", whole / "ckpt.npz")
    _assert_log_has_every_step_once(broken)
    assert _log_rows(broken) == _log_rows(whole)     # windows align with the checkpoints: equal losses too
    assert temp_files(broken) == []


@pytest.mark.parametrize("backend, sig", [("reference", SIGINT), ("reference", SIGTERM),
                                          pytest.param("torch", SIGINT, marks=pytest.mark.slow)])
def test_O1_O2_ctrl_c_or_sigterm_saves_at_a_step_boundary_and_resume_is_exact(tmp_path, backend, sig):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    baseline = start(train_argv(backend, whole, STEPS, SAVE_EVERY))
    proc = start(train_argv(backend, stopped, STEPS, SAVE_EVERY))
    signal_after_checkpoint(proc, stopped / "ckpt.npz", SAVE_EVERY, sig)
    rc, out, err = finish(proc)
    assert rc == 128 + sig, err                                     # 130 for Ctrl-C, 143 for SIGTERM
    assert "Traceback" not in err and "interrupted" in err and "--resume" in err
    stop_step = checkpoint.load(stopped / "ckpt.npz").step
    assert f"after step {stop_step}" in err                         # the work up to that step is saved
    assert SAVE_EVERY < stop_step < STEPS

    rc, out, err = run(train_argv(backend, stopped, STEPS, SAVE_EVERY, "--resume"))
    assert rc == 0, err
    assert finish(baseline)[0] == 0
    assert_same_checkpoint(stopped / "ckpt.npz", whole / "ckpt.npz")
    _assert_log_has_every_step_once(stopped)
    # the one log line whose window straddles the stop averages fewer steps; every other line is equal
    rows, want = _log_rows(stopped), _log_rows(whole)
    straddle = (stop_step // 10 + 1) * 10
    assert [r for r in rows if r[0] != straddle] == [r for r in want if r[0] != straddle]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_O1_O2_repeated_kills_at_random_moments_with_a_checkpoint_every_step(tmp_path, backend):
    """A checkpoint every step makes most kills land inside a checkpoint write: atomicity under fire."""
    steps, whole, broken = 200, tmp_path / "whole", tmp_path / "broken"
    baseline = start(train_argv(backend, whole, steps, 1))
    rnd, resume = random.Random(20200619), []
    for _ in range(4):
        proc = start(train_argv(backend, broken, steps, 1, *resume))
        first = checkpoint.load(broken / "ckpt.npz").step if resume else 0
        signal_after_checkpoint(proc, broken / "ckpt.npz", first + rnd.randint(1, 20), SIGKILL)
        assert finish(proc)[0] == -SIGKILL
        checkpoint.load(broken / "ckpt.npz")                        # always a whole, readable checkpoint
        resume = ["--resume"]
    rc, _, err = run(train_argv(backend, broken, steps, 1, "--resume"))
    assert rc == 0, err
    assert finish(baseline)[0] == 0
    assert_same_checkpoint(broken / "ckpt.npz", whole / "ckpt.npz")
    _assert_log_has_every_step_once(broken, steps)
    assert temp_files(broken) == []


def _train(out, steps, *extra):
    return cli.main(["train", "--data", "moons", "--out", str(out), "--steps", str(steps), "--save-every", "20",
                     "--log-every", "10", "--sample-every", "0", "--sample-steps", "2", "--quiet", "--hidden", "16",
                     "--num-layers", "1", "--batch-size", "16", *extra])


def test_resume_drops_a_log_line_cut_short_by_a_kill(tmp_path):
    out = tmp_path / "run"
    assert _train(out, 40) == 0
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 50, "loss": 0.4\n{"step": 60, "lo')       # a kill in the middle of a write
    (out / ".ckpt.npz.abc123.tmp").write_bytes(b"PK\x03\x04half")    # and one in the middle of a save
    assert _train(out, 60, "--resume") == 0
    _assert_log_has_every_step_once(out, 60)
    assert temp_files(out) == []


def test_a_fresh_start_after_a_run_killed_before_its_first_checkpoint_keeps_no_stale_log(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 10, "loss": 9.0, "grad_norm": 1.0}\n{"step": 20, "lo')
    assert _train(out, 30) == 0
    _assert_log_has_every_step_once(out, 30)
    assert read_log(out)[0]["loss"] != 9.0


def test_resume_of_a_finished_run_says_there_is_nothing_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, 20) == 0
    before = (out / "ckpt.npz").read_bytes()
    capsys.readouterr()
    assert _train(out, 20, "--resume") == 0
    said = capsys.readouterr().out
    assert "nothing to train" in said and "step 20" in said
    assert (out / "ckpt.npz").read_bytes() == before
