"""``train --classifier``: the noise-conditional classifier that classifier guidance reads (derivations/
classifier_guidance.md H7), trained through lab/runner.py as a denoiser is, and loaded back by sample and eval.

A classifier run is a TrainConfig with ``classifier=True``: the chain's schedule, T and zero-terminal-SNR (those
of the model it will guide: the recipe's by default), the optimiser, EMA and clipping of a denoiser's run, and
``model`` the classifier's constructor arguments (reference/classifier.py) with ``num_classes`` the dataset's.
Its checkpoint says what it is: ``extra["kind"] = "classifier"``, ``classes``, ``item_shape`` and ``schedule``
({name, T, zero_terminal_snr}), which sample and eval check against the model they guide. Not math: written once.
"""
from __future__ import annotations

import dataclasses
import importlib
import json

import numpy as np

from reference.errors import InputError

from . import checkpoint, data
from .config import config_from_json, fit_unet, recipe_for

KIND = "classifier"
# Noise levels (0-based steps, as fractions of T) of the held-out accuracy printed after training: nearly clean,
# the middle of the chain and nearly pure noise, where guidance's gradient matters most and accuracy is lowest.
ACCURACY_LEVELS = (0.0, 0.25, 0.5, 0.75, 0.9)
HELD_OUT = {"points": 2000, "images": 500}
# The classifier recipes: the denoiser recipe's schedule and T (so the pair matches by default) with a smaller
# network and a shorter run; images use the UNet's encoder half with average pooling.
CLASSIFIER_RECIPES = {
    "2d": dict(steps=3000, batch_size=256, lr=2e-3, warmup=100, lr_schedule="cosine", ema_decay=0.995,
               save_every=1000, model=dict(hidden=128, num_layers=3, time_dim=32)),
    "images": dict(steps=1500, batch_size=64, lr=1e-3, warmup=100, lr_schedule="constant", ema_decay=0.995,
                   save_every=500, model=dict(base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                                              attention=(False, True), groups=8, pool="avg")),
}
# Denoiser-only settings a classifier run refuses by flag name (each would be ignored).
NOT_FOR_CLASSIFIER = ("objective", "class_cond", "p_uncond", "variance", "loss", "hybrid_lambda", "importance_sampling",
                      "prediction", "weighting", "reflow", "teacher", "reflow_pairs", "teacher_steps", "sigma_data",
                      "p_mean", "p_std", "t_sampling", "logit_mean", "logit_std", "shift", "sample_steps",
                      "sample_every", "final_samples")


def num_classes(name, image_size=None):
    """The dataset's class count; a set without labels refused by name."""
    k = data.info(name, image_size=image_size).num_classes
    if k < 2:
        raise InputError(f"train --classifier needs a dataset with labels, and {name!r} has none (labelled: moons, "
                         "gaussians8, checkerboard, digits, mnist, fashion-mnist, cifar10, folder:PATH with one "
                         "sub-folder per class)")
    return k


def recipe(name, given, model):
    """The classifier run's configuration dict: the classifier recipe of ``name`` with ``given`` and ``model`` on
    top (not yet validated). ``given``: TrainConfig fields the user set; a denoiser-only one is refused."""
    bad = [k for k in NOT_FOR_CLASSIFIER if k in given]
    if bad:
        raise InputError(f"--{bad[0].replace('_', '-')} applies to a denoiser's run; train --classifier trains a "
                         "classifier of x_t (cross-entropy on the dataset's labels) and draws no samples")
    base = recipe_for(name)
    images = data.is_image(name)
    own = CLASSIFIER_RECIPES["images" if images else "2d"]
    allowed = set(own["model"]) | {"pool", "time_dim"}
    unknown = [k for k in model if k not in allowed]
    if unknown:
        kind = "the image classifier (the UNet's encoder half)" if images else "the 2-D classifier (an MLP)"
        raise InputError(f"--{unknown[0].replace('_', '-')} does not apply to {kind} used for {name!r}")
    d = {"T": base["T"], "schedule": base["schedule"], **{k: v for k, v in own.items() if k != "model"}}
    d.update(given)
    m = {**own["model"], **model}
    if "channel_mults" in m:
        m = fit_unet(m, given=set(model))
    d.update(data=name, classifier=True, final_samples=False, sample_every=0, model=m)
    return d


def with_num_classes(cfg):
    """cfg with model num_classes = the dataset's (refused without labels, or for a num_classes it lacks)."""
    k = num_classes(cfg.data, cfg.image_size)
    if cfg.model.get("num_classes", k) != k:
        raise InputError(f"model num_classes={cfg.model['num_classes']} but {cfg.data!r} has {k} classes")
    return dataclasses.replace(cfg, model={**cfg.model, "num_classes": k})


def side(B, module):
    """The backend's classifier module ("classifier", "classifier_guidance", "classifier_train")."""
    return importlib.import_module(f"{B.package}.{module}")


