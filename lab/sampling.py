"""Loading a trained model and drawing samples from it: what `sample`, `eval` and the training pictures share.

Two families of samplers, one entry (``draw``):
  * the chain, ``ddpm`` | ``ddim`` (reference.samplers.sample_loop), shortened by ``spacing`` (A5);
  * the probability-flow ODE, ``euler`` | ``heun`` | ``dpm++2m`` (reference.solvers.sample), over a ``grid``
    of trained noise levels (K8, N5). ``euler`` on a grid equals ``ddim`` (eta 0) with that spacing (K7).
The noise x_T is drawn from ``np.random.default_rng(seed)`` in the same order on both sides, so one
checkpoint sampled with one seed gives the same samples from ``python -m reference sample`` and
``python -m torch_port sample`` (exactly in float64, to float32 rounding otherwise), for every sampler.

Every sampler gets one denoiser (``network``): a class-conditional checkpoint asked for classes ``y`` runs
through guidance.guided (W2, W4) at the scale ``guidance``; a learned-variance checkpoint (2C output channels,
V1) gives ddpm all 2C channels (variance "learned", respaced by V5 when shortened) and every other sampler
(ddim, the ODE solvers) the C mean channels only; guided, only the mean channels are mixed (the variance is
the conditional pass's).
"""
from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass

import numpy as np

from reference import samplers as chain
from reference import solvers as ode
from reference.diffusion import LEARNED, VARIANCES
from reference.errors import InputError
from reference.schedules import PriorMismatchWarning

from . import checkpoint, data
from .config import config_from_json
from .late_start import LATE_START_PREFIX, amplified_start_message, default_grid, late_start_message

CHAIN_SAMPLERS = chain.SAMPLERS             # ("ddpm", "ddim")
ODE_SAMPLERS = ode.SAMPLERS                 # ("euler", "heun", "dpm++2m")
SAMPLERS = CHAIN_SAMPLERS + ODE_SAMPLERS
SPACINGS, GRIDS = chain.SPACINGS, ode.GRIDS
# What `sample` and `eval` run when --sampler and --sample-steps are omitted (resolve): DPM-Solver++(2M), and for
# every sampler but ddpm (all T) the step count of the data's kind. 2-D points take more steps than images: at
# 20, the modes of a mixture come out as wedges pointing at the centre, and an MLP's network call is cheap.
# benchmarks/README.md and the README's Fast-sampling section have the measurements.
DEFAULT_SAMPLER = "dpm++2m"
DEFAULT_STEPS = {"images": 20, "points": 50}
ODE_DEFAULT_STEPS = DEFAULT_STEPS["images"]   # plan's steps for the ODE samplers when none are given
DEFAULT_GRID = "trailing"   # the ODE samplers' --grid when omitted, but leading where a start at T-1 is harmful:
                            # lab.late_start.default_grid
MIN_STEPS = {"heun": 2, "dpm++2m": 3}   # fewest steps with one second-order update on a grid ending at 0
DEFAULT_GUIDANCE = 1.0      # the guidance scale s when classes are asked for and no scale: the conditional model,
                            # the one scale whose target is the class's own distribution (W3)


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


@dataclass(frozen=True)
class Plan:
    """What a sampler will do on a schedule: ``steps`` sampling steps (grid steps for the ODE), ``where``
    the spacing (chain) or grid (ODE), ``nfe`` network evaluations, ``t_start`` the first (noisiest) trained
    step the network sees, ``sigmas`` the ODE's grid (a backend array; None for the chain)."""
    sampler: str
    steps: int
    T: int
    where: str
    nfe: int
    t_start: int
    sigmas: object = None

    @property
    def ode(self):
        return self.sampler in ODE_SAMPLERS


def resolve_steps(sampler, steps, T):
    """--sample-steps as the sampler runs it: omitted (or >= T) is all T for ddpm/ddim and
    ODE_DEFAULT_STEPS (at most T) for the ODE samplers."""
    if sampler in ODE_SAMPLERS:
        return min(T, steps or ODE_DEFAULT_STEPS)
    return T if not steps or steps >= T else steps


