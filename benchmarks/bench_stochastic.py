"""The ODE against the stochastic samplers, and NCSN with annealed Langevin dynamics (issue 27, Measured).

    python benchmarks/bench_stochastic.py --out runs/stochastic                    # parts A and B, training first
    python benchmarks/bench_stochastic.py --out runs/stochastic --reuse            # continue a killed run
    python benchmarks/bench_stochastic.py --out runs/design --reuse --parts A       # on bench_design_space's models
    python benchmarks/bench_stochastic.py --out /tmp/s --train-steps 30 --n 64 --repeats 2 --nfe 10,20 \\
        --models ddpm-eps,flow                                                     # a smoke run

Part A, on the digits models of benchmarks/bench_design_space.py (its MODELS and train: the same recipes, the same
folders, so --reuse takes its checkpoints): every --samplers entry at every NFE of --nfe, --repeats paired draws of
--n digits (seeds --seed, --seed + 1, ...: the same x_T in every row, and the same generator after it), each
scored by eval's judge (the Frechet distance in the digits classifier's features) over its real-vs-real floor:
the mean and its standard error, and the sampling wall time per sample. A sampler's steps for NFE k are the most
whose NFE (the samplers' table's, with the sampler's settings) is at most k. The ODE samplers run on the grid
`sample` gives them for that model (bench_design_space's MODELS), the SDE samplers on their table default. First,
on each model, the samplers that take S_churn (EDM's Algorithm 2) are swept over --churns at --churn-nfe and the
main sweep runs each at the S_churn with the lowest mean there (printed). Printed: the table (models x samplers x
NFE, FD/floor), the wall time per sample, per model the best ODE and the best SDE row with their paired difference
and its standard error, and the target: the best SDE sampler at NFE 100 or 250 beats the best ODE sampler at any
NFE on at least one model (a paired difference within two standard errors is a tie). The picture
(families_vs_nfe.png in --out, or --figure): FD/floor against NFE, one panel per model, ODE solid, SDE dashed.

Part B: `train --objective ncsn` with each dataset's recipe on --ncsn-data, each sampled by --ncsn-samplers:
annealed Langevin on the trained ladder (its defaults: the table's langevin settings; --langevin-steps
overrides), the others at each NFE of --ncsn-nfe and at Langevin's own NFE when it is at most --match-max-nfe.
Sliced Wasserstein / floor for the 2-D sets (--n-points), FD / floor for digits (--n). Target: the digits model
within 1.5x of the floor with its best sampler. The picture (ncsn_samples.png in --out, or --ncsn-figure): a row per
dataset, its held-out data beside each sampler's samples at that sampler's best row, drawn from the first seed.

Resumable: every (model, sampler, settings) keeps its rows in one JSON in --out, written after each row; with
--reuse a row measured before with the same n and seeds is taken, not measured again, and one whose seeds were
measured in several runs (--seed 8 --repeats 8 beside --seed 0 --repeats 8 is --repeats 16) is pooled from them.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _sidebyside import pin_threads  # noqa: E402  (stdlib only: numpy must load after pin_threads)
import bench_design_space as design  # noqa: E402  (MODELS, train; stdlib only at import)

ODE = "euler,heun,dpm++2m"
SDE = "euler-maruyama,ancestral,pc,edm-sde,dpm++2m-sde"
NCSN_DATA = "checkerboard,gaussians8,moons,digits"
NCSN_SAMPLERS = "langevin,euler-maruyama,pc,euler,dpm++2m"
HIGH_NFE = (100, 250)    # where the target reads the SDE samplers (issue 27)
NCSN_TARGET = 1.5


def mean_se(v):
    """Mean and standard error of the mean; a diverged draw (inf) makes both inf."""
    v = [float(x) for x in v]
    m = sum(v) / len(v)
    if len(v) < 2 or not math.isfinite(m):
        return m, (math.inf if not math.isfinite(m) else math.nan)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))


def paired(a, b, floor):
    """Mean and standard error of (a - b) / floor over the seeds both rows share: the paired difference."""
    bv = dict(zip(b["seeds"], b["values"]))
    d = [(x - bv[s]) / floor for s, x in zip(a["seeds"], a["values"]) if s in bv]
    return mean_se(d) + (len(d),)


def verdict(diff, se):
    """'beats' (below -2 SE), 'tie' (within 2 SE) or 'loses' for a paired difference A - B (lower is better)."""
    if math.isnan(diff):          # both rows diverged: no evidence either way
        return "loses"
    if not math.isfinite(diff):
        return "loses" if diff > 0 else "beats"
    if math.isfinite(se) and abs(diff) <= 2 * se:
        return "tie"
    return "beats" if diff < 0 else "loses"


class Sweep:
    """One backend's tools, loaded after the threads are pinned: the table, draw, the judge and the SDE math."""

    def __init__(self, side, threads):
        import numpy as np
        from common import sampler_table
        from lab.backend import Backend
        from lab.quality import Quality
        from lab.sampling import draw, load_trainer
        from reference.errors import InputError
        from reference.sde import SDE_SAMPLERS
        if side == "torch":
            import torch
            torch.set_num_threads(threads)
        self.np, self.table, self.B, self.Quality = np, sampler_table, Backend(side), Quality
        self.draw, self.sde, self.InputError = draw, SDE_SAMPLERS, InputError
        self.written = set()   # the rows' files this run wrote (read back whether or not --reuse)
        self.load = (lambda p: load_trainer(self.B, p, device="cpu")) if side == "torch" else \
            (lambda p: load_trainer(self.B, p))
        self.side = side

    def gamma(self, s_churn, steps):
        """EDM's gamma_i of S_churn on a level inside [S_tmin, S_tmax] (Q8), for the sweep's printout."""
        from reference.sde import edm_gamma
        return edm_gamma(1.0, steps, s_churn, 0.0, math.inf) if steps else math.nan

    def family(self, name):
        return self.table.row(name).family

    def takes(self, name, setting):
        """Whether the SDE sampler ``name`` has the setting (its math's keyword), e.g. s_churn."""
        fn = self.sde.get(name)
        return fn is not None and setting in inspect.signature(fn).parameters

    def nfe(self, name, n, settings):
        return int(self.table.nfe(name, n, **settings))

    def steps_for(self, name, k, settings):
        """The table's most steps whose NFE (with the settings) is at most k; None where k cannot buy its fewest."""
        try:
            return int(self.table.steps_for_nfe(name, k, **settings))
        except self.InputError:
            return None

    def warm(self, trainer, name):
        """One small draw before any timing: the first network calls pay for allocation and kernel choice."""
        self.draw(self.B, trainer, 2, seed=0, sampler=name, steps=self.table.row(name).min_steps, warn=False)

    def measure(self, trainer, judge, n, seeds, name, steps, grid, settings):
        """values per seed (inf where the samples are not finite), and milliseconds per sample."""
        kw = {"sde": dict(settings) or None} if self.family(name) == "sde" else {}
        values, seconds = [], 0.0
        for s in seeds:
            t0 = time.perf_counter()
            x = self.draw(self.B, trainer, n, seed=s, sampler=name, steps=steps, grid=grid, warn=False, **kw)
            seconds += time.perf_counter() - t0
            x = self.np.asarray(x)
            values.append(float(judge.score(x)) if self.np.all(self.np.isfinite(x)) else math.inf)
        return values, 1e3 * seconds / len(seeds) / n


