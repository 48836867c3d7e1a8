"""Optimiser pieces: AdamW, EMA of the weights, gradient-norm clipping, the LR schedule.

Derivations: derivations/optim.md (O1 AdamW update, O2 EMA, O3 gradient-norm clipping,
O4 LR warmup and decay).

Parameters are the model's ``params`` dict, name -> np.ndarray; gradients a dict with the same
keys and shapes. ``AdamW.step`` and ``EMA.copy_to`` write into the model's arrays in place;
everything else returns new arrays. Step counts: ``AdamW.step_count`` is the number of updates
taken (the paper's t after the update); ``lr_at(step, ...)`` takes the 0-based index of the update
about to be taken (the first update is step 0).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import InputError, check_choice, check_int, check_max_norm, check_number

LR_SCHEDULES = ("constant", "cosine")

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing (O3).
CLIP_EPS = 1e-6


# ----------------------------------------------------------------------------- checks


def _check_params(params):
    """The model's params: a dict name -> floating np.ndarray (updated in place, so no copies)."""
    if not isinstance(params, dict):
        got = type(params).__name__
        raise InputError(f"params must be a dict name -> np.ndarray (the model's .params), got {got}")
    for k, p in params.items():
        if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
            got = f"np.ndarray of dtype {p.dtype}" if isinstance(p, np.ndarray) else type(p).__name__
            raise InputError(f"params[{k!r}] must be a floating np.ndarray, got {got}")
    return params


def _check_keys(d, want, what):
    """``d`` has exactly the keys of ``want`` (key -> shape), each of that shape."""
    if not hasattr(d, "keys"):
        raise InputError(f"{what} must be a dict of arrays, got {type(d).__name__}")
    missing = [k for k in want if k not in d]
    if missing:
        raise InputError(f"{what} is missing key(s): {', '.join(map(repr, missing))}")
    extra = [k for k in d if k not in want]
    if extra:
        raise InputError(f"{what} has unexpected key(s): {', '.join(map(repr, extra))}")
    for k, shape in want.items():
        if np.shape(d[k]) != shape:
            raise InputError(f"{what}[{k!r}] has shape {np.shape(d[k])}, expected {shape}")


def _check_like(d, ref, what):
    """``d`` has exactly the keys of ``ref`` with the same shapes (e.g. grads vs params)."""
    _check_keys(d, {k: np.shape(v) for k, v in ref.items()}, what)


def _check_state(d, ref, prefixes, counter, what):
    """A flat state dict: ``prefix + name`` arrays shaped like ref[name], and a scalar counter >= 0."""
    want = {p + k: np.shape(v) for p in prefixes for k, v in ref.items()}
    _check_keys(d, {**want, counter: ()}, what)
    n = np.asarray(d[counter])
    if n.dtype.kind not in "iuf" or not np.isfinite(n) or n != np.round(n) or n < 0:
        raise InputError(f"{what}[{counter!r}] must be an integer >= 0, got {d[counter]!r}")
    return int(n)


# ----------------------------------------------------------------------------- AdamW (O1)


