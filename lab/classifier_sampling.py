"""Sampling with classifier guidance (``sample/eval --classifier CKPT --class K|all --classifier-scale S``):
derivations/classifier_guidance.md H1-H4, reference/classifier_guidance.py and its twin.

The model runs unconditionally (a class-conditional model's null class); the classifier's gradient
grad_{x_t} log p(y | x_t, t) steers the sampler by the route its row of the samplers' table names
(``classifier_route``): "shifted-mean" (ddpm) Algorithm 1's, "eps" (ddim) Algorithm 2's guided eps,
"denoiser" (ODE and SDE samplers) D + s sigma^2 grad on the trained levels (sigma_grad, K8). Classifier-free guidance
(--guidance) is not combined with it: one guidance at a time. A model of a continuous objective is refused: the
classifier knows only the chain's T trained steps. Not math: the math is the backends'.
"""
from __future__ import annotations

import warnings

import numpy as np

from common import sampler_table as table
from reference.errors import InputError
from reference.schedules import PriorMismatchWarning

from . import data
from .classifier_run import side
from .sde_sampling import solve
from .late_start import LATE_START_PREFIX, amplified_start_message, guided_grid, late_start_message
from .sampling import _no_grad, _x_T, alpha_bar_table, is_continuous, network, ode_denoiser, plan, resolve_variance


def check_pair(trainer, clf_trainer, ckpt, clf_path):
    """The classifier against the model it guides: the model's objective, item shape, schedule and classes, each
    refused naming the mismatch -> K, the classifier's classes."""
    cfg, ccfg = trainer.cfg, clf_trainer.cfg
    if is_continuous(cfg):
        raise InputError(f"--classifier {clf_path} was trained on the chain's {ccfg.T} integer steps, and {ckpt} is "
                         f"a model of the continuous objective {cfg.objective!r} (its noise levels are not those "
                         "steps): classifier guidance needs a model of --objective ddpm")
    if tuple(trainer.item_shape) != tuple(clf_trainer.item_shape):
        raise InputError(f"--classifier {clf_path} classifies items of shape {tuple(clf_trainer.item_shape)}, and "
                         f"{ckpt} draws items of shape {tuple(trainer.item_shape)}")
    for name, flag in (("T", "--T"), ("schedule", "--schedule"), ("zero_terminal_snr", "--zero-terminal-snr")):
        a, b = getattr(ccfg, name), getattr(cfg, name)
        if a != b:
            raise InputError(f"--classifier {clf_path} was trained on the chain with {name}={a!r}, and {ckpt}'s model "
                             f"on {name}={b!r}: its noise levels differ; train the classifier with {flag} {b}")
    k, want = clf_trainer.num_classes, _model_classes(trainer)
    if want is not None and want != k:
        raise InputError(f"--classifier {clf_path} has {k} classes, and {ckpt}'s model (data {cfg.data!r}) has "
                         f"{want}: the classes would not be the same")
    return k


def _model_classes(trainer):
    k = getattr(trainer, "num_classes", None)
    if k is not None:
        return k
    try:
        return data.info(trainer.cfg.data, image_size=trainer.cfg.image_size).num_classes or None
    except InputError:   # a converted model that records no dataset
        return None


def grad_fn_of(B, clf):
    """The chain grad_fn(x_t, t, y) of a classifier (its grad_log_prob), labels moved to the classifier's side."""
    return clf.grad_log_prob


def guided_draw(B, trainer, n, grad_fn, y, scale, seed=0, sampler="ddim", steps=None, spacing="leading", eta=0.0,
                variance=None, grid=None, clip_x0=None, progress=None, warn=True, sde=None):
    """x_T from default_rng(seed) as lab.sampling.draw's, then ``sampler`` guided by the chain ``grad_fn`` towards
    the classes ``y`` (int or (n,)) at the classifier scale ``scale`` -> NumPy samples (n, *item_shape).
    ``sde``: an SDE sampler's settings, as draw's. s = 0 is the unguided sampler (the same samples as draw's)."""
    cfg = trainer.cfg
    clip = len(trainer.item_shape) == 3 if clip_x0 is None else bool(clip_x0)
    if grid is None and "grid" in table.row(sampler).flags:   # the ODE and SDE samplers: not from T-1 (guided_grid)
        grid = guided_grid(alpha_bar_table(B, trainer.sched))
    p = plan(B, trainer.sched, sampler, steps, spacing, grid, clip_x0=clip, prediction=cfg.prediction, sde=sde)
    variance = resolve_variance(trainer, sampler, variance)
    den = network(B, trainer, variance)
    if warn:
        abar, pred = alpha_bar_table(B, trainer.sched), cfg.prediction
        for msg in (late_start_message(p, abar, clip, pred), amplified_start_message(p, abar, clip, pred)):
            if msg:
                warnings.warn(msg, PriorMismatchWarning, stacklevel=2)
    G = side(B, "classifier_guidance")
    rng = np.random.default_rng(seed)
    x_T = _x_T(B, trainer, n, rng)
    y = np.broadcast_to(np.asarray(y, dtype=np.int64), (n,)).copy()
    kept = None if p.steps >= cfg.T else p.steps
    route = table.row(sampler).classifier_route
    with warnings.catch_warnings(), _no_grad(B):
        warnings.filterwarnings("ignore", message=LATE_START_PREFIX, category=PriorMismatchWarning)
        if route == "shifted-mean":  # (H1) Algorithm 1
            res = G.classifier_guided_sample_loop(trainer.sched, den, grad_fn, y, scale, x_T, rng, steps=kept,
                                                  spacing=spacing, prediction=cfg.prediction,
                                                  variance=variance or "fixed_small", clip_x0=clip)
        elif route == "eps":         # (H3) Algorithm 2: the guided eps through the chain sampler
            den_s = G.classifier_guided_model(trainer.sched, den, grad_fn, y, scale, cfg.prediction)
            res = B.samplers.sample_loop(trainer.sched, den_s, x_T, rng, sampler=sampler, steps=kept, spacing=spacing,
                                         eta=eta, prediction="eps", clip_x0=clip, progress=progress)
        else:                        # (H4) D + s sigma^2 grad log p(y | x~) on the trained levels
            D_s = G.classifier_guided_denoiser(ode_denoiser(B, trainer, den, clip), G.sigma_grad(trainer.sched, grad_fn),
                                               scale, y)
            res = solve(B, D_s, x_T, rng, p, sde, progress=progress, sched=trainer.sched)   # noise: rng's, after x_T
    return B.to_numpy(res.x)