def label(name, settings):
    return name + "".join(f" {k}={v:g}" for k, v in sorted(settings.items()))


def row_file(out, model, name, settings):
    return out / (f"{model}.{name}" + "".join(f".{k}{v:g}" for k, v in sorted(settings.items())) + ".json")


def _same(a, b):
    return all(a[k] == b[k] for k in ("steps", "n", "seeds", "grid"))


def pooled(old, want):
    """[a row of want's seeds] assembled from the stored rows of the same steps, n and grid measured with other
    seeds (a run extended with --seed S --repeats k beside an earlier one; every seed's value is its own draw),
    or [] when some seed of want has no value; ms_per_sample the mean of the rows it takes."""
    like = [r for r in old if all(r[k] == want[k] for k in ("steps", "n", "grid"))]
    value = {s: v for r in like for s, v in zip(r["seeds"], r["values"])}
    if not like or any(s not in value for s in want["seeds"]):
        return []
    used = [r for r in like if set(r["seeds"]) & set(want["seeds"])]
    return [dict(used[0], seeds=list(want["seeds"]), values=[value[s] for s in want["seeds"]],
                 ms_per_sample=sum(r["ms_per_sample"] for r in used) / len(used),
                 pooled_from=[r["seeds"] for r in used])]


def run_setting(S, out, key, trainer, judge, n, seeds, name, grid, settings, nfes, reuse, steps_of=None):
    """Every NFE of one (model, sampler, settings), resumable -> its rows (dicts). ``steps_of``: the steps to run
    in place of the NFE list (annealed Langevin: its ladder), as [(nfe_asked or None, steps)]. The rows already in
    its file are taken with --reuse, and always when this run wrote them (the S_churn sweep's tuned row)."""
    path = row_file(out, key, name, settings)
    old = json.loads(path.read_text())["rows"] if (reuse or path in S.written) and path.exists() else []
    plan = steps_of or [(k, S.steps_for(name, k, settings)) for k in nfes]
    rows = []

    def save():   # the rows of this call, then the file's others (other NFE, other n): a killed run loses none
        path.write_text(json.dumps({"rows": rows + [o for o in old if not any(_same(o, r) for r in rows)]},
                                   indent=1) + "\n")
        S.written.add(path)

    for k, steps in plan:
        if steps is None:
            print(f"  {key} {label(name, settings)}: NFE {k} cannot buy its fewest steps; skipped", flush=True)
            continue
        want = {"steps": steps, "n": n, "seeds": seeds, "grid": grid}
        done = [r for r in old if _same(r, want)] or pooled(old, want)
        if done:
            rows.append(dict(done[0], nfe_asked=k))
            continue
        values, ms = S.measure(trainer, judge, n, seeds, name, steps, grid, settings)
        m, se = mean_se(values)
        r = {"sampler": name, "family": S.family(name), "settings": settings, "nfe_asked": k,
             "nfe": S.nfe(name, steps, settings), **want, "values": values, "floor": judge.floor, "ms_per_sample": ms}
        rows.append(r)
        print(f"  {key:10s} {label(name, settings):28s} steps {steps:5d} NFE {r['nfe']:5d}  {m / judge.floor:6.3f} "
              f"+- {se / judge.floor:.3f} x floor  {ms:8.3g} ms/sample", flush=True)
        save()
    save()
    return rows


