"""python -m torch_port train|sample|forward|eval|schedules|demo — the same CLI as the reference, torch math."""
from reference.cli import main

raise SystemExit(main(backend="torch"))
