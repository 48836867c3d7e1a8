"""The command line, shared by both sides: ``python -m reference ...`` and ``python -m torch_port ...``.

``main(argv, backend)`` parses and dispatches; ``backend`` ("reference" or "torch") picks the math
modules through ``backend_modules`` so the same commands run either implementation.

Adding a command (train, sample, eval, ...) from another module::

    # reference/cli_train.py
    from .cli import add_command, add_schedule_args

    def configure(p):                      # p: the command's argparse parser
        p.add_argument("--data", required=True, help="...")
        add_schedule_args(p)

    def run(args, B):                      # B: the Backend (B.schedules, B.diffusion, B.to_numpy, ...)
        ...
        return 0

    add_command("train", "train a model", configure, run, description="...", epilog="example: ...")

and list the module in ``COMMAND_MODULES`` below (modules not written yet are skipped).
``add_demo_step`` extends ``demo`` the same way.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputError, check_choice

# Modules that register more commands when imported (the one clear place to add them).
COMMAND_MODULES = ("reference.cli_train", "reference.cli_sample", "reference.cli_eval")

BACKENDS = {"reference": "reference", "torch": "torch_port"}
MATH_MODULES = ("schedules", "diffusion", "losses", "samplers", "layers", "unet", "optim", "train")

DEFAULT_T = 1000
DEFAULT_SCHEDULE = "linear"


# ---- backends -------------------------------------------------------------------------------------

class Backend:
    """The math modules of one side, imported on first use: ``B.schedules``, ``B.diffusion``, ...

    ``from_numpy`` / ``to_numpy`` move arrays across the edge (identity for the reference,
    torch.from_numpy / .cpu().numpy() for the port), so commands work in NumPy and call either side.
    """

    def __init__(self, name):
        self.name = check_choice(name, tuple(BACKENDS), "backend")
        self.package = BACKENDS[name]
        self._torch = None
        if name == "torch":
            try:
                import torch
            except ImportError as e:
                raise InputError("the torch backend needs PyTorch: pip install .[torch]") from e
            self._torch = torch

    def __getattr__(self, mod):
        if mod not in MATH_MODULES:
            raise AttributeError(mod)
        full = f"{self.package}.{mod}"
        try:
            m = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name != full:
                raise
            raise InputError(f"backend {self.name!r} has no module {mod!r} yet ({self.package}/{mod}.py)") from e
        setattr(self, mod, m)  # cache: __getattr__ is not called again
        return m

    def from_numpy(self, a):
        a = np.ascontiguousarray(a)
        return a if self._torch is None else self._torch.from_numpy(a)

    def to_numpy(self, x):
        if self._torch is not None and isinstance(x, self._torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)


def backend_modules(backend="reference"):
    """A Backend for "reference" (NumPy) or "torch" (torch_port)."""
    return Backend(backend)


# ---- the command registry -------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    name: str
    help: str                                   # one line, shown in the command list
    configure: Callable                         # configure(parser): add the command's flags
    run: Callable                               # run(args, backend) -> exit code (None means 0)
    description: str = ""                       # shown by `<command> --help`
    epilog: str = ""                            # examples


COMMANDS: dict = {}
DEMO_STEPS: list = []


def add_command(name, help, configure, run, description="", epilog=""):
    """Register a subcommand. A later registration of the same name replaces the earlier one."""
    COMMANDS[name] = Command(name, help, configure, run, textwrap.dedent(description).strip(),
                             textwrap.dedent(epilog).strip())


def add_demo_step(name, fn):
    """Add a step to ``demo``: fn(args, backend, out_dir) -> list of files written. Runs in order added."""
    DEMO_STEPS[:] = [s for s in DEMO_STEPS if s[0] != name] + [(name, fn)]


def _load_command_modules():
    for mod in COMMAND_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:   # the module exists but something it imports is missing: a real error
                raise


def progress(iterable, desc=None, total=None):
    """A tqdm progress bar on stderr, silent when stderr is not a terminal."""
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False)


# ---- shared flags ---------------------------------------------------------------------------------

def add_schedule_args(p):
    """--T and --schedule, with help that says what they mean."""
    from .schedules import SCHEDULES
    p.add_argument("--T", type=int, default=DEFAULT_T, metavar="T",
                   help="number of diffusion steps: x_0 is noised in T small steps until only noise is left "
                        "(t is 0-based in this code: 0..T-1, paper step t+1)")
    p.add_argument("--schedule", default=DEFAULT_SCHEDULE, choices=SCHEDULES,
                   help="noise schedule: how much noise beta_t each step adds. linear: Ho et al. 2020 "
                        "(1e-4..0.02); cosine: Nichol & Dhariwal 2021, destroys signal more evenly")


def make_schedule(B, name, T, warn=True):
    """B.schedules.Schedule(B.schedules.make_betas(name, T)); warn=False silences the prior-mismatch warning."""
    with warnings.catch_warnings():
        if not warn:
            warnings.simplefilter("ignore")
        return B.schedules.Schedule(B.schedules.make_betas(name, T))


def _q_sample_numpy(B, sched):
    """q_sample of backend B wrapped to take and return NumPy arrays (for the pictures)."""
    def q(x0, t, eps):
        return B.to_numpy(B.diffusion.q_sample(sched, B.from_numpy(x0), t, B.from_numpy(eps)))
    return q


def _out_png(path, what="--out"):
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise InputError(f"{what} must name a .png file, got {path!r}")
    return p


# ---- forward --------------------------------------------------------------------------------------

def _configure_forward(p):
    p.add_argument("--image", default="sample", metavar="FILE|sample",
                   help="image file to noise (png, jpg, ...); 'sample' uses matplotlib's bundled photo")
    p.add_argument("--out", required=True, metavar="FILE.png", help="where to write the picture")
    add_schedule_args(p)
    p.add_argument("--frames", type=int, default=8,
                   help="how many noise levels t to show, evenly spaced over 0..T-1")
    p.add_argument("--size", type=int, default=64,
                   help="resize (shorter side) and center-crop the image to SIZE x SIZE")
    p.add_argument("--seed", type=int, default=0, help="seed of the one noise draw eps shared by every panel")


def _run_forward(args, B):
    from . import plots
    from .data import load_image
    out = _out_png(args.out)
    if args.frames < 1:
        raise InputError(f"--frames must be >= 1, got {args.frames}")
    if args.size < 1:
        raise InputError(f"--size must be >= 1, got {args.size}")
    image = plots.sample_image(args.size) if args.image == "sample" else load_image(args.image, size=args.size)
    sched = make_schedule(B, args.schedule, args.T)
    plots.forward_process_figure(image, sched, out, frames=args.frames, seed=args.seed,
                                 q_sample=_q_sample_numpy(B, sched))
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


# ---- schedules ------------------------------------------------------------------------------------

def _configure_schedules(p):
    p.add_argument("--out", required=True, metavar="FILE.png", help="where to write the plot")
    p.add_argument("--T", type=int, default=DEFAULT_T, metavar="T", help="number of diffusion steps")


def _schedule_set(B, T):
    """Every named schedule, plus the linear one rescaled to zero terminal SNR (S6)."""
    from . import schedules as ref_schedules
    names = getattr(B.schedules, "SCHEDULES", ref_schedules.SCHEDULES)
    out = {name: make_schedule(B, name, T, warn=False) for name in names}
    if T >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            betas = B.schedules.rescale_zero_terminal_snr(B.schedules.make_betas("linear", T))
            out["linear, zero terminal SNR"] = B.schedules.Schedule(betas)
    return out


def _run_schedules(args, B):
    from . import plots
    out = _out_png(args.out)
    scheds = _schedule_set(B, args.T)
    plots.schedule_plot(scheds, out)
    print(f"{'schedule':28s} {'alpha_bar at t=T-1':>20s} {'prior L_T bits/dim':>20s}")
    for name, s in scheds.items():
        abar_T = float(np.asarray(B.to_numpy(s.alpha_bar))[-1])
        bpd = s.prior_bpd() if hasattr(s, "prior_bpd") else float("nan")
        print(f"{name:28s} {abar_T:20.3e} {bpd:20.3e}")
    print(f"wrote {out}")
    return 0


add_command(
    "schedules", "plot alpha_bar_t and log SNR for every noise schedule", _configure_schedules, _run_schedules,
    description="""
    A schedule sets beta_t, the noise variance added at step t. What matters to the model is
    alpha_bar_t = prod_{s<=t} (1 - beta_s), the signal share left in x_t, or equivalently the
    signal-to-noise ratio SNR_t = alpha_bar_t / (1 - alpha_bar_t). This plots both against t/T for
    every schedule and prints alpha_bar at the last step: it should be ~0 so that x_T ~ N(0, I),
    the distribution sampling starts from (the prior term L_T measures the gap).
    """,
    epilog="""
    example:
      python -m reference schedules --out schedules.png --T 1000
    """)


# ---- demo -----------------------------------------------------------------------------------------

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
    for name, fn in DEMO_STEPS:
        print(f"== demo: {name}")
        written += [str(p) for p in (fn(args, B, out) or [])]
    print("demo wrote:\n  " + "\n  ".join(written))
    return 0


def command_args(name, argv):
    """Parse ``argv`` with command ``name``'s flags, defaults filled in (for demo steps and tests)."""
    p = argparse.ArgumentParser(prog=name)
    COMMANDS[name].configure(p)
    return p.parse_args(argv)