class AdamW:
    """torch.optim.AdamW (amsgrad=False, maximize=False) in NumPy, same arguments, same numbers.

    ``params`` is the model's dict name -> np.ndarray; ``step`` updates those arrays in place.
    Moments ``m``, ``v`` have each parameter's shape and dtype. Weight decay is decoupled
    (Loshchilov & Hutter, Algorithm 2) and, as in torch by default, applies to every parameter.
    """

    def __init__(self, params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.params = _check_params(params)
        self.lr = check_number(lr, "lr")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise InputError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.beta1 = check_number(betas[0], "beta1", 0.0, 1.0, hi_open=True)
        self.beta2 = check_number(betas[1], "beta2", 0.0, 1.0, hi_open=True)
        self.eps = check_number(eps, "eps")
        self.weight_decay = check_number(weight_decay, "weight_decay")
        self.m = {k: np.zeros_like(p) for k, p in params.items()}  # first moments, zero at t=0
        self.v = {k: np.zeros_like(p) for k, p in params.items()}  # second moments, zero at t=0
        self.step_count = 0

    def step(self, grads, lr=None):
        """One AdamW update of every parameter, in place. Returns nothing.

        grads: dict with the params' keys and shapes. lr: if given, the learning rate from this
        step on (e.g. ``lr_at(opt.step_count, ...)``), like setting torch's ``group["lr"]``.
        """
        _check_like(grads, self.params, "grads")
        if lr is not None:
            self.lr = check_number(lr, "lr")
        lr, b1, b2, eps, wd = self.lr, self.beta1, self.beta2, self.eps, self.weight_decay
        self.step_count += 1
        t = self.step_count
        # (O1)  bias corrections 1 - beta1^t, 1 - beta2^t  (t = number of updates, from 1)
        bias_c1, bias_c2 = 1.0 - b1**t, 1.0 - b2**t
        # (O1)  torch folds 1/(1 - beta1^t) into the step size ...
        step_size = lr / bias_c1
        # (O1)  ... and divides sqrt(v) by sqrt(1 - beta2^t) before adding eps
        bias_c2_sqrt = math.sqrt(bias_c2)
        for k, p in self.params.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            if wd != 0:
                # (O1)  theta <- (1 - lr lambda) theta   decoupled decay, before the Adam step
                p *= 1.0 - lr * wd
            # (O1)  m <- beta1 m + (1 - beta1) g   (as torch's lerp: m + (1 - beta1)(g - m))
            m += (1.0 - b1) * (g - m)
            # (O1)  v <- beta2 v + (1 - beta2) g^2
            v *= b2
            v += (1.0 - b2) * np.square(g)
            # (O1)  denom = sqrt(v) / sqrt(1 - beta2^t) + eps = sqrt(v_hat) + eps   (eps outside the sqrt)
            denom = np.sqrt(v) / bias_c2_sqrt + eps
            # (O1)  theta <- theta - lr/(1 - beta1^t) m / denom = theta - lr m_hat / (sqrt(v_hat) + eps)
            p -= step_size * m / denom

    def state_dict(self):
        """Flat dict of copies: "m/<name>", "v/<name>" arrays and "step" (int64 scalar).

        Hyperparameters (lr, betas, eps, weight_decay) are the run's configuration, not state.
        """
        d = {"step": np.array(self.step_count, dtype=np.int64)}
        d.update({f"m/{k}": m.copy() for k, m in self.m.items()})
        d.update({f"v/{k}": v.copy() for k, v in self.v.items()})
        return d

    def load_state_dict(self, d):
        """Restore moments and step from ``state_dict()`` output; raises InputError naming a bad key."""
        step = _check_state(d, self.params, ("m/", "v/"), "step", "AdamW state_dict")
        for k in self.params:
            self.m[k][...] = np.asarray(d[f"m/{k}"])
            self.v[k][...] = np.asarray(d[f"v/{k}"])
        self.step_count = step

    # The port's AdamW keeps torch's nested state_dict and offers the flat one under these names;
    # here the flat one is the state_dict, so shared code can call either name on either side.
    flat_state_dict = state_dict
    load_flat_state_dict = load_state_dict


# ----------------------------------------------------------------------------- EMA (O2)


class EMA:
    """Exponential moving average of the parameters: the shadow weights used for sampling.

    The shadow starts as a copy of ``params``. After update n (n = 0, 1, ...) with decay d_n:
        shadow <- d_n shadow + (1 - d_n) params,
    so with a constant decay d, after n updates of x_1..x_n from x_0:
        shadow_n = d^n x_0 + sum_k (1 - d) d^(n-k) x_k.
    warmup=False (default): d_n = decay, the plain EMA (Ho et al. use 0.9999).
    warmup=True: d_n = min(decay, (1 + n)/(10 + n)) (TF's num_updates rule), so early shadows
    follow the fast-moving weights instead of remembering the random init for ~1/(1-decay) steps.
    """

    def __init__(self, params, decay=0.9999, warmup=False):
        _check_params(params)
        self.decay = check_number(decay, "decay", 0.0, 1.0)
        if not isinstance(warmup, bool):
            raise InputError(f"warmup must be True or False, got {warmup!r}")
        self.warmup = warmup
        self.params = {k: p.copy() for k, p in params.items()}  # the averaged values
        self.num_updates = 0

    def current_decay(self):
        """The decay d_n that the next update uses (n = num_updates so far)."""
        n = self.num_updates
        # (O2)  d_n = min(decay, (1 + n) / (10 + n)) with warmup, else decay
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self, params):
        """Fold the current ``params`` into the shadow (in place on the shadow)."""
        _check_like(params, self.params, "params")
        d = self.current_decay()
        for k, s in self.params.items():
            # (O2)  shadow <- d shadow + (1 - d) theta   (as torch's lerp: s + (1 - d)(theta - s))
            s += (1.0 - d) * (params[k] - s)
        self.num_updates += 1

    def copy_to(self, params):
        """Write the averaged values into ``params`` (e.g. model.params) in place."""
        _check_like(params, self.params, "params")
        for k, s in self.params.items():
            params[k][...] = s

    def state_dict(self):
        """Copies of the averaged values keyed by parameter name: a params dict a model can load,
        and what a checkpoint stores as its "ema/<name>" group. ``num_updates`` is not in it: it
        only matters with warmup=True, where it equals the optimiser's step count."""
        return {k: s.copy() for k, s in self.params.items()}

    def load_state_dict(self, d, num_updates=None):
        """Restore the averaged values from ``state_dict()`` output (and the count, if given)."""
        _check_like(d, self.params, "EMA state_dict")
        for k, s in self.params.items():
            s[...] = np.asarray(d[k])
        if num_updates is not None:
            self.num_updates = check_int(num_updates, "num_updates")


