"""The reference's noise-conditional classifier (reference/classifier.py) as torch modules — derivations/
classifier_guidance.md (H7, H8): the same plans (common/classifier.py, common/plans.py) built the same way,
``state_dict()`` keys identical to the reference's ``params`` names, so one .npz loads on both sides.

``forward(x, t) -> logits`` (N, K), x (N, C, H, W) or (N, in_dim), t the 0-based step (an int, an int array or an
int tensor (N,)). ``log_prob(x, t, y)``, ``grad_log_prob(x, t, y)`` (autograd: the input gradient guidance needs),
``loss(x, t, y)`` (the mean cross-entropy) and ``train_step`` as the reference's. Initialisation by the
reference's rule with a torch.Generator (values differ from the reference's draws: load its params to compare).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.classifier import POOLS, check_classifier_args, encoder_plan
from common.plans import mlp_plan, time_plan
from reference.errors import InputError, check_int, check_labels

from .diffusion import q_sample
from .layers import GN_EPS, timestep_embedding, torch_dtype
from .optim import clip_grad_norm
from .unet import STEPS, _Model, _Pass, _register

__all__ = ["POOLS", "Classifier", "PointClassifier", "cross_entropy", "train_step"]


def _tokens(h, module, run):
    N, C, H, W = h.shape
    x3 = h.reshape(N, C, H * W)
    # (H8)  tokens = [mean_l h | h_1 .. h_L], (N, C, 1, L + 1)
    return torch.cat([x3.mean(dim=2, keepdim=True), x3], dim=2)[:, :, None, :]


CLASSIFIER_STEPS = {**STEPS,
                    "avgpool": lambda h, m, run: h.mean(dim=(2, 3)),                    # (H8)  (N, C)
                    "tokens": _tokens,
                    "posemb": lambda h, m, run: h + m.weight.T[None, :, None, :],       # (H8)  tokens + P
                    "first": lambda h, m, run: h[:, :, 0, 0]}                           # (H8)  the mean token


class PositionalEmbedding(nn.Module):
    """(H8) The attention pool's learned embedding P (L + 1, C), one row per token; N(0, 1/C) at init, as ADM's."""

    def __init__(self, tokens, channels, dtype, seed):
        super().__init__()
        gen = torch.Generator().manual_seed(seed + 1)
        self.weight = nn.Parameter((torch.randn(tokens, channels, generator=gen, dtype=torch.float64)
                                    / channels ** 0.5).to(dtype))


def cross_entropy(logits, y):
    """(H7) The mean cross-entropy -1/N sum_n log softmax(f_n)_{y_n}: a 0-d tensor. y (N,) long on logits' device."""
    return F.cross_entropy(logits, y)


