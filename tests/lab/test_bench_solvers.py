"""benchmarks/bench_solvers.py end to end on a tiny moons checkpoint (its protocol, not its timings): a row per
setting and NFE, the ddpm baseline last and read against every row, the targets' lines, the picture and JSON."""
import json
import os
import re
import subprocess
import sys

from lab import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_solvers_prints_rows_targets_and_writes_the_picture(tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "--data", "moons", "--out", str(run), "--steps", "4", "--save-every", "0",
                     "--sample-every", "0", "--no-final-samples", "--quiet", "--batch-size", "16", "--T", "20",
                     "--hidden", "16", "--num-layers", "1"]) == 0
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_solvers.py"), "--ckpt",
                          str(run / "ckpt.npz"), "--side", "reference", "--n", "60", "--repeats", "2",
                          "--baseline-repeats", "1", "--nfe", "3,10", "--settings", "dpm++2m:leading,heun:leading",
                          "--quiet", "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert len(re.findall(r"^  (dpm\+\+2m|heun):leading +steps +\d+  NFE +\d+  value ", out, re.M)) == 4, out
    assert re.search(r"^  ddpm:leading +steps +20  NFE +20 ", out, re.M), out
    assert re.search(r"^target: dpm\+\+2m:leading at NFE 10 within 1\.5x of ddpm-20: [\d.]+x \(paired", out, re.M)
    data = json.loads((tmp_path / "b" / "bench_solvers.json").read_text())
    heun = [r for r in data["rows"] if r["sampler"] == "heun"]
    assert [r["nfe"] for r in heun] == [3, 9] and all(r["vs_baseline_paired"] > 0 for r in data["rows"])
    assert (tmp_path / "b" / "quality_vs_nfe.png").is_file()
