"""``python -m reference COMMAND ...``: the command line of the NumPy reference (see reference/cli.py)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(backend="reference"))
