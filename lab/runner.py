"""The training loop around a backend's Trainer (shared by reference and torch_port; not math).

It owns what a run must get right whatever the math backend: the data order, the progress bar,
the JSONL log, pictures, atomic checkpoints, resume, and stopping cleanly on a non-finite loss.

``train(cfg, out, backend)`` is the one entry point for both sides: it loads the data, builds the
backend's Trainer and runs the loop. A Trainer provides: ``cfg``, ``backend`` ("reference" | "torch"),
``item_shape``, ``step(x0_batch, step) -> (loss, grad_norm)``, ``sched`` and ``denoiser()`` (for the
pictures, drawn by lab.sampling.draw), ``state_dict()`` and ``load_state_dict(d)`` with NumPy arrays
keyed by state_dict names. ``step`` may return lazy values (torch tensors) that
are only read every ``log_every`` steps, so a GPU step never waits for the host; they are
also read before every checkpoint, so a checkpoint never holds the result of a non-finite step.

Reliability, in short:
  - a checkpoint (params, EMA, optimiser, every RNG stream, config, step) is written atomically
    every ``save_every`` steps; SIGKILL loses at most those steps and ``resume`` continues bit for bit;
  - Ctrl-C (SIGINT) or SIGTERM stops at the next step boundary, writes a checkpoint there and raises
    ``TrainingInterrupted`` (a second Ctrl-C stops at once); nothing is lost;
  - a non-finite loss or gradient raises ``TrainingDiverged`` naming the step; the last good
    checkpoint is left untouched;
  - bad settings and data (NaN in the data, a checkpoint of another run) are refused before step 1.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from common import rules
from reference.errors import InputError

from . import checkpoint, data
from .backend import Backend
from .config import TrainConfig, recipe_for, with_classes
from .progress import RunEstimate, step_bar
from .threads import is_small, one_thread

CKPT = "ckpt.npz"
# Settings a resumed run must share with its checkpoint (anything else, e.g. --steps or --lr, may change).
RESUME_FIXED = ("data", "T", "schedule", "zero_terminal_snr", "prediction", "dtype", "seed", "batch_size",
                "objective", "sigma_data", "p_mean", "p_std", "t_sampling", "logit_mean", "logit_std", "shift",
                "reflow", "reflow_pairs", "teacher_steps", "classifier")


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: training stopped, the last good checkpoint is intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: training stopped at a step boundary after writing a checkpoint there.

    ``exit_code`` is 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), the shell's convention.
    """

    def __init__(self, message, signum=signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


# ---- checks before step 1 --------------------------------------------------------------------------

def validate_config(cfg):
    """cfg.validate(): every check of lab.config.TrainConfig, so a bad setting fails before any work (kept for its
    callers; the checks run once per configuration however many edges ask)."""
    return cfg.validate()


def check_data(x, what="training data"):
    """Refuse data with NaN or inf (N, ...) before training: the message names the first bad item."""
    a = np.asarray(x)
    if a.ndim < 1 or a.shape[0] < 1:
        raise InputError(f"{what} is empty (shape {a.shape}): nothing to train on")
    if a.dtype.kind in "fc":
        ok = np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)           # (N,)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise InputError(f"{what} holds non-finite values (NaN or inf) in {bad.size} item(s), first item "
                             f"{int(bad[0])}; clean the data before training")
    return x


def _check_resumable(ck, cfg, trainer, path):
    """Refuse, naming the field, a checkpoint that is not a training state of this run."""
    backend = (ck.extra or {}).get("backend")
    if backend is not None and backend != trainer.backend:
        mod = "torch_port" if backend == "torch" else "reference"
        raise InputError(f"--resume: {path} was written by the {backend} backend; resume it with "
                         f"`python -m {mod} train ... --resume` (the noise streams of the two sides differ)")
    missing = [what for what, v in (("EMA", ck.ema), ("optimiser state", ck.opt_state)) if not v]
    if not ck.rng_state or "data" not in ck.rng_state:
        missing.append("RNG state")
    if missing:
        raise InputError(f"--resume: {path} holds no {', '.join(missing)}: it was not written by `train` "
                         "and cannot be resumed (it can still be sampled from)")
    # model fields are compared one by one so the message names the flag (--hidden), not the dict; a field the
    # checkpoint's release did not have takes its default (what that run trained with)
    full = {**json.loads(TrainConfig().to_json()), **ck.config}
    have = {**{k: v for k, v in full.items() if k != "model"}, **(ck.config.get("model") or {})}
    want = json.loads(cfg.to_json())
    want = {**{k: v for k, v in want.items() if k != "model"}, **want["model"]}
    keys = RESUME_FIXED + tuple(sorted(set((ck.config.get("model") or {})) | set(cfg.model)))
    checkpoint.check_compatible(have, want, keys=keys)


