"""The Trainer of a noise-conditional classifier (classifier guidance's classifier, derivations/classifier_guidance.md
H7) that lab/runner.py drives as it drives a denoiser's (progress, log, checkpoints, resume, signals).

A step: t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps) (F3); the mean cross-entropy of p(y | x_t, t)
(H7); the hand-written backward, global-norm clip (O3), AdamW (O1), EMA of the weights (O2), as the denoiser's
run. ``cfg`` is a run configuration (lab.config.TrainConfig with classifier=True): its schedule and T are the
chain the classifier will guide, ``cfg.model`` the classifier's constructor arguments (num_classes included).
"""
from __future__ import annotations

import numpy as np

from .classifier import Classifier, PointClassifier
from .diffusion import q_sample
from .errors import InputError
from .optim import EMA, AdamW, clip_grad_norm
from .train import NonFiniteError, build_schedule, load_live_params, run_lr

__all__ = ["ClassifierTrainer", "build_classifier"]


def build_classifier(cfg, item_shape):
    """PointClassifier for (D,) items, Classifier (the UNet's encoder half) for (C, H, W), from cfg.model."""
    dtype = np.float64 if cfg.dtype == "float64" else np.float32
    kw = dict(cfg.model)
    if "num_classes" not in kw:
        raise InputError("a classifier run's configuration needs model num_classes (the dataset's classes)")
    if len(item_shape) == 1:
        return PointClassifier(in_dim=item_shape[0], dtype=dtype, seed=cfg.seed, **kw)
    return Classifier(in_channels=item_shape[0], dtype=dtype, seed=cfg.seed, **kw)


class ClassifierTrainer:
    """Classifier, schedule, optimiser, EMA and the generator of t and eps (the reference.train.Trainer's roles)."""

    backend = "reference"

    def __init__(self, cfg, item_shape):
        self.cfg, self.item_shape = cfg, tuple(item_shape)
        self.sched = build_schedule(cfg)
        self.model = build_classifier(cfg, self.item_shape)
        self.num_classes = self.model.num_classes
        self.opt = AdamW(self.model.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model.params, decay=cfg.ema_decay)
        self.rng = np.random.default_rng([cfg.seed, 1])   # t and eps; the data order has its own stream
        self.dtype = np.float64 if cfg.dtype == "float64" else np.float32

    def step(self, x0, step, y=None):
        """Draw t then eps, take one step on the batch (x0 (N, ...), labels y (N,)) -> (loss, grad_norm) floats."""
        if y is None:
            raise InputError("a classifier's step needs the batch's labels y")
        n = x0.shape[0]
        t = self.rng.integers(0, self.cfg.T, size=n)
        eps = self.rng.standard_normal(x0.shape).astype(self.dtype)
        # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        xt = q_sample(self.sched, x0.astype(self.dtype), t, eps)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            # (H7)  the mean cross-entropy and its parameter gradients
            loss, grads = self.model.loss_and_grads(xt, t, np.asarray(y))
            # (O3)  g <- g * min(1, c / ||g||)
            grads, norm = clip_grad_norm(grads, self.cfg.grad_clip if self.cfg.grad_clip else np.inf)
        loss, norm = float(loss), float(norm)
        if not (np.isfinite(loss) and np.isfinite(norm)):
            raise NonFiniteError(f"non-finite {'loss' if not np.isfinite(loss) else 'gradient norm'} "
                                 f"(loss={loss}, grad_norm={norm})")
        # (O1)  AdamW;  (O2)  EMA
        self.opt.step(grads, lr=self._lr(step))
        self.ema.update(self.model.params)
        return loss, norm

    def _lr(self, step):
        return run_lr(self.cfg, step)   # (O4)  as the denoiser's run

    def classifier(self, use_ema=True):
        """A classifier holding the EMA (or raw) weights: .grad_log_prob(x_t, t, y) is a chain grad_fn."""
        model = build_classifier(self.cfg, self.item_shape)
        model.load_params(self.ema.params if use_ema else self.model.params)
        return model

    def state_dict(self):
        return {"params": {k: v.copy() for k, v in self.model.params.items()}, "ema": self.ema.state_dict(),
                "opt_state": self.opt.state_dict(), "rng_state": {"noise": self.rng.bit_generator.state}}

    def load_state_dict(self, ck):
        load_live_params(self.model, ck["params"])
        self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["opt_state"])
        if "noise" in (ck.get("rng_state") or {}):
            self.rng.bit_generator.state = ck["rng_state"]["noise"]
