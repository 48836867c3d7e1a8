"""Training throughput on one GPU: the port's training step, side by side with diffusers' UNet2DModel.

    python benchmarks/bench_train_gpu.py                              # both models, torch.compile
    python benchmarks/bench_train_gpu.py --models cifar --modes compile,graphs --steps 100
    python benchmarks/bench_train_gpu.py --models small --batch-small 2048 --no-diffusers

Two models, each ours beside diffusers' UNet2DModel of the same layout (when diffusers is installed;
it is a benchmark-only dependency: `pip install diffusers`, else that column is skipped):
  small  1x28x28: base 48, mults (1, 2, 2), 1 res block per level, attention at 14x14 (0.93 GFLOP forward)
  cifar  3x32x32, the DDPM CIFAR-10 layout: base 128, mults (1, 2, 2, 2), 2 res blocks, attention at 16x16.
         diffusers' model is google/ddpm-cifar10-32's configuration. Our UNet has DDPM's layout (num_res_blocks
         + 1 blocks per level on the way up, attention in the middle), so both networks have the same
         parameter count (35,746,307) and FLOPs; the script prints both to show it.

A step is torch_port.train.Trainer.step, exactly what `python -m torch_port train` runs: the batch
gathered from the device-resident dataset, t and eps drawn on the device, q_sample (F3), the network
under bf16 autocast (fp32 master weights), L_simple (L4) in fp32, backward, gradient clipping (O3),
fused AdamW (O1), EMA (O2), channels_last, and torch.compile (modes: eager, compile, graphs =
compile with mode="reduce-overhead", CUDA graphs). diffusers' network is put into the same Trainer in
place of ours, so both columns run the same step code and differ only in the network.

FLOPs: torch.utils.flop_counter.FlopCounterMode over one forward pass (fp32, batch 2, attention on
the math path so it is counted; 2 FLOPs per multiply-add), times 3 for forward + backward. Effective
TFLOP/s = 3 x forward FLOPs per image x images/s; "% peak" against the bf16 dense peak of the GPU
(H100/H200 SXM 989 TFLOP/s; --peak-tflops for others). Timing: CUDA events around --steps steps after
--warmup steps (compilation and CUDA-graph recording happen in the warmup).

Without a CUDA device the script says so and checks what it can on the CPU: it builds every model,
counts its FLOPs and runs two eager training steps of the same Trainer path on a batch of 2 (bf16
autocast and channels_last included; compile, fused AdamW and CUDA graphs need the GPU), then exits 0.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# data name (for the recipe), item shape, our UNet's arguments, diffusers' UNet2DModel arguments
MODELS = {
    "small": dict(data="mnist", shape=(1, 28, 28),
                  ours=dict(base_channels=48, channel_mults=(1, 2, 2), num_res_blocks=1,
                            attention=(False, True, False), groups=16),
                  diffusers=dict(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(48, 96, 96), norm_num_groups=16,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))),
    "cifar": dict(data="cifar10", shape=(3, 32, 32),
                  ours=dict(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                            attention=(False, True, False, False), groups=32),
                  diffusers=dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                                 block_out_channels=(128, 256, 256, 256), norm_num_groups=32,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))),
}
# google/ddpm-cifar10-32's remaining settings (single-head attention, DDPM's embedding and padding)
DIFFUSERS_COMMON = dict(norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1,
                        downsample_padding=0, attention_head_dim=None, dropout=0.0)
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "4090": 165.0}  # first match of the device name wins
TARGETS = "targets on one H100: small >= 50,000 images/s; cifar >= 10% of 989 TFLOP/s and >= 1.5x diffusers"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="small,cifar", help="comma list of: small, cifar")
    p.add_argument("--modes", default="compile", help="comma list of: eager, compile, graphs")
    p.add_argument("--batch-small", type=int, default=1024)
    p.add_argument("--batch-cifar", type=int, default=256)
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps first (compilation, graph recording)")
    p.add_argument("--small-base", type=int, default=48, help="base channels of the small model, a multiple of 16 "
                   "(48: 0.93 GFLOP forward per image; 32: 0.41; 64: 1.63)")
    p.add_argument("--no-diffusers", action="store_true", help="skip diffusers' column")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of this GPU (default: by name)")
    args = p.parse_args()
    if args.small_base < 16 or args.small_base % 16:
        p.error(f"--small-base must be a positive multiple of 16 (GroupNorm with 16 groups), got {args.small_base}")
    small = MODELS["small"]
    small["ours"]["base_channels"] = args.small_base
    small["diffusers"]["block_out_channels"] = (args.small_base, 2 * args.small_base, 2 * args.small_base)
    args.models = [m for m in args.models.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}: choose from {', '.join(MODELS)}")
    for m in args.modes:
        if m not in ("eager", "compile", "graphs"):
            p.error(f"unknown mode {m!r}: choose from eager, compile, graphs")
    return args


# ---- networks and their FLOPs --------------------------------------------------------------------

def our_network(spec):
    from torch_port.unet import UNet

    return UNet(in_channels=spec["shape"][0], **spec["ours"])


def diffusers_network(spec, _missing=[]):  # noqa: B006 - remembers that the message was printed
    """diffusers' UNet2DModel wrapped to our signature (x, t) -> eps, or None when diffusers is missing."""
    try:
        import torch
        from diffusers import UNet2DModel
    except ImportError as err:
        if not _missing:
            print(f"diffusers is not installed ({err}): skipping its column. `pip install diffusers` to compare.")
            _missing.append(True)
        return None

    class DiffusersEps(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, x, t):
            return self.unet(x, t, return_dict=False)[0]

    return DiffusersEps(UNet2DModel(**spec["diffusers"], **DIFFUSERS_COMMON))


