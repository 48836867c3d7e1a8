"""The training loop around a backend's Trainer (shared by reference and torch_port; not math).

It owns what a run must get right whatever the math backend: the data order, the progress bar,
the JSONL log, pictures, atomic checkpoints, resume, and stopping cleanly on a non-finite loss.

A Trainer provides: ``cfg``, ``backend``, ``step(x0_batch, step) -> (loss, grad_norm)``,
``sample(n, seed=..., steps=...) -> np.ndarray``, ``state_dict()`` and ``load_state_dict(d)`` with
NumPy arrays keyed by state_dict names. ``step`` may return lazy values (torch tensors) that
are only read every ``log_every`` steps, so a GPU step never waits for the host.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from . import checkpoint
from .config import TWO_D, config_from_json
from .errors import InputError

CKPT = "ckpt.npz"


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: training stopped, the last good checkpoint is intact."""


def _progress(total, initial, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.05)


def _save(trainer, path, step, data_rng):
    st = trainer.state_dict()
    rng_state = dict(st.get("rng_state", {}))
    rng_state["data"] = data_rng.bit_generator.state
    checkpoint.save(path, st["params"], ema=st["ema"], opt_state=st["opt_state"],
                    config=json.loads(trainer.cfg.to_json()), step=step, rng_state=rng_state,
                    extra={"backend": trainer.backend, "item_shape": list(trainer.item_shape)})


def _trim_log(log_path, last_step):
    """On resume, drop log lines written after the checkpoint (they will be written again)."""
    if not log_path.exists():
        return
    keep = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
    log_path.write_text("".join(ln + "\n" for ln in keep))


def pictures(trainer, out_dir, tag, n=64):
    """Write a sample picture (grid for images, scatter for 2-D points) and return its path."""
    from . import plots

    x = trainer.sample(n if trainer.cfg.data not in TWO_D else 2000, seed=trainer.cfg.seed)
    path = Path(out_dir) / f"samples_{tag}.png"
    if x.ndim == 2:
        plots.scatter_2d(x, path)
    else:
        plots.image_grid(x, path)
    return path


def run(trainer, x, out_dir, resume=False, progress=True, overwrite=False):
    """Train ``trainer`` on the array ``x`` (N, ...) for ``trainer.cfg.steps`` steps."""
    cfg = trainer.cfg
    main = getattr(trainer, "is_main", True)  # under torchrun only rank 0 writes
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(trainer, "prepare_data"):
        x = trainer.prepare_data(x)  # e.g. the whole dataset resident on the GPU
    ckpt_path, log_path = out / CKPT, out / "log.jsonl"
    data_rng = np.random.default_rng([cfg.seed, 0])
    start = 0
    if resume:
        if not ckpt_path.exists():
            raise InputError(f"--resume: no checkpoint at {ckpt_path} to resume from")
        ck = checkpoint.load(ckpt_path)
        checkpoint.check_compatible(ck.config, json.loads(cfg.to_json()),
                                    keys=("data", "T", "schedule", "zero_terminal_snr", "prediction", "model",
                                          "dtype", "seed", "batch_size"))
        trainer.load_state_dict({"params": ck.params, "ema": ck.ema, "opt_state": ck.opt_state,
                                 "rng_state": ck.rng_state})
        data_rng.bit_generator.state = ck.rng_state["data"]
        start = int(ck.step)
        if main:
            _trim_log(log_path, start)
        if start >= cfg.steps:
            return {"step": start, "ckpt": str(ckpt_path), "resumed": True}
    elif ckpt_path.exists() and not overwrite:
        raise InputError(f"{ckpt_path} already exists: pass --resume to continue that run, --overwrite to "
                         "start again, or choose another --out")
    elif overwrite and log_path.exists():
        log_path.unlink()
    if main:
        (out / "config.json").write_text(json.dumps(json.loads(cfg.to_json()), indent=2) + "\n")

    bar = _progress(cfg.steps, start, progress)
    pending, t_last, n_seen, last_saved = [], time.perf_counter(), 0, start
    with open(log_path if main else os.devnull, "a") as log:
        for step in range(start, cfg.steps):
            idx = data_rng.integers(0, x.shape[0], size=cfg.batch_size)
            try:
                loss, gnorm = trainer.step(x[idx], step)
            except FloatingPointError as e:
                raise TrainingDiverged(f"training stopped at step {step + 1}: {e}. The last good checkpoint "
                                       f"(step {last_saved}) in {ckpt_path} is intact.") from None
            pending.append((step + 1, loss, gnorm))
            n_seen += cfg.batch_size
            done = step + 1
            if done % max(cfg.log_every, 1) == 0 or done == cfg.steps:
                now = time.perf_counter()
                rows = [(s, float(lv), float(gv)) for s, lv, gv in pending]  # the only host sync
                bad = [r for r in rows if not (math.isfinite(r[1]) and math.isfinite(r[2]))]
                if bad:
                    raise TrainingDiverged(f"training stopped: non-finite loss or gradient at step {bad[0][0]}. "
                                           f"The last good checkpoint (step {last_saved}) in {ckpt_path} is intact.")
                s, lv, gv = rows[-1]
                rec = {"step": s, "loss": float(np.mean([r[1] for r in rows])), "grad_norm": gv,
                       "items_per_s": n_seen / max(now - t_last, 1e-9)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.4f}")
                pending, t_last, n_seen = [], now, 0
            if bar is not None:
                bar.update(1)
            if main and cfg.save_every and done % cfg.save_every == 0 and done != cfg.steps:
                _save(trainer, ckpt_path, done, data_rng)
                last_saved = done
            if main and cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps:
                pictures(trainer, out, f"step{done:06d}")
    if bar is not None:
        bar.close()
    if not main:
        return {"step": cfg.steps}
    _save(trainer, ckpt_path, cfg.steps, data_rng)
    from . import plots

    plots.loss_curve(log_path, out / "loss.png")
    final = pictures(trainer, out, "final")
    return {"step": cfg.steps, "ckpt": str(ckpt_path), "samples": str(final), "log": str(log_path)}


def load_run_config(ckpt):
    """The TrainConfig a checkpoint was written with."""
    return config_from_json(json.dumps(ckpt.config))
