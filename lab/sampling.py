"""Loading a trained model and drawing samples from it: what `sample`, `eval` and the training pictures share.

Three families of samplers (common/sampler_table.py, the one table of them), one entry (``draw``):
  * the chain, ``ddpm`` | ``ddim`` (reference.samplers.sample_loop), shortened by ``spacing`` (A5);
  * the probability-flow ODE, ``euler`` | ``heun`` | ``dpm++2m`` (reference.solvers.sample), over a ``grid``
    of trained noise levels (K8, N5). ``euler`` on a grid equals ``ddim`` (eta 0) with that spacing (K7);
  * the stochastic samplers (reference.sde.sample, lab/sde_sampling.py) on the ODE's grids, through the same D.
A model of a continuous objective (cfg.objective "edm" or "flow") has no chain: the ODE samplers run on its
objective's grid of noise levels (reference.objectives.sigma_grid; the default grid per objective is the table's
DEFAULT_GRIDS) through its denoiser D(x~, sigma~) (objectives.denoiser), and ddpm/ddim are refused by name.
The noise x_T, then an SDE sampler's draws, comes from ``np.random.default_rng(seed)`` in the same order on both
sides, so one checkpoint sampled with one seed gives the same samples from ``python -m reference sample`` and
``python -m torch_port sample`` (exactly in float64, to float32 rounding otherwise), for every sampler.

Every sampler gets one denoiser (``network``): a class-conditional checkpoint asked for classes ``y`` runs
through guidance.guided (W2, W4) at the scale ``guidance``; a learned-variance checkpoint (2C output channels,
V1) gives ddpm all 2C channels (variance "learned", respaced by V5 when shortened) and every other sampler
(ddim, the ODE solvers) the C mean channels only; guided, only the mean channels are mixed (the variance is
the conditional pass's). A continuous model's raw outputs are mixed the same way: D is affine in them with
coefficients that do not depend on the class, so the mix of the outputs is the same mix of D.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import warnings
from dataclasses import dataclass

import numpy as np

from common import sampler_table as table
from common.choices import CONTINUOUS_OBJECTIVES, GRIDS, SPACINGS  # noqa: F401  (GRIDS, SPACINGS: the commands')
from reference import samplers as chain
from reference.diffusion import LEARNED, VARIANCES
from reference.errors import InputError
from reference.schedules import PriorMismatchWarning

from . import checkpoint, data, sde_sampling
from .config import config_from_json
from .late_start import LATE_START_PREFIX, amplified_start_message, default_grid, late_start_message

CHAIN_SAMPLERS = table.names("chain")       # ("ddpm", "ddim")
ODE_SAMPLERS = table.names("ode")           # ("euler", "heun", "dpm++2m")
SAMPLERS = table.names()
# What `sample` and `eval` run when --sampler and --sample-steps are omitted (resolve): DPM-Solver++(2M), and for
# every sampler but ddpm (all T) the step count of the data's kind. 2-D points take more steps than images: at
# 20, the modes of a mixture come out as wedges pointing at the centre, and an MLP's network call is cheap.
# benchmarks/README.md and the README's Fast-sampling section have the measurements.
DEFAULT_SAMPLER = "dpm++2m"
DEFAULT_STEPS = {"images": 20, "points": 50}
ODE_DEFAULT_STEPS = DEFAULT_STEPS["images"]   # plan's steps for the ODE samplers when none are given
DEFAULT_GRID = table.DEFAULT_GRIDS["ddpm"]    # the ODE samplers' --grid when omitted, but leading where a start
                                              # at T-1 is harmful: lab.late_start.default_grid
MIN_STEPS = {r.name: r.min_steps for r in table.ROWS if r.min_steps > 1}   # the table's, for older callers
DEFAULT_GUIDANCE = 1.0      # the guidance scale s when classes are asked for and no scale: the conditional model,
                            # the one scale whose target is the class's own distribution (W3)


def objective_of(cfg):
    """The objective a run trained: cfg.objective, "ddpm" for a configuration written before it existed."""
    return getattr(cfg, "objective", None) or "ddpm"


def is_continuous(cfg):
    """Whether the run's model is of a continuous objective (no trained chain: edm, flow)."""
    return objective_of(cfg) in CONTINUOUS_OBJECTIVES


def objectives(B):
    """The backend's objectives module (reference/objectives.py or torch_port/objectives.py)."""
    return importlib.import_module(f"{B.package}.objectives")