def plan(B, sched, sampler, steps=None, spacing="leading", grid=None, clip_x0=True, prediction="eps"):
    """The Plan of ``sampler`` with ``steps`` (see resolve_steps) on the backend schedule ``sched``. ``grid``
    None: DEFAULT_GRID (trailing), or leading where a start at T-1 is harmful (an unclipped eps-model, ``clip_x0``
    False, on the cosine schedule) or impossible (zero terminal SNR): lab.late_start.default_grid."""
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    n = resolve_steps(sampler, steps, sched.T)
    if sampler in CHAIN_SAMPLERS:
        kept = chain.timesteps(sched.T, n, spacing)
        return Plan(sampler, n, sched.T, spacing, n, int(kept[-1]))
    abar = alpha_bar_table(B, sched)
    grid = grid or default_grid(abar, clip_x0, prediction, sampler)
    top = sched.T - 1 if grid == "karras" else int(chain.timesteps(sched.T, n, grid)[-1])
    if abar[top] == 0:
        raise InputError(f"--grid {grid} with --sample-steps {n} starts at t={top}, where this checkpoint's schedule "
                         "has alpha_bar = 0 (zero terminal SNR: sigma = inf), and the ODE samplers need a finite "
                         "sigma; use --grid leading with fewer steps, or --sampler ddim")
    sigmas = B.solvers.sigma_grid(sched, n, grid)
    ts = np.asarray(B.to_numpy(B.solvers.grid_timesteps(sched, sigmas)))
    return Plan(sampler, n, sched.T, grid, int(B.solvers.nfe(sampler, sigmas)), int(ts[0]), sigmas)


def default_steps(sampler, T, images):
    """--sample-steps when omitted: all T for ddpm, else DEFAULT_STEPS of the data's kind, at most T."""
    if sampler == "ddpm":
        return T
    return min(T, DEFAULT_STEPS["images" if images else "points"])


@dataclass(frozen=True)
class Settings:
    """What `sample` and `eval` run (resolve): the Plan, the chain's ``spacing``, ddpm's ``variance`` (None for
    the other samplers), whether x0_hat is clipped to [-1, 1] (``clip_x0``), and ``recorded``: the names of the
    settings taken from the checkpoint's recorded sampling (convert --from-diffusers)."""
    plan: Plan
    spacing: str
    variance: object
    clip_x0: bool
    recorded: tuple = ()

    def describe(self):
        """The settings in the summary line's words, e.g. "trailing grid, x0_hat clipped"."""
        p, rec = self.plan, set(self.recorded)
        mark = lambda name: " (the checkpoint's recorded setting)" if name in rec else ""   # noqa: E731
        where = (f"{p.where} grid" if p.ode else f"{self.spacing} spacing{mark('spacing')}" if p.steps < p.T
                 else "every step")
        variance = f", variance {self.variance}{mark('variance')}" if self.variance else ""
        return f"{where}{variance}, x0_hat {'clipped to [-1, 1]' if self.clip_x0 else 'not clipped'}{mark('clip_x0')}"


def recorded_sampling(extra):
    """The sampler settings a checkpoint records (``extra["sampling"]``, written by convert --from-diffusers from
    the scheduler config: variance, clip_x0, spacing) -> dict, {} when it records none."""
    rec = (extra or {}).get("sampling") or {}
    return {k: rec[k] for k in ("variance", "clip_x0", "spacing") if rec.get(k) is not None}


def resolve(B, trainer, extra=None, sampler=None, steps=None, spacing=None, grid=None, variance=None,
            clip_x0=None, eta=None):
    """The one resolution of what `sample` and `eval` run, from the user's flags (None: omitted) and the checkpoint
    -> Settings. sampler: DEFAULT_SAMPLER; steps: default_steps (by sampler and data kind); the grid: plan's
    default (by the schedule, the prediction and the clipping); spacing (ddpm/ddim), variance (ddpm) and the
    clipping: the checkpoint's recorded settings (``extra``, see recorded_sampling) where it has them, else leading,
    resolve_variance's and on for images. The flags are checked against each other first (check_sampler_flags)."""
    images, T = len(trainer.item_shape) == 3, trainer.cfg.T
    sampler = sampler or DEFAULT_SAMPLER
    check_sampler_flags(T, sampler, steps, eta, variance, spacing, grid, images=images)
    rec, used = recorded_sampling(extra), []

    def pick(given, name, fallback, applies=True):
        if given is not None or not applies:
            return fallback if given is None else given
        if name in rec:
            used.append(name)
            return rec[name]
        return fallback

    chain_sampler = sampler in CHAIN_SAMPLERS
    spacing = pick(spacing, "spacing", "leading", applies=chain_sampler)
    variance = resolve_variance(trainer, sampler, pick(variance, "variance", None, applies=sampler == "ddpm"))
    clip = bool(pick(clip_x0, "clip_x0", images))
    n = default_steps(sampler, T, images) if steps is None else steps
    p = plan(B, trainer.sched, sampler, n, spacing, grid, clip_x0=clip, prediction=trainer.cfg.prediction)
    if "spacing" in used and p.steps >= T:
        used.remove("spacing")   # all T steps: no spacing to choose
    return Settings(p, spacing, variance, clip, tuple(used))


