"""Loading a trained model and drawing samples from it: what `sample`, `eval` and the training pictures share.

The noise is drawn from ``np.random.default_rng(seed)`` in the same order on both sides, so one
checkpoint sampled with one seed gives the same samples from ``python -m reference sample`` and
``python -m torch_port sample`` (exactly in float64, to float32 rounding otherwise).
"""
from __future__ import annotations

import json

import numpy as np

from reference.errors import InputError

from . import checkpoint, data
from .config import config_from_json


def load_trainer(B, ckpt_path, device="auto", use_ema=True):
    """A backend Trainer holding the checkpoint's weights (EMA weights by default) -> (trainer, ckpt)."""
    ck = checkpoint.load(ckpt_path)
    cfg = config_from_json(json.dumps(ck.config))
    shape = ck.extra.get("item_shape")
    if shape is None:
        shape = data.info(cfg.data, image_size=cfg.image_size).shape
    kw = {"device": device} if B.name == "torch" else {}
    trainer = B.train.Trainer(cfg, tuple(shape), **kw)
    sd = trainer.state_dict()
    sd["params"] = ck.params
    sd["ema"] = (ck.ema or ck.params) if use_ema else ck.params
    try:
        trainer.load_state_dict(sd)
    except (KeyError, ValueError, RuntimeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"checkpoint {ckpt_path} does not fit the model its configuration describes: {e}") from None
    return trainer, ck


def draw(B, trainer, n, seed=0, sampler="ddim", steps=None, spacing="leading", eta=0.0, variance="fixed_small",
         record=False, progress=None):
    """x_T from default_rng(seed), then the sampler -> NumPy samples (n, *item_shape) (and, when ``record``,
    the trajectory as NumPy (t, x_t, x0_hat) triples). ``steps`` None (or >= T) runs all T steps; images
    clip x0_hat to [-1, 1], 2-D points do not. ``trainer``: a backend Trainer (EMA weights sample)."""
    cfg = trainer.cfg
    rng = np.random.default_rng(seed)
    np_dtype = np.float64 if cfg.dtype == "float64" else np.float32
    x_T = B.from_numpy(rng.standard_normal((n,) + tuple(trainer.item_shape)).astype(np_dtype))
    if B.name == "torch":
        x_T = x_T.to(trainer.device)
    res = B.samplers.sample_loop(trainer.sched, trainer.denoiser(), x_T, rng, sampler=sampler,
                                 steps=None if not steps or steps >= cfg.T else steps, spacing=spacing, eta=eta,
                                 prediction=cfg.prediction, variance=variance, clip_x0=len(trainer.item_shape) == 3,
                                 record=record, progress=progress)
    if record:
        return B.to_numpy(res.x), [(t, B.to_numpy(xt), B.to_numpy(x0)) for t, xt, x0 in res.trajectory]
    return B.to_numpy(res.x)


def check_sampler_flags(T, sampler, steps=None, eta=None, variance=None):
    """The sampler's flags against each other and the checkpoint's T, in the CLI's words: a flag that
    would be ignored, or a step count the schedule cannot give, is refused."""
    if steps is not None and not 1 <= steps <= T:
        raise InputError(f"--sample-steps {steps} must lie in 1..T={T} (the checkpoint's T); omit it for all "
                         f"{T} steps")
    if eta is not None and sampler != "ddim":
        raise InputError(f"--eta applies to --sampler ddim only (the noise of the DDIM step); --sampler {sampler} "
                         "would ignore it")
    if variance is not None and sampler != "ddpm":
        raise InputError(f"--variance applies to --sampler ddpm only (the ancestral step's variance); "
                         f"--sampler {sampler} would ignore it")