def load_trainer(B, ckpt_path, device="auto", use_ema=True):
    """A backend Trainer holding the checkpoint's weights (EMA weights by default) -> (trainer, ckpt)."""
    ck = checkpoint.load(ckpt_path)
    if (ck.extra or {}).get("kind") == "classifier":
        raise InputError(f"--ckpt {ckpt_path} is a classifier checkpoint (train --classifier), not a model to sample "
                         "from: pass it as --classifier, and a denoiser's checkpoint as --ckpt")
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
    """What a sampler will do: ``steps`` sampling steps (grid steps for the ODE), ``where`` the spacing (chain)
    or grid (ODE), ``nfe`` network evaluations, ``t_start`` the first (noisiest) trained step the network sees,
    ``sigmas`` the ODE's grid (a backend array; None for the chain), ``objective`` the model's. A model of a
    continuous objective has no trained steps: ``T`` and ``t_start`` are None."""
    sampler: str
    steps: int
    T: int | None
    where: str
    nfe: int
    t_start: int | None
    sigmas: object = None
    objective: str = "ddpm"

    @property
    def ode(self):
        """Whether the sampler runs on a grid of noise levels (else on the chain's kept steps)."""
        return "grid" in table.row(self.sampler).flags

    @property
    def continuous(self):
        return self.objective in CONTINUOUS_OBJECTIVES


def resolve_steps(sampler, steps, T):
    """--sample-steps as the sampler runs it: omitted (or >= T) is all T for ddpm/ddim and
    ODE_DEFAULT_STEPS (at most T) for the ODE samplers."""
    if table.row(sampler).family != "chain":
        return min(T, steps or ODE_DEFAULT_STEPS)
    return T if not steps or steps >= T else steps


def plan(B, sched, sampler, steps=None, spacing="leading", grid=None, clip_x0=True, prediction="eps", sde=None):
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
    return Plan(sampler, n, sched.T, grid, sde_sampling.plan_nfe(B, sampler, sigmas, sde), int(ts[0]), sigmas)


def continuous_plan(B, cfg, sampler, steps=None, grid=None, sde=None):
    """The Plan of an ODE or SDE sampler (``sde`` its settings) on a model of a continuous objective: ``steps``
    (default ODE_DEFAULT_STEPS) on the objective's ``grid`` of noise levels (default: the table's DEFAULT_GRIDS);
    the chain samplers refused."""
    objective = objective_of(cfg)
    table.check_serves(sampler, objective)
    grid = grid or table.DEFAULT_GRIDS[objective]
    table.check_flags(sampler, grid=grid, objective=objective)
    n = steps or ODE_DEFAULT_STEPS
    sigmas = objectives(B).sigma_grid(cfg, n, grid)
    return Plan(sampler, n, None, grid, sde_sampling.plan_nfe(B, sampler, sigmas, sde), None, sigmas, objective)


def plan_for(B, trainer, sampler, steps=None, spacing="leading", grid=None, clip_x0=None, sde=None):
    """The Plan of ``sampler`` for the trainer's model, of either kind (``clip_x0`` default: images clip)."""
    if is_continuous(trainer.cfg):
        return continuous_plan(B, trainer.cfg, sampler, steps, grid, sde)
    clip = len(trainer.item_shape) == 3 if clip_x0 is None else bool(clip_x0)
    return plan(B, trainer.sched, sampler, steps, spacing, grid, clip_x0=clip, prediction=trainer.cfg.prediction,
                sde=sde)


def default_steps(sampler, T, images):
    """--sample-steps when omitted: all T for ddpm, else DEFAULT_STEPS of the data's kind, at most T (T None: a
    continuous model, no cap)."""
    if table.row(sampler).all_steps_default:
        return T
    n = DEFAULT_STEPS["images" if images else "points"]
    return n if T is None else min(T, n)


@dataclass(frozen=True)
class Settings:
    """What `sample` and `eval` run (resolve): the Plan, the chain's ``spacing``, ddpm's ``variance`` (None for
    the other samplers), whether x0_hat is clipped to [-1, 1] (``clip_x0``), ``recorded``: the names of the
    settings taken from the checkpoint's recorded sampling (convert --from-diffusers), ``sde``: an SDE sampler's
    settings, defaults filled in ({} for the others), ``eta``: ddim's --eta (None: 0)."""
    plan: Plan
    spacing: str
    variance: object
    clip_x0: bool
    recorded: tuple = ()
    sde: dict = None
    eta: object = None

    def describe(self):
        """The settings in the summary line's words, e.g. "trailing grid, x0_hat clipped"."""
        p, rec = self.plan, set(self.recorded)
        mark = lambda name: " (the checkpoint's recorded setting)" if name in rec else ""   # noqa: E731
        where = (f"{p.where} grid" if p.ode else f"{self.spacing} spacing{mark('spacing')}" if p.steps < p.T
                 else "every step")
        variance = f", variance {self.variance}{mark('variance')}" if self.variance else ""
        variance += "".join(f", {k} {table.grid_default(k) if v is None else v if isinstance(v, bool) else format(v, 'g')}"
                            for k, v in (self.sde or {}).items())
        return f"{where}{variance}, x0_hat {'clipped to [-1, 1]' if self.clip_x0 else 'not clipped'}{mark('clip_x0')}"


