"""Rectified flow's second round (reflow, derivations/design_space.md D11): the pairs a teacher draws (not math).

``train --objective flow --reflow --teacher CKPT`` draws, once at the start, n pairs (z, x0 = ODE(z)) from the
teacher (any checkpoint this project samples: a flow model, or an EDM or DDPM one) with lab.sampling.draw, its
default sampler, ``cfg.teacher_steps`` steps and the run's seed; flow matching then trains on that fixed coupling
(x_t = (1 - t) x0 + t z, target z - x0: the Trainer takes z in place of eps). z is the noise draw sampled from:
draw's x_T, ``np.random.default_rng(seed).standard_normal`` of the pairs' shape, its first draw (lab.sampling). The
pairs are drawn again, the same way, on --resume; the checkpoint records the teacher's path and SHA-256 so that a
changed teacher is refused there.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from reference.errors import InputError

REFLOW_SAMPLER = None   # None: lab.sampling.DEFAULT_SAMPLER, the teacher's default


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def teacher_record(cfg):
    """What the checkpoint records of the teacher (before drawing): its path and hash, the pairs' settings."""
    from .sampling import DEFAULT_SAMPLER

    path = Path(cfg.teacher)
    if not path.is_file():
        raise InputError(f"--teacher {path}: no such checkpoint file")
    return {"path": str(path), "sha256": file_sha256(path), "pairs": cfg.reflow_pairs, "steps": cfg.teacher_steps,
            "sampler": REFLOW_SAMPLER or DEFAULT_SAMPLER, "seed": cfg.seed}


def check_same_teacher(record, recorded):
    """--resume of a reflow run: the teacher must be the file its pairs came from."""
    if recorded and recorded.get("sha256") != record["sha256"]:
        raise InputError(f"--resume: the teacher {record['path']} is not the file this run's pairs were drawn from "
                         f"(SHA-256 {record['sha256'][:12]}..., the checkpoint records "
                         f"{str(recorded.get('sha256'))[:12]}... of {recorded.get('path')}): give that --teacher")


def teacher_pairs(B, cfg, x, progress=True, device="auto"):
    """(x0 (n, ...), z (n, ...), record) in the run's dtype: the teacher's samples and the noise each started from.
    n = cfg.reflow_pairs or the dataset's size; ``x`` the run's data (its item shape must be the teacher's)."""
    from .progress import bar
    from .sampling import DEFAULT_SAMPLER, draw, load_trainer

    record = teacher_record(cfg)
    teacher, _ = load_trainer(B, record["path"], **({"device": device} if B.name == "torch" else {}))
    shape = tuple(x.shape[1:])
    if tuple(teacher.item_shape) != shape:
        raise InputError(f"--teacher {record['path']} is a model of items of shape {tuple(teacher.item_shape)} "
                         f"({teacher.cfg.data!r}); this run's data {cfg.data!r} has items of shape {shape}")
    n = cfg.reflow_pairs or x.shape[0]
    record["pairs"] = n
    dtype = np.float64 if cfg.dtype == "float64" else np.float32
    hook = bar(f"reflow: {n} teacher pairs", total=None) if progress else None
    x0 = draw(B, teacher, n, seed=cfg.seed, sampler=REFLOW_SAMPLER or DEFAULT_SAMPLER, steps=cfg.teacher_steps,
              progress=hook, warn=False)
    # draw's x_T: its generator's first draw, in the teacher's dtype (VP variables: N(0, I), flow's t = 1 end)
    t_dtype = np.float64 if teacher.cfg.dtype == "float64" else np.float32
    z = np.random.default_rng(cfg.seed).standard_normal((n,) + shape).astype(t_dtype)
    return np.asarray(x0, dtype), z.astype(dtype), record
