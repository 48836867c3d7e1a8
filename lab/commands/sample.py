"""``sample``: draw samples from a checkpoint into a .npy file and a picture (both sides).

The noise is drawn from ``np.random.default_rng(seed)`` in the same order on both sides (lab/sampling.py),
so one checkpoint and one seed give the same samples from either side.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from reference.errors import InputError
from reference.diffusion import VARIANCES
from reference.samplers import SAMPLERS, SPACINGS

from ..cli import add_command
from ..pictures import sampler_label, samples_picture, trajectory_pictures
from ..progress import bar
from ..sampling import check_sampler_flags, draw, load_trainer


def configure(p):
    p.add_argument("--ckpt", required=True, metavar="FILE", help="a checkpoint written by train (either side)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--out", required=True, metavar="FILE.npy",
                   help="float32 samples in [-1, 1] ((N, C, H, W) or (N, 2)); a PNG picture is written beside it")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                   help="ddpm: ancestral sampling (Ho et al. Algorithm 2); ddim: Song et al., deterministic at eta 0")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="number of sampling steps (default: all T); fewer steps respaces the schedule")
    p.add_argument("--spacing", choices=SPACINGS, default="leading",
                   help="which timesteps a shortened sampler keeps. leading (default) skips the noisiest steps "
                        "and warns if its first step still holds signal; trailing/linspace start at T-1, which "
                        "with an eps-model and the cosine schedule (alpha_bar_{T-1} ~ 2e-9) amplifies the "
                        "network's error ~2e4-fold in x0_hat unless x0 is clipped (images)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM only: the step's noise, 0 deterministic (default), 1 ancestral-like")
    p.add_argument("--variance", choices=VARIANCES, default=None,
                   help="DDPM only: the reverse variance, posterior beta~_t (fixed_small, default) or beta_t "
                        "(fixed_large)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (same seed, same samples)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--trajectory", action="store_true",
                   help="also write the denoising trajectory: FILE_trajectory.png (x_t above the network's x0_hat "
                        "at ~10 steps) and FILE_trajectory.gif (x_t at every step); images show the first 8/16")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch_port only")


def run(args, B):
    out = Path(args.out)
    if out.suffix != ".npy":
        raise InputError(f"--out must name a .npy file, got {args.out!r}")
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    if args.sample_steps is not None and args.sample_steps < 1:
        raise InputError(f"--sample-steps must be >= 1 (or omitted for all T steps), got {args.sample_steps}")
    if B.name == "reference" and args.device == "cuda":
        raise InputError("--device cuda is a torch_port option: run `python -m torch_port sample ...`")
    trainer, ck = load_trainer(B, args.ckpt, device=args.device, use_ema=not args.no_ema)
    check_sampler_flags(trainer.cfg.T, args.sampler, args.sample_steps, args.eta, args.variance)
    res = draw(B, trainer, args.n, args.seed, args.sampler, args.sample_steps, args.spacing, args.eta or 0.0,
               args.variance or "fixed_small", record=args.trajectory, progress=bar("sampling"))
    x, traj = res if args.trajectory else (res, None)
    x = np.asarray(x, dtype=np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, x)
    cfg = trainer.cfg
    how = sampler_label(args.sampler, args.sample_steps, cfg.T, step=ck.step, spacing=args.spacing)
    png = samples_picture(x, out.with_suffix(".png"), cfg,
                          f"{cfg.data}, {args.n} samples ({'raw' if args.no_ema else 'EMA'} weights), {how}")
    written = [str(out), str(png)]
    if traj is not None:
        written += map(str, trajectory_pictures(traj, x, out.with_suffix(""), cfg, f"{cfg.data}: {how}"))
    print(f"{args.n} samples from step {ck.step} of a {cfg.data} run ({args.sampler}, "
          f"{args.sample_steps or cfg.T} steps): " + ", ".join(written))
    return 0


add_command(
    "sample", "draw samples from a checkpoint into a .npy file and a picture", configure, run,
    description="""
    Starts from x_T ~ N(0, I) and runs the reverse process with the trained network (EMA weights).
    ddpm is the ancestral sampler (noise at every step but the last); ddim with --eta 0 is
    deterministic and works well with few steps (--sample-steps 50). Writes FILE.npy (float32 in
    [-1, 1]) and FILE.png; --trajectory adds FILE_trajectory.png and .gif.
    A checkpoint from either side works on either side: same seed, same samples.
    """,
    epilog="""
    examples:
      python -m reference sample --ckpt runs/digits/ckpt.npz --n 64 --out runs/digits/samples.npy
      python -m reference sample --ckpt runs/digits/ckpt.npz --n 64 --out s.npy --sampler ddim --sample-steps 50
      python -m torch_port sample --ckpt runs/digits/ckpt.npz --n 64 --out s_torch.npy
    """)
