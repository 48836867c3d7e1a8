"""The likelihood part of ``eval``: bits/dim of held-out data (the variational bound) in the flags' words.

eval.py calls four hooks, in this order: ``configure(p)`` adds the flags, ``check(args)`` refuses bad ones
before any work, ``compute(B, trainer, name, args, res)`` fills ``res`` (the JSON figures) and
``report(res, args)`` prints them."""
from __future__ import annotations

import time

import numpy as np

from reference.errors import InputError

from . import data as datasets
from .progress import bar


def configure(p):
    p.add_argument("--bpd-n", type=int, default=64, help="held-out images for bits/dim (0 skips it)")


def check(args):
    if args.bpd_n < 0:
        raise InputError(f"--bpd-n must be >= 0 (0 skips bits/dim), got {args.bpd_n}")


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


def compute(B, trainer, name, args, res):
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


def report(res, args):
    if res.get("bits_per_dim") is not None:
        print(f"  bits/dim (variational bound, {args.bpd_n} held-out images): {res['bits_per_dim']:.4f}")
    elif "bits_per_dim_note" in res:
        print(f"  bits/dim: n/a — {res['bits_per_dim_note']}")
