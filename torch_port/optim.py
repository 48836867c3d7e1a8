"""Optimiser pieces in torch: AdamW, EMA of the weights, gradient-norm clipping, the LR schedule.

Same names and meaning as reference/optim.py (derivations/optim.md, O1-O4). AdamW is
torch.optim.AdamW itself (fused kernels on CUDA, foreach elsewhere) with the reference's defaults,
plus the reference's flat state dict as flat_state_dict(); EMA and clipping stay on the device
(no host sync).

Parameters may be given as an nn.Module (named_parameters), a dict name -> tensor, or (AdamW,
clipping only) an iterable of tensors; names are what the flat state dicts are keyed by.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from reference.errors import InputError, check_choice, check_int, check_max_norm, check_number

LR_SCHEDULES = ("constant", "cosine")

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing (O3).
CLIP_EPS = 1e-6


# ----------------------------------------------------------------------------- helpers


def _named(params, what="params"):
    """dict name -> tensor from a Module, a Mapping, or an iterable of tensors (named "0", "1", ...)."""
    if isinstance(params, torch.nn.Module):
        return dict(params.named_parameters())
    if isinstance(params, Mapping):
        named = dict(params)
    else:
        named = {str(i): p for i, p in enumerate(params)}
    for k, p in named.items():
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise InputError(f"{what}[{k!r}] must be a floating torch.Tensor, got {type(p).__name__}")
    return named


def _check_state(d, named, prefixes, counter, what):
    """The reference's flat state dict: ``prefix + name`` arrays shaped like the parameters plus a
    scalar counter; values may be tensors or NumPy arrays. Returns the counter as an int."""
    if not isinstance(d, Mapping):
        raise InputError(f"{what} must be a dict of arrays, got {type(d).__name__}")
    want = {p + k: tuple(v.shape) for p in prefixes for k, v in named.items()}
    want[counter] = ()
    missing = [k for k in want if k not in d]
    if missing:
        raise InputError(f"{what} is missing key(s): {', '.join(map(repr, missing))}")
    extra = [k for k in d if k not in want]
    if extra:
        raise InputError(f"{what} has unexpected key(s): {', '.join(map(repr, extra))}")
    for k, shape in want.items():
        if tuple(np.shape(d[k])) != shape:
            raise InputError(f"{what}[{k!r}] has shape {tuple(np.shape(d[k]))}, expected {shape}")
    n = float(d[counter])
    if not math.isfinite(n) or n != round(n) or n < 0:
        raise InputError(f"{what}[{counter!r}] must be an integer >= 0, got {d[counter]!r}")
    return int(n)


def _as_tensor_like(x, ref):
    """A NumPy array or tensor as a new tensor with ref's dtype, device and strides (e.g. channels_last,
    which the fused/foreach AdamW kernels require to match the parameter's)."""
    src = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return torch.empty_like(ref).copy_(src.reshape(ref.shape))


# ----------------------------------------------------------------------------- AdamW (O1)


def _take_lr_argument(opt, args, kwargs):
    """Step pre-hook: ``opt.step(lr=x)`` sets every group's lr to x from this step on."""
    if kwargs.get("lr") is None:
        kwargs.pop("lr", None)
        return args, kwargs
    lr = check_number(kwargs.pop("lr"), "lr")
    for group in opt.param_groups:
        group["lr"] = lr
    return args, kwargs


