"""What `sample` and `eval` run when flags are omitted, and the flags' words: one resolver for both commands
(lab.sampling.resolve), the sampling settings a converted checkpoint records as its defaults, the --sample-steps
rule at train as at sample, `train --show-recipe`, and the --help texts that state each default once.

Tiny runs (T = 100, a few training steps): what is checked is which sampler, steps, grid, variance and clipping
ran, not the quality; the expected values are written out here, not read from lab.sampling.
"""
import argparse
import json
import re

import numpy as np
import pytest

from lab import checkpoint, cli

TINY = ["--steps", "3", "--save-every", "0", "--sample-every", "0", "--quiet", "--no-final-samples", "--T", "100"]
LINE = re.compile(r"\((\S+), (\d+) of T=(\d+) steps, (.*?); NFE (\d+) per sample\)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_defaults")
    assert cli.main(["train", "--data", "moons", "--out", str(root / "moons"), *TINY, "--hidden", "8",
                     "--num-layers", "1"]) == 0
    assert cli.main(["train", "--data", "digits", "--out", str(root / "digits"), *TINY, "--base-channels", "8"]) == 0
    return {k: root / k / "ckpt.npz" for k in ("moons", "digits")}


def _sample(ckpt, out, capsys, *flags):
    capsys.readouterr()
    assert cli.main(["sample", "--ckpt", str(ckpt), "--n", "6", "--out", str(out), "--seed", "1", *flags]) == 0
    m = LINE.search(capsys.readouterr().out)
    assert m, "no summary line"
    return np.load(out), m


def _eval(ckpt, out, *flags):
    assert cli.main(["eval", "--ckpt", str(ckpt), "--n", "20", "--repeats", "1", "--bpd-n", "0", "--json", str(out),
                     *flags]) == 0
    return json.loads(out.read_text())


# (data, flags) -> (sampler, steps, grid or spacing, NFE) that both commands must run: dpm++2m by default, 20 steps
# for images and 50 for 2-D points; every sampler but ddpm (all T) gets the same count; 2-D data on the cosine
# schedule uses the leading grid, images the trailing one.
RESOLVED = [("digits", [], ("dpm++2m", 20, "trailing", 20)),
            ("moons", [], ("dpm++2m", 50, "leading", 50)),
            ("digits", ["--sampler", "ddim"], ("ddim", 20, "leading", 20)),
            ("moons", ["--sampler", "ddim"], ("ddim", 50, "leading", 50)),
            ("moons", ["--sampler", "heun"], ("heun", 50, "leading", 99)),
            ("digits", ["--sampler", "ddpm"], ("ddpm", 100, None, 100))]


@pytest.mark.parametrize("data,flags,want", RESOLVED)
def test_sample_and_eval_resolve_the_same_sampler_steps_and_grid(runs, tmp_path, capsys, data, flags, want):
    _, m = _sample(runs[data], tmp_path / "s.npy", capsys, *flags)
    res = _eval(runs[data], tmp_path / "e.json", *flags)
    sampled = (m.group(1), int(m.group(2)), m.group(4).split(" ")[0], int(m.group(5)))
    evaluated = (res["sampler"], res["sample_steps"], res["where"], res["nfe"])
    if want[2] is None:   # ddpm with all T steps: no spacing to choose ("every step")
        sampled, evaluated = sampled[:2] + sampled[3:], evaluated[:2] + evaluated[3:]
        want = want[:2] + want[3:]
    assert sampled == evaluated == want


def _recorded(ckpt, path, **sampling):
    """A copy of ``ckpt`` that records the sampling settings convert --from-diffusers writes."""
    ck = checkpoint.load(ckpt)
    checkpoint.save(path, ck.params, ema=ck.ema, config=ck.config, step=ck.step,
                    extra=dict(ck.extra, sampling=dict(sampling)))
    return path