def recorded_sampling(extra):
    """The sampler settings a checkpoint records (``extra["sampling"]``, written by convert --from-diffusers from
    the scheduler config: variance, clip_x0, spacing) -> dict, {} when it records none."""
    rec = (extra or {}).get("sampling") or {}
    return {k: rec[k] for k in ("variance", "clip_x0", "spacing") if rec.get(k) is not None}


def resolve(B, trainer, extra=None, sampler=None, steps=None, spacing=None, grid=None, variance=None,
            clip_x0=None, eta=None, sde=None):
    """The one resolution of what `sample` and `eval` run, from the user's flags (None: omitted) and the checkpoint
    -> Settings. sampler: DEFAULT_SAMPLER; steps: default_steps (by sampler and data kind); the grid: plan's
    default (by the schedule, the prediction and the clipping); spacing (ddpm/ddim), variance (ddpm) and the
    clipping: the checkpoint's recorded settings (``extra``, see recorded_sampling) where it has them, else leading,
    resolve_variance's and on for images; an SDE sampler's settings (``eta``, ``sde`` a dict of the given ones): its
    table defaults. The flags are checked against each other first (check_sampler_flags)."""
    images, continuous, objective = len(trainer.item_shape) == 3, is_continuous(trainer.cfg), objective_of(trainer.cfg)
    T = None if continuous else trainer.cfg.T
    sampler = sampler or DEFAULT_SAMPLER
    check_sampler_flags(T, sampler, steps, eta, variance, spacing, grid, images=images, objective=objective, sde=sde)
    st = sde_sampling.settings_for(sampler, eta, sde)
    if continuous:   # no chain: no spacing, no variance, nothing a converted checkpoint records
        n = default_steps(sampler, None, images) if steps is None else steps
        return Settings(continuous_plan(B, trainer.cfg, sampler, n, grid, st), "leading", None,
                        bool(images if clip_x0 is None else clip_x0), sde=st, eta=eta)
    rec, used, flags = recorded_sampling(extra), [], table.row(sampler).flags

    def pick(given, name, fallback, applies=True):
        if given is not None or not applies:
            return fallback if given is None else given
        if name in rec:
            used.append(name)
            return rec[name]
        return fallback

    spacing = pick(spacing, "spacing", "leading", applies="spacing" in flags)
    variance = resolve_variance(trainer, sampler, pick(variance, "variance", None, applies="variance" in flags))
    clip = bool(pick(clip_x0, "clip_x0", images))
    n = default_steps(sampler, T, images) if steps is None else steps
    p = plan(B, trainer.sched, sampler, n, spacing, grid, clip_x0=clip, prediction=trainer.cfg.prediction, sde=st)
    if "spacing" in used and p.steps >= T:
        used.remove("spacing")   # all T steps: no spacing to choose
    return Settings(p, spacing, variance, clip, tuple(used), st, eta)


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
    x0_hat clipped to [-1, 1] when ``clip_x0`` (default: for images): on the trained steps (K8) for a model of the
    chain, the objective's own denoiser (objectives.denoiser) for a model of a continuous objective."""
    cfg = trainer.cfg
    clip = len(trainer.item_shape) == 3 if clip_x0 is None else clip_x0
    if is_continuous(cfg):
        return objectives(B).denoiser(cfg, den or trainer.denoiser(), clip_x0=clip)
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
    if "variance" not in table.row(sampler).flags:
        return None
    return variance or (LEARNED if learned else "fixed_small")


def network(B, trainer, variance=None, y=None, guidance=None):
    """The denoiser den(x_t, t) a sampler gets (EMA weights). ``variance`` "learned": all 2C output channels
    (ddpm with learned variances), else the C mean channels. ``y`` (an int or (N,) in 0..K-1): the classes,
    guided at scale ``guidance`` (default DEFAULT_GUIDANCE; W2: only the mean channels are mixed); None: no
    labels (a conditional model's null class, the unconditional model), and ``guidance`` is refused."""
    learned = variance == LEARNED
    # a continuous model's network(net_in, time_in, y=None) has no variance channels to choose between
    den = trainer.denoiser() if is_continuous(trainer.cfg) else trainer.denoiser(with_variance=learned)
    if y is None:
        if guidance is not None:
            raise InputError("a guidance scale needs the classes to guide towards (--class K or all)")
        return den
    s = DEFAULT_GUIDANCE if guidance is None else guidance
    return B.guidance.guided(den, y, s, getattr(trainer, "num_classes", None),
                             channels=trainer.item_shape[0] if learned else None)