# ---- checkpoints and the log -----------------------------------------------------------------------

def _save(trainer, path, step, data_rng, extra=None):
    st = trainer.state_dict()
    rng_state = dict(st.get("rng_state", {}))
    rng_state["data"] = data_rng.bit_generator.state
    checkpoint.save(path, st["params"], ema=st["ema"], opt_state=st["opt_state"],
                    config=json.loads(trainer.cfg.to_json()), step=step, rng_state=rng_state,
                    extra={"backend": trainer.backend, "item_shape": list(trainer.item_shape),
                           "process": rules.process_of(trainer.cfg),
                           **(getattr(trainer, "checkpoint_extra", None) or {}), **(extra or {})})


def _restore(trainer, ck, path):
    try:
        trainer.load_state_dict({"params": ck.params, "ema": ck.ema, "opt_state": ck.opt_state,
                                 "rng_state": ck.rng_state})
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"--resume: cannot restore the training state from {path}: "
                         f"{type(e).__name__}: {e}") from None


def _remove_stale_temp_files(out):
    """Temp files of a checkpoint write cut short by SIGKILL or a power cut (the checkpoint is intact)."""
    for p in out.glob(f".{CKPT}.*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass


def _trim_log(log_path, last_step):
    """On resume, drop log lines written after the checkpoint (they will be written again).

    A line cut short by a kill mid-write is not JSON: it is dropped too.
    """
    if not log_path.exists():
        return
    keep = []
    for ln in log_path.read_text().splitlines():
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= last_step:
            keep.append(ln)
    log_path.write_text("".join(ln + "\n" for ln in keep))


def _read_rows(pending, ckpt_path, last_saved, cfg=None):
    """(step, loss, grad_norm) as floats — the only host sync — or TrainingDiverged at the first bad step."""
    rows = [(s, float(lv), float(gv)) for s, lv, gv in pending]
    bad = [r for r in rows if not (math.isfinite(r[1]) and math.isfinite(r[2]))]
    if bad:
        raise diverged(cfg, f"training stopped: non-finite loss or gradient at step {bad[0][0]} "
                            f"(loss={bad[0][1]}, grad_norm={bad[0][2]})", ckpt_path, last_saved)
    return rows


def diverged(cfg, what, ckpt_path, last_saved):
    """The TrainingDiverged to raise: ``what`` happened, what is left on disk, and what to try."""
    if last_saved > 0:
        kept = f"The last good checkpoint (step {last_saved}) in {ckpt_path} is intact"
    else:
        kept = "No checkpoint of this run was written: it diverged before the first save"
    hint = ""
    if cfg is not None:
        hint = (f"; try a lower --lr (this run: {cfg.lr:g}"
                + (f", the recipe's: {recipe_lr:g}" if (recipe_lr := recipe_for(cfg.data).get("lr")) != cfg.lr
                   else "") + ")" + ("" if cfg.grad_clip else " or --grad-clip 1"))
    return TrainingDiverged(f"{what}. {kept}{hint}.")


@contextmanager
def _stop_requests(enabled):
    """While active, SIGINT/SIGTERM set ``flag["signum"]`` instead of stopping mid-step; a second one stops now."""
    flag = {"signum": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signum"] is not None:
            raise KeyboardInterrupt
        flag["signum"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def pictures(trainer, out_dir, tag, step, n=64):
    """Write a sample picture (grid for images, scatter of 2000 over real data for 2-D points; a class-conditional
    run: every class at guidance s = 1, one row or colour per class) and return its path. DDIM with the run's
    ``sample_steps`` from default_rng(cfg.seed): the same draw as ``sample``'s (lab.pictures.run_samples_picture)."""
    from .pictures import run_samples_picture

    return run_samples_picture(Backend(trainer.backend), trainer, Path(out_dir) / f"samples_{tag}.png", step,
                               n_images=n)


# ---- the loop --------------------------------------------------------------------------------------

def _start(trainer, out, resume, overwrite, data_rng, main, teacher=None):
    """Restore a checkpoint (resume) or check that a fresh start overwrites nothing. Returns the first step.
    ``teacher``: a reflow run's teacher record (lab.reflow), checked against the checkpoint's on resume."""
    cfg = trainer.cfg
    ckpt_path, log_path = out / CKPT, out / "log.jsonl"
    if main:
        _remove_stale_temp_files(out)
    if resume:
        if not ckpt_path.exists():
            raise InputError(f"--resume: no checkpoint at {ckpt_path} to resume from")
        ck = checkpoint.load(ckpt_path)
        _check_resumable(ck, cfg, trainer, ckpt_path)
        if teacher is not None:
            from .reflow import check_same_teacher
            check_same_teacher(teacher, (ck.extra or {}).get("teacher"))
        _restore(trainer, ck, ckpt_path)
        data_rng.bit_generator.state = ck.rng_state["data"]
        if main:
            _trim_log(log_path, int(ck.step))
        return int(ck.step)
    if ckpt_path.exists() and not overwrite:
        raise InputError(f"{ckpt_path} already exists: pass --resume to continue that run, --overwrite to "
                         "start again, or choose another --out")
    if main and log_path.exists():
        log_path.unlink()  # a fresh start: lines of an earlier run (e.g. killed before its first save) go
    return 0


def train(cfg, out_dir, backend="reference", resume=False, progress=True, overwrite=False, **trainer_options):
    """Train on ``cfg.data`` with ``backend`` ("reference" or "torch"), writing ckpt.npz, log.jsonl and the
    pictures into ``out_dir``; returns ``run``'s dict. ``trainer_options`` go to the backend's Trainer (the
    port's device, compile, amp, channels_last, cuda_graphs)."""
    cfg.validate()  # bad settings fail here, before the data is read (a no-op for the CLI's, checked already)
    if cfg.classifier:  # a noise-conditional classifier (lab/classifier_run.py): the same loop on labelled data
        from .classifier_run import train as train_classifier
        return train_classifier(cfg, out_dir, backend, resume, progress, overwrite, **trainer_options)
    cfg = with_classes(cfg)  # --class-cond: the dataset's class count into cfg.model (refused without labels)
    x = data.load(cfg.data, seed=cfg.seed, data_dir=cfg.data_dir, image_size=cfg.image_size,
                  return_labels=cfg.class_cond)
    x, y = x if cfg.class_cond else (x, None)
    if cfg.n_data:
        x, y = x[: cfg.n_data], (None if y is None else y[: cfg.n_data])
    _check_fits_the_unet(cfg, x.shape[1:])
    z, teacher = None, None
    if cfg.reflow:  # (D11)  the coupling: the teacher's pairs (z, x0 = ODE(z)) replace the data, drawn once
        from .reflow import teacher_pairs
        x, z, teacher = teacher_pairs(Backend(backend), cfg, check_data(x), progress=progress,
                                      device=trainer_options.get("device", "auto"))
    # the bound losses' decoder needs the data's levels (17 for the digits, 256 for 8-bit images, None for points)
    levels = data.info(cfg.data, image_size=cfg.image_size).levels if cfg.loss != "simple" else None
    trainer = Backend(backend).train.Trainer(cfg, x.shape[1:], levels=levels, **trainer_options)
    try:
        # a 2-D MLP on the CPU trains on one thread: its matrices are too small for a second to pay
        with one_thread(is_small(x.shape[1:]) and str(getattr(trainer, "device", "cpu")).startswith("cpu")):
            return _run(trainer, x, out_dir, resume=resume, progress=progress and getattr(trainer, "is_main", True),
                        overwrite=overwrite, y=y, z=z, teacher=teacher)
    finally:
        getattr(trainer, "close", lambda: None)()  # the port leaves its process group (torchrun)


def _check_fits_the_unet(cfg, item_shape):
    """Images must halve cleanly at every level of the UNet: refused here, before anything is written."""
    mults = cfg.model.get("channel_mults")
    if mults is None or len(item_shape) != 3:
        return
    f, (_, h, w) = 2 ** (len(mults) - 1), item_shape
    if h % f or w % f:
        fit = -(-h // f) * f
        raise InputError(f"{h}x{w} images do not fit the UNet: with --channel-mults {','.join(map(str, mults))} "
                         f"({len(mults)} levels) the image size must be divisible by {f}; use --image-size {fit} "
                         "(or fewer levels)")


def run(trainer, x, out_dir, resume=False, progress=True, overwrite=False, y=None):
    """Train ``trainer`` on the array ``x`` (N, ...) for ``trainer.cfg.steps`` steps; ``y`` the labels (N,) of a
    class-conditional run (they travel with the data: the batch's labels go to ``trainer.step(x0, step, y=...)``).

    Returns a dict with "step" and, on the main process, "ckpt", "samples", "log"; "done": True when a
    resumed checkpoint had already reached ``cfg.steps`` (nothing was trained).
    Raises InputError (bad settings, data or checkpoint: before step 1), TrainingDiverged, TrainingInterrupted.
    """
    trainer.cfg.validate()
    return _run(trainer, x, out_dir, resume, progress, overwrite, y)


def _run(trainer, x, out_dir, resume=False, progress=True, overwrite=False, y=None, z=None, teacher=None):
    """run, its configuration checked; ``z`` a reflow run's noise ends (N, ...) beside x, ``teacher`` its record."""
    cfg = trainer.cfg
    main = getattr(trainer, "is_main", True)  # under torchrun only rank 0 writes
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; it must be a folder (created if missing)")
    if resume and not (out / CKPT).exists():
        raise InputError(f"--resume: no checkpoint at {out / CKPT} to resume from")
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(x, np.ndarray):
        check_data(x)
    if hasattr(trainer, "prepare_data"):
        x = trainer.prepare_data(x)  # e.g. the whole dataset resident on the GPU
        y = None if y is None else trainer.prepare_labels(y)  # the labels too
        z = None if z is None else trainer.prepare_data(z)    # a reflow run's pairs' other end too
    ckpt_path, log_path = out / CKPT, out / "log.jsonl"
    data_rng = np.random.default_rng([cfg.seed, 0])
    start = _start(trainer, out, resume, overwrite, data_rng, main, teacher)
    extra = {} if teacher is None else {"teacher": teacher}
    if start >= cfg.steps:
        return {"step": start, "ckpt": str(ckpt_path), "resumed": True, "done": True}
    if main:
        (out / "config.json").write_text(json.dumps(json.loads(cfg.to_json()), indent=2) + "\n")
    graceful = getattr(trainer, "world", 1) == 1   # under torchrun the launcher handles signals
    with _stop_requests(graceful) as stop:
        _loop(trainer, x, start, data_rng, ckpt_path, log_path, main, progress, stop, y, z, extra)
    if not main:
        return {"step": cfg.steps}
    _save(trainer, ckpt_path, cfg.steps, data_rng, extra)
    from . import plots
    from .pictures import loss_label

    plots.loss_curve(log_path, out / "loss.png", label=getattr(trainer, "loss_label", None) or loss_label(cfg))
    res = {"step": cfg.steps, "ckpt": str(ckpt_path), "log": str(log_path)}
    if cfg.final_samples:
        res["samples"] = str(pictures(trainer, out, "final", cfg.steps))
    return res


def _loop(trainer, x, start, data_rng, ckpt_path, log_path, main, progress, stop, y=None, z=None, extra=None):
    cfg, out = trainer.cfg, ckpt_path.parent
    bar = step_bar(cfg.steps, start, progress)
    estimate = RunEstimate(trainer, start, show=progress and main)
    pending, t_last, n_seen, last_saved = [], time.perf_counter(), 0, start
    try:
        with open(log_path if main else os.devnull, "a") as log:
            for step in range(start, cfg.steps):
                idx = data_rng.integers(0, x.shape[0], size=cfg.batch_size)
                try:
                    pair = {} if z is None else {"z": z[idx]}  # a reflow batch: its pairs' noise ends
                    loss, gnorm = (trainer.step(x[idx], step, **pair) if y is None
                                   else trainer.step(x[idx], step, y=y[idx], **pair))
                except FloatingPointError as e:
                    raise diverged(cfg, f"training stopped at step {step + 1}: {e}", ckpt_path,
                                   last_saved) from None
                except InputError as e:
                    # The data and settings were checked before step 1, so a value check inside the step
                    # that finds NaN/inf (errors.check_finite's words) met diverged numbers, not bad input.
                    if "non-finite" not in str(e):
                        raise
                    raise diverged(cfg, f"training stopped at step {step + 1}: {e}", ckpt_path,
                                   last_saved) from None
                pending.append((step + 1, loss, gnorm))
                n_seen += cfg.batch_size
                done = step + 1
                if main:
                    estimate.tick(done)
                if done % max(cfg.log_every, 1) == 0 or done == cfg.steps:
                    now = time.perf_counter()
                    rows = _read_rows(pending, ckpt_path, last_saved, cfg)
                    rec = {"step": rows[-1][0], "loss": float(np.mean([r[1] for r in rows])),
                           "grad_norm": rows[-1][2], "items_per_s": n_seen / max(now - t_last, 1e-9)}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}")
                    pending, t_last, n_seen = [], now, 0
                if bar is not None:
                    bar.update(1)
                periodic = cfg.save_every and done % cfg.save_every == 0 and done != cfg.steps
                if main and (periodic or (stop["signum"] is not None and done != cfg.steps)):
                    _read_rows(pending, ckpt_path, last_saved, cfg)  # never checkpoint a non-finite step
                    _save(trainer, ckpt_path, done, data_rng, extra)
                    last_saved = done
                if stop["signum"] is not None and done != cfg.steps:
                    name = signal.Signals(stop["signum"]).name
                    raise TrainingInterrupted(f"{name}: training stopped after step {done}; checkpoint {ckpt_path} "
                                              f"saved; continue with --resume", stop["signum"])
                if main and cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps:
                    pictures(trainer, out, f"step{done:06d}", done)
    finally:
        if bar is not None:
            bar.close()