def alpha_bar_table(B, sched):
    """The schedule's alpha_bar as float64 NumPy (T,), on either side."""
    return np.asarray(B.to_numpy(sched.alpha_bar), dtype=np.float64)


@contextlib.contextmanager
def _no_grad(B):
    if B.name == "torch":
        import torch
        with torch.no_grad():
            yield
    else:
        yield


def _x_T(B, trainer, n, rng):
    np_dtype = np.float64 if trainer.cfg.dtype == "float64" else np.float32
    x_T = B.from_numpy(rng.standard_normal((n,) + tuple(trainer.item_shape)).astype(np_dtype))
    return x_T.to(trainer.device) if B.name == "torch" else x_T


def ode_denoiser(B, trainer, den=None, clip_x0=None):
    """D(x~, sigma) of the trainer's network (EMA weights; ``den`` a network(...) in its place, e.g. guided),
    x0_hat clipped to [-1, 1] when ``clip_x0`` (default: for images) (K8)."""
    cfg = trainer.cfg
    clip = len(trainer.item_shape) == 3 if clip_x0 is None else clip_x0
    return B.solvers.model_denoiser(trainer.sched, den or trainer.denoiser(), cfg.prediction, clip_x0=clip)


def resolve_variance(trainer, sampler, variance=None):
    """ddpm's reverse variance: ``variance`` as given (checked against the checkpoint), or by default "learned"
    on a learned-variance checkpoint and fixed_small otherwise; the other samplers read the mean only (None)."""
    learned = getattr(trainer, "variance", None) == LEARNED
    if variance is not None and variance not in VARIANCES + (LEARNED,):
        raise InputError(f"unknown --variance {variance!r}; choose one of: {', '.join(VARIANCES + (LEARNED,))}")
    if variance == LEARNED and not learned:
        raise InputError("--variance learned needs a checkpoint trained with --variance learned (a network with 2C "
                         "output channels); this one has fixed variances: use fixed_small or fixed_large")
    if sampler != "ddpm":
        return None
    return variance or (LEARNED if learned else "fixed_small")


def network(B, trainer, variance=None, y=None, guidance=None):
    """The denoiser den(x_t, t) a sampler gets (EMA weights). ``variance`` "learned": all 2C output channels
    (ddpm with learned variances), else the C mean channels. ``y`` (an int or (N,) in 0..K-1): the classes,
    guided at scale ``guidance`` (default DEFAULT_GUIDANCE; W2: only the mean channels are mixed); None: no
    labels (a conditional model's null class, the unconditional model), and ``guidance`` is refused."""
    learned = variance == LEARNED
    den = trainer.denoiser(with_variance=learned)
    if y is None:
        if guidance is not None:
            raise InputError("a guidance scale needs the classes to guide towards (--class K or all)")
        return den
    s = DEFAULT_GUIDANCE if guidance is None else guidance
    return B.guidance.guided(den, y, s, getattr(trainer, "num_classes", None),
                             channels=trainer.item_shape[0] if learned else None)


