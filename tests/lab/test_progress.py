"""Long work shows progress: plain lines with an estimate when stderr is not a terminal (a log, CI), and a
training run says how long it will take, pointing a long NumPy run at the port."""
import time
from types import SimpleNamespace

from lab import progress


def test_without_a_terminal_the_bar_prints_a_line_every_tenth_with_the_time_left(capsys):
    wrapped = progress.bar("sampling", total=50)(range(50))
    assert list(wrapped) == list(range(50))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10 and lines[0].startswith("sampling: 5/50 steps (") and "left" in lines[0]
    assert lines[-1].startswith("sampling: 50/50 steps") and "left" not in lines[-1]


def test_the_step_bar_reports_its_postfix(capsys):
    bar = progress.step_bar(total=20, initial=10, enabled=True)
    bar.set_postfix(loss="0.5")
    for _ in range(10):
        bar.update(1)
    err = capsys.readouterr().err
    assert "train: 20/20 steps" in err and "loss=0.5" in err
    assert progress.step_bar(20, 0, enabled=False) is None


def _fake_trainer(steps, backend="reference"):
    return SimpleNamespace(cfg=SimpleNamespace(steps=steps, data="cifar10"), backend=backend)


def test_a_long_reference_run_says_so_after_its_first_step_and_points_at_the_port(capsys):
    est = progress.RunEstimate(_fake_trainer(10 ** 7), start=0, show=False)
    time.sleep(0.01)
    est.tick(1)
    err = capsys.readouterr().err
    assert "estimated training time:" in err and "measured over the first step" in err
    assert "python -m torch_port train --data cifar10" in err


def test_a_short_run_is_estimated_only_when_progress_is_shown(capsys):
    for show in (False, True):
        est = progress.RunEstimate(_fake_trainer(10, backend="torch"), start=0, show=show)
        for done in range(1, 6):
            est.tick(done)
        err = capsys.readouterr().err
        assert ("estimated training time" in err) == show and "torch_port train" not in err