def make_trainer(B, cfg, item_shape, **options):
    """The backend's ClassifierTrainer, with the checkpoint's record of what it is."""
    kw = options if B.name == "torch" else {}
    trainer = side(B, "classifier_train").ClassifierTrainer(cfg, item_shape, **kw)
    trainer.checkpoint_extra = {"kind": KIND, "classes": trainer.num_classes, "item_shape": list(item_shape),
                                "schedule": schedule_record(cfg)}
    trainer.loss_label = "cross-entropy of p(y | x_t, t) (H7)"
    return trainer


def schedule_record(cfg):
    return {"name": cfg.schedule, "T": cfg.T, "zero_terminal_snr": bool(cfg.zero_terminal_snr)}


def is_classifier(ck):
    return (ck.extra or {}).get("kind") == KIND


def load(B, path, device="auto", use_ema=True):
    """The classifier of checkpoint ``path`` -> (trainer, classifier model, ck); a model's checkpoint is refused."""
    ck = checkpoint.load(path)
    if not is_classifier(ck):
        raise InputError(f"--classifier {path} is not a classifier checkpoint (it has no extra kind 'classifier': "
                         "a denoiser's, which goes to --ckpt); train one with train --classifier")
    cfg = config_from_json(json.dumps(ck.config))
    trainer = make_trainer(B, cfg, tuple(ck.extra["item_shape"]), **({"device": device} if B.name == "torch" else {}))
    sd = trainer.state_dict()
    sd["params"], sd["ema"] = ck.params, ((ck.ema or ck.params) if use_ema else ck.params)
    try:
        trainer.load_state_dict(sd)
    except (KeyError, ValueError, RuntimeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"classifier checkpoint {path} does not fit the network its configuration describes: "
                         f"{e}") from None
    return trainer, trainer.classifier(use_ema=True), ck


def train(cfg, out_dir, backend="reference", resume=False, progress=True, overwrite=False, **trainer_options):
    """runner.train for a classifier run: the labelled data, the backend's ClassifierTrainer, runner's loop."""
    from . import runner
    from .backend import Backend
    from .threads import is_small, one_thread
    cfg = with_num_classes(cfg)   # refused by name for a set without labels
    x, y = data.load(cfg.data, seed=cfg.seed, data_dir=cfg.data_dir, image_size=cfg.image_size, return_labels=True)
    if cfg.n_data:
        x, y = x[: cfg.n_data], y[: cfg.n_data]
    runner._check_fits_the_unet(cfg, x.shape[1:])
    trainer = make_trainer(Backend(backend), cfg, x.shape[1:], **trainer_options)
    with one_thread(is_small(x.shape[1:]) and str(getattr(trainer, "device", "cpu")).startswith("cpu")):
        return runner._run(trainer, x, out_dir, resume=resume, progress=progress, overwrite=overwrite, y=y)


def held_out_accuracy(B, trainer, seed=0, levels=ACCURACY_LEVELS):
    """[(t, accuracy)] of the EMA classifier on the dataset's test split noised to x_t at each level (fractions
    of T), the noise from default_rng([seed, 7]): the number printed after training."""
    cfg = trainer.cfg
    images = len(trainer.item_shape) == 3
    n = HELD_OUT["images" if images else "points"]
    kw = {} if not images else {"data_dir": cfg.data_dir, "image_size": cfg.image_size}
    x0, y = data.load(cfg.data, split="test", return_labels=True, seed=seed, **kw)
    x0, y = x0[:n], y[:n]
    clf, rng = trainer.classifier(), np.random.default_rng([seed, 7])
    np_dtype = np.float64 if cfg.dtype == "float64" else np.float32
    rows = []
    for f in levels:
        t = np.full(len(x0), min(cfg.T - 1, int(round(f * (cfg.T - 1)))), dtype=np.int64)
        eps = rng.standard_normal(x0.shape).astype(np_dtype)
        xt = B.diffusion.q_sample(trainer.sched, _to(B, trainer, x0.astype(np_dtype)), _to(B, trainer, t),
                                  _to(B, trainer, eps))
        logits = _logits(B, clf, xt, _to(B, trainer, t))
        rows.append((int(t[0]), float(np.mean(np.asarray(B.to_numpy(logits)).argmax(1) == y))))
    return rows


def _to(B, trainer, a):
    x = B.from_numpy(a)
    return x.to(trainer.device) if B.name == "torch" else x


def _logits(B, clf, xt, t):
    if B.name == "torch":
        import torch
        with torch.no_grad():
            return clf(xt, t)
    return clf.forward(xt, t)[0]


def report_accuracy(rows, k):
    """The held-out accuracy table's lines."""
    cells = ", ".join(f"t={t}: {100 * a:.1f}%" for t, a in rows)
    return f"held-out accuracy of the EMA classifier on x_t of the test split ({k} classes, chance " \
           f"{100 / k:.3g}%): {cells}"
