"""One training step of the NumPy reference, and the Trainer that holds a run's state.

A step (Ho et al. Algorithm 1, with the usual engineering around it):
  t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps)                          (F3)
  loss = L_simple(model(x_t, t), target)                                            (L4)
  grads by the hand-written backward, global-norm clip, AdamW, EMA of the weights.  (O1-O4)

The loop itself (data order, progress, JSONL log, checkpoints, pictures, resume) is not math and is
shared with torch_port: see lab/runner.py, which drives a ``Trainer``. ``cfg`` is a run configuration
(lab.config.TrainConfig, or anything with its fields).
"""
from __future__ import annotations

import numpy as np

from .diffusion import q_sample
from .losses import simple_loss_and_grad
from .optim import EMA, AdamW, clip_grad_norm, lr_at
from .schedules import Schedule, make_betas, rescale_zero_terminal_snr
from .unet import MLP, UNet


class NonFiniteError(FloatingPointError):
    """The loss or the gradient norm is NaN or inf: the update is refused, the parameters are untouched."""


def build_schedule(cfg):
    betas = make_betas(cfg.schedule, cfg.T)
    if cfg.zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return Schedule(betas)


def build_model(cfg, item_shape):
    """UNet for images (item_shape (C, H, W)), MLP for points (item_shape (D,))."""
    dtype = np.float64 if cfg.dtype == "float64" else np.float32
    if len(item_shape) == 1:
        return MLP(in_dim=item_shape[0], dtype=dtype, seed=cfg.seed, **cfg.model)
    return UNet(in_channels=item_shape[0], dtype=dtype, seed=cfg.seed, **cfg.model)


def train_step(model, opt, ema, sched, x0, t, eps, prediction="eps", lr=None, grad_clip=1.0, weighting="none"):
    """One optimisation step on the batch x0 with the given t (N,) and eps (like x0).

    Returns (loss, grad_norm) as floats; grad_norm is measured before clipping. Raises
    NonFiniteError before touching the parameters if the model output, the loss or the norm is NaN or inf.
    """
    # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    xt = q_sample(sched, x0, t, eps)
    # Weights that blew up overflow inside the network: the NonFiniteError below says so, once, instead of
    # NumPy's warnings from every layer.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out, cache = model.forward(xt, t)
        if not np.all(np.isfinite(out)):  # weights blown up: say so here, not as a bad input of the loss
            raise NonFiniteError(f"non-finite model output ({int(np.size(out) - np.count_nonzero(np.isfinite(out)))}"
                                 " values NaN or inf)")
        # (L4)  loss = mean ||target - model(x_t, t)||^2 and its gradient with respect to the output
        loss, dout = simple_loss_and_grad(sched, out, x0, t, eps, prediction,
                                          weighting=None if weighting == "none" else weighting)
        _, grads = model.backward(dout, cache, input_grad=False)
        # (O3)  g <- g * min(1, c / ||g||)
        grads, norm = clip_grad_norm(grads, grad_clip if grad_clip else np.inf)
    loss, norm = float(loss), float(norm)
    if not (np.isfinite(loss) and np.isfinite(norm)):
        raise NonFiniteError(f"non-finite {'loss' if not np.isfinite(loss) else 'gradient norm'} "
                             f"(loss={loss}, grad_norm={norm})")
    # (O1)  AdamW;  (O2)  EMA
    opt.step(grads, lr=lr)
    ema.update(model.params)
    return loss, norm


class Trainer:
    """Everything a run holds: model, schedule, optimiser, EMA and the generator of t and eps."""

    backend = "reference"

    def __init__(self, cfg, item_shape):
        self.cfg = cfg
        self.item_shape = tuple(item_shape)
        self.sched = build_schedule(cfg)
        self.model = build_model(cfg, self.item_shape)
        self.opt = AdamW(self.model.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model.params, decay=cfg.ema_decay)
        self.rng = np.random.default_rng([cfg.seed, 1])   # t and eps; the data order has its own stream
        self.dtype = np.float64 if cfg.dtype == "float64" else np.float32

    def step(self, x0, step):
        """Draw t and eps, take one step. ``step`` is the 0-based index of this update (for the LR)."""
        n = x0.shape[0]
        t = self.rng.integers(0, self.cfg.T, size=n)
        eps = self.rng.standard_normal(x0.shape).astype(self.dtype)
        lr = lr_at(step, self.cfg.lr, warmup_steps=self.cfg.warmup)
        return train_step(self.model, self.opt, self.ema, self.sched, x0.astype(self.dtype), t, eps,
                          self.cfg.prediction, lr, self.cfg.grad_clip, self.cfg.weighting)

    def denoiser(self, use_ema=True):
        """A function (x_t, t) -> model output with the EMA (or raw) weights, for the samplers."""
        model = build_model(self.cfg, self.item_shape)
        model.load_params(self.ema.params if use_ema else self.model.params)
        return lambda xt, t: model.forward(xt.astype(self.dtype), t)[0]

    # ---- checkpoint state: NumPy arrays keyed by state_dict names --------------------------

    def state_dict(self):
        return {"params": {k: v.copy() for k, v in self.model.params.items()},
                "ema": self.ema.state_dict(),
                "opt_state": self.opt.state_dict(),
                "rng_state": {"noise": self.rng.bit_generator.state}}

    def load_state_dict(self, ck):
        # load_params checks names, shapes and finiteness but binds new arrays; the optimiser and the
        # EMA hold the old ones and update them in place, so the values are copied into those.
        live = self.model.params
        self.model.load_params(ck["params"])
        for k, v in self.model.params.items():
            live[k][...] = v
        self.model.params = live
        self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["opt_state"])
        self.rng.bit_generator.state = ck["rng_state"]["noise"]
