"""A noise-conditional classifier p(y | x_t, t) with a hand-written backward — derivations/classifier_guidance.md
(H7, H8), the layers of backprop.md (B1..B9).

Two networks, both with the time embedding of the denoisers (B6), the parameters of a torch state_dict::

    clf = Classifier(num_classes=10, in_channels=1, ...)   # images (N, C, H, W): the UNet's encoder half
    clf = PointClassifier(num_classes=3, in_dim=2, ...)     # 2-D points (N, 2): the MLP with K outputs
    logits, cache = clf.forward(x_t, t)                    # (N, K); t the 0-based step (N,) or an int
    dx, grads = clf.backward(dlogits, cache)               # dx like x_t: the INPUT gradient guidance needs
    clf.log_prob(x_t, t, y)         # (N,)  log p(y | x_t, t) = log softmax(logits)_y          (H7)
    clf.grad_log_prob(x_t, t, y)    # like x_t: grad_{x_t} log p(y | x_t, t), one backward     (H7)
    loss, grads = clf.loss_and_grads(x_t, t, y)            # mean cross-entropy and its parameter gradients
    train_step(clf, opt, sched, x0, t, eps, y)             # x_t = q_sample, one AdamW step   (F3, H7, O1)

The image classifier is common/classifier.py's encoder_plan walked with unet.py's steps and four of its
own (the pools, H8); parameter names are the UNet's for the shared layers. torch_port/classifier.py builds the
same plans, so one .npz of ``params`` loads on both sides. Activations inside are NHWC (layers.py).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from common.classifier import POOLS, check_classifier_args, encoder_plan

from . import layers as L
from .diffusion import q_sample
from .errors import InputError, check_int, check_labels
from .optim import clip_grad_norm
from .plans import mlp_plan, time_plan
from .unet import STEPS, _Model

__all__ = ["POOLS", "Classifier", "PointClassifier", "cross_entropy", "log_softmax", "train_step"]

# ----------------------------------------------------------------------------------------------
# The pools (H8), forward and backward side by side, in unet.py's step form. NHWC; the tokens are (N, 1, L + 1, C)
# so that the 1x1 convolutions and the attention step read them as an image of one row.


def _avgpool_forward(h, step, run):
    # (H8)  pooled[n, c] = (1/L) sum_l h[n, l, c]
    return h.mean(axis=(1, 2)), h.shape


def _avgpool_backward(dout, shape, name, grads, run):
    # (H8)  every position received 1/L of the mean: dh[n, l, c] = dout[n, c] / L (a fresh array)
    return np.broadcast_to(dout[:, None, None, :], shape) / (shape[1] * shape[2])


def _tokens_forward(h, step, run):
    N, H, W, C = h.shape
    x3 = h.reshape(N, H * W, C)
    # (H8)  tokens = [mean_l h | h_1 .. h_L], (N, 1, L + 1, C)
    return np.concatenate([x3.mean(axis=1, keepdims=True), x3], axis=1)[:, None], h.shape


def _tokens_backward(dout, shape, name, grads, run):
    N, H, W, C = shape
    d = dout.reshape(N, H * W + 1, C)
    # (H8)  position l fed token l + 1 and 1/L of token 0: dh_l = d_{l+1} + d_0 / L
    return (d[:, 1:] + d[:, :1] / (H * W)).reshape(shape)


def _posemb_forward(h, step, run):
    # (H8)  tokens + P, P (L + 1, C) the learned positional embedding
    return h + run.p[f"{step.name}.weight"], None


def _posemb_backward(dout, cache, name, grads, run):
    # (H8)  dP = sum over the batch; the tokens' gradient passes unchanged
    grads[f"{name}.weight"] = dout.sum(axis=(0, 1))
    return dout


def _first_forward(h, step, run):
    # (H8)  the mean token's output, (N, C)
    return h[:, 0, 0, :].copy(), h.shape


def _first_backward(dout, shape, name, grads, run):
    dh = np.zeros(shape, dtype=dout.dtype)
    # (H8)  only token 0 was read
    dh[:, 0, 0, :] = dout
    return dh


CLASSIFIER_STEPS = {**STEPS, "avgpool": (_avgpool_forward, _avgpool_backward),
                    "tokens": (_tokens_forward, _tokens_backward), "posemb": (_posemb_forward, _posemb_backward),
                    "first": (_first_forward, _first_backward)}


# ----------------------------------------------------------------------------------------------
# Cross-entropy (H7)


def log_softmax(logits):
    """(H7) log p(k | x) = f_k - log sum_j exp f_j, row-wise, shifted by the row max (no overflow). (N, K)."""
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits, y):
    """(H7) The mean cross-entropy -1/N sum_n log softmax(f_n)_{y_n} and its gradient (softmax - onehot) / N.

    logits (N, K), y int (N,) in 0..K-1 -> (loss float, dlogits (N, K))."""
    n, k = logits.shape
    y = check_labels(y, k, n, allow_null=False)
    logp = log_softmax(logits)
    # (H7)  L = -(1/N) sum_n log p(y_n | x_n)
    loss = -float(logp[np.arange(n), y].mean())
    # (H7)  dL/df = (softmax(f) - onehot(y)) / N
    d = np.exp(logp)
    d[np.arange(n), y] -= 1.0
    return loss, d / n


class _ClassifierMixin:
    """log p(y | x_t, t), its input gradient and the training loss, from forward/backward (H7)."""

    def _labels_of(self, y, n):
        return check_labels(y, self.num_classes, n, allow_null=False)   # InputError: a class outside 0..K-1

    def log_prob(self, x, t, y):
        """(H7) log p(y | x_t, t) = log softmax(f(x_t, t))_y, (N,). y an int or (N,) in 0..K-1."""
        logits, _ = self.forward(x, t)
        y = self._labels_of(y, logits.shape[0])
        return log_softmax(logits)[np.arange(logits.shape[0]), y]

    def grad_log_prob(self, x, t, y):
        """(H7) grad_{x_t} log p(y | x_t, t), shaped like x: backward of dlogits = onehot(y) - softmax(f).

        Each example's log-probability depends on its own input only (GroupNorm and attention act per example),
        so one backward of the sum gives every example's gradient."""
        logits, cache = self.forward(x, t)
        n = logits.shape[0]
        y = self._labels_of(y, n)
        # (H7)  d log p(y | x) / df = onehot(y) - softmax(f)
        d = -np.exp(log_softmax(logits))
        d[np.arange(n), y] += 1.0
        return self.backward(d, cache)[0]

    def loss_and_grads(self, x, t, y):
        """(H7) The mean cross-entropy on the batch and its parameter gradients (no input gradient)."""
        logits, cache = self.forward(x, t)
        loss, d = cross_entropy(logits, self._labels_of(y, logits.shape[0]))
        return loss, self.backward(d, cache, input_grad=False)[1]


