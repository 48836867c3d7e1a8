"""The likelihood part of ``eval``: the negative log-likelihood of held-out data two ways, in the flags' words.

  bound  the variational bound L_T + sum_t L_{t-1} + L_0 (derivations/elbo.md; T network evaluations per item)
         with the reverse variances of ``--bpd-variance`` (default: the checkpoint's own, ``learned`` for a
         ``--variance learned`` run, else ``fixed_small``). Discrete data (images of L levels: 256 for 8-bit,
         17 for the digits) is scored by the discretised decoder on its L levels (L6, L9), in bits/dim of the
         discrete data; continuous 2-D points by a Gaussian decoder density, in nats per point (and bits/dim of
         that density, which may be negative).
  ode    the exact likelihood of the probability-flow ODE (derivations/likelihood.md E1-E9) through
         ``likelihood.model_nll`` of a chain's network between its trained levels sigma_0 and sigma_{T-1}, or
         ``likelihood.objective_nll`` of a continuous objective's (edm, flow) between the objective's
         sigma_range (E9: its denoiser is exact at every level); the divergence exact for 2-D points and
         Hutchinson's (Rademacher probes) for images; discrete data dequantised uniformly within its bin, its
         bits/dim the continuous ones plus log2((L - 1) / 2) (E7), an upper bound on the discrete data's bits/dim
         like the bound's figure, so the two compare.

``--nll`` omitted is the bound for a model of the chain and the ODE for a model of a continuous objective (edm,
flow): it has no trained chain, so no discrete bound, and ``--nll bound`` / ``both`` are refused for it with the
reason.

eval.py calls five hooks, in this order: ``configure(p)`` adds the flags, ``check(args)`` refuses bad ones
before any work, ``check_model(trainer, args)`` once the checkpoint is read, ``compute(B, trainer, name, args,
res)`` fills ``res`` (the JSON figures) and ``report(res, args)`` prints them. The noise of both routes (the
bound's eps per step, the probes and the dequantisation) is drawn by NumPy from ``--seed`` in the same order on
both sides, so one checkpoint gives the same figures from ``python -m reference eval`` and
``python -m torch_port eval`` (to float32 rounding).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from reference.errors import InputError
from reference.likelihood import ATOL, MIN_RTOL, RTOL, bpd_offset

from . import data as datasets
from .progress import bar, progress
from .sampling import is_continuous, objective_of, objectives

NLL_ROUTES = ("bound", "ode", "both")
BOUND_VARIANCES = ("fixed_small", "fixed_large", "learned")
DIVERGENCES = ("auto", "exact", "hutchinson")
ODE_FLAGS = ("ode_rtol", "ode_atol", "ode_divergence", "ode_probes", "ode_batch")
ODE_BATCH = 64   # items per adaptive solve: the controller's error norm is an RMS over the whole batch


def configure(p):
    p.add_argument("--bpd-n", type=int, default=64,
                   help="held-out items (test split) for the likelihood (0 skips it)")
    p.add_argument("--nll", choices=NLL_ROUTES, default=None,
                   help="the likelihood route (default: bound). bound: "
                        "the variational bound (T network calls per item); ode: the exact likelihood of the "
                        "probability-flow ODE (an adaptive solve, Hutchinson's divergence for images); both: the two, "
                        "side by side. A model of a continuous objective (edm, flow) has no trained chain, so no "
                        "bound: ode is its one route and its default")
    p.add_argument("--bpd-variance", default=None, metavar="LIST",
                   help="the bound's reverse variances, comma-separated from fixed_small,fixed_large,learned, or "
                        "all (every one the checkpoint has). Default: the checkpoint's own (learned for a "
                        "--variance learned run, else fixed_small)")
    p.add_argument("--bpd-clip", action=argparse.BooleanOptionalAction, default=None,
                   help="the bound's reverse means from x0_hat clipped to [-1, 1], as the sampler computes them for "
                        "images (and DDPM's and improved-diffusion's bits/dim); default: on for images, off for 2-D "
                        "points. --no-bpd-clip scores the unclipped network (on the cosine schedule its last step "
                        "alone can cost ~0.7 bits/dim, derivations/learned_variance.md V6)")
    p.add_argument("--ode-rtol", type=float, default=None, help=f"--nll ode: the solver's relative tolerance "
                                                                 f"(default {RTOL:g}, score_sde's)")
    p.add_argument("--ode-atol", type=float, default=None, help=f"--nll ode: absolute tolerance (default {ATOL:g})")
    p.add_argument("--ode-divergence", choices=DIVERGENCES, default=None,
                   help="--nll ode: exact (d backward passes per evaluation) or hutchinson (--ode-probes passes); "
                        "auto (default): exact for 2-D points, hutchinson for images")
    p.add_argument("--ode-probes", type=int, default=None,
                   help="--nll ode with Hutchinson's divergence: Rademacher probes per item (default 1)")
    p.add_argument("--ode-batch", type=int, default=None,
                   help=f"--nll ode: items per adaptive solve (default {ODE_BATCH})")


def parse_variances(text):
    """--bpd-variance "fixed_small,fixed_large" -> a tuple of names (or ("all",)), refused naming the flag."""
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if names == ("all",):
        return names
    bad = [v for v in names if v not in BOUND_VARIANCES]
    if not names or bad:
        raise InputError(f"--bpd-variance must be a comma-separated list from {', '.join(BOUND_VARIANCES)}, or all; "
                         f"got {text!r}")
    return names


def check(args):
    """Every likelihood flag checked before any work, in the flags' words."""
    if args.bpd_n < 0:
        raise InputError(f"--bpd-n must be >= 0 (0 skips the likelihood), got {args.bpd_n}")
    nll = args.nll or "bound"   # omitted: the bound here (a continuous model's default, ode, is set by check_model)
    ode = nll in ("ode", "both")
    if args.bpd_n == 0 and nll != "bound":
        raise InputError(f"--nll {nll} needs held-out items: --bpd-n 0 skips the likelihood")
    if args.bpd_clip is not None and nll == "ode":
        raise InputError(f"--{'' if args.bpd_clip else 'no-'}bpd-clip sets the bound's reverse means: it applies with "
                         "--nll bound or both (the ODE's likelihood clips nothing)")
    if args.bpd_variance is not None:
        if nll == "ode":
            raise InputError("--bpd-variance chooses the bound's variances: it applies with --nll bound or both "
                             "(the ODE reads the network's mean only)")
        parse_variances(args.bpd_variance)
    if not ode:
        given = [f"--{f.replace('_', '-')}" for f in ODE_FLAGS if getattr(args, f) is not None]
        if given:
            raise InputError(f"{', '.join(given)} applies with --nll ode or both (the probability-flow ODE's "
                             f"likelihood), not --nll {nll}" + ("" if args.nll else " (the default of a chain's model)"
                                                              + ": give --nll ode with it"))
        return
    for flag, v in (("--ode-rtol", args.ode_rtol), ("--ode-atol", args.ode_atol)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise InputError(f"{flag} must be a positive number, got {v!r}")
    if args.ode_rtol is not None and args.ode_rtol < MIN_RTOL:
        raise InputError(f"--ode-rtol {args.ode_rtol!r} is below what float64 can hold (100 eps = {MIN_RTOL:.3g})")
    if args.ode_probes is not None:
        if args.ode_probes < 1:
            raise InputError(f"--ode-probes must be >= 1, got {args.ode_probes}")
        if args.ode_divergence == "exact":
            raise InputError("--ode-probes is for Hutchinson's divergence: --ode-divergence exact uses the d basis "
                             "vectors")
    if args.ode_batch is not None and args.ode_batch < 1:
        raise InputError(f"--ode-batch must be >= 1, got {args.ode_batch}")


def check_model(trainer, args):
    """The route for the checkpoint read: ``args.nll`` omitted is the bound for a model of the chain and the ODE
    for a model of a continuous objective, whose one route it is (the bound refused, naming why)."""
    if not is_continuous(trainer.cfg):
        args.nll = args.nll or "bound"
        return
    objective, given = objective_of(trainer.cfg), args.nll
    if given in ("bound", "both"):
        raise InputError(f"--nll {given}: the discrete bound needs the trained chain (its T steps, their posteriors "
                         f"and the decoder L_0); this {objective} model was trained on continuous noise levels and "
                         "has none. Use --nll ode (its exact likelihood, the default for it)")
    for flag, value in (("--bpd-variance", getattr(args, "bpd_variance", None)),
                        ("--bpd-clip", getattr(args, "bpd_clip", None))):
        if value is not None:
            raise InputError(f"{flag} sets the discrete bound, which this {objective} model has not (no trained "
                             "chain); its likelihood is the ODE's: drop the flag")
    args.nll = "ode"


# ---- the figures --------------------------------------------------------------------------------

def _np(a):
    """A backend array (NumPy, or a torch tensor on any device) -> float64 NumPy."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _mean_se(a):
    a = np.asarray(a, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else None


def held_out(name, cfg, n, seed=0):
    """The first n items of the test split (2-D points: n drawn from the test stream of ``seed``), float32."""
    if name in datasets.POINT_SETS:
        return datasets.load(name, n=n, seed=seed, split="test")
    x = datasets.load(name, split="test", data_dir=cfg.data_dir, image_size=cfg.image_size)
    if len(x) < n:
        raise InputError(f"--bpd-n {n} is more than the {len(x)} held-out images of {name!r}")
    return x[:n]


def _on_device(B, trainer, x):
    x = B.from_numpy(np.ascontiguousarray(x.astype(np.float64 if trainer.cfg.dtype == "float64" else np.float32)))
    return x.to(trainer.device) if B.name == "torch" else x


def bound_variances(args, cfg):
    """The variances the bound is computed with, the checkpoint's own first; refused when it has no learned ones."""
    own = "learned" if cfg.variance == "learned" else "fixed_small"
    if args.bpd_variance is None:
        return (own,)
    names = parse_variances(args.bpd_variance)
    if names == ("all",):
        return (own,) + tuple(v for v in ("fixed_small", "fixed_large") if v != own)
    if "learned" in names and cfg.variance != "learned":
        raise InputError("--bpd-variance learned needs a checkpoint trained with --variance learned (its network "
                         "outputs the variances); this one predicts the mean only: use fixed_small or fixed_large")
    return names


def clip_default(trainer, clip=None):
    """--bpd-clip: the flag's value, or the sampler's own rule (images clip x0_hat to [-1, 1], points do not)."""
    return len(trainer.item_shape) == 3 if clip is None else bool(clip)


def bound(B, trainer, x, info, variance, seed=0, per_item=False, clip=None, per_step=False):
    """The variational bound per item on x (N, ...) with one reverse variance -> a dict of figures.

    Discrete data: bits/dim of the discrete data by the discretised decoder on its levels. Points: the
    Gaussian decoder's density, in nats per item and bits/dim of it. The eps of every step are drawn from
    np.random.default_rng(seed) on both sides (the same eps for every variance: paired figures). ``clip``:
    x0_hat clipped to [-1, 1] in the reverse means (None: as the sampler, images only). ``per_step``: also
    the T terms' means over the items, in bits/dim ("per_step", terms[0] the decoder)."""
    cfg, d = trainer.cfg, int(np.prod(x.shape[1:]))
    kw = dict(decoder="discretized", levels=info.levels) if info.discrete else dict(decoder="gaussian")
    den = trainer.denoiser(with_variance=variance == "learned")
    clip = clip_default(trainer, clip)
    t0 = time.perf_counter()
    out = B.losses.vlb_terms(trainer.sched, den, x, np.random.default_rng(seed), prediction=cfg.prediction,
                             variance=variance, clip_x0=clip, progress=bar(f"bound ({variance})", total=cfg.T),
                             **kw)
    bpd = _np(out["total"])
    res = dict(zip(("bits_per_dim", "bits_per_dim_se"), _mean_se(bpd)), variance=variance, clip_x0=clip,
               seconds=time.perf_counter() - t0)
    if per_step:
        res["per_step"] = _np(out["terms"]).mean(axis=1).tolist()
    # (L7)  nats per item = bits/dim * d ln 2
    res.update(zip(("nats", "nats_se"), _mean_se(bpd * d * math.log(2.0))))
    res["prior_bits_per_dim"] = float(_np(out["prior"]).mean())
    res["decoder_bits_per_dim"] = float(_np(out["terms"][0]).mean())
    if per_item:
        res["per_item"] = bpd.tolist()
    return res


def _ode_progress(desc, rho0, rho1):
    """A progress callable over the solver's accepted steps (their number unknown): the share of log sigma done."""
    def wrap(steps):
        holder = []

        def marked():
            for rho in steps:
                holder[0].set_postfix(log_sigma=f"{rho:.3g}", done=f"{(rho - rho0) / (rho1 - rho0):.0%}")
                yield rho
        holder.append(progress(marked(), desc=desc))
        return holder[0]
    return wrap


def ode(B, trainer, x, info, seed=0, rtol=None, atol=None, divergence=None, n_probes=None, batch=None,
        per_item=False):
    """The probability-flow ODE's likelihood per item on x (N, ...) -> a dict of figures, batch by batch.

    Per batch, from np.random.default_rng(seed): the Rademacher probes (K, n, ...) first, then the
    dequantisation noise (discrete data); both sides receive the same arrays. ``per_item``: also the items'
    own figures (bits/dim of discrete data, nats of points)."""
    L = B.likelihood
    cfg, shape = trainer.cfg, tuple(x.shape)
    n, d = shape[0], int(np.prod(shape[1:]))
    divergence = ("exact" if len(shape) == 2 else "hutchinson") if divergence in (None, "auto") else divergence
    k = n_probes or 1
    rtol, atol, batch = rtol or RTOL, atol or ATOL, batch or ODE_BATCH
    rng = np.random.default_rng(seed)
    model = L.trainer_model(trainer)
    if is_continuous(cfg):   # (E9) the objective's own denoiser, exact at every level of its sampling range
        sig = objectives(B).sigma_range(cfg)
        nll = lambda xb, **kw: L.objective_nll(cfg, model, xb, **kw)  # noqa: E731
    else:                    # (E5) the chain's network, interpolated over its label between its trained levels
        sig, variance = L.sigma_range(trainer.sched), "learned" if cfg.variance == "learned" else "fixed_small"
        nll = lambda xb, **kw: L.model_nll(trainer.sched, model, xb, prediction=cfg.prediction,  # noqa: E731
                                           variance=variance, **kw)
    rho0, rho1 = math.log(sig[0]), math.log(sig[1])
    nats, bpd, nfe, steps = [], [], 0, 0
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        xb = x[i:i + batch]
        m = xb.shape[0]
        kw = {}
        if divergence == "hutchinson":
            # (E4)  Rademacher probes, entries +-1 with probability 1/2
            kw["probes"] = rng.integers(0, 2, size=(k, m) + shape[1:]).astype(np.float64) * 2.0 - 1.0
        if info.discrete:
            kw.update(levels=info.levels, dequant_noise=rng.uniform(0.0, 1.0, size=(m,) + shape[1:]))
        r = nll(xb, divergence=divergence, rtol=rtol, atol=atol,
                progress=_ode_progress(f"ODE NLL, items {i + 1}-{i + m} of {n}", rho0, rho1), **kw)
        nats.append(_np(r.nats)), bpd.append(_np(r.bpd))
        nfe, steps = nfe + r.nfe, steps + r.steps
    nats, bpd = np.concatenate(nats), np.concatenate(bpd)
    res = dict(zip(("bits_per_dim", "bits_per_dim_se"), _mean_se(bpd)))
    res.update(zip(("nats", "nats_se"), _mean_se(nats)))
    res.update(seconds=time.perf_counter() - t0, nfe=nfe, steps=steps, batches=-(-n // batch), batch=batch,
               rtol=rtol, atol=atol, divergence=divergence, probes=k if divergence == "hutchinson" else d,
               sigma_min=sig[0], sigma_max=sig[1], dequantized=info.discrete,
               bpd_offset=bpd_offset(info.levels) if info.discrete else 0.0)
    if per_item:
        res["per_item"] = (bpd if info.discrete else nats).tolist()
    return res


def compute(B, trainer, name, args, res):
    """res gains the likelihood figures of ``--nll`` on ``--bpd-n`` held-out items: "bound" (one entry per
    variance) and/or "ode", and bits_per_dim (the first bound's, or the ODE's; None for 2-D points)."""
    if not args.bpd_n:
        return
    cfg = trainer.cfg
    info = datasets.info(name, image_size=cfg.image_size)
    variances = bound_variances(args, cfg) if args.nll != "ode" else ()
    x = _on_device(B, trainer, held_out(name, cfg, args.bpd_n, args.seed))
    res.update(bits_per_dim=None, bits_per_dim_n=args.bpd_n, levels=info.levels, nll=args.nll)
    t0 = time.perf_counter()
    if variances:
        res["bound"] = {v: bound(B, trainer, x, info, v, args.seed, clip=args.bpd_clip) for v in variances}
        res["bits_per_dim_variance"] = variances[0]
        res["bound_decoder"] = "discretized" if info.discrete else "gaussian"
    if args.nll != "bound":
        res["ode"] = ode(B, trainer, x, info, args.seed, args.ode_rtol, args.ode_atol, args.ode_divergence,
                         args.ode_probes, args.ode_batch)
    res["bits_per_dim_seconds"] = time.perf_counter() - t0
    if info.discrete:
        res["bits_per_dim"] = res["bound"][variances[0]]["bits_per_dim"] if variances else res["ode"]["bits_per_dim"]
    else:
        res["bits_per_dim_note"] = (f"{name!r} holds continuous 2-D points: no discrete code, so no bits/dim of "
                                    "discrete data; the figures are -log p of the density in nats per point")


def _pm(v, se, fmt):
    return f"{v:{fmt}}" + (f" +- {se:.2g}" if se is not None else "")


def report(res, args):
    if "bits_per_dim_n" not in res:
        return
    levels, n = res["levels"], res["bits_per_dim_n"]
    what = f"{levels}-level images" if levels else "continuous 2-D points"
    print(f"  likelihood of {n} held-out items ({what}; +- one standard error over the items):")
    for v, b in res.get("bound", {}).items():
        if levels:
            fig = f"{_pm(b['bits_per_dim'], b['bits_per_dim_se'], '.4f')} bits/dim (discretised decoder, {levels} " \
                  "levels)"
        else:
            fig = f"{_pm(b['nats'], b['nats_se'], '.4f')} nats per point ({b['bits_per_dim']:.4f} bits/dim of " \
                  "the density; Gaussian decoder)"
        clip = ", x0_hat clipped" if b.get("clip_x0") else ""
        print(f"    bound, {v} variance{clip}: {fig}  [{b['seconds']:.3g} s]")
    if "ode" in res:
        o = res["ode"]
        how = (f"{o['divergence']} divergence" + (f", {o['probes']} Rademacher probe(s)" if o["divergence"] ==
                                                  "hutchinson" else "") + f", rtol {o['rtol']:g} atol {o['atol']:g}")
        if levels:
            fig = f"{_pm(o['bits_per_dim'], o['bits_per_dim_se'], '.4f')} bits/dim (dequantised, offset " \
                  f"log2(({levels} - 1) / 2) = {o['bpd_offset']:.4g} included)"
        else:
            fig = f"{_pm(o['nats'], o['nats_se'], '.4f')} nats per point ({o['bits_per_dim']:.4f} bits/dim)"
        print(f"    ODE (probability flow, exact likelihood): {fig}")
        print(f"      {how}; NFE {o['nfe']} over {o['batches']} solve(s) of <= {o['batch']} items  "
              f"[{o['seconds']:.3g} s]")
    if "bits_per_dim_note" in res:
        print(f"    note: {res['bits_per_dim_note']}")
