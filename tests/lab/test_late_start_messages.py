"""The late-start messages (issue 19 §2): true, in the CLI's words, with a fix that works for the checkpoint.

The old warning said "Use spacing='trailing'", which on the cosine schedule of the moons recipe puts 97% of
DDIM-10 samples beyond |x| > 3 (lab/late_start.py has the measurements). Each message is checked for the
flag it names, the fix it offers and the fix it must not offer, on the schedules where each claim holds.
"""
import warnings

import numpy as np
import pytest

from lab import cli
from lab.late_start import (amplified_start_message, default_grid, late_start_message, leading_start,
                            steps_that_start_in_time)
from lab.sampling import Plan
from reference import samplers as RSa
from reference.schedules import PriorMismatchWarning, Schedule, make_betas, warn_late_start

COSINE = Schedule(make_betas("cosine", 1000)).alpha_bar
LINEAR = Schedule(make_betas("linear", 1000)).alpha_bar


def _plan(sampler, n, where, T=1000):
    start = int(RSa.timesteps(T, n, where)[-1]) if where != "karras" else T - 1
    return Plan(sampler, n, T, where, n, start)


def test_the_start_of_leading_spacing_is_the_kept_step_the_sampler_starts_from():
    for n in (5, 10, 13, 15, 20, 600):
        assert leading_start(1000, n) == int(RSa.timesteps(1000, n, "leading")[-1])


def test_ddim_10_on_the_cosine_2d_recipe_names_more_steps_and_refuses_trailing():
    msg = late_start_message(_plan("ddim", 10, "leading"), COSINE, images=False)
    assert msg.startswith("--sample-steps 10 with leading spacing starts sampling at t=900, not T-1=999")
    assert "Fix: --sample-steps 15 (the start is then t=924)" in msg
    assert "Not --spacing trailing or linspace" in msg and "2e+04" in msg
    assert "spacing='" not in msg and "Use spacing" not in msg          # the CLI's words, not Python's


def test_the_suggested_step_count_really_starts_in_time_and_is_the_first_that_does():
    n = steps_that_start_in_time(COSINE, 1000, 10)
    assert late_start_message(_plan("ddim", n, "leading"), COSINE, images=False) is None
    assert all(late_start_message(_plan("ddim", k, "leading"), COSINE, images=False) for k in range(10, n))
    # more steps are not always later: 600 of 1000 leading steps start at t = 599
    assert late_start_message(_plan("ddim", 600, "leading"), COSINE, images=False) is not None


def test_images_are_offered_a_start_at_t_minus_1_because_x0_is_clipped():
    msg = late_start_message(_plan("ddim", 10, "leading"), COSINE, images=True)
    assert "or --spacing trailing or linspace, which start at T-1" in msg and "clipped to [-1, 1]" in msg
    assert "Not --spacing" not in msg


def test_a_linear_schedule_that_starts_late_is_offered_trailing_with_its_small_amplification():
    msg = late_start_message(_plan("ddim", 2, "leading"), LINEAR, images=False)   # starts at t = 500
    assert "amplifies the network's eps error 157-fold" in msg and "or --spacing trailing" in msg


def test_the_ode_samplers_are_told_about_their_grid_flag():
    msg = late_start_message(_plan("dpm++2m", 10, "leading"), COSINE, images=False)
    assert msg.startswith("--sample-steps 10 with the leading grid")
    assert "Not --grid trailing or linspace or karras" in msg


@pytest.mark.parametrize("sampler, where", [("ddim", "trailing"), ("ddim", "linspace"), ("dpm++2m", "karras")])
def test_a_shortened_start_at_t_minus_1_on_the_clipped_cosine_step_is_warned_about_for_2d_data(sampler, where):
    msg = amplified_start_message(_plan(sampler, 10, where), COSINE, images=False)
    flag = "--grid" if sampler == "dpm++2m" else "--spacing"
    assert msg.startswith(f"{flag} {where} starts at T-1=999") and f"Use {flag} leading --sample-steps 15" in msg


@pytest.mark.parametrize("plan, abar, images", [(_plan("ddim", 10, "trailing"), COSINE, True),      # clipped
                                                (_plan("ddim", 10, "trailing"), LINEAR, False),     # 157-fold
                                                (_plan("ddpm", 1000, "leading"), COSINE, False),    # all steps
                                                (_plan("ddim", 20, "leading"), COSINE, False)])     # t = 950
def test_no_warning_where_the_start_is_fine(plan, abar, images):
    assert amplified_start_message(plan, abar, images) is None
    assert late_start_message(plan, abar, images) is None


def test_heun_starts_on_the_leading_grid_below_the_clipped_cosine_step_whatever_the_model():
    for images in (False, True):
        for prediction in ("eps", "v"):
            assert default_grid(COSINE, images, prediction, sampler="heun") == "leading"
    assert default_grid(LINEAR, images=True, sampler="heun") == "trailing"
    assert default_grid(COSINE, images=True, sampler="dpm++2m") == "trailing"


def test_the_default_grid_avoids_the_clipped_cosine_step_only_for_unclipped_models():
    assert default_grid(COSINE, images=False) == "leading"
    assert default_grid(COSINE, images=True) == "trailing" and default_grid(LINEAR, images=False) == "trailing"


def test_the_math_sides_warning_speaks_no_python_and_no_false_advice():
    with pytest.warns(PriorMismatchWarning) as rec:
        warn_late_start(float(COSINE[900]), 900, 1000)
    msg = str(rec[0].message)
    assert msg.startswith("sampling starts at t=900 (not T-1=999)")
    assert "spacing='" not in msg and "harmful where that is tiny" in msg and "unless x0_hat is clipped" in msg


def test_the_cli_prints_its_own_warning_once_and_silences_the_python_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--data", "moons", "--out", str(out), "--steps", "2", "--save-every", "0",
                     "--sample-every", "0", "--no-final-samples", "--quiet", "--batch-size", "8", "--T", "20",
                     "--hidden", "8", "--num-layers", "1"]) == 0
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["sample", "--ckpt", str(out / "ckpt.npz"), "--n", "10", "--out", str(tmp_path / "s.npy"),
                         "--sampler", "ddim", "--sample-steps", "5"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("warning: --sample-steps 5 with leading spacing starts sampling at t=16, not T-1=19")
    assert "sampling starts at t=16 (not" not in err
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy").shape, (10, 2))


def test_x0_and_v_models_are_offered_a_start_at_t_minus_1_since_their_x0_hat_does_not_divide_by_sqrt_abar():
    for pred in ("x0", "v"):
        msg = late_start_message(_plan("ddim", 10, "leading"), COSINE, images=False, prediction=pred)
        assert f"or --spacing trailing or linspace, which start at T-1: this {pred}-model's x0_hat" in msg
        assert amplified_start_message(_plan("ddim", 10, "trailing"), COSINE, False, pred) is None
        assert default_grid(COSINE, images=False, prediction=pred) == "trailing"


def test_zero_terminal_snr_keeps_the_ode_grids_off_t_minus_1():
    from reference.schedules import rescale_zero_terminal_snr
    zsnr = Schedule(rescale_zero_terminal_snr(make_betas("linear", 1000))).alpha_bar
    assert zsnr[-1] == 0 and default_grid(zsnr, images=True, prediction="v") == "leading"