def draw(B, trainer, n, seed=0, sampler="ddim", steps=None, spacing="leading", eta=0.0, variance=None,
         record=False, progress=None, grid=None, warn=True, y=None, guidance=None, clip_x0=None, sde=None):
    """x_T from default_rng(seed), then the sampler -> NumPy samples (n, *item_shape) (and, when ``record``,
    the trajectory as NumPy (t, x_t, x0_hat) triples, x_t in VP variables and t the trained step, for every
    sampler; for a model of a continuous objective (sigma, x_t, x0_hat), sigma the step's noise level).
    ``steps``: see resolve_steps. ddpm/ddim take ``spacing``, ``eta`` (ddim), ``variance`` (ddpm; default:
    resolve_variance); the ODE and SDE samplers take ``grid`` (default: see plan, or the objective's), the SDE
    samplers ``sde``: a dict of their settings (eta included; None or omitted keys: the table's defaults). ``y``,
    ``guidance``: the classes (int or (n,)) and the guidance scale of a class-conditional checkpoint
    (``network``). ``clip_x0``: x0_hat clipped to [-1, 1] (default: images are, 2-D points are not).
    ``trainer``: a backend Trainer (EMA weights sample). ``warn``: the late-start warning, in the CLI's words
    (lab/late_start.py), when the first step of the chain's model still holds signal."""
    cfg, images = trainer.cfg, len(trainer.item_shape) == 3
    clip = images if clip_x0 is None else bool(clip_x0)
    if sde:
        table.check_flags(sampler, sde=sde, objective=objective_of(cfg))
    if is_continuous(cfg):
        return _draw_continuous(B, trainer, n, seed, sampler, steps, record, progress, grid, y, guidance, clip, sde)
    p = plan(B, trainer.sched, sampler, steps, spacing, grid, clip_x0=clip, prediction=cfg.prediction, sde=sde)
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
            res = sde_sampling.solve(B, ode_denoiser(B, trainer, den, clip), x_T, rng, p, sde, record, progress,
                                     trainer.sched)
        else:
            res = B.samplers.sample_loop(trainer.sched, den, x_T, rng, sampler=sampler,
                                         steps=None if p.steps >= cfg.T else p.steps, spacing=spacing, eta=eta,
                                         prediction=cfg.prediction, variance=variance or "fixed_small",
                                         clip_x0=clip, record=record, progress=progress)
    if record:
        return B.to_numpy(res.x), _trajectory(B, trainer.sched, res.trajectory, p.ode)
    return B.to_numpy(res.x)


def _draw_continuous(B, trainer, n, seed, sampler, steps, record, progress, grid, y, guidance, clip, sde=None):
    """draw for a model of a continuous objective: the ODE or SDE sampler on the objective's grid from x_T drawn as
    for the chain (VP variables: solvers.sample starts at x~ = x_T sqrt(1 + sigma_max^2), K6). No late-start
    warning: the grid starts at the objective's sigma_max, where the data is noise by construction."""
    p = continuous_plan(B, trainer.cfg, sampler, steps, grid, sde)
    D = ode_denoiser(B, trainer, network(B, trainer, None, y, guidance), clip)
    rng = np.random.default_rng(seed)
    x_T = _x_T(B, trainer, n, rng)
    with _no_grad(B):
        res = sde_sampling.solve(B, D, x_T, rng, p, sde, record, progress)
    if record:
        return B.to_numpy(res.x), [(float(s), B.to_numpy(xt), B.to_numpy(x0)) for s, xt, x0 in res.trajectory]
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


def check_sampler_flags(T, sampler, steps=None, eta=None, variance=None, spacing=None, grid=None, images=True,
                        objective="ddpm", sde=None):
    """The sampler's flags against each other, the model's objective and the checkpoint's T (None: a continuous
    model, no cap), in the CLI's words: a sampler the model cannot use, a flag that would be ignored, a grid the
    model does not take, or a step count the schedule or the sampler cannot give, is refused (the samplers'
    table words every rule but T's)."""
    default = default_steps(sampler, T, images)
    n = default if steps is None else steps
    if T is not None:
        check_steps(T, steps, default=f"{default} steps for --sampler {sampler}")
    table.check_serves(sampler, objective)
    table.check_flags(sampler, n, eta, variance, spacing, grid, objective, sde)
