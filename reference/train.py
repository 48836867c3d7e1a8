"""One training step of the NumPy reference, and the Trainer that holds a run's state.

A step (Ho et al. Algorithm 1, with the usual engineering around it):
  t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps)                          (F3)
  loss = L_simple(model(x_t, t), target)                                            (L4)
  grads by the hand-written backward, global-norm clip, AdamW, EMA of the weights.  (O1-O4)
The run configuration may ask for learned variances and the bound (Nichol & Dhariwal 2021; reference/vlb.py):
  cfg.variance "fixed" (default) | "learned" (the network outputs 2C channels, V1),
  cfg.loss "simple" (default) | "hybrid" (L_simple + hybrid_lambda L_vlb, V4) | "vlb" (V4),
  cfg.importance_sampling: t ~ p_t with weights 1/(T p_t) (loss "vlb" only; I1, I2).
The default (fixed, simple) step is the one above, unchanged. cfg.class_cond: the network is conditional
(cfg.model["num_classes"] = K, W1), each step takes the batch's labels y and replaces each by the null class
K with probability cfg.p_uncond, drawn after t and eps from the same stream (derivations/guidance.md).

cfg.objective "edm" | "flow" | "ncsn" (reference/objectives.py, derivations/design_space.md, ncsn.md): one uniform
u per example gives its noise level (D7, D14, D15, J5), the objective gives the network's input, float time input,
target and weight (D5-D8, D10, J1, J4), and the step minimises the weighted MSE; the clipping, AdamW and EMA are the chain's.
``objective_step``; with a reflow coupling the pair's z stands in for eps (D11).

The loop itself (data order, progress, JSONL log, checkpoints, pictures, resume) is not math and is
shared with torch_port: see lab/runner.py, which drives a ``Trainer``. ``cfg`` is a run configuration
(lab.config.TrainConfig, or anything with its fields).
"""
from __future__ import annotations

import numpy as np

from common.choices import CONTINUOUS_OBJECTIVES

from . import objectives
from .diffusion import LEARNED, q_sample
from .errors import check_class_cond, check_run_labels
from .losses import simple_loss_and_grad
from .optim import EMA, AdamW, clip_grad_norm, lr_at
from .resample import ImportanceSampler
from .schedules import Schedule, make_betas, rescale_zero_terminal_snr
from .unet import MLP, UNet
from .vlb import HYBRID_LAMBDA, loss_settings, training_loss_and_grad



def run_lr(cfg, step):
    """The learning rate of a run's step (O4), for the denoiser's and the classifier's trainers alike: a run that
    ends within its warmup never reaches a decay, so "constant" gives the same rates."""
    schedule = getattr(cfg, "lr_schedule", "constant") if cfg.steps > cfg.warmup else "constant"
    return lr_at(step, cfg.lr, warmup_steps=cfg.warmup, total_steps=cfg.steps, schedule=schedule)


def load_live_params(model, params):
    """Load ``params`` into ``model`` keeping its arrays: load_params checks names, shapes and finiteness but binds
    new arrays, while the optimiser and the EMA hold the old ones and update them in place, so the values are
    copied into those."""
    live = model.params
    model.load_params(params)
    for k, v in model.params.items():
        live[k][...] = v
    model.params = live

class NonFiniteError(FloatingPointError):
    """The loss or the gradient norm is NaN or inf: the update is refused, the parameters are untouched."""


def build_schedule(cfg):
    betas = make_betas(cfg.schedule, cfg.T)
    if cfg.zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return Schedule(betas)


def is_continuous(cfg):
    """A continuous objective's run (edm, flow, ncsn): a float time input, no chain to train."""
    return getattr(cfg, "objective", "ddpm") in CONTINUOUS_OBJECTIVES


def build_model(cfg, item_shape):
    """UNet for images (item_shape (C, H, W)), MLP for points (item_shape (D,)); 2C outputs for learned variances;
    a float time input for a continuous objective (the same parameters)."""
    dtype = np.float64 if cfg.dtype == "float64" else np.float32
    kw = dict(cfg.model, **({"continuous_time": True} if is_continuous(cfg) else {}))
    if getattr(cfg, "variance", "fixed") == LEARNED:  # (V1)  the mean's C channels, then the variance's C
        kw["out_dim" if len(item_shape) == 1 else "out_channels"] = 2 * item_shape[0]
    if len(item_shape) == 1:
        return MLP(in_dim=item_shape[0], dtype=dtype, seed=cfg.seed, **kw)
    return UNet(in_channels=item_shape[0], dtype=dtype, seed=cfg.seed, **kw)


