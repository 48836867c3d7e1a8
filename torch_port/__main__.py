"""python -m torch_port train|sample|forward|eval|schedules|demo — the same CLI as the reference, torch math."""
from reference.cli import main

if __name__ == "__main__":
    raise SystemExit(main(backend="torch"))