def draw(B, trainer, n, seed=0, sampler="ddim", steps=None, spacing="leading", eta=0.0, variance=None,
         record=False, progress=None, grid=None, warn=True, y=None, guidance=None, clip_x0=None):
    """x_T from default_rng(seed), then the sampler -> NumPy samples (n, *item_shape) (and, when ``record``,
    the trajectory as NumPy (t, x_t, x0_hat) triples, x_t in VP variables and t the trained step, for every
    sampler). ``steps``: see resolve_steps. ddpm/ddim take ``spacing``, ``eta`` (ddim), ``variance`` (ddpm;
    default: resolve_variance); euler/heun/dpm++2m take ``grid`` (default: see plan). ``y``, ``guidance``:
    the classes (int or (n,)) and the guidance scale of a class-conditional checkpoint (``network``). ``clip_x0``:
    x0_hat clipped to [-1, 1] (default: images are, 2-D points are not). ``trainer``: a backend Trainer (EMA
    weights sample). ``warn``: the late-start warning, in the CLI's words (lab/late_start.py), when the first
    step still holds signal."""
    cfg, images = trainer.cfg, len(trainer.item_shape) == 3
    clip = images if clip_x0 is None else bool(clip_x0)
    p = plan(B, trainer.sched, sampler, steps, spacing, grid, clip_x0=clip, prediction=cfg.prediction)
    variance = resolve_variance(trainer, sampler, variance)
    den = network(B, trainer, variance, y, guidance)
    if warn:
        abar, pred = alpha_bar_table(B, trainer.sched), cfg.prediction
        for msg in (late_start_message(p, abar, clip, pred), amplified_start_message(p, abar, clip, pred)):
            if msg:
                warnings.warn(msg, PriorMismatchWarning, stacklevel=2)
    rng = np.random.default_rng(seed)
    x_T = _x_T(B, trainer, n, rng)
    with warnings.catch_warnings(), _no_grad(B):
        warnings.filterwarnings("ignore", message=LATE_START_PREFIX, category=PriorMismatchWarning)
        if p.ode:
            res = B.solvers.sample(ode_denoiser(B, trainer, den, clip), x_T, p.sigmas, sampler, record=record,
                                   progress=progress)
        else:
            res = B.samplers.sample_loop(trainer.sched, den, x_T, rng, sampler=sampler,
                                         steps=None if p.steps >= cfg.T else p.steps, spacing=spacing, eta=eta,
                                         prediction=cfg.prediction, variance=variance or "fixed_small",
                                         clip_x0=clip, record=record, progress=progress)
    if record:
        return B.to_numpy(res.x), _trajectory(B, trainer.sched, res.trajectory, p.ode)
    return B.to_numpy(res.x)


def _trajectory(B, sched, traj, from_ode):
    """(t, x_t, x0_hat) NumPy triples; the ODE's (sigma, ...) are named by their trained step t (K8)."""
    to_t = (lambda s: int(B.score.sigma_to_t(sched, float(s)))) if from_ode else int
    return [(to_t(k), B.to_numpy(xt), B.to_numpy(x0)) for k, xt, x0 in traj]


def check_steps(T, steps, whose="the checkpoint's T", default=None):
    """--sample-steps against T, in the CLI's words (sample, eval and train share the rule and the message)."""
    if steps is not None and not 1 <= steps <= T:
        omit = f"; omit it for the default ({default})" if default else ""
        raise InputError(f"--sample-steps {steps} must lie in 1..T={T} ({whose}){omit}")


def check_sampler_flags(T, sampler, steps=None, eta=None, variance=None, spacing=None, grid=None, images=True):
    """The sampler's flags against each other and the checkpoint's T, in the CLI's words: a flag that
    would be ignored, or a step count the schedule cannot give, is refused."""
    default = default_steps(sampler, T, images)
    n = default if steps is None else steps
    check_steps(T, steps, default=f"{default} steps for --sampler {sampler}")
    if eta is not None and sampler != "ddim":
        raise InputError(f"--eta applies to --sampler ddim only (the noise of the DDIM step); --sampler {sampler} "
                         "would ignore it")
    if variance is not None and sampler != "ddpm":
        raise InputError(f"--variance applies to --sampler ddpm only (the ancestral step's variance); "
                         f"--sampler {sampler} would ignore it")
    if spacing is not None and sampler in ODE_SAMPLERS:
        raise InputError(f"--spacing applies to --sampler ddpm/ddim (the chain's kept steps); --sampler {sampler} "
                         f"runs on a --grid ({'/'.join(GRIDS)}): use --grid {spacing}")
    if grid is not None and sampler in CHAIN_SAMPLERS:
        raise InputError(f"--grid applies to the ODE samplers ({'/'.join(ODE_SAMPLERS)}); --sampler {sampler} "
                         f"shortens with --spacing instead (--sampler ddim --spacing S is --sampler euler --grid S)")
    if n < MIN_STEPS.get(sampler, 1):
        k = MIN_STEPS[sampler]
        raise InputError(f"--sample-steps {n} is too few for --sampler {sampler}: it takes a second-order step "
                         f"only with --sample-steps {k} or more (NFE {2 * k - 1 if sampler == 'heun' else k}); "
                         "use more steps or --sampler euler")
