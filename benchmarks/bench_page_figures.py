"""Recompute the figures the derivation pages quote that depend on a draw, as ranges over many draws.

    python benchmarks/bench_page_figures.py                 # all of them (about a minute on one CPU thread)
    python benchmarks/bench_page_figures.py warmup e8       # some of them

warmup  (I1) importance sampling's warm-up: training steps of uniform draws, T = 1000, batch 64, until every
        t holds its 10 losses (the rule of reference.resample.ImportanceSampler), over 4000 simulated runs.
e8      (E3, E8) the largest per-point error of the ODE's -log p on the three-component mixture of
        tests/derivations/test_likelihood.py (64 points, sigma 1e-3 to 1e10) and the NFE, at rtol = atol =
        1e-5, 1e-7, 1e-9, over 20 draws of the points.
prior   (E3) the prior mismatch: the same solve stopped at sigma_max = 1e3, 1e4, 1e5 against the one to 1e10,
        per point, and its first-order form sqrt(abar_max) mu . x_T, over 20 draws of 64 points.
e5      (E5) the Gaussian oracle as a T = 1000 discrete-step network through the label interpolation against
        the continuous oracle: largest NLL difference over 64 points and both solves' NFE, 5 draws.
v4      (V4) the zero network (eps = 0, u = 0) on the first 64 test digits, cosine T = 1000, 17 levels:
        L_vlb and its clipped last term over 20 noise draws, against the last term's expectation
        beta / (1 - beta) / (2 ln 2) bits/dim.
Every draw is numpy's default_rng(seed), seed = 0, 1, ...; the reference (NumPy) side computes everything.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # the oracle-as-network helper the tests use

from reference import likelihood as L  # noqa: E402
from reference.oracle import GaussianMixtureOracle, GaussianOracle  # noqa: E402
from reference.schedules import Schedule, make_betas  # noqa: E402
from oracle_net import AffineNet  # noqa: E402

# the mixture of tests/derivations/test_likelihood.py
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = np.array([[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]])


def _range(a, fmt=".2g"):
    a = np.asarray(a)
    return f"{a.min():{fmt}}..{a.max():{fmt}} (median {np.median(a):{fmt}})"


def warmup(runs=4000, T=1000, batch=64, history=10, max_steps=700):
    steps = np.empty(runs, dtype=np.int64)
    for r in range(runs):
        t = np.random.default_rng(r).integers(0, T, size=max_steps * batch)
        order = np.argsort(t, kind="stable")                        # positions grouped by t, in draw order
        tenth = order[np.searchsorted(t[order], np.arange(T)) + history - 1]
        if not np.array_equal(t[tenth], np.arange(T)):
            raise RuntimeError("some t was drawn fewer than 10 times: raise max_steps")
        steps[r] = tenth.max() // batch + 1                          # the step that completes the last history
    lo, med, hi = np.percentile(steps, [5, 50, 95])
    print(f"warmup: {runs} runs, T {T}, batch {batch}: median {med:.0f} steps, 5-95% {lo:.0f}-{hi:.0f}, "
          f"mean {steps.mean():.1f}, min {steps.min()}, max {steps.max()}")


def e8(draws=20, n=64):
    mix = GaussianMixtureOracle(W, MEANS, cov=COVS)
    blurred = GaussianMixtureOracle(W, MEANS, cov=COVS + 1e-3**2 * np.eye(2))   # (E3) the density at sigma_min
    for tol in (1e-5, 1e-7, 1e-9):
        err, nfe = [], []
        for seed in range(draws):
            x, _ = mix.sample(np.random.default_rng(seed), n)
            r = L.ode_nll(L.mixture_field(mix), x, 1e-3, 1e10, rtol=tol, atol=tol)
            err.append(np.abs(r.nats + blurred.log_prob(x, 1.0)).max())
            nfe.append(r.nfe)
        print(f"e8: rtol = atol = {tol:g}: largest error of {n} points {_range(err)} nats "
              f"(at most {max(err) / tol:.1f} x tol); NFE {min(nfe)}..{max(nfe)} (median {np.median(nfe):.0f})")


def prior(draws=20, n=64):
    mix, mu = GaussianMixtureOracle(W, MEANS, cov=COVS), np.asarray(W) @ np.asarray(MEANS)
    print(f"prior: mixture mean {mu}, |mu| {np.linalg.norm(mu):.3f}")
    for s_max in (1e3, 1e4, 1e5):
        worst, first_order = [], []
        for seed in range(draws):
            x, _ = mix.sample(np.random.default_rng(seed), n)
            ref = L.ode_nll(L.mixture_field(mix), x, 1e-3, 1e10, rtol=1e-10, atol=1e-10)
            r = L.ode_nll(L.mixture_field(mix), x, 1e-3, s_max, rtol=1e-10, atol=1e-10)
            gap = r.nats - ref.nats
            worst.append(np.abs(gap).max())
            first_order.append(np.abs(gap - r.x_T @ mu / math.sqrt(1 + s_max**2)).max())
        print(f"prior: sigma_max {s_max:g}: largest |gap| of {n} points {_range(worst)} nats; "
              f"largest |gap - sqrt(abar_max) mu . x_T| {max(first_order):.2g}")


def e5(draws=5, n=64):
    mean, cov = np.array([0.3, -0.2]), COVS[0]
    data = GaussianOracle(mean, cov=cov)
    continuous = L.mixture_field(GaussianMixtureOracle([1.0], mean[None], cov=cov[None]))
    for name in ("linear", "cosine"):
        sched = Schedule(make_betas(name, 1000), warn=False)
        lo, hi = L.sigma_range(sched)
        for prediction in ("eps", "x0", "v"):
            net = AffineNet(data.denoiser(sched, prediction), sched.T, 2)
            for tol in (1e-5, 1e-8):
                diff, nfe = [], []
                for seed in range(draws):
                    x = data.sample(np.random.default_rng(seed), n)
                    got = L.model_nll(sched, net, x, prediction=prediction, rtol=tol, atol=tol)
                    exact = L.ode_nll(continuous, x, lo, hi, rtol=tol, atol=tol)
                    diff.append(np.abs(got.nats - exact.nats).max())
                    nfe.append((got.nfe, exact.nfe))
                print(f"e5: {name} {prediction} rtol = atol = {tol:g}: largest |NLL difference| {_range(diff)} "
                      f"nats; NFE (interpolated, continuous) {nfe}")


def v4(draws=20, n=64):
    from lab import data
    from reference import losses
    x = data.load("digits", split="test")[:n].astype(np.float64)
    sched = Schedule(make_betas("cosine", 1000), warn=False)
    zero = lambda xt, t: np.zeros((xt.shape[0], 2 * xt.shape[1]) + xt.shape[2:])  # noqa: E731  eps = 0, u = 0
    total, last = [], []
    for seed in range(draws):
        out = losses.vlb_terms(sched, zero, x, np.random.default_rng(seed), variance="learned", levels=17)
        total.append(float(np.mean(out["total"] - out["prior"])))
        last.append(float(out["terms"].mean(axis=1)[-1]))
    total, last, b = np.array(total), np.array(last), float(sched.betas[-1])
    print(f"v4: expected last term beta / (1 - beta) / (2 ln 2) = {b / (1 - b) / (2 * math.log(2)):.1f} bits/dim "
          f"(beta_{{T-1}} = {b})")
    print(f"v4: seed 0: L_vlb {total[0]:.1f}, last term {last[0]:.1f}; {draws} draws: L_vlb mean {total.mean():.1f} "
          f"(sd {total.std(ddof=1):.1f}), last term mean {last.mean():.1f} (sd {last.std(ddof=1):.1f}, standard error "
          f"{last.std(ddof=1) / math.sqrt(draws):.1f}), share {np.mean(last / total):.3f}")


PARTS = {"warmup": warmup, "e8": e8, "prior": prior, "e5": e5, "v4": v4}

if __name__ == "__main__":
    asked = sys.argv[1:] or list(PARTS)
    unknown = [a for a in asked if a not in PARTS]
    if unknown:
        sys.exit(f"unknown part(s) {unknown}: choose from {list(PARTS)}")
    for part in asked:
        PARTS[part]()