def _count_step(opt, args, kwargs):
    """Step post-hook: the Python-side update counter (the reference's ``step_count``)."""
    opt.step_count += 1


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW with the reference's defaults, its ``lr`` step argument and its flat state (O1).

    fused=True when every parameter is a CUDA tensor, foreach=True otherwise. The update is
    torch's: decoupled decay theta <- (1 - lr lambda) theta, then theta <- theta - lr m_hat /
    (sqrt(v_hat) + eps). ``step(lr=...)`` sets the learning rate from this step on, as the
    reference's ``step(grads, lr=...)`` does; gradients are the parameters' ``.grad``.

    ``state_dict()`` / ``load_state_dict()`` are torch's (nested). ``flat_state_dict()`` /
    ``load_flat_state_dict()`` use the reference's format ("m/<name>", "v/<name>", "step"), so
    one checkpoint resumes on either side; names come from a Module or dict given as ``params``
    ("0", "1", ... for a plain iterable).
    """

    def __init__(self, params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        named = _named(params)
        lr = check_number(lr, "lr")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise InputError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        betas = (check_number(betas[0], "beta1", 0.0, 1.0, hi_open=True),
                 check_number(betas[1], "beta2", 0.0, 1.0, hi_open=True))
        on_cuda = len(named) > 0 and all(p.is_cuda for p in named.values())
        kernel = {"fused": True} if on_cuda else {"foreach": True}
        super().__init__(list(named.values()), lr=lr, betas=betas, eps=check_number(eps, "eps"),
                         weight_decay=check_number(weight_decay, "weight_decay"), **kernel)
        self.param_names = list(named)  # flat state-dict keys, in param_groups[0]["params"] order
        self.step_count = 0  # a Python int: reading it never syncs with the device
        # step(closure=None, lr=None): torch's step plus the reference's lr argument. Done with
        # step hooks rather than overriding step, so torch's own step wrapper runs exactly once.
        self.register_step_pre_hook(_take_lr_argument)
        self.register_step_post_hook(_count_step)

    def _named_params(self):
        return dict(zip(self.param_names, self.param_groups[0]["params"]))

    def load_state_dict(self, state_dict):
        """torch's load_state_dict; also resets ``step_count`` from the loaded state (one sync)."""
        super().load_state_dict(state_dict)
        steps = [float(s["step"]) for s in self.state.values() if "step" in s]
        self.step_count = int(steps[0]) if steps else 0

    def flat_state_dict(self):
        """The reference's format: tensor copies "m/<name>", "v/<name>" and "step" (int64 scalar)."""
        d = {"step": torch.tensor(self.step_count, dtype=torch.int64)}
        for k, p in self._named_params().items():
            st = self.state.get(p, {})
            d[f"m/{k}"] = st["exp_avg"].detach().clone() if "exp_avg" in st else torch.zeros_like(p)
            d[f"v/{k}"] = st["exp_avg_sq"].detach().clone() if "exp_avg_sq" in st else torch.zeros_like(p)
        return d

    def load_flat_state_dict(self, state_dict):
        """Restore from the reference's format (tensors or NumPy arrays); InputError names a bad key."""
        named = self._named_params()
        step = _check_state(state_dict, named, ("m/", "v/"), "step", "AdamW state_dict")
        group = self.param_groups[0]
        on_device = group.get("fused") or group.get("capturable")
        for k, p in named.items():
            if step == 0:
                self.state.pop(p, None)  # torch initialises the state lazily at the first step
                continue
            # torch keeps "step" as a float tensor: on the device (float32) for fused/capturable,
            # else on the CPU in the default float dtype (its _get_scalar_dtype rule)
            step_t = (torch.tensor(float(step), dtype=torch.float32, device=p.device) if on_device
                      else torch.tensor(float(step), dtype=torch.get_default_dtype()))
            self.state[p] = {"step": step_t,
                             "exp_avg": _as_tensor_like(state_dict[f"m/{k}"], p),
                             "exp_avg_sq": _as_tensor_like(state_dict[f"v/{k}"], p)}
        self.step_count = step


# ----------------------------------------------------------------------------- EMA (O2)


