"""The stochastic samplers (the table's family "sde", reference/sde.py and its twin) for `sample`, `eval` and
lab.sampling.draw: their CLI flags (one definition both commands add), the settings a run gives them, the check
of the Langevin step against the grid, and the run itself with its noise.

The noise is drawn from the same ``np.random.default_rng(seed)`` as x_T, after it, one standard-normal array
shaped like x_T per draw in the order the sampler consumes them (noise(0), noise(1), ...), and handed to the
backend (B.from_numpy): one checkpoint and one seed give the same samples from either side, for every sampler.
Not math: the math is the backends'.
"""
from __future__ import annotations

import argparse

import numpy as np

from common import sampler_table as table
from reference.errors import InputError

FLAG_TYPES = {"s_churn": float, "s_tmin": float, "s_tmax": float, "s_noise": float, "snr": float,
              "corrector_steps": int, "langevin_steps": int, "langevin_eps": float}


def _default(key):
    """"default X" (or "default X for <sampler>" for each taker) of a setting, from the table's rows."""
    found = [(r.name, r.defaults()[key]) for r in table.ROWS if key in r.defaults()]
    return "; ".join(f"default {table.GRID_DEFAULTS[key] if v is None else format(v, 'g')}"
                     + (f" for {n}" if len(found) > 1 else "") for n, v in found)


def configure(p):
    """--eta and the SDE samplers' settings, one flag each (sample and eval share them)."""
    takers = lambda key: "/".join(table.takers(key))   # noqa: E731
    p.add_argument("--eta", type=float, default=None,
                   help=f"{takers('eta')}: {table.FLAG_WORDS['eta']}, in [0, 1]: ddim's default 0, the SDE samplers' "
                        "1 (their 0 is refused: it is euler for ancestral, dpm++2m for dpm++2m-sde)")
    for key, kind in FLAG_TYPES.items():
        p.add_argument(table.flag(key), dest=key, type=kind, default=None,
                       help=f"{takers(key)}: {table.FLAG_WORDS[key]} ({_default(key)})")
    p.add_argument("--final-denoise", dest="final_denoise", action=argparse.BooleanOptionalAction, default=None,
                   help=f"{takers('final_denoise')}: {table.FLAG_WORDS['final_denoise']} (default on)")


def given(args):
    """The SDE settings the user gave, {name: value} (omitted ones left out; --eta is passed on by itself)."""
    return {k: getattr(args, k) for k in table.SDE_FLAGS if getattr(args, k, None) is not None}


def settings_for(sampler, eta=None, sde=None):
    """The settings a run of ``sampler`` gets: its table defaults, overridden by ``sde`` and ``eta`` where the
    sampler takes them ({} for a chain or ODE sampler)."""
    r = table.row(sampler)
    out = r.defaults()
    out.update({k: v for k, v in (sde or {}).items() if v is not None and k in out})
    if eta is not None and "eta" in out:
        out["eta"] = eta
    return out


def nfe(sampler, sigmas, settings):
    """Network calls of ``sampler`` on the NumPy grid ``sigmas`` with its ``settings`` (the table's count)."""
    s = np.asarray(sigmas, dtype=np.float64)
    return table.row(sampler).nfe(len(s) - 1, ends_at_zero=bool(s[-1] == 0), **settings)


def plan_nfe(B, sampler, sigmas, sde=None):
    """The NFE of an ODE or SDE sampler on the backend grid ``sigmas`` (an SDE's with its settings ``sde``, the
    defaults where omitted), the Langevin step checked against the grid first (check_grid)."""
    st = settings_for(sampler, sde=sde)
    s = np.asarray(B.to_numpy(sigmas), dtype=np.float64)
    check_grid(B, sampler, s, st)
    return int(nfe(sampler, s, st))