def train_step(model, opt, ema, sched, x0, t, eps, prediction="eps", lr=None, grad_clip=1.0, weighting="none",
               loss="simple", variance="fixed_small", hybrid_lambda=HYBRID_LAMBDA, weights=None, levels=256,
               record_terms=None, y=None):
    """One optimisation step on the batch x0 with the given t (N,) and eps (like x0).

    loss "simple" | "hybrid" | "vlb", variance "fixed_small" | "learned" (the model then outputs 2C channels),
    hybrid_lambda, weights (importance sampling, loss "vlb") and levels (the data's, for the decoder at t = 0;
    None: continuous data): see reference/vlb.py. ``record_terms(t, terms)`` receives the per-example L_t
    (bits/dim) of a bound loss once the step is known to be finite (the importance sampler's history).
    ``y``: the class labels (N,) of a conditional model (W1; the null class K where dropped), None otherwise.
    Returns (loss, grad_norm) as floats; grad_norm is measured before clipping. Raises
    NonFiniteError before touching the parameters if the model output, the loss or the norm is NaN or inf.
    torch_port.train.train_step takes the same parameters in the same order (its own last, keyword-only).
    """
    # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    xt = q_sample(sched, x0, t, eps)
    # Weights that blew up overflow inside the network: the NonFiniteError below says so, once, instead of
    # NumPy's warnings from every layer.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out, cache = _forward(model, xt, t, y)
        # (L4)  loss = mean ||target - model(x_t, t)||^2 and its gradient with respect to the output
        #       (V4)  or L_hybrid / L_vlb with the bound's hand-written gradient
        value, dout, terms = training_loss_and_grad(sched, out, x0, xt, t, eps, prediction, loss, variance,
                                                    hybrid_lambda, weights,
                                                    None if weighting == "none" else weighting, levels=levels)
        grads, value, norm = _backward(model, cache, dout, value, grad_clip)
    if record_terms is not None and terms is not None:
        record_terms(t, terms)
    return _update(model, opt, ema, grads, lr, value, norm)


def objective_step(model, opt, ema, cfg, x0, u, eps, lr=None, grad_clip=1.0, y=None):
    """One optimisation step of a continuous objective (cfg.objective "edm" | "flow" | "ncsn") on the batch x0:
    the levels from the uniforms u (N,) in (0, 1), eps like x0 (a reflow pair's z in its place, D11), ``y`` as
    train_step's. The model takes a float time input (build_model). Returns (loss, grad_norm) as floats, as
    train_step, with the same clipping, AdamW, EMA and NonFiniteError."""
    # (D7, D14, D15)  edm: ln sigma ~ N(P_mean, P_std^2); flow: t uniform or logit-normal, shifted once
    level = objectives.level(cfg, u)
    # (D5, D6, D8)  edm: net_in = c_in (x0 + sigma eps), target = (x0 - c_skip x) / c_out, weight lambda c_out^2 = 1
    # (D10)         flow: net_in = x_t = (1 - t) x0 + t eps, target = eps - x0, weight 1
    net_in, time_in, target, weight = objectives.training_target(cfg, x0, eps, level)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out, cache = _forward(model, net_in, time_in, y)
        # loss = mean_n weight_n mean_d (F(net_in, time_in) - target)^2 and its gradient
        value, dout = objectives.loss_and_grad(out, target, weight)
        grads, value, norm = _backward(model, cache, dout, value, grad_clip)
    return _update(model, opt, ema, grads, lr, value, norm)


def _forward(model, x, t, y):
    out, cache = model.forward(x, t) if y is None else model.forward(x, t, y)
    if not np.all(np.isfinite(out)):  # weights blown up: say so here, not as a bad input of the loss
        raise NonFiniteError(f"non-finite model output ({int(np.size(out) - np.count_nonzero(np.isfinite(out)))}"
                             " values NaN or inf)")
    return out, cache


def _backward(model, cache, dout, value, grad_clip):
    """The parameters' gradients, clipped, and the step's (loss, norm before clipping) as floats, checked finite."""
    _, grads = model.backward(dout, cache, input_grad=False)
    # (O3)  g <- g * min(1, c / ||g||)
    grads, norm = clip_grad_norm(grads, grad_clip if grad_clip else np.inf)
    value, norm = float(value), float(norm)
    if not (np.isfinite(value) and np.isfinite(norm)):
        raise NonFiniteError(f"non-finite {'loss' if not np.isfinite(value) else 'gradient norm'} "
                             f"(loss={value}, grad_norm={norm})")
    return grads, value, norm


def _update(model, opt, ema, grads, lr, value, norm):
    # (O1)  AdamW;  (O2)  EMA
    opt.step(grads, lr=lr)
    ema.update(model.params)
    return value, norm


def uniforms(rng, n):
    """n uniforms strictly inside (0, 1) from ``rng``: (k + 1/2) / 2^52 for a 52-bit integer k, exact in float64 (the
    port draws the same integers' form), so that the inverse CDFs of the levels stay finite."""
    return (rng.integers(0, 2 ** 52, size=n).astype(np.float64) + 0.5) / 2.0 ** 52