def part_a(S, args, out, pkg):
    res, nfes, seeds = {}, args.nfe, list(range(args.seed, args.seed + args.repeats))
    churn_nfe = args.churn_nfe or (100 if 100 in nfes else max(nfes))
    for model in args.models:
        ckpt, minutes = design.train(pkg, model, out, args.reuse, args.train_steps)
        trainer, ck = S.load(ckpt)
        judge = S.Quality("digits", args.n, trainer.cfg, 0)
        S.warm(trainer, args.samplers[0])
        print(f"{model}: step {ck.step}, {judge.metric} of {args.n} digits, {len(seeds)} paired draws, floor "
              f"{judge.floor:.4g}" + (f", trained in {minutes:.1f} min" if minutes else ", reused"), flush=True)
        rows, tuned = [], {}
        for name in args.samplers:
            if S.takes(name, "s_churn"):   # EDM's S_churn: swept first, the best mean then runs the main sweep
                sweep, n_churn, by_gamma = {}, S.steps_for(name, churn_nfe, {}), {}
                for c in args.churns:
                    g = S.gamma(c, n_churn)
                    if g in by_gamma:   # gamma at its cap sqrt(2) - 1: the same sampler as a churn already run
                        sweep[c] = sweep[by_gamma[g]]
                        continue
                    by_gamma[g] = c
                    try:
                        r = run_setting(S, out, model, trainer, judge, args.n, seeds, name, None, {"s_churn": c},
                                        [churn_nfe], args.reuse)
                    except S.InputError as e:   # e.g. S_churn 0, which is Heun's ODE sampler: refused by name
                        print(f"  {model} {name} s_churn={c:g}: refused ({str(e).splitlines()[0]})", flush=True)
                        r = []
                    sweep[c] = mean_se(r[0]["values"])[0] if r else math.inf
                finite = {c: v for c, v in sweep.items() if math.isfinite(v)}
                print(f"{model}: {name} S_churn sweep at NFE {churn_nfe} ({n_churn} steps): " + ", ".join(
                    f"{c:g} (gamma {S.gamma(c, n_churn):.3f}) -> {v / judge.floor:.3f}x" for c, v in sweep.items()),
                    flush=True)
                if not finite:
                    print(f"{model}: {name} skipped: no S_churn of --churns ran", flush=True)
                    continue
                tuned[name] = min(finite, key=lambda c: finite[c])
                print(f"{model}: {name} tuned S_churn = {tuned[name]:g} (used below)", flush=True)
            settings = {"s_churn": tuned[name]} if name in tuned else {}
            grid = design.MODELS[model][2].get(name) if S.family(name) != "sde" else None
            try:
                own = args.sde_nfe if args.sde_nfe and S.family(name) == "sde" else nfes
                rows += run_setting(S, out, model, trainer, judge, args.n, seeds, name, grid, settings, own,
                                    args.reuse)
            except S.InputError as e:   # a sampler this model cannot run: said, and the sweep goes on
                print(f"  {model} {label(name, settings)}: refused ({e})", flush=True)
        res[model] = {"floor": judge.floor, "tuned_churn": tuned, "churn_nfe": churn_nfe, "rows": rows}
    return res