def forward_flops_per_image(net, shape, device):
    """FLOPs of one forward pass per image (FlopCounterMode, fp32, batch 2, attention on the math path)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn((2,) + tuple(shape), device=device)
    t = torch.tensor([10, 500], device=device)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        net(x, t)
    return counter.get_total_flops() / 2


def n_params(net):
    return sum(p.numel() for p in net.parameters())


# ---- timing ----------------------------------------------------------------------------------------

def make_trainer(spec, batch, mode, device="cuda", net=None):
    """The port's Trainer in ``mode``; with ``net``, diffusers' network replaces ours in it."""
    import torch

    from lab.config import make_config
    from torch_port.optim import EMA, AdamW
    from torch_port.train import Trainer

    cfg = make_config(spec["data"], batch_size=batch, model=spec["ours"], dtype="float32", warmup=10)
    kw = dict(device=device, compile=mode != "eager", amp=True, channels_last=True, cuda_graphs=mode == "graphs")
    trainer = Trainer(cfg, spec["shape"], **kw)
    if net is not None:  # the same step code around another network
        trainer.model = net.to(trainer.device).to(memory_format=torch.channels_last)
        trainer.ema = EMA(trainer.model, decay=cfg.ema_decay)
        trainer.opt = AdamW(trainer.model, lr=cfg.lr, weight_decay=cfg.weight_decay)  # fused on CUDA
        trainer.net = trainer._wrap(trainer.device.type == "cuda", kw["compile"])
    return trainer


def time_steps(trainer, steps, warmup):
    """Images per second over ``steps`` steps after ``warmup``; also the last loss and peak memory."""
    import torch

    cfg, cuda = trainer.cfg, trainer.device.type == "cuda"
    x = np.random.default_rng(0).uniform(-1, 1, (max(64, 8 * cfg.batch_size),) + trainer.item_shape)
    data = trainer.prepare_data(x.astype(np.float32))
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for s in range(warmup):
        loss, _ = trainer.step(data[rng.integers(0, len(data), cfg.batch_size)], s)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    warm_s, t0 = time.perf_counter() - t0, time.perf_counter()
    for s in range(warmup, warmup + steps):
        loss, _ = trainer.step(data[rng.integers(0, len(data), cfg.batch_size)], s)
    if cuda:
        end.record()
        torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 if cuda else time.perf_counter() - t0
    loss = float(loss)
    if not math.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss} in the benchmark run: the numbers would mean nothing")
    return dict(images_per_s=steps * cfg.batch_size / seconds, loss=loss, warmup_s=warm_s,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"))


# ---- report ----------------------------------------------------------------------------------------

def header(timed):
    cols = f"{'model':6s} {'network':10s} {'params':>8s} {'fwd GFLOP/img':>13s}"
    if timed:
        cols += (f" {'mode':8s} {'batch':>5s} {'images/s':>10s} {'TFLOP/s':>8s} {'% peak':>6s} {'mem GiB':>7s}"
                 f" {'loss':>7s}")
    print(cols)


def row(model, network, params, flops, res=None, mode="", batch=0, peak=None):
    line = f"{model:6s} {network:10s} {params / 1e6:7.2f}M {flops / 1e9:13.3f}"
    if res is not None:
        tflops = 3 * flops * res["images_per_s"] / 1e12
        pct = f"{100 * tflops / peak:6.1f}" if peak else f"{'?':>6s}"
        line += (f" {mode:8s} {batch:5d} {res['images_per_s']:10,.0f} {tflops:8.1f} {pct} {res['peak_gib']:7.1f}"
                 f" {res['loss']:7.4f}")
    print(line)
    return None if res is None else 3 * flops * res["images_per_s"] / 1e12


def cpu_check(args):
    """No GPU: build each model, count its FLOPs, and run 2 eager steps of the same Trainer path on the CPU
    (bf16 autocast, channels_last, batch 2): everything but compile, fused AdamW and CUDA graphs."""
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print("CPU check: models built, FLOPs counted (batch 2, fp32) and 2 training steps run on the CPU "
          "(eager, bf16 autocast, channels_last, batch 2). CPU images/s mean nothing here.")
    header(timed=True)
    for name in args.models:
        spec = MODELS[name]
        for label, make in (("ours", our_network), ("diffusers", None if args.no_diffusers else diffusers_network)):
            net = make(spec) if make else None
            if net is None:
                continue
            flops = forward_flops_per_image(net, spec["shape"], "cpu")
            trainer = make_trainer(spec, 2, "eager", "cpu", net=None if label == "ours" else net)
            row(name, label, n_params(net), flops, time_steps(trainer, 2, 0), "eager", 2)


def peak_tflops(args, gpu_name):
    if args.peak_tflops:
        return args.peak_tflops
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in gpu_name), None)


def gpu_run(args):
    import torch

    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(args, name)
    print(f"device: {name}, bf16 dense peak {peak or 'unknown'} TFLOP/s; torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}")
    print(TARGETS)
    header(timed=True)
    results = {}
    for model in args.models:
        spec = MODELS[model]
        batch = args.batch_small if model == "small" else args.batch_cifar
        for label, make in (("ours", our_network), ("diffusers", None if args.no_diffusers else diffusers_network)):
            net = make(spec) if make else None
            if net is None:
                continue
            flops = forward_flops_per_image(net.cuda(), spec["shape"], "cuda")
            params = n_params(net)
            for mode in args.modes:
                torch._dynamo.reset()  # each run compiles afresh: no recompile limits carried over
                try:
                    trainer = make_trainer(spec, batch, mode, "cuda", net=None if label == "ours" else make(spec))
                    res = time_steps(trainer, args.steps, args.warmup)
                except Exception as err:  # one failing configuration must not hide the others' numbers
                    print(f"{model:6s} {label:10s} {mode}: FAILED: {type(err).__name__}: {err}")
                    continue
                finally:
                    trainer = None
                    torch.cuda.empty_cache()
                results[(model, label, mode)] = (res["images_per_s"], row(model, label, params, flops, res, mode,
                                                                          batch, peak))
    summary(results, args, peak)


def summary(results, args, peak):
    """Ratios ours / diffusers, and the targets (stated for one H100)."""
    for model in args.models:
        for mode in args.modes:
            ours, theirs = results.get((model, "ours", mode)), results.get((model, "diffusers", mode))
            if ours and theirs:
                print(f"{model} {mode}: ours / diffusers = {ours[0] / theirs[0]:.2f}x images/s, "
                      f"{ours[1] / theirs[1]:.2f}x TFLOP/s (target >= 1.5x on cifar)")
            if ours and model == "small":
                print(f"{model} {mode}: {ours[0]:,.0f} images/s (target >= 50,000)")
            if ours and model == "cifar" and peak:
                print(f"{model} {mode}: {100 * ours[1] / peak:.1f}% of the bf16 peak (target >= 10%)")


def main():
    args = parse_args()
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to benchmark")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark times training on a GPU and cannot run here "
              f"(torch {torch.__version__}, torch.cuda.is_available() is False).")
        cpu_check(args)
        return 0
    torch.backends.cudnn.benchmark = True
    gpu_run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
