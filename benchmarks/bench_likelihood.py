"""Likelihood three ways (issue 16 §5): the bound with fixed and learned variances, and the exact ODE likelihood.

    python benchmarks/bench_likelihood.py                      # train the three models (port, CPU), then measure
    python benchmarks/bench_likelihood.py --simple runs/digits/ckpt.npz --hybrid runs/digits_hybrid/ckpt.npz \\
        --g8 runs/gaussians8/ckpt.npz --ode-n 64              # reuse checkpoints (either side's)

On the digits test split (17 levels), in bits/dim of the discrete data, the same --bpd-n held-out images for
every figure (the bound's eps per step and the ODE's probes and dequantisation drawn from --seed, the same for
every model: paired figures):
  (a) the L_simple model (`train --data digits`) by the bound with fixed_small and with fixed_large variances;
  (b) an L_hybrid learned-variance model (`--variance learned --loss hybrid`, the same steps) by the bound;
  (c) both by the probability-flow ODE (lab/likelihood_eval.ode: Hutchinson, one Rademacher probe per image,
      rtol = atol = 1e-5, dequantised, + log2((17 - 1) / 2) = 3 bits/dim), on the first --ode-n of them.
The bound is computed with x0_hat clipped to [-1, 1] (eval's default for images) and unclipped (--clip), and
printed step by step in bands (the decoder L_0, t 1-9, 10-99, 100..T-2, the last step T-1, the prior), beside
the bound with the best single variance of each step given the network's mean (V6, from its fixed_small terms:
the most any variance constant over the images can gain) and r_t = e_t / beta~_t, the mean's squared error
against the posterior's variance, which caps that gain at r_t / 2.
Targets (checked on the last lines): the learned bound (clipped) at least 10% below the L_simple model's best
fixed variance; the ODE below the bound for the same network (on the same images).
Sample quality of the learned-variance model: the eval judge (lab.quality.Quality: Frechet distance in the
digits classifier's features beside its real-vs-real floor at the same n) of ancestral (ddpm, learned
variances, respaced by V5) sampling with each of --fd-steps, from the same x_T.
On gaussians8 (a mixture of 8 Gaussians, its density known): the trained 2-D model's exact ODE NLL (exact
divergence) of --g8-n test points in nats per point, against the data's own: the mixture's exact -log p of
the same points, and its differential entropy by Monte Carlo of -log p over --entropy-mc fresh draws
(+- its standard error): the floor no model can beat on average.
Prints every figure with its wall time, writes bench_likelihood.json into --out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load():
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores", flush=True)


def _train(side, out, data, steps, extra=()):
    pkg = {"torch": "torch_port", "reference": "reference"}[side]
    cmd = [sys.executable, "-m", pkg, "train", "--data", data, "--out", str(out), "--overwrite", "--quiet",
           "--sample-every", "0", "--no-final-samples", *extra] + (["--steps", str(steps)] if steps else [])
    t0 = time.perf_counter()
    subprocess.run(cmd + (["--device", "cpu"] if side == "torch" else []), check=True)
    print(f"trained {' '.join(cmd[3:])} in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return str(out / "ckpt.npz")


CLIPS = {"on": (True,), "off": (False,), "both": (True, False)}
FIXED_OR_LEARNED = {"fixed_small", "fixed_large", "learned"}


def best_step(B, trainer, bounds):
    """(V6) bounds["best_step"]: the bound with the best single variance of each step given the network's mean,
    from its fixed_small terms (vlb.best_step_variance), the prior added; r_t = e_t / beta~_t at a few steps."""
    import numpy as np
    small = bounds["fixed_small"]
    terms, _ = B.vlb.best_step_variance(trainer.sched, B.from_numpy(np.asarray(small["per_step"])))
    terms = B.to_numpy(terms).astype(np.float64)
    r = 2.0 * math.log(2.0) * np.asarray(small["per_step"])
    bounds["best_step"] = {"bits_per_dim": float(terms.sum() + small["prior_bits_per_dim"]),
                           "prior_bits_per_dim": small["prior_bits_per_dim"], "per_step": terms.tolist(),
                           "r": {str(t): float(r[t]) for t in sorted({1, 2, 10, 100, len(r) - 1}) if t < len(r)}}


BANDS = ("L_0", "t 1-9", "10-99", "100-T-2", "T-1")


def band_edges(T):
    """Step edges of BANDS: [0, 1), [1, 10), [10, 100), [100, T - 1), [T - 1, T), the middle ones cut at T - 1."""
    last = T - 1
    return [0, 1, min(10, last), min(100, last), last, T]


def bands(bounds, what):
    """Prints where each bound comes from: the decoder, bands of steps, the last step, the prior (bits/dim)."""
    import numpy as np
    head = " ".join(f"{name:>8s}" for name in BANDS)
    print(f"  where the bound comes from, {what} (bits/dim):\n    {'':20s}{head}    prior    total", flush=True)
    for v, b in bounds.items():
        steps = np.asarray(b["per_step"])
        e = band_edges(len(steps))
        cells = [float(steps[e[i]:e[i + 1]].sum()) for i in range(len(BANDS))]
        b["bands"] = dict(zip(BANDS, cells))
        name = "best per step (V6)" if v == "best_step" else v
        print(f"    {name:20s}" + " ".join(f"{c:8.4f}" for c in cells) +
              f" {b['prior_bits_per_dim']:8.4f} {steps.sum() + b['prior_bits_per_dim']:8.4f}", flush=True)
    r = bounds.get("best_step", {}).get("r")
    if r:
        print("    r_t = e_t / beta~_t of the mean (V6): " + ", ".join(f"t={t} {v:.3g}" for t, v in r.items()),
              flush=True)


def mixture_log_p(x, means, std):
    """log p(x) of the equal-weight isotropic mixture (K, 2) means, one std: written here, not the oracle's."""
    import numpy as np
    d = x.shape[1]
    sq = ((x[:, None, :] - means[None]) ** 2).sum(-1) / std**2            # (N, K)
    log_nk = -0.5 * sq - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)
    top = log_nk.max(axis=1, keepdims=True)
    return (top[:, 0] + np.log(np.exp(log_nk - top).mean(axis=1)))


