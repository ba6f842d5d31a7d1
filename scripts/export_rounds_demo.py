"""Copy finished rounds loops into the shipped demo (``assets/demo/workspace/rounds/``), without their weights.

Kept per loop: its config, status (no pid), events and, per round, every step's small files (answers, scores,
pairs, margins, selection, evaluation) and the round's run directory without adapter, checkpoints or locks, so
the Rounds page and ``dpo-engine rounds-status`` show the loop after ``make demo`` (`dpo_engine.demo`) but the
runs cannot be resumed or evaluated again. The merged policies (``policy_merged/``, a whole model each) are left out.

    MARGIN_LAB_HOME=/path/to/home python scripts/export_rounds_demo.py demo-dm25 demo-all
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET = REPO_ROOT / "assets" / "demo" / "workspace" / "rounds"
LEFT_OUT = {"adapter", "checkpoints", "policy_merged", ".status.lock", ".worker.lock", ".loop.lock"}


def export_loop(source: Path, target: Path) -> int:
    """Copy the loop at ``source`` to ``target`` (replaced) without `LEFT_OUT`; return the bytes written."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=lambda _, names: [name for name in names if name in LEFT_OUT])
    for status in [target / "status.json", *target.glob("round-*/run/status.json")]:
        record = json.loads(status.read_text())
        record["pid"] = None  # the process that wrote it is not on the user's machine
        status.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return sum(path.stat().st_size for path in target.rglob("*") if path.is_file())


def main() -> None:
    from dpo_engine.rounds.store import loop_dir, loop_status

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="loops under $MARGIN_LAB_HOME/rounds/")
    for name in parser.parse_args().names:
        if loop_status(name).get("state") != "completed":
            raise SystemExit(f"loop {name} has not completed: {loop_status(name)}")
        size = export_loop(loop_dir(name), TARGET / name)
        print(f"{name}: {size / 1e6:.1f} MB in {TARGET / name}")


if __name__ == "__main__":
    main()
