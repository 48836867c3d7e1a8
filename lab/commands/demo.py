"""``demo``: the forward process and the schedules as pictures, then the digits recipe trained, sampled
and evaluated (both sides; `make demo` runs it on the reference)."""
from __future__ import annotations

from pathlib import Path

from .. import cli
from ..cli import add_command, add_demo_step, run_command


def _configure_demo(p):
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures (created)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of the digits run (default: the tuned recipe's)")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: few sampling steps and samples (pictures will be poor)")


def _run_demo(args, B):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in cli.DEMO_STEPS:
        print(f"== demo: {name}")
        written += [str(p) for p in (fn(args, B, out) or [])]
    print("demo wrote:\n  " + "\n  ".join(written))
    return 0


def _demo_forward(args, B, out_dir):
    path = out_dir / "forward.png"
    run_command("forward", ["--out", str(path)], B)
    return [path]


def _demo_schedules(args, B, out_dir):
    path = out_dir / "schedules.png"
    run_command("schedules", ["--out", str(path)], B)
    return [path]


def _demo_train(args, B, out_dir):
    """demo: train on the digits with the tuned recipe, sample with the trajectory, evaluate."""
    run_dir = out_dir / "digits"
    steps = getattr(args, "steps", None)
    quick = getattr(args, "quick", False)
    targs = (["--data", "digits", "--out", str(run_dir), "--overwrite"]
             + (["--steps", str(steps)] if steps else [])
             + (["--sample-every", "0", "--sample-steps", "10"] if quick else []))
    code = run_command("train", targs, B)
    if code:
        return []
    ckpt = str(run_dir / "ckpt.npz")
    sample_steps = ["--sampler", "ddim", "--sample-steps", "10"] if quick else []
    run_command("sample", ["--ckpt", ckpt, "--n", "64", "--out", str(run_dir / "samples.npy"), "--trajectory"]
                + sample_steps, B)
    # DDIM-50 for the figure: as good as DDPM-1000 here (benchmarks/bench_quality.py), 20x sooner
    run_command("eval", ["--ckpt", ckpt, "--json", str(run_dir / "eval.json")]
                + (["--n", "100"] if quick else ["--repeats", "4"])
                + (sample_steps or ["--sampler", "ddim", "--sample-steps", "50"]), B)
    return sorted(run_dir.glob("*.png")) + sorted(run_dir.glob("*.gif"))


add_demo_step("forward", _demo_forward)
add_demo_step("schedules", _demo_schedules)
add_demo_step("train", _demo_train)


add_command(
    "demo", "write example pictures into a folder", _configure_demo, _run_demo,
    description="""
    Writes forward.png (the noising process on a photo) and schedules.png (every noise schedule)
    into DIR, then trains on the 8x8 handwritten digits with the tuned recipe (DIR/digits/), samples
    with the ancestral sampler and its denoising trajectory, and prints the sample quality beside
    its real-vs-real floor (DIR/digits/eval.json).
    """,
    epilog="""
    example:
      python -m reference demo --out runs/demo
    """)
