"""The command line, shared by both sides: ``python -m reference ...`` and ``python -m torch_port ...``.

``main(argv, backend)`` parses and dispatches; ``backend`` ("reference" or "torch") picks the math
modules through ``lab.backend.Backend``, so the same commands run either implementation. Each command
lives in a module of ``lab/commands/`` and registers itself when imported::

    # lab/commands/train.py
    from lab.cli import add_command, add_schedule_args

    def configure(p):                      # p: the command's argparse parser
        p.add_argument("--data", required=True, help="...")
        add_schedule_args(p)

    def run(args, B):                      # B: the Backend (B.schedules, B.diffusion, B.to_numpy, ...)
        ...
        return 0

    add_command("train", "train a model", configure, run, description="...", epilog="example: ...")

and is listed in ``COMMAND_MODULES`` below. ``add_demo_step`` extends ``demo`` the same way.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
import warnings
from dataclasses import dataclass
from typing import Callable

from reference.errors import InputError

from .backend import BACKENDS, Backend

# The modules that register commands when imported, in the order `--help` lists them.
COMMAND_MODULES = ("lab.commands.forward", "lab.commands.schedules", "lab.commands.demo", "lab.commands.train",
                   "lab.commands.sample", "lab.commands.eval", "lab.commands.convert")

DEFAULT_T = 1000
DEFAULT_SCHEDULE = "linear"


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


def load_commands():
    """Import every command module (each registers its commands once)."""
    for mod in COMMAND_MODULES:
        importlib.import_module(mod)


def command_args(name, argv):
    """Parse ``argv`` with command ``name``'s flags, defaults filled in (for demo steps and tests)."""
    load_commands()
    p = argparse.ArgumentParser(prog=name)
    COMMANDS[name].configure(p)
    return p.parse_args(argv)


def run_command(name, argv, B):
    """Run command ``name`` with ``argv`` on backend B (one command calling another, e.g. demo)."""
    return COMMANDS[name].run(command_args(name, argv), B)


# ---- shared flags ---------------------------------------------------------------------------------

def add_schedule_args(p):
    """--T and --schedule, with help that says what they mean."""
    from reference.schedules import SCHEDULES
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


def out_png(path, what="--out"):
    """``path`` as a Path, refused unless it names a .png file the command can write (check_output)."""
    from pathlib import Path
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise InputError(f"{what} must name a .png file, got {path!r}")
    return check_output(p, what)


OUTPUT_RULE = "missing folders on the way are created"   # the rule check_output applies, for --help texts


def check_output(path, flag, folder=False):
    """The one rule for every command's outputs, checked before any work: missing folders on the way to ``path``
    are created when it is written, so the nearest one that exists must be a folder this user may write in (and
    ``path`` itself, if it exists, writable and of the right kind). ``folder``: ``path`` names a folder (train's
    run folder), else a file. -> Path; InputError naming ``flag`` and the path otherwise."""
    from pathlib import Path
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise InputError(f"{flag} {path} is a file; it must be a folder (created if missing)")
    if not folder and p.is_dir():
        raise InputError(f"{flag} {path} is a folder; it must name a file")
    here = p if folder else p.parent
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise InputError(f"{flag} {path}: {here} is a file, not a folder, so nothing can be written under it")
    if not os.access(here, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        where = p if p.exists() else here
        raise InputError(f"{flag} {path}: {where} is not writable (permission denied)")
    return p


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
    load_commands()
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
        B = Backend(backend)
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