def _cell(rows, name, k, floor, key="fd"):
    r = [x for x in rows if x["sampler"] == name and x["nfe_asked"] == k]
    if not r:
        return ""
    m, se = mean_se(r[0]["values"])
    at = f" (NFE {r[0]['nfe']})" if r[0]["nfe"] != k else ""
    if key == "ms":
        return f"{r[0]['ms_per_sample']:.3g}"
    return ("diverged" if not math.isfinite(m) else f"{m / floor:.2f} ± {se / floor:.2f}") + at


def table_md(res, nfes, samplers, key="fd", what="FD / floor (SE)", first="model"):
    what = what if key == "fd" else "ms per sample"
    lines = [f"| {first} | sampler ({what}) | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
             "|" + "---|" * (len(nfes) + 2)]
    for model, r in res.items():
        for name in samplers:
            got = [x for x in r["rows"] if x["sampler"] == name]
            if not got:
                continue
            tag = f"{name} ({got[0]['family']}" + "".join(f", {k}={v:g}" for k, v in got[0]["settings"].items()) + ")"
            lines.append(f"| {model} | {tag} | " + " | ".join(_cell(r["rows"], name, k, r["floor"], key)
                                                             for k in nfes) + " |")
    return "\n".join(lines)


def _best(rows, family, nfes=None):
    pick = [r for r in rows if r["family"] == family and (nfes is None or r["nfe_asked"] in nfes)]
    return min(pick, key=lambda r: mean_se(r["values"])[0]) if pick else None


def _name(r, floor):
    m, se = mean_se(r["values"])
    return f"{label(r['sampler'], r['settings'])} at NFE {r['nfe']} ({m / floor:.3f} ± {se / floor:.3f}x)"