def check_grid(B, sampler, sigmas, settings):
    """Refuse a Langevin step that diverges on the grid's first level (Q11), naming --langevin-eps and the largest
    stable step, 4 sigma_L^2 with sigma_L the grid's smallest nonzero level."""
    if settings.get("langevin_eps") is None:   # not Langevin, or its default 0.2 sigma_L^2: stable on any grid
        return
    s = np.asarray(sigmas, dtype=np.float64)
    low = float(s[s > 0][-1])
    bound, eps = float(B.sde.langevin_bound(low)), settings["langevin_eps"]
    if eps >= bound:
        raise InputError(f"--langevin-eps {eps:g} diverges on the first level of this grid: its step eps sigma_1^2 / "
                         f"sigma_L^2 is not below 4 sigma_1^2 (Q11). The largest stable --langevin-eps here is 4 "
                         f"sigma_L^2 = {bound:.4g} (sigma_L = {low:.4g}, the grid's smallest nonzero level): use a "
                         f"smaller one, e.g. the default (--langevin-eps omitted), 0.2 sigma_L^2 = "
                         f"{float(B.sde.langevin_default_eps(low)):.3g} (Q13)")


def noise_source(B, rng, like, dtype, device=None):
    """noise(k): the k-th standard-normal draw shaped like ``like`` from ``rng``, drawn in order (k = 0, 1, ...),
    as a backend array of ``dtype`` (on ``device`` for torch)."""
    shape, drawn = tuple(like.shape), [0]

    def noise(k):
        if k != drawn[0]:
            raise RuntimeError(f"noise({k}) asked after {drawn[0]} draws: the samplers consume the draws in order")
        drawn[0] += 1
        z = B.from_numpy(rng.standard_normal(shape).astype(dtype))
        return z.to(device) if device is not None else z

    return noise


def solve(B, D, x_T, rng, plan, sde=None, record=False, progress=None, sched=None):
    """The ODE solve of ``plan`` (a lab.sampling.Plan; solvers.sample), or its SDE run (run) with the settings
    ``sde`` (defaults where omitted) and noise from ``rng``, of x_T's dtype and device. ``sched``: a model of the
    chain's schedule, whose D answers a sampler that leaves the grid at the nearest trained level."""
    r = table.row(plan.sampler)
    if r.family != "sde":
        return B.solvers.sample(D, x_T, plan.sigmas, plan.sampler, record=record, progress=progress)
    snap = sched is not None and r.leaves_grid
    D = nearest_level(B, sched, D) if snap else D
    dtype = np.dtype(str(x_T.dtype).replace("torch.", ""))
    device = x_T.device if B.name == "torch" else None
    res = run(B, D, x_T, plan.sigmas, plan.sampler, rng, settings_for(plan.sampler, sde=sde), dtype, device, record,
              progress)
    if record and snap:   # a step's recorded level: the trained one its D was called at
        res.trajectory[:] = [(_nearest(B, sched, sigma), x, x0) for sigma, x, x0 in res.trajectory]
    return res


def nearest_level(B, sched, D):
    """D of a model of the chain at any sigma: its D at the trained level nearest in log sigma (solvers.snap_sigmas,
    K8), an approximation off the trained levels (the network knows no others); the grid's own levels stay."""
    return lambda x, sigma: D(x, _nearest(B, sched, sigma))


def _nearest(B, sched, sigma):
    return float(np.asarray(B.to_numpy(B.solvers.snap_sigmas(sched, [float(sigma), 0.0])))[0])


def run(B, D, x_T, sigmas, sampler, rng, settings, dtype, device=None, record=False, progress=None):
    """The SDE sampler from x_T (VP variables, as solvers.sample) with noise from ``rng`` -> Sampled. Recorded, the
    trajectory keeps the first (sigma, x_t, x0_hat) of each level (langevin calls D langevin_steps times at one)."""
    res = B.sde.sample(D, x_T, sigmas, sampler, noise_source(B, rng, x_T, dtype, device), record=record,
                       progress=progress, **settings)
    if record:
        seen, kept = set(), []
        for step in res.trajectory:
            if float(step[0]) not in seen:
                seen.add(float(step[0]))
                kept.append(step)
        res.trajectory[:] = kept
    return res
