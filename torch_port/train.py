"""One training step and the training loop of the PyTorch port — fast on a GPU.

The same step as reference/train.py (Ho et al. Algorithm 1):
  t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps)                          (F3)
  loss = L_simple(model(x_t, t), target)                                            (L4)
  grads by autograd, global-norm clip, AdamW, EMA of the weights.                   (O1-O3)
cfg.class_cond: the labels travel with the data (``prepare_labels``) and each is dropped to the null class
with probability cfg.p_uncond, drawn on the device after t and eps from the step's generator (W1).
cfg.objective "edm" | "flow" | "ncsn": ``objective_step``, the reference's (u, then eps, then the drops; D5-D8, D10,
D14, D15), the loss by autograd.

What makes it quick on a GPU (each is a Trainer option, on by default on CUDA, off on the CPU):
  - bf16 autocast around the network only; master weights, loss, optimiser and EMA stay fp32;
  - channels_last (NHWC); torch.compile of the network (``cuda_graphs=True``: mode="reduce-overhead", CUDA graphs);
  - fused AdamW (torch_port.optim.AdamW picks fused=True for CUDA parameters), EMA on the device;
  - the whole (small) dataset resident on the device: ``prepare_data`` returns a ``DeviceData``
    whose ``[idx]`` copies the batch's indices host-to-device without blocking and gathers there;
  - no host sync inside a step: the loss and gradient norm come back as device tensors that the
    runner reads every ``log_every`` steps. A non-finite step is still refused, on the device:
    fused AdamW takes a ``found_inf`` flag and skips the update (the runner then stops the run at its
    next read). On the CPU the reference's per-step check raises NonFiniteError instead.

Only the network is compiled. The optimiser step, the clipping and the EMA run eagerly as a handful of fused/foreach
kernels, so the learning rate (a Python float that changes every step) is a kernel argument, never a graph
constant: no recompiles, and the CUDA graphs hold no optimiser state.

Multi-GPU: ``torchrun --nproc_per_node=N -m torch_port train ...`` starts N processes; each Trainer joins the
process group (nccl on CUDA, gloo on CPU), uses cuda:LOCAL_RANK, wraps the model in DDP (then compiles the DDP
module, the documented order). ``batch_size`` is the global batch: every rank draws the same global indices (the
runner's seeded data order) and keeps its own contiguous ``batch_size / N`` slice, so DDP's gradient average is
the full batch's mean. t and eps come from a generator seeded by (seed, rank, step): distinct per rank, and a
resumed run draws exactly the noise the uninterrupted run would have. The logged loss is rank 0's. Rank 0 alone
logs, draws progress, writes pictures and checkpoints (from the unwrapped module: no ``module.`` prefix).
"""
from __future__ import annotations

import gc

import numpy as np
import torch
import torch.distributed as dist

from common.choices import CONTINUOUS_OBJECTIVES
from reference.errors import InputError, check_class_cond, check_labels, check_run_labels

from . import objectives
from .device import (RESIDENT_FRACTION, DeviceData, fits_on_device, init_distributed,  # noqa: F401  (re-exported)
                     resolve_device, unwrap)
from .diffusion import LEARNED, q_sample
from .optim import EMA, AdamW, clip_grad_norm, lr_at
from .resample import ImportanceSampler
from .schedules import Schedule, make_betas, rescale_zero_terminal_snr
from .unet import MLP, UNet
from .vlb import HYBRID_LAMBDA, loss_settings, training_loss


def run_lr(cfg, step):
    """The learning rate of a run's step (O4), for the denoiser's and the classifier's trainers alike: a run that
    ends within its warmup never reaches a decay, so "constant" gives the same rates."""
    schedule = getattr(cfg, "lr_schedule", "constant") if cfg.steps > cfg.warmup else "constant"
    return lr_at(step, cfg.lr, warmup_steps=cfg.warmup, total_steps=cfg.steps, schedule=schedule)

class NonFiniteError(FloatingPointError):
    """The loss or the gradient norm is NaN or inf: the update is refused, the parameters are untouched."""


# ---- setup (not math) ---------------------------------------------------------------------------

def build_schedule(cfg, device="cpu"):
    betas = make_betas(cfg.schedule, cfg.T)
    if cfg.zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return Schedule(betas).to(device)


