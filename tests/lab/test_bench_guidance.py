"""benchmarks/bench_guidance.py end to end on a tiny class-conditional moons checkpoint (its protocol, not its
figures): a row per scale with its accuracy, the ceiling, the wall times, the two target lines, the picture and
the JSON."""
import json
import os
import re
import subprocess
import sys

from lab import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_guidance_prints_a_row_per_scale_the_targets_and_writes_the_picture(tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "--data", "moons", "--class-cond", "--out", str(run), "--steps", "4", "--save-every",
                     "0", "--sample-every", "0", "--no-final-samples", "--quiet", "--batch-size", "16", "--T", "20",
                     "--hidden", "16", "--num-layers", "1"]) == 0
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_guidance.py"), "--ckpt",
                          str(run / "ckpt.npz"), "--side", "reference", "--n", "60", "--repeats", "2",
                          "--scales", "2,0,1", "--sample-steps", "5", "--quiet", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    rows = re.findall(r"^  s +([\d.]+)  value +[\d.e+-]+ .* accuracy +([\d.]+)%  NFE +(\d+) ", out, re.M)
    assert [(s, nfe) for s, _, nfe in rows] == [("0", "5"), ("1", "5"), ("2", "10")], out
    assert re.search(r"^  real test items \(the ceiling\): accuracy [\d.]+% \(5 nearest", out, re.M), out
    assert re.search(r"^target: s=1 distance within 1\.5x of the floor: [\d.]+x \((met|MISSED by [\d.]+x)\)$",
                     out, re.M), out
    assert re.search(r"^target: s=1 accuracy at least 90%: [\d.]+% \((met|MISSED by [\d.]+ points)\)$", out, re.M)
    assert re.search(r"^wall time: eval [\d.]+ min$", out, re.M), out
    data = json.loads((tmp_path / "b" / "bench_guidance.json").read_text())
    g = data["guidance"]
    assert [r["scale"] for r in g["rows"]] == [0.0, 1.0, 2.0] and all(len(r["values"]) == 2 for r in g["rows"])
    assert g["classes"] == 2 and 0 <= g["ceiling"] <= 1 and data["train_minutes"] is None
    assert (tmp_path / "b" / "guidance_tradeoff.png").is_file()