# ----------------------------------------------------------------------------- clipping (O3)


def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    Same rule as torch.nn.utils.clip_grad_norm_: the coefficient min(1, max_norm/(norm + 1e-6))
    multiplies every gradient (so the clipped norm is max_norm * norm/(norm + 1e-6), just under
    max_norm). Returns (new dict of clipped arrays, total norm before clipping as a float); the
    input arrays are not changed. The norm is accumulated in float64; each output keeps its dtype.
    max_norm = inf measures the norm without clipping.
    """
    if not isinstance(grads, dict):
        raise InputError(f"grads must be a dict name -> np.ndarray, got {type(grads).__name__}")
    max_norm = check_max_norm(max_norm)
    # (O3)  ||g_k|| per tensor, then ||g|| = sqrt(sum_k ||g_k||^2): the norm of the per-tensor norms
    norms = [math.sqrt(float(np.sum(np.square(np.asarray(g, dtype=np.float64))))) for g in grads.values()]
    total_norm = math.sqrt(sum(n * n for n in norms))
    # (O3)  c = min(1, max_norm / (||g|| + 1e-6))
    coef = min(1.0, max_norm / (total_norm + CLIP_EPS))
    # (O3)  g_k <- c g_k   (always multiplied, as torch does; c = 1 below the threshold)
    return {k: np.asarray(g) * coef for k, g in grads.items()}, total_norm


# ----------------------------------------------------------------------------- LR schedule (O4)


def lr_at(step, base_lr, warmup_steps=0, total_steps=None, schedule="constant"):
    """Learning rate for update number ``step`` (0-based: the first update is step 0).

    Warmup (O4): lr = base_lr * min(1, (step + 1)/warmup_steps), the values torch's
    LambdaLR(lambda s: min(1, (s + 1)/W)) gives: step 0 gets base_lr/W (never 0, so no update
    is wasted) and step W-1 the full base_lr.
    After warmup: "constant" keeps base_lr; "cosine" decays over the steps W..total_steps,
        lr = base_lr * (1 + cos(pi * p))/2,  p = min(1, (step - W)/(total_steps - W)),
    so lr = base_lr at step W, base_lr/2 halfway and 0 from step total_steps on.
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
        # (O4)  lr = base_lr (step + 1) / W   linear warmup
        return base_lr * (step + 1) / W
    if schedule == "constant":
        return base_lr
    # (O4)  p = min(1, (step - W) / (total - W))   fraction of the decay phase done
    progress = min(1.0, (step - W) / (total_steps - W))
    # (O4)  lr = base_lr (1 + cos(pi p)) / 2   cosine decay to 0
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
