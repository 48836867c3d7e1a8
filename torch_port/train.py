"""One training step and the training loop of the PyTorch port — fast on a GPU.

The same step as reference/train.py (F3, L4, O1-O3), plus what makes it quick:
bf16 autocast with fp32 master weights, channels_last, torch.compile (on by default on CUDA;
``cuda_graphs`` compiles with mode="reduce-overhead", which captures CUDA graphs), fused AdamW,
the EMA kept on the device, the whole (small) dataset resident on the device, and no host
syncs inside the step: the loss is read only every ``log_every`` steps by the shared runner.

Multi-GPU: launched with ``torchrun --nproc_per_node=N -m torch_port train ...`` the Trainer
joins the process group (nccl on CUDA, gloo on CPU), wraps the model in DDP, shards each global
batch across ranks (``batch_size`` is the global batch), seeds t/eps per rank, and only rank 0
logs, draws progress, writes pictures and checkpoints (saved from the unwrapped module, so the
keys carry no ``module.`` prefix and both sides load them).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from reference import data as datasets
from reference import runner
from reference.config import TWO_D, TrainConfig

from .diffusion import q_sample
from .losses import simple_loss
from .optim import EMA, AdamW, clip_grad_norm, lr_at
from .samplers import sample_loop
from .schedules import Schedule, make_betas, rescale_zero_terminal_snr
from .unet import MLP, UNet


class NonFiniteError(FloatingPointError):
    """The loss or the gradient norm is NaN or inf: the update is refused (checked per step on the CPU)."""


def resolve_device(device="auto"):
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from reference.errors import InputError

        raise InputError("--device cuda was asked for but torch sees no CUDA device (torch.cuda.is_available() is False)")
    return dev


def build_schedule(cfg, device="cpu"):
    betas = make_betas(cfg.schedule, cfg.T)
    if cfg.zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return Schedule(betas).to(device)


def build_model(cfg, item_shape):
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    if cfg.data in TWO_D or len(item_shape) == 1:
        model = MLP(in_dim=item_shape[0], seed=cfg.seed, **cfg.model)
    else:
        model = UNet(in_channels=item_shape[0], seed=cfg.seed, **cfg.model)
    return model.to(dtype)


def train_step(model, opt, ema, sched, x0, t, eps, prediction="eps", lr=None, grad_clip=1.0, weighting="none",
               amp=False, check_finite=True):
    """One optimisation step; returns (loss, grad_norm) as 0-d tensors (no host sync unless check_finite)."""
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    # (F3)  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    xt = q_sample(sched, x0, t, eps)
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(xt, t)
    # (L4)  the loss in full precision whatever the autocast dtype
    loss = simple_loss(sched, out.to(x0.dtype), x0, t, eps, prediction,
                       weighting=None if weighting == "none" else weighting)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    # (O3)
    norm = clip_grad_norm(model.parameters(), grad_clip if grad_clip else float("inf"))
    if check_finite and not (torch.isfinite(loss) and torch.isfinite(norm)):
        raise NonFiniteError(f"non-finite {'loss' if not torch.isfinite(loss) else 'gradient norm'} "
                             f"(loss={loss.item()}, grad_norm={norm.item()})")
    # (O1)  AdamW (fused on CUDA);  (O2)  EMA on the device
    opt.step()
    ema.update(_unwrap(model))
    return loss.detach(), norm.detach()


def _unwrap(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)      # DDP


def _init_distributed(device):
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


class Trainer:
    """Model, schedule, optimiser, EMA and noise generator on one device (one rank of DDP)."""

    backend = "torch"

    def __init__(self, cfg: TrainConfig, item_shape, device="auto", compile=None, amp=None, channels_last=None,
                 cuda_graphs=False):
        self.cfg = cfg
        self.item_shape = tuple(item_shape)
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.rank, self.world = _init_distributed(self.device)
        self.is_main = self.rank == 0
        if cfg.batch_size % self.world:
            from reference.errors import InputError

            raise InputError(f"--batch-size {cfg.batch_size} (the global batch) must divide by the number of "
                             f"processes ({self.world})")
        self.image = len(self.item_shape) == 3
        self.amp = cuda and cfg.dtype == "float32" if amp is None else amp
        self.channels_last = (cuda and self.image) if channels_last is None else channels_last
        self.sched = build_schedule(cfg, self.device)
        self.model = build_model(cfg, self.item_shape).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, decay=cfg.ema_decay)
        self.opt = AdamW(self.model, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device] if cuda else None)
        if compile if compile is not None else cuda:
            self.net = torch.compile(self.net, mode="reduce-overhead" if cuda_graphs else None)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + 1 + self.rank)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.check_finite = not cuda  # a per-step check costs a host sync on the GPU; there the runner checks

    def prepare_data(self, x):
        """The whole dataset as one device tensor (small datasets: resident, no per-step copies)."""
        xt = torch.as_tensor(np.ascontiguousarray(x), dtype=self.dtype, device=self.device)
        return xt

    def step(self, x0, step):
        if not torch.is_tensor(x0):
            x0 = torch.as_tensor(x0, dtype=self.dtype, device=self.device)
        x0 = x0.chunk(self.world)[self.rank] if self.world > 1 else x0
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        n = x0.shape[0]
        t = torch.randint(0, self.cfg.T, (n,), device=self.device, generator=self.gen)
        eps = torch.randn(x0.shape, device=self.device, dtype=self.dtype, generator=self.gen)
        if self.channels_last:
            eps = eps.contiguous(memory_format=torch.channels_last)
        lr = lr_at(step, self.cfg.lr, warmup_steps=self.cfg.warmup)
        return train_step(self.net, self.opt, self.ema, self.sched, x0, t, eps, self.cfg.prediction, lr,
                          self.cfg.grad_clip, self.cfg.weighting, amp=self.amp, check_finite=self.check_finite)

    def denoiser(self, use_ema=True):
        model = build_model(self.cfg, self.item_shape).to(self.device)
        if use_ema:
            self.ema.copy_to(model)
        else:
            model.load_state_dict(self.model.state_dict())
        model.eval()

        @torch.no_grad()
        def denoise(xt, t):
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                return model(xt, t).to(xt.dtype)

        return denoise

    def sample(self, n, seed=0, sampler="ddim", steps=None, eta=0.0, record=False, progress=None):
        """Samples as a NumPy float32 array. The noise is drawn on the CPU with torch.Generator(seed)."""
        gen = torch.Generator().manual_seed(seed)
        x_T = torch.randn((n,) + self.item_shape, generator=gen, dtype=self.dtype).to(self.device)
        steps = steps or self.cfg.sample_steps
        res = sample_loop(self.sched, self.denoiser(), x_T, gen, sampler=sampler,
                          steps=None if steps >= self.cfg.T else steps, eta=eta, prediction=self.cfg.prediction,
                          clip_x0=self.cfg.data not in TWO_D, record=record, progress=progress)
        if record:
            return res
        return res.float().cpu().numpy()

    # ---- checkpoint state: NumPy arrays keyed by the reference's names --------------------

    def state_dict(self):
        to_np = lambda sd: {k: v.detach().cpu().numpy().copy() for k, v in sd.items()}  # noqa: E731
        return {"params": to_np(self.model.state_dict()), "ema": to_np(self.ema.state_dict()),
                "opt_state": to_np(self.opt.flat_state_dict()),
                "rng_state": {"noise_torch": self.gen.get_state().numpy().tolist()}}

    def load_state_dict(self, ck):
        dev, dt = self.device, self.dtype
        self.model.load_state_dict({k: torch.as_tensor(v, dtype=dt) for k, v in ck["params"].items()})
        self.ema.load_state_dict({k: torch.as_tensor(v, dtype=dt, device=dev) for k, v in ck["ema"].items()})
        self.opt.load_flat_state_dict(ck["opt_state"])
        if "noise_torch" in ck["rng_state"]:
            self.gen.set_state(torch.tensor(ck["rng_state"]["noise_torch"], dtype=torch.uint8))


def train(cfg: TrainConfig, out_dir, resume=False, progress=True, overwrite=False, device="auto", compile=None,
          amp=None, channels_last=None, cuda_graphs=False):
    """Train on ``cfg.data`` with the port, writing ckpt.npz, log.jsonl and pictures into ``out_dir``."""
    x = datasets.load(cfg.data, seed=cfg.seed, data_dir=cfg.data_dir, image_size=cfg.image_size)
    if cfg.n_data:
        x = x[: cfg.n_data]
    trainer = Trainer(cfg, x.shape[1:], device=device, compile=compile, amp=amp, channels_last=channels_last,
                      cuda_graphs=cuda_graphs)
    try:
        return runner.run(trainer, x, out_dir, resume=resume, progress=progress and trainer.is_main,
                          overwrite=overwrite)
    finally:
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