def _demo_forward(args, B, out_dir):
    path = out_dir / "forward.png"
    _run_forward(command_args("forward", ["--out", str(path)]), B)
    return [path]


def _demo_schedules(args, B, out_dir):
    path = out_dir / "schedules.png"
    _run_schedules(command_args("schedules", ["--out", str(path)]), B)
    return [path]


add_demo_step("forward", _demo_forward)
add_demo_step("schedules", _demo_schedules)


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


# ---- the parser and main --------------------------------------------------------------------------

class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps our line breaks and shows defaults, except for required flags and flags without one."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=30)

    def _get_help_string(self, action):
        if action.required or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


_OVERVIEW = """\
Denoising diffusion probabilistic models (Ho et al. 2020) as executable math ({impl}).

A diffusion model learns to undo a fixed noising process. The forward process q adds a little
Gaussian noise at each of T steps, x_t = sqrt(1 - beta_t) x_{{t-1}} + sqrt(beta_t) eps, until only
noise is left; the schedule sets beta_t. A network learns to predict the noise eps in x_t, and
sampling runs the chain backwards from pure noise. Time t is 0-based here (paper step t+1).
Run `{prog} COMMAND --help` for what each command does and its defaults.
"""


def build_parser(backend="reference"):
    _load_command_modules()
    prog = f"python -m {BACKENDS.get(backend, backend)}"
    impl = "NumPy reference" if backend == "reference" else "PyTorch port"
    parser = argparse.ArgumentParser(prog=prog, description=_OVERVIEW.format(impl=impl, prog=prog),
                                     formatter_class=_Formatter,
                                     epilog=f"examples:\n  {prog} forward --out forward.png\n"
                                            f"  {prog} demo --out runs/demo")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help, description=c.description or c.help,
                           epilog=c.epilog.replace("python -m reference", prog), formatter_class=_Formatter)
        c.configure(p)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None, backend="reference"):
    """Parse ``argv`` (default sys.argv[1:]) and run the command. Returns the exit code, never raises
    for user errors: bad flags, bad files and bad values print ``error: ...`` and return 2."""
    try:
        B = backend_modules(backend)
        parser = build_parser(backend)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a bad flag (2, message already printed)
        return e.code if isinstance(e.code, int) else 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            code = COMMANDS[args.command].run(args, B)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
            print(f"error: {e.strerror or e}: {e.filename}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:  # train saves a checkpoint first (runner.TrainingInterrupted)
            print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
            return getattr(e, "exit_code", 130)
        except OSError as e:  # disk full, I/O error, ...: the system's words, no traceback
            where = f": {e.filename}" if e.filename else ""
            print(f"error: {e.strerror or e}{where}", file=sys.stderr)
            return 1
    return 0 if code is None else int(code)