def train_step(model, opt, sched, x0, t, eps, y, lr=None, grad_clip=None):
    """One AdamW step of the classifier on x_t = q_sample(sched, x0, t, eps) (F3) with labels y -> the loss (float).

    t (N,) 0-based steps and eps like x0 (noise is an argument); grad_clip None or a max norm (O3). The port's
    train_step takes the same arguments in the same order."""
    # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    xt = q_sample(sched, x0, t, eps)
    loss, grads = model.loss_and_grads(xt, t, y)
    if grad_clip is not None:
        grads, _ = clip_grad_norm(grads, grad_clip)  # (O3)
    opt.step(grads, lr=lr)  # (O1)
    return loss


# ----------------------------------------------------------------------------------------------
# The networks


class Classifier(_ClassifierMixin, _Model):
    """p(y | x_t, t) for (N, in_channels, H, W) images: the UNet's encoder half (encoder_plan), pooled, a linear
    head to ``num_classes`` logits. Arguments as unet.UNet's where shared; ``pool`` "avg" | "attention" (H8;
    attention needs ``image_size``, an int or (H, W)). The time MLP is the UNet's (B6): emb of dim base_channels,
    Linear, SiLU, Linear to time_dim (default 4 base_channels), SiLU, projected into every residual block."""

    def __init__(self, num_classes, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                 attention=(False, False, True), groups=8, time_dim=None, mid_attention=True, pool="avg",
                 image_size=None, norm_eps=L.GN_EPS, dtype=np.float32, seed=0):
        k, chans, attention, nrb, positions = check_classifier_args(
            num_classes, base_channels, channel_mults, num_res_blocks, attention, groups, pool, image_size, norm_eps)
        self.num_classes, self.in_channels, self.groups, self.norm_eps = k, in_channels, groups, float(norm_eps)
        self.emb_dim, self.time_dim, self.continuous_time = base_channels, time_dim or 4 * base_channels, False
        self.positions, self.levels = positions, len(chans)
        self.config = dict(num_classes=k, in_channels=in_channels, base_channels=base_channels,
                           channel_mults=tuple(channel_mults), num_res_blocks=nrb, attention=attention, groups=groups,
                           time_dim=self.time_dim, mid_attention=bool(mid_attention), pool=pool,
                           image_size=image_size, norm_eps=self.norm_eps, dtype=np.dtype(dtype).name)
        self.time_plan = time_plan(self.emb_dim, self.time_dim, act=True)
        self.plan = encoder_plan(in_channels, chans, attention, nrb, bool(mid_attention), k, pool, positions)
        self._make_params(self.time_plan + self.plan, dtype, seed)

    def _make_params(self, plan, dtype, seed):
        """unet's rule for every layer it knows (the head, plan[-1], zero); the positional embedding N(0, 1/C), as
        ADM's, from its own seeded stream."""
        super()._make_params([s for s in plan if s.op != "posemb"], dtype, seed)
        rng = np.random.default_rng([seed, 1])
        for s in plan:
            if s.op == "posemb":
                self.params[f"{s.name}.weight"] = (rng.standard_normal((s.c_in, s.c_out)) / np.sqrt(s.c_out)
                                                   ).astype(self.dtype)

    def _run(self, plan, h, temb=None, y=None):
        """unet's loop over the classifier's steps (unet's and the pools)."""
        run = SimpleNamespace(p=self.params, groups=self.groups, eps=self.norm_eps, temb=temb, kept=[], y=None)
        tape = []
        for step in plan:
            forward, backward = CLASSIFIER_STEPS[step.op]
            h, cache = forward(h, step, run)
            tape.append((backward, step.name, cache))
        return h, tape

    def forward(self, x, t):
        """x (N, in_channels, H, W), t int (N,) or an int, 0-based -> logits (N, K), cache (the tapes)."""
        x = self._input(x, 4, "(N, C, H, W)")
        (N, C, H, W), f = x.shape, 2 ** (self.levels - 1)
        if C != self.in_channels or H % f or W % f or (self.positions is not None and (H // f) * (W // f)
                                                        != self.positions):
            size = f"{self.config['image_size']}" if self.positions is not None else f"H, W divisible by {f}"
            raise InputError(f"the classifier expects x of shape (N, {self.in_channels}, H, W) with {size}, got "
                             f"{x.shape}")
        temb, time_tape = self._run(self.time_plan, self._time_embedding(t, N))   # SiLU(temb) (N, time_dim)
        logits, tape = self._run(self.plan, np.ascontiguousarray(x.transpose(0, 2, 3, 1)), temb)
        return logits, dict(tape=tape, time_tape=time_tape)

    def backward(self, dlogits, cache, input_grad=True):
        """dlogits (N, K) -> dx (N, in_channels, H, W) (None with input_grad=False), grads {name: like params}."""
        g = {}
        d, dtemb = self._backprop(cache["tape"], np.asarray(dlogits, dtype=self.dtype), g, input_grad)
        self._backprop(cache["time_tape"], dtemb, g, input_grad=False)   # t is an index: no gradient
        dx = np.ascontiguousarray(d.transpose(0, 3, 1, 2)) if input_grad else None
        return dx, {k: g[k] for k in self.params}


class PointClassifier(_ClassifierMixin, _Model):
    """p(y | x_t, t) for (N, in_dim) points: unet.MLP's plan with ``num_classes`` outputs, the logits
    (h = in_proj(x) + temb, residual SiLU-linear layers, out ``head``); temb = fc2(SiLU(fc1(emb(t)))) (B6)."""

    def __init__(self, num_classes, in_dim=2, hidden=64, num_layers=2, time_dim=32, dtype=np.float32, seed=0):
        self.num_classes = check_int(num_classes, "num_classes (the classifier's classes)", lo=2)
        self.in_dim, self.emb_dim, self.continuous_time = in_dim, time_dim, False
        self.config = dict(num_classes=self.num_classes, in_dim=in_dim, hidden=hidden, num_layers=num_layers,
                           time_dim=time_dim, dtype=np.dtype(dtype).name)
        self.time_plan = time_plan(time_dim, hidden, act=False)
        self.plan = mlp_plan(in_dim, hidden, num_layers, self.num_classes)
        self._make_params(self.time_plan + self.plan, dtype, seed)

    def forward(self, x, t):
        """x (N, in_dim), t int (N,) or an int, 0-based -> logits (N, K), cache (the tapes)."""
        x = self._input(x, 2, "(N, in_dim)")
        if x.shape[1] != self.in_dim:
            raise InputError(f"the classifier expects x of shape (N, {self.in_dim}), got {x.shape}")
        temb, time_tape = self._run(self.time_plan, self._time_embedding(t, x.shape[0]))
        logits, tape = self._run(self.plan, x, temb)
        return logits, dict(tape=tape, time_tape=time_tape)

    def backward(self, dlogits, cache, input_grad=True):
        """dlogits (N, K) -> dx (N, in_dim) (None with input_grad=False), grads {name: like params}."""
        g = {}
        dx, dtemb = self._backprop(cache["tape"], np.asarray(dlogits, dtype=self.dtype), g, input_grad)
        self._backprop(cache["time_tape"], dtemb, g, input_grad=False)
        return (dx if input_grad else None), {k: g[k] for k in self.params}