class EMA:
    """Exponential moving average of the parameters, held as device tensors (O2).

    shadow <- d_n shadow + (1 - d_n) theta, with d_n = decay (warmup=False, default) or
    min(decay, (1 + n)/(10 + n)) after n updates (warmup=True): the reference's rule. Updates use
    torch._foreach_lerp_ under no_grad: no host sync. ``params`` is the dict name -> shadow tensor.
    """

    def __init__(self, params, decay=0.9999, warmup=False):
        named = _named(params)
        self.decay = check_number(decay, "decay", 0.0, 1.0)
        if not isinstance(warmup, bool):
            raise InputError(f"warmup must be True or False, got {warmup!r}")
        self.warmup = warmup
        self.params = {k: p.detach().clone() for k, p in named.items()}  # the averaged values
        self.num_updates = 0

    def current_decay(self):
        """The decay d_n that the next update uses (n = num_updates so far)."""
        n = self.num_updates
        # (O2)  d_n = min(decay, (1 + n) / (10 + n)) with warmup, else decay
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def _matching_keys(self, d, what):
        missing = [k for k in self.params if k not in d]
        if missing:
            raise InputError(f"{what} is missing key(s): {', '.join(map(repr, missing))}")
        extra = [k for k in d if k not in self.params]
        if extra:
            raise InputError(f"{what} has unexpected key(s): {', '.join(map(repr, extra))}")

    def _matching(self, params):
        named = _named(params)
        self._matching_keys(named, "params")
        return [named[k].detach() for k in self.params]

    @torch.no_grad()
    def update(self, params):
        """Fold the current parameters (Module or dict name -> tensor) into the shadow."""
        current = self._matching(params)
        d = self.current_decay()
        # (O2)  shadow <- shadow + (1 - d)(theta - shadow) = d shadow + (1 - d) theta
        torch._foreach_lerp_(list(self.params.values()), current, 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, params):
        """Write the averaged values into a Module's parameters (or a dict of tensors) in place."""
        for target, s in zip(self._matching(params), self.params.values()):
            target.copy_(s)

    def state_dict(self):
        """Copies of the averaged values keyed by parameter name: a state dict a model can load
        (``num_updates`` is not in it; it matters with warmup=True only: pass it back on load)."""
        return {k: s.detach().clone() for k, s in self.params.items()}

    def load_state_dict(self, state_dict, num_updates=None):
        """Restore from ``state_dict()`` output (tensors or NumPy arrays, e.g. the reference's)."""
        self._matching_keys(state_dict, "EMA state_dict")
        with torch.no_grad():
            for k, s in self.params.items():
                if tuple(np.shape(state_dict[k])) != tuple(s.shape):
                    raise InputError(f"EMA state_dict[{k!r}] has shape {tuple(np.shape(state_dict[k]))}, "
                                     f"expected {tuple(s.shape)}")
                s.copy_(_as_tensor_like(state_dict[k], s))
        if num_updates is not None:
            self.num_updates = check_int(num_updates, "num_updates")


# ----------------------------------------------------------------------------- clipping (O3)


def clip_grad_norm(parameters_or_grads, max_norm):
    """Global L2 gradient-norm clipping, torch.nn.utils.clip_grad_norm_'s rule (O3).

    The total norm (before clipping) is a 0-d tensor: no .item(), no host sync.
      - dict name -> gradient tensor (the reference's meaning): returns (new dict of clipped
        gradients, total_norm); the inputs are not changed.
      - nn.Module or iterable of parameters (the training-loop use): clips their ``.grad`` in
        place, exactly torch.nn.utils.clip_grad_norm_, and returns total_norm alone.
    max_norm = inf measures the norm without clipping.
    """
    max_norm = check_max_norm(max_norm)
    if isinstance(parameters_or_grads, Mapping):
        grads = _named(parameters_or_grads, "grads")
        # (O3)  ||g|| = sqrt(sum_k ||g_k||^2): the norm of the per-tensor norms
        total_norm = torch.nn.utils.get_total_norm(list(grads.values()))
        # (O3)  c = min(1, max_norm / (||g|| + 1e-6))
        coef = torch.clamp(max_norm / (total_norm + CLIP_EPS), max=1.0)
        # (O3)  g_k <- c g_k
        return {k: g * coef.to(g.device) for k, g in grads.items()}, total_norm
    params = parameters_or_grads.parameters() if isinstance(parameters_or_grads, torch.nn.Module) \
        else parameters_or_grads
    # (O3)  the same three lines, in place on every p.grad
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


# ----------------------------------------------------------------------------- LR schedule (O4)


def lr_at(step, base_lr, warmup_steps=0, total_steps=None, schedule="constant"):
    """Learning rate for update number ``step`` (0-based: the first update is step 0).

    Warmup: base_lr * min(1, (step + 1)/warmup_steps) (LambdaLR(lambda s: min(1, (s + 1)/W))'s
    values: step 0 gets base_lr/W). Then "constant", or "cosine": base_lr (1 + cos(pi p))/2 with
    p = min(1, (step - W)/(total_steps - W)). Plain Python floats, as in the reference.
    """
    check_choice(schedule, LR_SCHEDULES, "learning-rate schedule")
    step = check_int(step, "step")
    base_lr = check_number(base_lr, "base_lr")
    W = check_int(warmup_steps, "warmup_steps")
    if schedule == "cosine":
        if total_steps is None:
            raise InputError("the cosine learning-rate schedule needs total_steps")
        total_steps = check_int(total_steps, "total_steps", lo=W + 1)
    if step < W:
        # (O4)  lr = base_lr (step + 1) / W
        return base_lr * (step + 1) / W
    if schedule == "constant":
        return base_lr
    # (O4)  p = min(1, (step - W) / (total - W))
    progress = min(1.0, (step - W) / (total_steps - W))
    # (O4)  lr = base_lr (1 + cos(pi p)) / 2
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
