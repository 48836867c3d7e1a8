"""``forward``: a picture of the forward (noising) process on one image (both sides)."""
from __future__ import annotations

import numpy as np

from reference.errors import InputError

from .. import plots
from ..cli import add_command, add_schedule_args, make_schedule, out_png
from ..data import load_image


def _configure_forward(p):
    p.add_argument("--image", default="sample", metavar="FILE|sample",
                   help="image file to noise (png, jpg, ...); 'sample' uses matplotlib's bundled photo")
    p.add_argument("--out", required=True, metavar="FILE.png", help="where to write the picture")
    add_schedule_args(p)
    p.add_argument("--frames", type=int, default=8,
                   help="how many noise levels t to show after x_0, evenly spaced up to T-1")
    p.add_argument("--size", type=int, default=64,
                   help="resize (shorter side) and center-crop the image to SIZE x SIZE")
    p.add_argument("--seed", type=int, default=0, help="seed of the one noise draw eps shared by every panel")


def _q_sample_numpy(B, sched):
    """q_sample of backend B wrapped to take and return NumPy arrays (for the pictures)."""
    def q(x0, t, eps):
        return B.to_numpy(B.diffusion.q_sample(sched, B.from_numpy(x0), t, B.from_numpy(eps)))
    return q


def _run_forward(args, B):
    out = out_png(args.out)
    if args.frames < 1:
        raise InputError(f"--frames must be >= 1, got {args.frames}")
    if args.size < 1:
        raise InputError(f"--size must be >= 1, got {args.size}")
    image = plots.sample_image(args.size) if args.image == "sample" else load_image(args.image, size=args.size)
    sched = make_schedule(B, args.schedule, args.T)
    plots.forward_process_figure(image, sched, out, frames=args.frames, seed=args.seed,
                                 q_sample=_q_sample_numpy(B, sched),
                                 title=f"forward process q(x_t | x_0): {args.schedule} schedule, T={args.T}, "
                                       "one noise draw shared by every t (t is 0-based)")
    ts = plots.forward_timesteps(args.T, args.frames)
    abar_T = float(np.asarray(B.to_numpy(sched.alpha_bar))[-1])
    print(f"wrote {out}: x_t ~ q(x_t | x_0) at t = {', '.join(map(str, ts))} "
          f"({args.schedule}, T={args.T}, alpha_bar at the last step = {abar_T:.3g})")
    return 0


add_command(
    "forward", "picture of the forward (noising) process on one image", _configure_forward, _run_forward,
    description="""
    The forward process q adds Gaussian noise in T steps. Its closed form (F3),
        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I),
    jumps straight to any step t; alpha_bar_t (the product of 1 - beta_s up to t) is the share of
    signal left. This draws x_t at evenly spaced t with one shared noise draw eps and shows them
    left to right, from the clean image to (almost) pure noise. Try --schedule cosine, or a small --T.
    """,
    epilog="""
    examples:
      python -m reference forward --out forward.png
      python -m reference forward --image photo.jpg --out forward.png --schedule cosine --frames 10
    """)