def test_a_recorded_fixed_large_variance_is_ddpms_default_and_the_line_says_so(runs, tmp_path, capsys):
    ck = _recorded(runs["digits"], tmp_path / "large.npz", variance="fixed_large", clip_x0=True, spacing="leading")
    default, m = _sample(ck, tmp_path / "a.npy", capsys, "--sampler", "ddpm")
    large, _ = _sample(ck, tmp_path / "b.npy", capsys, "--sampler", "ddpm", "--variance", "fixed_large")
    small, m_small = _sample(ck, tmp_path / "c.npy", capsys, "--sampler", "ddpm", "--variance", "fixed_small")
    np.testing.assert_array_equal(default, large)
    assert not np.allclose(default, small)                    # the flag still overrides, and it matters
    assert "variance fixed_large (the checkpoint's recorded setting)" in m.group(4)
    assert "variance fixed_small," in m_small.group(4)       # given, so not marked as the recorded one
    assert "x0_hat clipped to [-1, 1] (the checkpoint's recorded setting)" in m.group(4)


def test_a_recorded_spacing_and_clipping_are_the_defaults_too(runs, tmp_path, capsys):
    ck = _recorded(runs["digits"], tmp_path / "r.npz", variance="fixed_small", clip_x0=False, spacing="trailing")
    chain, m = _sample(ck, tmp_path / "a.npy", capsys, "--sampler", "ddim", "--sample-steps", "5")
    explicit, _ = _sample(ck, tmp_path / "b.npy", capsys, "--sampler", "ddim", "--sample-steps", "5", "--spacing",
                          "trailing", "--no-clip-x0")
    np.testing.assert_array_equal(chain, explicit)
    assert m.group(4) == ("trailing spacing (the checkpoint's recorded setting), "
                          "x0_hat not clipped (the checkpoint's recorded setting)")
    unclipped, m = _sample(ck, tmp_path / "c.npy", capsys)                 # dpm++2m: the clipping only applies
    clipped, _ = _sample(ck, tmp_path / "d.npy", capsys, "--clip-x0")
    plain, _ = _sample(runs["digits"], tmp_path / "e.npy", capsys)          # no record: images are clipped
    np.testing.assert_array_equal(clipped, plain)
    assert not np.allclose(unclipped, clipped) and "x0_hat not clipped (the checkpoint's" in m.group(4)


def test_the_sample_steps_rule_and_message_are_the_same_at_train_and_sample(runs, tmp_path, capsys):
    assert cli.main(["train", "--data", "moons", "--out", str(tmp_path / "run"), *TINY, "--sample-steps", "5000"]) == 2
    at_train = capsys.readouterr().err
    assert not (tmp_path / "run").exists()                    # refused before anything was written
    assert cli.main(["sample", "--ckpt", str(runs["moons"]), "--out", str(tmp_path / "s.npy"),
                     "--sample-steps", "5000"]) == 2
    at_sample = capsys.readouterr().err
    core = "error: --sample-steps 5000 must lie in 1..T=100 ("
    assert at_train.startswith(core) and at_sample.startswith(core), (at_train, at_sample)
    # the recipe's own picture steps (100) on a run with a smaller --T are not the user's: all T, stored as such
    assert cli.main(["train", "--data", "moons", "--out", str(tmp_path / "small"), *TINY[:-1], "20", "--hidden", "8",
                     "--num-layers", "1"]) == 0
    assert checkpoint.load(tmp_path / "small" / "ckpt.npz").config["sample_steps"] == 20


def test_eta_out_of_range_is_refused_by_its_flag_before_any_warning(runs, tmp_path, capsys):
    code = cli.main(["sample", "--ckpt", str(runs["moons"]), "--out", str(tmp_path / "s.npy"), "--sampler", "ddim",
                     "--sample-steps", "2", "--eta", "-1"])   # 2 leading steps start late: a warning would come first
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --eta must be a number in [0, 1]"), err
    assert "warning" not in err and not (tmp_path / "s.npy").exists()


def test_invert_labels_its_two_phases_encoding_and_decoding(runs, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((5, 2)) * 0.5)
    capsys.readouterr()
    assert cli.main(["sample", "--ckpt", str(runs["moons"]), "--out", str(tmp_path / "z.npy"), "--invert",
                     str(tmp_path / "x.npy"), "--sample-steps", "10"]) == 0
    err = capsys.readouterr().err   # not a terminal: the bars print lines "LABEL: k/n steps ..."
    labels = [ln.split(":")[0] for ln in err.splitlines() if re.match(r"^\w+: \d+/\d+ steps", ln)]
    assert labels and labels == sorted(labels, key=lambda s: s != "encoding"), labels   # encoding, then decoding
    assert set(labels) == {"encoding", "decoding"}, labels


