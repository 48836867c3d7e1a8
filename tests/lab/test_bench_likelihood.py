"""benchmarks/bench_likelihood.py end to end on tiny checkpoints (its protocol, not its figures): the bound of the
L_simple model with both fixed variances and the learned model's, the ODE of both on the same images, the FD
rows, gaussians8 against the mixture's own density and entropy, the targets' lines and the JSON."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np

from lab import cli
from lab import data as datasets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench_likelihood  # noqa: E402

TINY = ["--steps", "3", "--save-every", "0", "--sample-every", "0", "--no-final-samples", "--quiet", "--T", "20"]
UNET = ["--batch-size", "8", "--base-channels", "8", "--channel-mults", "1", "--num-res-blocks", "1",
        "--groups", "4"]


def test_the_mixture_density_of_gaussians8_is_normalised_and_its_entropy_matches_the_data_stream():
    means, std = bench_likelihood.gaussians8_density()
    # normalised: integrate exp(log p) on a grid (the components lie within |x| < 2 in model space)
    g = np.linspace(-3.5, 3.5, 701)
    xx, yy = np.meshgrid(g, g)
    p = np.exp(bench_likelihood.mixture_log_p(np.stack([xx.ravel(), yy.ravel()], 1), means, std))
    # a 0.01 grid on components of std ~0.14: the Riemann sum is exact to far below 1e-6
    assert abs(p.sum() * (g[1] - g[0]) ** 2 - 1) < 1e-6
    H, se = bench_likelihood.entropy_mc(means, std, 200_000, 0)
    # independent route: -log p of lab.data's own points (another stream), within 5 standard errors of both
    x = datasets.load("gaussians8", n=200_000, seed=3, split="test").astype(np.float64)
    nll = -bench_likelihood.mixture_log_p(x, means, std)
    assert abs(nll.mean() - H) < 5 * math.hypot(se, nll.std() / math.sqrt(len(nll)))
    # well separated components: H ~ log 8 + log(2 pi e std^2)
    assert abs(H - (math.log(8) + math.log(2 * math.pi * math.e * std**2))) < 0.05


def test_bench_likelihood_prints_every_figure_and_the_targets(tmp_path):
    ck = {}
    for tag, data, flags in (("simple", "digits", UNET), ("hybrid", "digits", UNET + ["--variance", "learned"]),
                             ("g8", "gaussians8", ["--batch-size", "16", "--hidden", "16", "--num-layers", "1"])):
        assert cli.main(["train", "--data", data, "--out", str(tmp_path / tag), *TINY, *flags]) == 0
        ck[tag] = str(tmp_path / tag / "ckpt.npz")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_likelihood.py"),
                          "--simple", ck["simple"], "--hybrid", ck["hybrid"], "--g8", ck["g8"], "--bpd-n", "3",
                          "--ode-n", "2", "--fd-n", "20", "--fd-steps", "5,20", "--g8-n", "20", "--entropy-mc",
                          "1000", "--quiet", "--out", str(tmp_path / "b")], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for v in ("fixed_small", "fixed_large", "learned    "):
        for clip in ("x0_hat clipped", "unclipped     "):
            assert re.search(rf"^  bound, {v} {clip} [\d.]+ \+- ", out, re.M), out
    # V6 for both models, clipped and not; the band tables with the best-variance row
    assert len(re.findall(r"^  bound, best single variance per step given the mean \(V6\): [\d.]+", out, re.M)) == 4
    assert len(re.findall(r"^  where the bound comes from, (x0_hat clipped|unclipped)", out, re.M)) == 4
    assert len(re.findall(r"^    best per step \(V6\) +[\d. ]+$", out, re.M)) == 4
    assert len(re.findall(r"^  ODE +[\d.]+ \+- .* on the first 2 ", out, re.M)) == 2, out
    assert len(re.findall(r"^ +(5|20) steps: FD [\d.]+ \([\d.]+x the floor\)", out, re.M)) == 2, out
    assert re.search(r"^  entropy of the mixture \(Monte Carlo of -log p, 1000 draws\): [\d.]+ \+- ", out, re.M)
    assert re.search(r"^target: learned-variance bound .* at least 10% asked \((met|MISSED by)", out, re.M)
    assert len(re.findall(r"^target: L_(simple|hybrid) ODE .* on the same images \((met|MISSED)", out, re.M)) == 2
    data = json.loads((tmp_path / "b" / "bench_likelihood.json").read_text())
    s = data["models"]["L_simple"]
    # the bound's figure on the ODE's items is the mean of the first 2 per-item bounds
    best = s["bound_on_ode_items"]["variance"]
    assert math.isclose(s["bound_on_ode_items"]["bits_per_dim"], np.mean(s["bound"][best]["per_item"][:2]))
    assert [r["steps"] for r in data["models"]["L_hybrid"]["fd"]["rows"]] == [5, 20]
    # the band cells add up to each bound's per-step sum, and the bound's total is that sum plus the prior
    for m in data["models"].values():
        for key in ("bound", "bound_unclipped"):
            for v, b in m[key].items():
                assert math.isclose(sum(b["bands"].values()), sum(b["per_step"]), rel_tol=1e-12)
                assert math.isclose(b["bits_per_dim"], sum(b["per_step"]) + b["prior_bits_per_dim"], rel_tol=1e-9)
            assert m[key]["best_step"]["bits_per_dim"] <= m[key]["fixed_small"]["bits_per_dim"] + 1e-12
    g = data["gaussians8"]
    assert len(g["ode"]["per_item"]) == 20 and g["ode"]["divergence"] == "exact"
    assert math.isclose(g["gap"], g["ode"]["nats"] - g["true_nll"], rel_tol=1e-9, abs_tol=1e-12)
