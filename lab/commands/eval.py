"""``eval``: bits/dim on held-out data and a sample-quality figure beside its floor (both sides)."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

from reference.errors import InputError
from reference.samplers import SAMPLERS

from .. import data as datasets
from .. import metrics
from ..cli import add_command
from ..progress import bar
from ..sampling import check_sampler_flags, draw, load_trainer


class Quality:
    """The sample-quality judge of one dataset at n samples, built once: the real sets, the feature
    classifier (images) and the real-vs-real floor. ``score(samples)`` is the model's figure."""

    def __init__(self, name, n, cfg, seed=0):
        self.n = n
        if name in datasets.POINT_SETS:
            self.metric = "sliced Wasserstein"
            self.real = datasets.load(name, n=n, seed=seed + 101, split="train")
            real2 = datasets.load(name, n=n, seed=seed + 202, split="test")
            self._figure = metrics.sliced_wasserstein
            self.floor = metrics.sliced_wasserstein(real2, self.real)
            return
        kw = dict(data_dir=cfg.data_dir, image_size=cfg.image_size)
        x_tr, y_tr = datasets.load(name, split="train", return_labels=True, **kw)
        pool = np.concatenate([x_tr, datasets.load(name, split="test", **kw)])
        if len(pool) < 2 * n:
            raise InputError(f"--n {n} is too many for {name!r}: the floor needs 2n = {2 * n} real images, "
                             f"the dataset has {len(pool)}")
        net = metrics.feature_net(name, x_tr, y_tr)
        perm = np.random.default_rng(seed).permutation(len(pool))
        self.real, real2 = pool[perm[:n]], pool[perm[n:2 * n]]
        self.metric = "Frechet distance (classifier features)"
        self._figure = lambda a, b: metrics.image_fd(net, a, b)
        self.floor = metrics.floor_image_fd(net, real2, self.real)

    def score(self, samples):
        return self._figure(np.asarray(samples, np.float64), self.real)


def bits_per_dim(B, trainer, name, n, seed=0):
    """The full variational bound on n held-out items, in bits/dim (8-bit images only)."""
    cfg = trainer.cfg
    x = datasets.load(name, split="test", data_dir=cfg.data_dir, image_size=cfg.image_size)[:n]
    x = B.from_numpy(x.astype(np.float64 if cfg.dtype == "float64" else np.float32))
    if B.name == "torch":
        x = x.to(trainer.device)
    rng = np.random.default_rng(seed)
    return float(B.losses.bits_per_dim(trainer.sched, trainer.denoiser(), x, rng, prediction=cfg.prediction,
                                       decoder="discretized",
                                       progress=bar("bits/dim", total=cfg.T)))


def configure(p):
    p.add_argument("--ckpt", required=True, metavar="FILE", help="a checkpoint written by train (either side)")
    p.add_argument("--data", default=None, metavar="NAME", help="dataset to compare with (default: the run's)")
    p.add_argument("--n", type=int, default=None,
                   help="samples for the quality figure (default: 2000 for 2-D data, 500 for images)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm", help="sampler for the quality figure")
    p.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: all T)")
    p.add_argument("--bpd-n", type=int, default=64, help="held-out images for bits/dim (0 skips it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1,
                   help="draw the samples this many times (seeds seed, seed+1, ...) and report the mean and "
                        "spread: at a few hundred samples one draw's figure varies by +-20%%")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch_port only")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures as JSON here")


def _check(args, B):
    """Every flag checked before any work (loading, bits/dim or sampling)."""
    if B.name == "reference" and args.device == "cuda":
        raise InputError("--device cuda is a torch_port option: run `python -m torch_port eval ...`")
    if args.n is not None and args.n < 2:
        raise InputError(f"--n must be >= 2 (a figure needs a spread of samples), got {args.n}")
    if args.bpd_n < 0:
        raise InputError(f"--bpd-n must be >= 0 (0 skips bits/dim), got {args.bpd_n}")
    if args.sample_steps is not None and args.sample_steps < 1:
        raise InputError(f"--sample-steps must be >= 1 (or omitted for all T steps), got {args.sample_steps}")
    if args.repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {args.repeats}")