def is_continuous(cfg):
    """A continuous objective's run (edm, flow, ncsn): a float time input, no chain to train."""
    return getattr(cfg, "objective", "ddpm") in CONTINUOUS_OBJECTIVES


def build_model(cfg, item_shape):
    """UNet for images (item_shape (C, H, W)), MLP for points (item_shape (D,)), in cfg.dtype; a float time input
    for a continuous objective (the same parameters)."""
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    kw = dict(cfg.model, **({"continuous_time": True} if is_continuous(cfg) else {}))
    if getattr(cfg, "variance", "fixed") == LEARNED:  # (V1)  the mean's C channels, then the variance's C
        kw["out_dim" if len(item_shape) == 1 else "out_channels"] = 2 * item_shape[0]
    if len(item_shape) == 1:
        model = MLP(in_dim=item_shape[0], seed=cfg.seed, **kw)
    else:
        model = UNet(in_channels=item_shape[0], seed=cfg.seed, **kw)
    return model.to(dtype)


def noise_seed(seed, rank, step):
    """The seed of t and eps for update ``step`` (0-based) on ``rank``: a function of the three only."""
    return int(np.random.SeedSequence([seed, 1, rank, step]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ---- the step -------------------------------------------------------------------------------------

def _refuse_on_device(opt, loss, norm):
    """Fused AdamW skips its update where ``found_inf`` is 1: a non-finite step is refused with no sync."""
    if opt.param_groups[0].get("fused"):
        opt.found_inf = (~(torch.isfinite(loss) & torch.isfinite(norm))).to(torch.float32)


def train_step(model, opt, ema, sched, x0, t, eps, prediction="eps", lr=None, grad_clip=1.0, weighting="none",
               loss="simple", variance="fixed_small", hybrid_lambda=HYBRID_LAMBDA, weights=None, levels=256,
               record_terms=None, y=None, *, amp=False, check_finite=True):
    """One optimisation step on the batch x0 (N, ...) with the given t (N,) (0-based) and eps (like x0).

    The reference's parameters in the reference's order (reference.train.train_step; torch_port/vlb.py), then the
    port's own, keyword-only: ``amp`` (bf16 autocast around the network) and ``check_finite``.
    ``record_terms(t, terms)`` gets the per-example L_t of a bound loss after the finiteness check.
    ``model`` may be wrapped (DDP, torch.compile); ``ema`` tracks the plain module's parameters. ``y``: the class
    labels (N,) of a conditional model (W1), on x0's device; None otherwise.
    Returns (loss, grad_norm) as 0-d tensors, grad_norm measured before clipping. check_finite=True:
    NonFiniteError before touching the parameters (one host sync); False: no sync, and fused AdamW
    refuses a non-finite update on the device.
    """
    # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    xt = q_sample(sched, x0, t, eps)
    out = _forward(model, xt, t, y, amp, check_finite)
    # (L4)  loss = mean ||target - model(x_t, t)||^2, in x0's precision whatever the autocast dtype
    #       (V4)  or L_hybrid / L_vlb
    loss, terms = training_loss(sched, out.to(x0.dtype), x0, xt, t, eps, prediction, loss, variance, hybrid_lambda,
                                weights, None if weighting == "none" else weighting, levels=levels)
    norm = _backward(model, opt, loss, grad_clip, check_finite)
    if record_terms is not None and terms is not None:
        record_terms(t, terms)
    return _update(model, opt, ema, lr, loss, norm)


def objective_step(model, opt, ema, cfg, x0, u, eps, lr=None, grad_clip=1.0, y=None, *, amp=False,
                   check_finite=True):
    """One optimisation step of a continuous objective (cfg.objective "edm" | "flow"): reference.train's
    objective_step (u (N,) in (0, 1), eps or a reflow pair's z like x0), the port's own keyword-only options as
    train_step's. Returns (loss, grad_norm) as 0-d tensors."""
    # (D7, D14, D15)  edm: ln sigma ~ N(P_mean, P_std^2); flow: t uniform or logit-normal, shifted once
    level = objectives.level(cfg, u)
    # (D5, D6, D8) edm: c_in x, (x0 - c_skip x) / c_out, lambda c_out^2;  (D10) flow: x_t, eps - x0, 1
    net_in, time_in, target, weight = objectives.training_target(cfg, x0, eps, level)
    out = _forward(model, net_in, time_in, y, amp, check_finite)
    # loss = mean_n weight_n mean_d (F(net_in, time_in) - target)^2, in x0's precision
    loss = objectives.loss(out.to(x0.dtype), target, weight)
    norm = _backward(model, opt, loss, grad_clip, check_finite)
    return _update(model, opt, ema, lr, loss, norm)


def _forward(model, x, t, y, amp, check_finite):
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(x, t) if y is None else model(x, t, y)              # bf16 under autocast
    if check_finite and not bool(torch.isfinite(out).all()):  # a diverged network, not bad input
        raise NonFiniteError("non-finite model output (the network has diverged)")
    return out


def _backward(model, opt, loss, grad_clip, check_finite):
    """Gradients by autograd, clipped; the norm before clipping; a non-finite step refused (host or device)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    # (O3)  g <- g * min(1, c / (||g|| + 1e-6))
    norm = clip_grad_norm(model.parameters(), grad_clip if grad_clip else float("inf"))
    if check_finite:
        if not bool(torch.isfinite(loss) & torch.isfinite(norm)):
            raise NonFiniteError(f"non-finite {'loss' if not torch.isfinite(loss) else 'gradient norm'} "
                                 f"(loss={loss.item()}, grad_norm={norm.item()})")
        opt.__dict__.pop("found_inf", None)  # no stale flag from an earlier unchecked step
    else:
        _refuse_on_device(opt, loss.detach(), norm)
    return norm


def _update(model, opt, ema, lr, loss, norm):
    if lr is not None:  # a Python float in the group: a kernel argument, never a compiled constant
        for group in opt.param_groups:
            group["lr"] = lr
    # (O1)  AdamW (fused on CUDA);  (O2)  EMA on the device
    opt.step()
    ema.update(unwrap(model))
    return loss.detach(), norm.detach()


def uniforms(gen, n, device):
    """n uniforms strictly inside (0, 1), (k + 1/2) / 2^52 for a 52-bit integer k (reference.train.uniforms' form)."""
    k = torch.randint(0, 2 ** 52, (n,), device=device, generator=gen, dtype=torch.int64)
    return (k.to(torch.float64) + 0.5) / 2.0 ** 52


# ---- the Trainer ----------------------------------------------------------------------------------

class Trainer:
    """Model, schedule, optimiser, EMA and noise on one device (one rank of DDP under torchrun).

    device "auto" | "cpu" | "cuda"; compile, amp, channels_last: None means on for CUDA, off on the
    CPU; cuda_graphs: compile with mode="reduce-overhead" (CUDA only).
    """

    backend = "torch"

    def __init__(self, cfg, item_shape, device="auto", compile=None, amp=None, channels_last=None,
                 cuda_graphs=False, levels=None):
        self.cfg, self.item_shape = cfg, tuple(item_shape)
        # levels: the data's, for the bound's decoder (None: 256 for images, a density for 2-D points)
        self.loss, self.variance, self.hybrid_lambda, importance = loss_settings(cfg)
        self.levels = levels if levels is not None else (256 if len(self.item_shape) == 3 else None)
        self.resampler = ImportanceSampler(cfg.T) if importance else None
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        self._check_flags(cuda, compile, cuda_graphs)
        if cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once
        self.rank, self.world = init_distributed(self.device)
        self.is_main = self.rank == 0
        if cfg.batch_size % self.world:
            raise InputError(f"--batch-size {cfg.batch_size} (the global batch) must divide by the number of "
                             f"processes ({self.world})")
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.amp = (cuda and cfg.dtype == "float32") if amp is None else bool(amp)
        self.channels_last = (cuda and len(self.item_shape) == 3) if channels_last is None else bool(channels_last)
        self.cuda_graphs = bool(cuda_graphs)
        self.sched = build_schedule(cfg, self.device)
        self.model = build_model(cfg, self.item_shape).to(self.device)  # the plain module: checkpoints, EMA
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, decay=cfg.ema_decay)
        self.opt = AdamW(self.model, lr=cfg.lr, weight_decay=cfg.weight_decay)  # fused on CUDA
        self.net = self._wrap(cuda, compile)
        self.gen = torch.Generator(self.device)
        self.check_finite = not cuda  # a per-step check is a host sync on the GPU; there the device refuses
        self.num_classes = check_class_cond(cfg)
        self.continuous = is_continuous(cfg)

    @staticmethod
    def _check_flags(cuda, compile, cuda_graphs):
        if cuda_graphs and not cuda:
            raise InputError("--cuda-graphs needs a CUDA device")
        if cuda_graphs and compile is False:
            raise InputError("--cuda-graphs works through torch.compile: drop --no-compile")

    def _wrap(self, cuda, compile):
        """DDP around the module (world > 1), then torch.compile around that (on by default on CUDA)."""
        net = self.model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[self.device.index] if cuda else None)
        if compile if compile is not None else (cuda or self.cuda_graphs):
            net = torch.compile(net, mode="reduce-overhead" if self.cuda_graphs else None, dynamic=False)
        return net

    def prepare_data(self, x):
        """The dataset (N, ...) as a DeviceData: resident on the device when it fits (small datasets)."""
        xt = torch.as_tensor(np.ascontiguousarray(x), dtype=self.dtype)
        resident = fits_on_device(xt.numel() * xt.element_size(), self.device)
        return DeviceData(xt, self.device, self.rank, self.world, self.channels_last, resident)

    def prepare_labels(self, y):
        """The labels (N,) as a resident int64 DeviceData: ``[idx]`` is this rank's slice, as the data's."""
        y = torch.as_tensor(check_labels(np.asarray(y), self.num_classes, allow_null=False))
        return DeviceData(y, self.device, self.rank, self.world, channels_last=False, resident=True)

    def _drop_labels(self, y, n):
        """(W1) The labels, each replaced by the null class K with probability p_uncond; None unconditional."""
        if self.num_classes is None or not torch.is_tensor(y) or y.device.type == "cpu":  # host values: checked
            y = check_run_labels(y.cpu().numpy() if torch.is_tensor(y) else y, self.num_classes, n)
            if y is None:
                return None
            y = torch.from_numpy(y)
        y = y.to(self.device)
        # (W1)  y -> null with probability p_uncond, from this step's generator after t and eps
        drop = torch.rand((n,), device=self.device, generator=self.gen) < self.cfg.p_uncond
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def step(self, x0, step, y=None, z=None):
        """One update on THIS rank's batch x0 (what DeviceData[idx] returns; or any array, copied over).

        ``step`` is the 0-based index of the update: it sets the learning rate (O4) and the noise seed. ``y``: the
        batch's labels when cfg.class_cond (``prepare_labels``' [idx], or any int array). A continuous objective
        draws u (N,), then eps, then the labels' drops (the reference's order); ``z``: a reflow batch's noise ends
        (like x0), used in place of eps (D11).
        """
        x0 = self._on_device(x0)
        n = x0.shape[0]
        self.gen.manual_seed(noise_seed(self.cfg.seed, self.rank, step))  # host-side only, no sync
        if self.continuous:
            u = uniforms(self.gen, n, self.device)
            eps = self._noise(x0) if z is None else self._on_device(z)
            y = self._drop_labels(y, n)
            self._mark_step()
            return objective_step(self.net, self.opt, self.ema, self.cfg, x0, u, eps, self._lr(step),
                                  self.cfg.grad_clip, y=y, amp=self.amp, check_finite=self.check_finite)
        if self.resampler is None:
            t, w = torch.randint(0, self.cfg.T, (n,), device=self.device, generator=self.gen), None
        else:  # (I1, I2)  t ~ p_t, weights 1/(T p_t); the same randint (weight 1) until warmed up
            t, w = self.resampler.sample(self.gen, n, self.device)
        eps = self._noise(x0)
        y = self._drop_labels(y, n)
        self._mark_step()
        return train_step(self.net, self.opt, self.ema, self.sched, x0, t, eps, self.cfg.prediction, self._lr(step),
                          self.cfg.grad_clip, self.cfg.weighting, self.loss, self.variance, self.hybrid_lambda, w,
                          self.levels, None if self.resampler is None else self._record, y, amp=self.amp,
                          check_finite=self.check_finite)

    def _on_device(self, a):
        if not torch.is_tensor(a):
            a = torch.as_tensor(np.asarray(a), dtype=self.dtype)
        a = a.to(device=self.device, dtype=self.dtype)
        return a.contiguous(memory_format=torch.channels_last) if self.channels_last and a.ndim == 4 else a

    def _noise(self, x0):
        eps = torch.randn(x0.shape, device=self.device, dtype=self.dtype, generator=self.gen)
        return eps.contiguous(memory_format=torch.channels_last) if self.channels_last and x0.ndim == 4 else eps

    def _mark_step(self):
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: earlier graph outputs may be reused

    def _lr(self, step):
        return run_lr(self.cfg, step)

    def _record(self, t, terms):
        """The importance sampler's history gets every rank's (t, L_t), in rank order (as improved-diffusion)."""
        if self.world > 1:
            ts = [torch.empty_like(t) for _ in range(self.world)]
            ls = [torch.empty_like(terms) for _ in range(self.world)]
            dist.all_gather(ts, t.contiguous())
            dist.all_gather(ls, terms.contiguous())
            t, terms = torch.cat(ts), torch.cat(ls)
        self.resampler.update(t, terms)

    def denoiser(self, use_ema=True, with_variance=False):
        """A function (x_t, t) -> model output with the EMA (or raw) weights, for the samplers; a continuous
        objective's net(net_in, time_in (N,) float, y=None) -> output, which objectives.denoiser makes a D.

        Learned variances: the C mean channels (DDIM, the ODE solvers, fixed-variance sampling), or all 2C with
        ``with_variance=True`` (sample_loop / vlb_terms with variance="learned"); as the reference's.
        """
        c = self.item_shape[0] if self.variance == LEARNED and not with_variance else None
        model = build_model(self.cfg, self.item_shape).to(self.device)
        if use_ema:
            self.ema.copy_to(model)
        else:
            model.load_state_dict(self.model.state_dict())
        model.eval()

        @torch.no_grad()
        def denoise(xt, t, y=None):  # y: a conditional model's labels (None: the null class), for guidance (W2)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = model(xt, t, y).to(xt.dtype)
            return out if c is None else out[:, :c]

        return denoise

    # ---- checkpoint state: NumPy arrays keyed by the reference's names --------------------

    def state_dict(self):
        """params / ema / opt_state keyed like the reference's (no ``module.`` prefix), as NumPy arrays.

        No noise-generator state: the noise of update ``step`` is seeded by (seed, rank, step); the importance
        sampler's history (rng_state loss_history / loss_counts) when there is one.
        """
        def to_np(sd):
            return {k: v.detach().contiguous().cpu().numpy().copy() for k, v in sd.items()}

        return {"params": to_np(self.model.state_dict()), "ema": to_np(self.ema.state_dict()),
                "opt_state": to_np(self.opt.flat_state_dict()),
                "rng_state": {} if self.resampler is None else self.resampler.state_dict()}

    def load_state_dict(self, ck):
        """Restore from ``state_dict()`` output or a checkpoint of either side (NumPy arrays)."""
        self.model.load_state_dict({k: torch.as_tensor(np.asarray(v), dtype=self.dtype)
                                    for k, v in ck["params"].items()})
        self.ema.load_state_dict({k: torch.as_tensor(np.asarray(v), dtype=self.dtype) for k, v in ck["ema"].items()})
        self.opt.load_flat_state_dict(ck["opt_state"])
        if self.resampler is not None and "loss_history" in (ck.get("rng_state") or {}):  # (I1)  training state
            self.resampler.load_state_dict(ck["rng_state"])
        # The moments must have their parameter's strides (channels_last): fused/foreach kernels walk
        # every list as flat memory and refuse (or would misalign) tensors laid out differently.
        for p, st in self.opt.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st and st[key].stride() != p.stride():
                    st[key] = torch.empty_like(p).copy_(st[key])

    def close(self):
        """Leave torchrun's process group (no-op for one process): all ranks at once, DDP's reducer (which holds the
        group) released first, so no gloo thread is left for exit to std::terminate (3 of 30 loaded runs before)."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            self.net = self.model
            gc.collect()
            dist.destroy_process_group()
