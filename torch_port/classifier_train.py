"""The port's Trainer of a noise-conditional classifier (reference/classifier_train.py), driven by lab/runner.py.

The same step: t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps) (F3), the mean cross-entropy (H7),
autograd, global-norm clip (O3), AdamW (O1), EMA (O2). One process on one device, eager (no DDP, compile or
autocast: a classifier of this size is cheap beside the denoiser it guides). The noise of update ``step`` is
seeded by (seed, step), as the denoiser's run, so a resumed run draws what the uninterrupted run would have.
"""
from __future__ import annotations

import numpy as np
import torch

from reference.errors import InputError, check_labels

from .classifier import Classifier, PointClassifier
from .device import resolve_device
from .diffusion import q_sample
from .optim import EMA, AdamW, clip_grad_norm
from .train import NonFiniteError, build_schedule, noise_seed, run_lr

__all__ = ["ClassifierTrainer", "build_classifier"]


def build_classifier(cfg, item_shape):
    """PointClassifier for (D,) items, Classifier for (C, H, W), from cfg.model, in cfg.dtype."""
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    kw = dict(cfg.model)
    if "num_classes" not in kw:
        raise InputError("a classifier run's configuration needs model num_classes (the dataset's classes)")
    if len(item_shape) == 1:
        return PointClassifier(in_dim=item_shape[0], dtype=dtype, seed=cfg.seed, **kw)
    return Classifier(in_channels=item_shape[0], dtype=dtype, seed=cfg.seed, **kw)


class ClassifierTrainer:
    """Classifier, schedule, optimiser, EMA and the step's generator on one device."""

    backend = "torch"
    is_main, world = True, 1

    def __init__(self, cfg, item_shape, device="auto", compile=None, amp=None, channels_last=None,
                 cuda_graphs=False):
        if compile or amp or channels_last or cuda_graphs:
            raise InputError("--compile, --amp, --channels-last and --cuda-graphs apply to a denoiser's run; a "
                             "classifier trains eagerly in the parameter dtype")
        self.cfg, self.item_shape = cfg, tuple(item_shape)
        self.device = resolve_device(device)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.sched = build_schedule(cfg, self.device)
        self.model = build_classifier(cfg, self.item_shape).to(self.device)
        self.num_classes = self.model.num_classes
        self.opt = AdamW(self.model, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model, decay=cfg.ema_decay)
        self.gen = torch.Generator(self.device)

    def prepare_data(self, x):
        return torch.as_tensor(np.ascontiguousarray(x), dtype=self.dtype).to(self.device)

    def prepare_labels(self, y):
        return torch.as_tensor(check_labels(np.asarray(y), self.num_classes, allow_null=False)).to(self.device)

    def step(self, x0, step, y=None):
        """One update on the batch x0 (N, ...) with labels y (N,) -> (loss, grad_norm) as 0-d tensors."""
        if y is None:
            raise InputError("a classifier's step needs the batch's labels y")
        x0 = torch.as_tensor(x0, dtype=self.dtype).to(self.device)
        y = torch.as_tensor(y).to(device=self.device, dtype=torch.long)
        n = x0.shape[0]
        self.gen.manual_seed(noise_seed(self.cfg.seed, 0, step))
        t = torch.randint(0, self.cfg.T, (n,), device=self.device, generator=self.gen)
        eps = torch.randn(x0.shape, device=self.device, dtype=self.dtype, generator=self.gen)
        # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        xt = q_sample(self.sched, x0, t, eps)
        self.opt.zero_grad(set_to_none=True)
        loss = self.model.loss(xt, t, y)   # (H7)
        loss.backward()
        # (O3)  the norm before clipping; 0 disables the clip
        norm = clip_grad_norm(self.model, self.cfg.grad_clip if self.cfg.grad_clip else float("inf"))
        if self.device.type == "cpu" and not (torch.isfinite(loss) and torch.isfinite(norm)):
            raise NonFiniteError(f"non-finite loss or gradient norm (loss={float(loss)}, grad_norm={float(norm)})")
        # (O1)  AdamW;  (O2)  EMA
        self.opt.step(lr=self._lr(step))
        self.ema.update(self.model)
        return loss.detach(), norm.detach()

    def _lr(self, step):
        return run_lr(self.cfg, step)   # (O4)  as the denoiser's run

    def classifier(self, use_ema=True):
        """A classifier module holding the EMA (or raw) weights, in eval mode."""
        model = build_classifier(self.cfg, self.item_shape).to(self.device)
        if use_ema:
            self.ema.copy_to(model)
        else:
            model.load_state_dict(self.model.state_dict())
        return model.eval()

    def state_dict(self):
        def to_np(sd):
            return {k: v.detach().contiguous().cpu().numpy().copy() for k, v in sd.items()}

        return {"params": to_np(self.model.state_dict()), "ema": to_np(self.ema.state_dict()),
                "opt_state": to_np(self.opt.flat_state_dict()), "rng_state": {}}

    def load_state_dict(self, ck):
        self.model.load_state_dict({k: torch.as_tensor(np.asarray(v), dtype=self.dtype)
                                    for k, v in ck["params"].items()})
        self.ema.load_state_dict({k: torch.as_tensor(np.asarray(v), dtype=self.dtype) for k, v in ck["ema"].items()})
        self.opt.load_flat_state_dict(ck["opt_state"])
