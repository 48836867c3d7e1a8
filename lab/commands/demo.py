"""``demo``: the forward process and the schedules as pictures, then the digits recipe trained, sampled
and evaluated (both sides; `make demo` runs it on the reference)."""
from __future__ import annotations

from pathlib import Path

from .. import cli
from ..cli import add_command, add_demo_step, run_command
from ..config import make_config
from ..sampling import DEFAULT_SAMPLER

# The demo trains the digits recipe for DEMO_STEPS of its steps, so that `make demo` takes at most 5 minutes
# (the README gives the time and the quality this buys). The demo's other steps sample with the default 20-step
# solver, and bits/dim by the bound uses DEMO_BPD_N held-out digits (T network calls each).
DEMO_STEPS = 1400
DEMO_BPD_N = 32


def _configure_demo(p):
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures (created)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps of the digits run (default {DEMO_STEPS}: the tuned recipe's "
                        f"{make_config('digits').steps} would take the demo past 5 minutes in NumPy)")
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
    steps = getattr(args, "steps", None) or DEMO_STEPS
    quick = getattr(args, "quick", False)
    targs = (["--data", "digits", "--out", str(run_dir), "--overwrite", "--steps", str(steps),
              "--no-final-samples"] + (["--sample-every", "0", "--sample-steps", "10"] if quick else []))
    code = run_command("train", targs, B)
    if code:
        return []
    ckpt = str(run_dir / "ckpt.npz")
    # the default sampler of sample and eval, DPM-Solver++(2M) in 20 network calls, named so the demo says it
    fast = ["--sampler", DEFAULT_SAMPLER, "--sample-steps", "5" if quick else "20"]
    run_command("sample", ["--ckpt", ckpt, "--n", "64", "--out", str(run_dir / "samples.npy"), "--trajectory"]
                + fast, B)
    run_command("eval", ["--ckpt", ckpt, "--json", str(run_dir / "eval.json")]
                + (["--n", "100", "--bpd-n", "4"] if quick else ["--repeats", "4", "--bpd-n", str(DEMO_BPD_N)])
                + fast, B)
    return sorted(run_dir.glob("*.png")) + sorted(run_dir.glob("*.gif"))


add_demo_step("forward", _demo_forward)
add_demo_step("schedules", _demo_schedules)
add_demo_step("train", _demo_train)


add_command(
    "demo", "write example pictures into a folder", _configure_demo, _run_demo,
    description="""
    Writes forward.png (the noising process on a photo) and schedules.png (every noise schedule)
    into DIR, then trains on the 8x8 handwritten digits with the tuned recipe for 1400 of its 2800
    steps (DIR/digits/), samples with DPM-Solver++(2M) in 20 steps and its denoising trajectory, and
    prints the digits' bits/dim and the sample quality beside its real-vs-real floor
    (DIR/digits/eval.json).
    """,
    epilog="""
    example:
      python -m reference demo --out runs/demo
    """)