def report_a(res, nfes):
    high = [k for k in nfes if k in HIGH_NFE] or [max(nfes)]
    note = "" if any(k in HIGH_NFE for k in nfes) else f" (no NFE 100/250 in --nfe: read at NFE {high[0]})"
    outcome = []
    for model, r in res.items():
        f = r["floor"]
        ode, sde_any, sde = _best(r["rows"], "ode"), _best(r["rows"], "sde"), _best(r["rows"], "sde", high)
        if ode is None or sde is None:
            print(f"{model}: best ODE {_name(ode, f) if ode else 'none'}; best SDE {_name(sde, f) if sde else 'none'}")
            continue
        d, se, k = paired(sde, ode, f)
        v = verdict(d, se)
        outcome.append((v, model, d, se, mean_se(sde["values"])[0] / mean_se(ode["values"])[0]))
        print(f"{model}: best ODE {_name(ode, f)}; best SDE {_name(sde_any, f)}; best SDE at NFE "
              f"{'/'.join(map(str, high))}: {_name(sde, f)}; paired difference (SDE - ODE) {d:+.3f} ± {se:.3f}x "
              f"floor over {k} seeds: {v}")
    if not outcome:
        print("target: not judged (no model with both an ODE and an SDE row)")
        return
    won = [o for o in outcome if o[0] == "beats"]
    ties = [o for o in outcome if o[0] == "tie"]
    if won:
        o = min(won, key=lambda o: o[2])
        line = f"met on {', '.join(w[1] for w in won)} (best: {o[1]}, {o[2]:+.3f} ± {o[3]:.3f}x floor)"
    elif ties:
        o = min(ties, key=lambda o: o[2])
        line = (f"not met: a tie on {', '.join(t[1] for t in ties)} (closest: {o[1]}, {o[2]:+.3f} ± {o[3]:.3f}x "
                "floor, within two standard errors)")
    else:
        o = min(outcome, key=lambda o: o[4])
        line = (f"MISSED: closest {o[1]}, the best SDE {o[4]:.2f}x the best ODE's distance ({o[2]:+.3f} ± "
                f"{o[3]:.3f}x floor)")
    print(f"target: the best SDE sampler at NFE 100 or 250 beats the best ODE sampler at any NFE on at least one "
          f"digits model{note}: {line}")


def figure(S, res, path):
    from lab.plots.families import families_vs_nfe
    panels = {}
    for model, r in res.items():
        curves = {}
        for row in r["rows"]:
            m, se = mean_se(row["values"])
            c = curves.setdefault(label(row["sampler"], row["settings"]), (row["family"], []))
            c[1].append((row["nfe"], m / r["floor"], se / r["floor"]))
        curves = {k: (fam, *map(list, zip(*sorted(pts)))) for k, (fam, pts) in curves.items()}
        panels[model] = curves
    return families_vs_nfe(panels, path, ylabel="FD / floor (lower is better)",
                           title="digits: the ODE (solid) against the stochastic samplers (dashed), mean ± SE")