def gaussians8_density():
    """gaussians8 in model space: lab.data standardises (x - mean) / std per coordinate with the exact moments,
    so the components sit at (c_k - mean) / std with std GAUSSIANS8_STD / std (isotropic: both stds equal)."""
    import numpy as np
    from lab.data import points
    mean, std = points.point_moments("gaussians8")
    assert np.allclose(std[0], std[1])
    k = np.arange(8)
    c = points.GAUSSIANS8_RADIUS * np.stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)], axis=1)
    return (c - mean) / std, points.GAUSSIANS8_STD / float(std[0])


def entropy_mc(means, std, m, seed):
    """H = E[-log p(x)], x ~ p, by Monte Carlo over m draws -> (H, standard error) in nats."""
    import numpy as np
    rng = np.random.default_rng(seed)
    k = rng.integers(0, len(means), size=m)
    x = means[k] + std * rng.standard_normal((m, means.shape[1]))
    nll = -mixture_log_p(x, means, std)
    return float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(m))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simple", default=None, help="L_simple digits checkpoint (default: train the recipe)")
    ap.add_argument("--hybrid", default=None, help="learned-variance L_hybrid digits checkpoint (default: train)")
    ap.add_argument("--g8", default=None, help="gaussians8 checkpoint (default: train the 2-D recipe)")
    ap.add_argument("--steps", type=int, default=None, help="steps when training (default: the recipes')")
    ap.add_argument("--side", choices=("torch", "reference"), default="torch")
    ap.add_argument("--bpd-n", type=int, default=128, help="digits test images for the bound (0 skips digits)")
    ap.add_argument("--ode-n", type=int, default=64, help="of them, the first N for the ODE (0 skips it)")
    ap.add_argument("--fd-n", type=int, default=500, help="samples per FD figure (0 skips the FDs)")
    ap.add_argument("--fd-steps", default="50,100,1000", help="ancestral steps of the learned-variance model")
    ap.add_argument("--g8-n", type=int, default=1000, help="gaussians8 test points for the ODE NLL (0 skips it)")
    ap.add_argument("--entropy-mc", type=int, default=1_000_000, help="Monte Carlo draws for the entropy")
    ap.add_argument("--parts", default="bound,ode,fd,g8",
                    help="which figures: bound, ode (the digits ODE needs the bound's images), fd, g8; e.g. two "
                         "processes, one with bound,ode and one with fd,g8, share the 2 cores")
    ap.add_argument("--clip", choices=sorted(CLIPS), default="both",
                    help="the bound with x0_hat clipped to [-1, 1] (eval's default for images), unclipped, or both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for the JSON (and the runs); default a temp dir")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (the 2-core machine is shared)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= {"bound", "ode", "fd", "g8"}:
        ap.error(f"--parts takes bound, ode, fd, g8; got {args.parts!r}")
    if not {"bound", "ode"} <= parts:
        args.ode_n = 0
    if "fd" not in parts:
        args.fd_n = 0
    if "g8" not in parts:
        args.g8_n = 0
    print("command:", " ".join([sys.executable] + sys.argv), flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, side: {args.side}", flush=True)
    _load()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_likelihood_"))
    out.mkdir(parents=True, exist_ok=True)
    digits = args.bpd_n > 0 and bool(parts & {"bound", "fd"})
    simple = args.simple or (_train(args.side, out / "digits", "digits", args.steps) if digits else None)
    hybrid = args.hybrid or (_train(args.side, out / "digits_hybrid", "digits", args.steps,
                                    ("--variance", "learned", "--loss", "hybrid")) if digits else None)
    g8 = args.g8 or (_train(args.side, out / "gaussians8", "gaussians8", args.steps) if args.g8_n else None)

    import numpy as np
    import lab.likelihood_eval as le
    from lab import data as datasets
    from lab.backend import Backend
    from lab.quality import Quality
    from lab.sampling import draw, load_trainer
    if args.quiet:
        le.bar = lambda *a, **k: None
        le.progress = lambda it, **k: _Silent(it)
    if args.side == "torch":
        import torch
        torch.set_num_threads(args.threads)
    B = Backend(args.side)
    kw = {"device": "cpu"} if args.side == "torch" else {}
    res = {"side": args.side, "seed": args.seed, "bpd_n": args.bpd_n, "ode_n": args.ode_n, "models": {}}

    def save():
        (out / "bench_likelihood.json").write_text(json.dumps(res, indent=2) + "\n")

    info = datasets.info("digits")
    for tag, path in (("L_simple", simple), ("L_hybrid", hybrid)) if digits else ():
        trainer, ck = load_trainer(B, path, **kw)
        cfg = trainer.cfg
        m = res["models"][tag] = {"ckpt": path, "step": ck.step, "variance": cfg.variance, "loss": cfg.loss}
        x_np = le.held_out("digits", cfg, args.bpd_n)
        x = le._on_device(B, trainer, x_np)
        print(f"{tag}: {path} (step {ck.step}, --variance {cfg.variance} --loss {cfg.loss}), {args.bpd_n} test "
              f"images", flush=True)
        # fixed_small for the learned model too: its mean's best single variance per step (V6) comes from it
        variances = ("fixed_small", "fixed_large") if cfg.variance != "learned" else ("learned", "fixed_small")
        variances = variances if "bound" in parts else ()
        for clip in CLIPS[args.clip]:
            key = "bound" if clip else "bound_unclipped"
            m[key] = {}
            for v in variances:
                b = le.bound(B, trainer, x, info, v, args.seed, per_item=True, clip=clip, per_step=True)
                m[key][v] = b
                print(f"  bound, {v:11s} {'x0_hat clipped' if clip else 'unclipped':14s} {b['bits_per_dim']:.4f} "
                      f"+- {b['bits_per_dim_se']:.2g} bits/dim  [{b['seconds']:.0f} s]", flush=True)
                save()
            if variances:
                best_step(B, trainer, m[key])
                print(f"  bound, best single variance per step given the mean (V6): "
                      f"{m[key]['best_step']['bits_per_dim']:.4f} bits/dim", flush=True)
        for key in ("bound", "bound_unclipped") if variances else ():
            if key in m:
                bands(m[key], "x0_hat clipped" if key == "bound" else "unclipped")
        if args.ode_n and variances:
            o = le.ode(B, trainer, x[:args.ode_n], info, args.seed, batch=args.ode_n, per_item=True)
            m["ode"] = o
            best = min(FIXED_OR_LEARNED & set(m["bound"]), key=lambda v: m["bound"][v]["bits_per_dim"])
            same = float(np.mean(m["bound"][best]["per_item"][:args.ode_n]))
            m["bound_on_ode_items"] = {"variance": best, "bits_per_dim": same}
            print(f"  ODE            {o['bits_per_dim']:.4f} +- {o['bits_per_dim_se']:.2g} bits/dim on the first "
                  f"{args.ode_n} (the bound there, {best}: {same:.4f}); NFE {o['nfe']}  [{o['seconds']:.0f} s]",
                  flush=True)
            save()
        if tag == "L_hybrid" and args.fd_n:
            judge = Quality("digits", args.fd_n, cfg, args.seed)
            m["fd"] = {"floor": judge.floor, "n": args.fd_n, "rows": []}
            print(f"  FD of {args.fd_n} samples (ddpm, learned variances; floor {judge.floor:.4g}):", flush=True)
            for k in (int(s) for s in args.fd_steps.split(",")):
                t0 = time.perf_counter()
                s = draw(B, trainer, args.fd_n, args.seed, "ddpm", k, "leading", variance="learned",
                         progress=None if args.quiet else le.bar(f"ddpm {k} steps"), warn=False)
                secs = time.perf_counter() - t0
                fd = judge.score(s)
                m["fd"]["rows"].append({"steps": k, "fd": fd, "ratio_to_floor": fd / judge.floor,
                                        "sampling_seconds": secs})
                print(f"    {k:5d} steps: FD {fd:.4g} ({fd / judge.floor:.2f}x the floor)  [{secs:.0f} s]",
                      flush=True)
                save()
    if g8 and args.g8_n:
        trainer, ck = load_trainer(B, g8, **kw)
        x_np = le.held_out("gaussians8", trainer.cfg, args.g8_n, args.seed)
        o = le.ode(B, trainer, le._on_device(B, trainer, x_np), datasets.info("gaussians8"), args.seed,
                   batch=args.g8_n, per_item=True)
        means, std = gaussians8_density()
        true = -mixture_log_p(x_np.astype(np.float64), means, std)
        t0 = time.perf_counter()
        H, H_se = entropy_mc(means, std, args.entropy_mc, args.seed + 1)
        gap = np.asarray(o["per_item"]) - true
        res["gaussians8"] = {"ckpt": g8, "step": ck.step, "ode": o, "true_nll": float(true.mean()),
                             "true_nll_se": float(true.std(ddof=1) / math.sqrt(len(true))),
                             "entropy": H, "entropy_se": H_se, "entropy_seconds": time.perf_counter() - t0,
                             "gap": float(gap.mean()), "gap_se": float(gap.std(ddof=1) / math.sqrt(len(gap)))}
        g = res["gaussians8"]
        print(f"gaussians8: {g8} (step {ck.step}), {args.g8_n} test points, nats per point:\n"
              f"  ODE NLL {o['nats']:.4f} +- {o['nats_se']:.2g} (exact divergence, NFE {o['nfe']}, "
              f"{o['seconds']:.0f} s); the data's own -log p of the same points {g['true_nll']:.4f} "
              f"(model - data, paired: {g['gap']:.4f} +- {g['gap_se']:.2g})\n"
              f"  entropy of the mixture (Monte Carlo of -log p, {args.entropy_mc} draws): {H:.4f} +- {H_se:.2g}",
              flush=True)
        save()
    _targets(res)
    save()
    print(f"wrote {out / 'bench_likelihood.json'}")
    _load()


class _Silent:
    """A progress bar that shows nothing (--quiet) but takes set_postfix."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return iter(self.it)

    def set_postfix(self, **kw):
        pass


def _targets(res):
    ms = res["models"]
    s, h = ms.get("L_simple", {}), ms.get("L_hybrid", {})
    if s.get("bound") and h.get("bound", {}).get("learned"):
        best = min({"fixed_small", "fixed_large"} & set(s["bound"]), key=lambda v: s["bound"][v]["bits_per_dim"])
        a, b = s["bound"][best]["bits_per_dim"], h["bound"]["learned"]["bits_per_dim"]
        drop = 1 - b / a
        ok = "met" if drop >= 0.10 else f"MISSED by {0.10 - drop:.1%} points"
        res["target_learned_bound"] = {"best_fixed": best, "drop": drop, "met": drop >= 0.10}
        print(f"target: learned-variance bound {b:.4f} vs the L_simple model's best fixed ({best}) {a:.4f}: "
              f"{drop:.1%} lower, at least 10% asked ({ok})")
        if "best_step" in s["bound"]:
            c = s["bound"]["best_step"]["bits_per_dim"]
            res["best_step_ceiling"] = 1 - c / a
            print(f"  (the best single variance of each step given the L_simple mean, V6: {c:.4f}, {1 - c / a:.1%} "
                  f"below {best}: the most any variance constant over the images gains with that mean)")
    for tag, m in ms.items():
        if "ode" in m:
            o, bd = m["ode"]["bits_per_dim"], m["bound_on_ode_items"]
            ok = "met" if o < bd["bits_per_dim"] else f"MISSED by {o - bd['bits_per_dim']:.3f} bits/dim"
            m["target_ode_below_bound"] = o < bd["bits_per_dim"]
            print(f"target: {tag} ODE {o:.4f} below its bound ({bd['variance']}) {bd['bits_per_dim']:.4f} on the "
                  f"same images ({ok})")


if __name__ == "__main__":
    main()