def _bits_per_dim(B, trainer, name, args, res):
    """res gains bits_per_dim (8-bit data) or a note saying why it does not apply."""
    info = datasets.info(name, image_size=trainer.cfg.image_size)
    if args.bpd_n and info.eight_bit:
        t0 = time.perf_counter()
        res["bits_per_dim"] = bits_per_dim(B, trainer, name, args.bpd_n, args.seed)
        res["bits_per_dim_n"] = args.bpd_n
        res["bits_per_dim_seconds"] = time.perf_counter() - t0
    elif args.bpd_n:
        res["bits_per_dim"] = None
        what = "continuous 2-D points" if info.levels is None else f"{info.levels}-level images"
        res["bits_per_dim_note"] = (f"{name!r} holds {what}, not 8-bit data: the discretised decoder's "
                                    "bits/dim applies to 8-bit images only")


def _sample_quality(B, trainer, name, n, args, res):
    """res gains the quality figure: the mean over --repeats draws beside the floor. The judge (real sets,
    classifier, floor) is built once; sampling_seconds times the sampling alone, per draw."""
    judge = Quality(name, n, trainer.cfg, args.seed)
    values, seconds = [], 0.0
    for r in range(args.repeats):
        t0 = time.perf_counter()
        samples = draw(B, trainer, n, args.seed + r, args.sampler, args.sample_steps,
                       progress=bar(f"sampling {r + 1}/{args.repeats}"))
        seconds += time.perf_counter() - t0
        values.append(judge.score(samples))
    value = float(np.mean(values))
    res.update({"sampling_seconds": seconds / args.repeats, "metric": judge.metric, "value": value,
                "values": values, "floor": judge.floor, "ratio_to_floor": value / judge.floor})


def run(args, B):
    _check(args, B)
    trainer, ck = load_trainer(B, args.ckpt, device=args.device)
    cfg = trainer.cfg
    check_sampler_flags(cfg.T, args.sampler, args.sample_steps)
    name = args.data or cfg.data
    datasets.check_name(name)
    if name != cfg.data:
        if datasets.info(name, image_size=cfg.image_size).shape != tuple(trainer.item_shape):
            raise InputError(f"--data {name!r} items do not have the shape the model was trained on "
                             f"{trainer.item_shape}")
        warnings.warn(f"the checkpoint was trained on {cfg.data!r}: its samples are judged against {name!r} "
                      f"(--data), not against the data it learned; drop --data to judge it against {cfg.data!r}")
    n = args.n or (2000 if name in datasets.POINT_SETS else 500)
    res = {"ckpt": str(args.ckpt), "data": name, "trained_on": cfg.data, "step": ck.step, "n": n, "sampler": args.sampler,
           "sample_steps": args.sample_steps or cfg.T}
    _bits_per_dim(B, trainer, name, args, res)
    _sample_quality(B, trainer, name, n, args, res)
    print(f"eval of {args.ckpt} (step {ck.step}, {name}, {B.name}):")
    if res.get("bits_per_dim") is not None:
        print(f"  bits/dim (variational bound, {args.bpd_n} held-out images): {res['bits_per_dim']:.4f}")
    elif "bits_per_dim_note" in res:
        print(f"  bits/dim: n/a — {res['bits_per_dim_note']}")
    values, value, floor = res["values"], res["value"], res["floor"]
    spread = f" (+-{np.std(values, ddof=1):.2g} over {args.repeats} draws)" if args.repeats > 1 else ""
    print(f"  {res['metric']} of {n} samples ({args.sampler}, {res['sample_steps']} steps): {value:.4g}{spread}")
    print(f"  real-vs-real floor at the same n: {floor:.4g}   (ratio {value / floor:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


add_command(
    "eval", "bits/dim on held-out data and sample quality beside its real-vs-real floor", configure, run,
    description="""
    bits/dim: the full variational bound L_T + sum_t L_{t-1} + L_0 (derivations/elbo.md) on held-out
    8-bit images, with the discretised Gaussian decoder; T network evaluations per image.
    Sample quality: for 2-D data the sliced Wasserstein distance to real points, for images a Frechet
    distance in the features of a small classifier trained on the dataset (cached). Each is printed
    beside its floor: the same figure between two independent real sets of the same size.
    """,
    epilog="""
    examples:
      python -m reference eval --ckpt runs/moons/ckpt.npz
      python -m torch_port eval --ckpt runs/digits/ckpt.npz --sampler ddim --sample-steps 50
    """)