class Trainer:
    """Everything a run holds: model, schedule, optimiser, EMA and the generator of t and eps."""

    backend = "reference"

    def __init__(self, cfg, item_shape, levels=None):
        """levels: the data's intensity levels (lab.data.info(name).levels) for the decoder term of the bound
        losses; None: 256 (8-bit) for images, continuous (the Gaussian decoder) for 2-D points."""
        self.cfg = cfg
        self.item_shape = tuple(item_shape)
        self.loss, self.variance, self.hybrid_lambda, importance = loss_settings(cfg)
        self.levels = levels if levels is not None else (256 if len(self.item_shape) == 3 else None)
        self.resampler = ImportanceSampler(cfg.T) if importance else None
        self.sched = build_schedule(cfg)
        self.model = build_model(cfg, self.item_shape)
        self.opt = AdamW(self.model.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model.params, decay=cfg.ema_decay)
        self.rng = np.random.default_rng([cfg.seed, 1])   # t and eps; the data order has its own stream
        self.dtype = np.float64 if cfg.dtype == "float64" else np.float32
        self.num_classes = check_class_cond(cfg)
        self.continuous = is_continuous(cfg)

    def step(self, x0, step, y=None, z=None):
        """Draw t and eps, take one step. ``step`` is the 0-based index of this update (for the LR); ``y`` the
        batch's labels (N,) when cfg.class_cond (each dropped to the null class with probability p_uncond).
        A continuous objective draws u (N,), then eps, then the labels' drops; ``z``: a reflow batch's noise ends
        (like x0), used in place of eps (D11)."""
        n = x0.shape[0]
        if self.continuous:
            u = uniforms(self.rng, n)
            eps = self.rng.standard_normal(x0.shape).astype(self.dtype) if z is None else np.asarray(z, self.dtype)
            y = self._drop_labels(y, n)
            return objective_step(self.model, self.opt, self.ema, self.cfg, x0.astype(self.dtype), u, eps,
                                  self._lr(step), self.cfg.grad_clip, y=y)
        if self.resampler is None:
            t, w = self.rng.integers(0, self.cfg.T, size=n), None
        else:  # (I1, I2)  t ~ p_t with weights 1/(T p_t); uniform (the same draw) until warmed up
            t, w = self.resampler.sample(self.rng, n)
        eps = self.rng.standard_normal(x0.shape).astype(self.dtype)
        y = self._drop_labels(y, n)
        return train_step(self.model, self.opt, self.ema, self.sched, x0.astype(self.dtype), t, eps,
                          self.cfg.prediction, self._lr(step), self.cfg.grad_clip, self.cfg.weighting, self.loss,
                          self.variance, self.hybrid_lambda, w, self.levels,
                          None if self.resampler is None else self.resampler.update, y=y)

    def _lr(self, step):
        return run_lr(self.cfg, step)

    def _drop_labels(self, y, n):
        """(W1) The labels, each replaced by the null class K with probability p_uncond; None unconditional."""
        y = check_run_labels(y, self.num_classes, n)
        if y is None:
            return None
        # (W1)  y -> null with probability p_uncond, from the run's noise stream after t and eps
        return np.where(self.rng.random(n) < self.cfg.p_uncond, self.num_classes, y)

    def denoiser(self, use_ema=True, with_variance=False):
        """A function (x_t, t) -> model output with the EMA (or raw) weights, for the samplers. A continuous
        objective's: net(net_in, time_in (N,) float, y=None) -> output, which objectives.denoiser makes a D.

        With learned variances the network outputs 2C channels: the denoiser returns the C mean channels
        (what DDIM, the ODE solvers and fixed-variance sampling read; diffusion.split_output), or all 2C with
        ``with_variance=True`` (for sample_loop / vlb_terms with variance="learned").
        """
        model = build_model(self.cfg, self.item_shape)
        model.load_params(self.ema.params if use_ema else self.model.params)
        c = self.item_shape[0] if self.variance == LEARNED and not with_variance else None
        # y: a conditional model's labels (None: the null class), for guidance.guided (W2)
        return lambda xt, t, y=None: model.forward(xt.astype(self.dtype), t, y)[0][:, :c]

    # ---- checkpoint state: NumPy arrays keyed by state_dict names --------------------------

    def state_dict(self):
        return {"params": {k: v.copy() for k, v in self.model.params.items()},
                "ema": self.ema.state_dict(),
                "opt_state": self.opt.state_dict(),
                "rng_state": {"noise": self.rng.bit_generator.state,
                              **({} if self.resampler is None else self.resampler.state_dict())}}

    def load_state_dict(self, ck):
        # load_params checks names, shapes and finiteness but binds new arrays; the optimiser and the
        # EMA hold the old ones and update them in place, so the values are copied into those.
        load_live_params(self.model, ck["params"])
        self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["opt_state"])
        self.rng.bit_generator.state = ck["rng_state"]["noise"]
        if self.resampler is not None and "loss_history" in ck["rng_state"]:  # (I1)  the history is training state
            self.resampler.load_state_dict(ck["rng_state"])