class _ClassifierMixin:
    """log p(y | x_t, t), its input gradient by autograd, the loss; t and y checked as the reference checks them."""

    def _steps_input(self, t, n):
        """t -> a long tensor (n,) on the model's device; host values checked (integer, shape, >= 0)."""
        device = self.time_mlp.fc1.weight.device
        if torch.is_tensor(t):
            if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
                raise InputError(f"t must be an integer time index (0-based), got dtype {t.dtype}")
            ta = t.numpy() if t.device.type == "cpu" else None
        else:
            ta = np.asarray(t)
            if ta.dtype == bool or not np.issubdtype(ta.dtype, np.integer):
                raise InputError(f"t must be an integer time index (0-based), got dtype {ta.dtype}")
        shape = tuple(t.shape) if torch.is_tensor(t) else ta.shape
        if len(shape) > 1 or (len(shape) == 1 and shape[0] != n):
            raise InputError(f"t must be an int or an int array of shape ({n},), got shape {shape}")
        if ta is not None and ta.size and ta.min() < 0:
            raise InputError(f"t must be >= 0 (0-based time index), got {int(ta.min())}")
        t = t if torch.is_tensor(t) else torch.from_numpy(np.array(ta, dtype=np.int64))
        return t.to(device=device, dtype=torch.long).expand(n)

    def _labels_of(self, y, n, device):
        """(n,) long labels in 0..K-1 on ``device``: host values checked, a device tensor taken as it is."""
        if not torch.is_tensor(y) or y.device.type == "cpu":
            y = torch.from_numpy(check_labels(np.asarray(y), self.num_classes, n, allow_null=False))
        return y.to(device=device, dtype=torch.long).expand(n)

    def _temb(self, t, n):
        emb = timestep_embedding(self._steps_input(t, n), self.emb_dim).to(self.time_mlp.fc1.weight.dtype)
        return self._run(self._time_steps, emb)  # (B6) the time MLP

    def _run(self, steps, h, temb=None, y=None):
        run = _Pass(temb)
        for op, module in steps:
            h = CLASSIFIER_STEPS[op](h, module, run)
        return h

    def log_prob(self, x, t, y):
        """(H7) log p(y | x_t, t) = log softmax(f(x_t, t))_y, (N,)."""
        logits = self(x, t)
        y = self._labels_of(y, logits.shape[0], logits.device)
        return torch.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]

    def grad_log_prob(self, x, t, y):
        """(H7) grad_{x_t} log p(y | x_t, t) by autograd, like x (detached). Examples do not interact, so the
        gradient of the sum is each example's own."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(self.log_prob(x, t, y).sum(), x)[0]

    def loss(self, x, t, y):
        """(H7) The mean cross-entropy on the batch (a 0-d tensor with a graph)."""
        logits = self(x, t)
        return cross_entropy(logits, self._labels_of(y, logits.shape[0], logits.device))


def train_step(model, opt, sched, x0, t, eps, y, lr=None, grad_clip=None):
    """One AdamW step on x_t = q_sample(sched, x0, t, eps) (F3) with labels y (reference.classifier.train_step)
    -> the loss (a 0-d tensor). grad_clip None or a max norm (O3)."""
    # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    xt = q_sample(sched, x0, t, eps)
    opt.zero_grad(set_to_none=True)
    loss = model.loss(xt, t, y)
    loss.backward()
    if grad_clip is not None:
        clip_grad_norm(model, grad_clip)  # (O3)
    opt.step(lr=lr)  # (O1)
    return loss.detach()


class Classifier(_ClassifierMixin, _Model):
    """p(y | x_t, t) for (N, in_channels, H, W) images; see reference.classifier.Classifier."""

    def __init__(self, num_classes, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                 attention=(False, False, True), groups=8, time_dim=None, mid_attention=True, pool="avg",
                 image_size=None, norm_eps=GN_EPS, dtype=torch.float32, seed=0):
        super().__init__()
        k, chans, attention, nrb, positions = check_classifier_args(
            num_classes, base_channels, channel_mults, num_res_blocks, attention, groups, pool, image_size, norm_eps)
        self.num_classes, self.in_channels, self.positions, self.levels = k, in_channels, positions, len(chans)
        self.emb_dim, self.time_dim, self.image_size = base_channels, time_dim or 4 * base_channels, image_size
        self.time_plan = time_plan(self.emb_dim, self.time_dim, act=True)
        self.plan = encoder_plan(in_channels, chans, attention, nrb, bool(mid_attention), k, pool, positions)
        dt = torch_dtype(dtype)
        self._make_layers([s for s in self.time_plan + self.plan if s.op != "posemb"], groups, dt, seed,
                          float(norm_eps))
        for s in self.plan:
            if s.op == "posemb":
                _register(self, s.name, PositionalEmbedding(s.c_in, s.c_out, dt, seed))
        self._time_steps, self._plan_steps = self._steps(self.time_plan), self._steps(self.plan)

    def forward(self, x, t):
        N, C, H, W = x.shape
        f = 2 ** (self.levels - 1)
        if C != self.in_channels or H % f or W % f or (self.positions is not None and (H // f) * (W // f)
                                                        != self.positions):
            size = f"{self.image_size}" if self.positions is not None else f"H, W divisible by {f}"
            raise InputError(f"the classifier expects x of shape (N, {self.in_channels}, H, W) with {size}, got "
                             f"{tuple(x.shape)}")
        return self._run(self._plan_steps, x, self._temb(t, N))   # temb: SiLU(temb), read by every block


class PointClassifier(_ClassifierMixin, _Model):
    """p(y | x_t, t) for (N, in_dim) points; see reference.classifier.PointClassifier."""

    def __init__(self, num_classes, in_dim=2, hidden=64, num_layers=2, time_dim=32, dtype=torch.float32, seed=0):
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes (the classifier's classes)", lo=2)
        self.in_dim, self.emb_dim = in_dim, time_dim
        self.time_plan = time_plan(time_dim, hidden, act=False)
        self.plan = mlp_plan(in_dim, hidden, num_layers, self.num_classes)
        self._make_layers(self.time_plan + self.plan, None, torch_dtype(dtype), seed)
        self._time_steps, self._plan_steps = self._steps(self.time_plan), self._steps(self.plan)

    def forward(self, x, t):
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise InputError(f"the classifier expects x of shape (N, {self.in_dim}), got {tuple(x.shape)}")
        return self._run(self._plan_steps, x, self._temb(t, x.shape[0]))