def part_b(S, args, out, pkg):
    res, seeds, columns = {}, list(range(args.seed, args.seed + args.repeats)), []
    for data in args.ncsn_data:
        folder = out / "ncsn" / data
        if not (args.reuse and (folder / "ckpt.npz").exists()):
            t0 = time.perf_counter()
            design._run([sys.executable, "-m", pkg, "train", "--data", data, "--objective", "ncsn", "--out",
                         str(folder), "--overwrite", "--quiet", "--no-final-samples",
                         *(["--steps", str(args.train_steps)] if args.train_steps else [])], out / f"ncsn.{data}.log")
            print(f"ncsn {data}: trained in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        trainer, ck = S.load(folder / "ckpt.npz")
        n = args.n_points if len(trainer.item_shape) == 1 else args.n
        judge = S.Quality(data, n, trainer.cfg, 0)
        S.warm(trainer, args.ncsn_samplers[-1])
        levels = trainer.cfg.num_levels
        print(f"ncsn {data}: step {ck.step}, {levels} levels, {judge.metric} of {n}, floor {judge.floor:.4g}",
              flush=True)
        rows, own = [], None
        for name in (s for s in args.ncsn_samplers if S.takes(s, "langevin_steps")):   # on its ladder, own NFE
            st = {"langevin_steps": args.langevin_steps} if args.langevin_steps else {}
            rows += run_setting(S, out, f"ncsn-{data}", trainer, judge, n, seeds, name, None, st, [], args.reuse,
                                steps_of=[(None, levels)])
            own = rows[-1]["nfe"] if rows else own
        nfes = sorted(set(args.ncsn_nfe) | ({own} if own and own <= args.match_max_nfe else set()))
        if own and own > args.match_max_nfe:
            print(f"ncsn {data}: Langevin's NFE {own} is above --match-max-nfe {args.match_max_nfe}: the other "
                  "samplers run at --ncsn-nfe only", flush=True)
        for name in (s for s in args.ncsn_samplers if not S.takes(s, "langevin_steps")):
            rows += run_setting(S, out, f"ncsn-{data}", trainer, judge, n, seeds, name, None, {}, nfes, args.reuse)
        for r in rows:
            r["nfe_asked"] = r["nfe_asked"] if r["nfe_asked"] is not None else r["nfe"]
        res[data] = {"floor": judge.floor, "metric": judge.metric, "short": "SW" if len(trainer.item_shape) == 1
                     else "FD", "rows": rows, "nfes": nfes}
        columns.append(picture_column(S, trainer, data, n, rows, judge.floor, args.seed))
    if columns:
        from lab import plots
        print("figure:", plots.sample_table(columns, args.ncsn_figure or out / "ncsn_samples.png", across=True),
              flush=True)
    return res


def picture_column(S, trainer, data, n, rows, floor, seed):
    """The picture's column of one NCSN model: its held-out data, then each sampler at its best row (lowest mean),
    drawn again from the first seed (all n points of a 2-D set; 36 digits)."""
    from lab import data as datasets
    points = len(trainer.item_shape) == 1
    k = n if points else 36
    real = datasets.load(data, n=k, split="test") if points else datasets.load(data, split="test")[:k]
    cells = [(f"{data}: real (held out)", real)]
    for name in dict.fromkeys(r["sampler"] for r in rows):
        best = min((r for r in rows if r["sampler"] == name), key=lambda r: mean_se(r["values"])[0])
        kw = {"sde": dict(best["settings"]) or None} if S.family(name) == "sde" else {}
        x = S.np.asarray(S.draw(S.B, trainer, k, seed=seed, sampler=name, steps=best["steps"], grid=best["grid"],
                                warn=False, **kw))
        m = mean_se(best["values"])[0] / floor
        cells.append((f"{label(name, best['settings'])}, NFE {best['nfe']}: {m:.2f}x floor",
                      x if S.np.all(S.np.isfinite(x)) else S.np.zeros_like(real)))
    return cells


def report_b(res, samplers):
    for data, r in res.items():
        cols = sorted({x["nfe_asked"] for x in r["rows"]})
        print(f"\nncsn {data}: {r['metric']}\n" + table_md({data: r}, cols, samplers, what=f"{r['short']} / floor (SE)",
                                                            first="dataset"))
    if "digits" in res:
        r = res["digits"]
        best = min(r["rows"], key=lambda x: mean_se(x["values"])[0], default=None)
        if best is None:
            return
        m, se = (v / r["floor"] for v in mean_se(best["values"]))
        ok = "met" if m <= NCSN_TARGET else (f"not met, within two standard errors of {NCSN_TARGET}x"
                                             if m - 2 * se <= NCSN_TARGET else f"MISSED by {m / NCSN_TARGET:.2f}x")
        print(f"target: NCSN on digits within {NCSN_TARGET}x of the floor with its best sampler "
              f"({label(best['sampler'], best['settings'])} at NFE {best['nfe']}): {m:.3f} ± {se:.3f}x ({ok})")


def _ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the runs, the rows' JSON, the logs and the picture")
    ap.add_argument("--parts", default="A,B", help="A (ODE vs SDE on the digits models), B (NCSN), or both")
    ap.add_argument("--side", choices=("torch", "reference"), default="torch")
    ap.add_argument("--models", default=",".join(design.MODELS))
    ap.add_argument("--samplers", default=f"{ODE},{SDE}", help="part A's samplers (ODE and SDE families)")
    ap.add_argument("--nfe", default="10,20,50,100,250")
    ap.add_argument("--sde-nfe", default=None, help="part A's NFE for the SDE samplers only (default: --nfe), e.g. "
                    "100 to extend the rows the target reads with more seeds")
    ap.add_argument("--churns", default="0,2,5,10,20,40",
                    help="the S_churn values swept (EDM's Algorithm 2: gamma = min(S_churn / steps, sqrt(2) - 1), so "
                         "values above (sqrt(2) - 1) steps are one sampler; 0 is Heun's ODE sampler, refused by name)")
    ap.add_argument("--churn-nfe", type=int, default=None, help="the NFE of the S_churn sweep (default 100, or the "
                    "largest --nfe)")
    ap.add_argument("--repeats", type=int, default=8, help="paired draws per row (seeds --seed, --seed + 1, ...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=500, help="digits per draw")
    ap.add_argument("--n-points", type=int, default=2000, help="points per draw on the 2-D sets (part B)")
    ap.add_argument("--ncsn-data", default=NCSN_DATA)
    ap.add_argument("--ncsn-samplers", default=NCSN_SAMPLERS)
    ap.add_argument("--ncsn-nfe", default="20,100,250", help="part B's NFE for the samplers other than Langevin")
    ap.add_argument("--match-max-nfe", type=int, default=1000,
                    help="the others also run at Langevin's own NFE when it is at most this")
    ap.add_argument("--langevin-steps", type=int, default=None, help="Langevin steps per level (default: its own)")
    ap.add_argument("--train-steps", type=int, default=None, help="override every recipe's steps (a smoke run)")
    ap.add_argument("--reuse", action="store_true", help="reuse the checkpoints and rows already in --out")
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS threads")
    ap.add_argument("--figure", default=None, help="part A's picture (default: families_vs_nfe.png in --out)")
    ap.add_argument("--ncsn-figure", default=None, help="part B's picture: a row per dataset, its data beside each sampler's "
                    "samples at its best row (default: ncsn_samples.png in --out)")
    args = ap.parse_args(argv)
    parts = {p.strip().upper() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"A", "B"}:
        ap.error(f"--parts takes A, B or A,B, got {args.parts!r}")
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in design.MODELS]
    if unknown:
        ap.error(f"unknown --models {', '.join(unknown)}; choose from {', '.join(design.MODELS)}")
    try:
        args.nfe, args.ncsn_nfe = _ints(args.nfe), _ints(args.ncsn_nfe)
        args.sde_nfe = _ints(args.sde_nfe) if args.sde_nfe else None
        args.churns = [float(c) for c in args.churns.split(",") if c.strip()]
    except ValueError as e:
        ap.error(f"--nfe, --ncsn-nfe and --churns take comma-separated numbers: {e}")
    if args.repeats < 2 or not args.nfe or min(args.nfe) < 1 or not args.churns or min(args.churns) < 0:
        ap.error("--repeats must be >= 2 (a standard error), --nfe positive, --churns non-negative and non-empty")
    print("command:", " ".join([sys.executable] + sys.argv), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores, side {args.side}", flush=True)
    pin_threads(args.threads)   # before numpy loads
    S = Sweep(args.side, args.threads)
    args.samplers = [s for s in args.samplers.split(",") if s]
    args.ncsn_samplers = [s for s in args.ncsn_samplers.split(",") if s]
    args.ncsn_data = [d for d in args.ncsn_data.split(",") if d]
    for s in args.samplers + args.ncsn_samplers:
        try:
            S.table.row(s)      # an unknown sampler refused before any training, with the table's names
        except S.InputError as e:
            ap.error(f"--samplers / --ncsn-samplers: {e}")
    pkg = {"torch": "torch_port", "reference": "reference"}[args.side]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    if "A" in parts:
        summary["A"] = part_a(S, args, out, pkg)
        (out / "stochastic.json").write_text(json.dumps(summary, indent=1) + "\n")
        print("\n" + table_md(summary["A"], args.nfe, args.samplers) + "\n")
        print(table_md(summary["A"], args.nfe, args.samplers, key="ms") + "\n")
        for model, r in summary["A"].items():
            for name, c in r["tuned_churn"].items():
                print(f"{model}: {name} ran at the tuned S_churn = {c:g} (swept {args.churns} at NFE {r['churn_nfe']})")
        report_a(summary["A"], args.nfe)
        print("figure:", figure(S, summary["A"], args.figure or out / "families_vs_nfe.png"), flush=True)
    if "B" in parts:
        summary["B"] = part_b(S, args, out, pkg)
        (out / "stochastic.json").write_text(json.dumps(summary, indent=1) + "\n")
        report_b(summary["B"], args.ncsn_samplers)
    print(f"wrote {out / 'stochastic.json'}; load average {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
