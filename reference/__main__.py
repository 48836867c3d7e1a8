"""``python -m reference COMMAND ...``: the command line (lab/cli.py) on the NumPy reference."""
from lab.cli import main

if __name__ == "__main__":
    raise SystemExit(main(backend="reference"))
