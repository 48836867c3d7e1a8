"""``python -m torch_port COMMAND ...``: the same command line (lab/cli.py) on the PyTorch port."""
from lab.cli import main

if __name__ == "__main__":
    raise SystemExit(main(backend="torch"))