def test_encode_decode_gives_each_phase_its_own_progress(runs):
    from lab.backend import Backend
    from lab.inversion import encode_decode
    from lab.sampling import load_trainer
    B = Backend("reference")
    trainer, _ = load_trainer(B, runs["moons"])
    calls = []
    tag = lambda name: (lambda it: calls.append(name) or it)   # noqa: E731
    encode_decode(B, trainer, np.zeros((3, 2)), 4, progress=tag("encode"), decode_progress=tag("decode"))
    assert calls == ["encode", "decode"]


# ---- train --show-recipe ----------------------------------------------------------------------------------

NAMES = ["moons", "swissroll", "gaussians8", "checkerboard", "digits", "mnist", "fashion-mnist", "cifar10",
         "folder:/no/such/folder"]
# the recipes' training steps and peak learning rates (lab/config.py's RECIPES, written out)
STEPS_LR = {"moons": (12000, 0.002), "digits": (2800, 0.002), "cifar10": (20000, 0.0002),
            "folder:/no/such/folder": (20000, 0.0002)}


def test_the_names_above_are_every_dataset_lab_data_accepts():
    from lab import data
    assert {n for n in NAMES if not n.startswith("folder:")} | {"folder:PATH"} == set(data.DATASETS)


@pytest.mark.parametrize("name", NAMES)
def test_show_recipe_prints_every_field_of_the_recipe_without_reading_data(name, capsys, monkeypatch):
    import dataclasses

    from lab import data
    from lab.config import TrainConfig

    def no(*a, **kw):
        raise AssertionError("--show-recipe read or downloaded data")
    for mod, fn in ((data, "load"), (data.images, "read_levels"), (data.downloads, "download"),
                    (data.images, "folder_files")):
        monkeypatch.setattr(mod, fn, no)
    assert cli.main(["train", "--data", name, "--show-recipe"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^  (\S+)\s+(.+)$", out, flags=re.M))
    for f in dataclasses.fields(TrainConfig):
        assert f.name in rows or f.name == "model", f.name
    assert any(k.startswith("model.") for k in rows) and json.loads(rows["data"]) == name
    if name in STEPS_LR:
        assert (json.loads(rows["steps"]), json.loads(rows["lr"])) == STEPS_LR[name]


def test_show_recipe_applies_the_flags_given_and_needs_no_out(capsys, tmp_path):
    assert cli.main(["train", "--data", "digits", "--show-recipe", "--steps", "7", "--base-channels", "16"]) == 0
    rows = dict(re.findall(r"^  (\S+)\s+(.+)$", capsys.readouterr().out, flags=re.M))
    assert rows["steps"] == "7" and rows["model.base_channels"] == "16"
    assert cli.main(["train", "--data", "digits"]) == 2
    assert "--out DIR" in capsys.readouterr().err


# ---- --help: each default stated, once, and true ---------------------------------------------------------

def _sub(name):
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _help_of(parser, flag):
    """The formatted help of one flag, on one line."""
    text = parser.format_help()
    start = text.index("\n  " + flag)
    nxt = re.search(r"\n  --", text[start + 3:])
    one = " ".join(text[start: start + 3 + (nxt.start() if nxt else len(text))].split())
    return re.sub(r"(\w)- (\w)", r"\1-\2", one)   # argparse wraps at hyphens: "--show- recipe"


def test_train_help_states_where_every_recipe_default_comes_from_and_names_show_recipe():
    p = _sub("train")
    for flag in ("--steps", "--batch-size", "--lr", "--warmup", "--ema-decay", "--T"):
        assert "default: the dataset's recipe; --show-recipe lists it" in _help_of(p, flag), flag
    assert "--show-recipe" in p.description


def test_eval_help_states_each_default_once():
    p = _sub("eval")
    nll = _help_of(p, "--nll")
    assert "(default: bound)" in nll and not nll.endswith("(default: bound)")   # not read as "both (default)"
    assert _help_of(p, "--sampler").count("default") == 1
    assert "seed of the sampling noise" in _help_of(p, "--seed")
    assert "--data-dir DIR" in p.format_help()


def test_sample_help_says_heun_starts_on_leading_and_points_are_in_data_units():
    p = _sub("sample")
    assert "for heun on such a schedule whatever the model" in _help_of(p, "--grid")
    out = _help_of(p, "--out")
    assert "(N, 2) points in the data's own units" in out and "float32 samples in [-1, 1]" not in out
