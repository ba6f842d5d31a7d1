"""``$MARGIN_LAB_HOME/registry.sqlite``: an index of the runs, rebuilt from the run directories whenever in doubt.

The directories are the source of truth. `rebuild_registry` re-creates the index from them, and listing does so
by itself when the index is missing or out of date. A registry that cannot be written (a full or read-only
disk) is read as far as it can be, and listing falls back on the directories.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from dpo_engine.paths import home_dir
from dpo_engine.runs.layout import CorruptRunFile, corrupt_info, is_run_dir, read_record, run_dirs_under_runs

REGISTRY_FILE = "registry.sqlite"


@contextmanager
def _registry() -> Iterator[sqlite3.Connection]:
    """A connection to ``registry.sqlite``; the block runs in one transaction (committed unless it raises)."""
    with closing(sqlite3.connect(home_dir() / REGISTRY_FILE, timeout=10)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) do not block the writer
        connection.execute(
            "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, name TEXT, created REAL, run_dir TEXT, "
            "loss TEXT, subset_name TEXT, model TEXT)"
        )
        with connection:
            yield connection


def _registry_read_only() -> sqlite3.Connection:
    """The registry opened read-only: works where nothing can be written."""
    return sqlite3.connect(f"file:{home_dir() / REGISTRY_FILE}?mode=ro", uri=True, timeout=10)


def register(run_record: dict, run_dir: Path) -> None:
    with _registry() as connection:
        connection.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", _registry_row(run_record, run_dir))


def unregister(run_id: str) -> None:
    with _registry() as connection:
        connection.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))


def _registry_row(record: dict, run_dir: Path) -> tuple:
    """The registry's columns, in table order."""
    return (record["run_id"], record["name"], record["created"], str(run_dir), record["loss"], record["subset_name"],
            record["model"])


def registry_dirs() -> dict[str, Path]:
    """``{run_id: run_dir}`` from the registry; empty when it cannot be read (it is rebuilt from the disk then)."""
    query = "SELECT run_id, run_dir FROM runs"
    try:
        with _registry() as connection:
            return {run_id: Path(run_dir) for run_id, run_dir in connection.execute(query)}
    except sqlite3.DatabaseError:
        pass
    try:
        with closing(_registry_read_only()) as connection:
            return {run_id: Path(run_dir) for run_id, run_dir in connection.execute(query)}
    except sqlite3.DatabaseError:
        return {}


def rebuild_registry() -> int:
    """Re-index the runs from disk and return how many there are.

    Indexed: every run directory under ``$MARGIN_LAB_HOME/runs``, plus runs created elsewhere (``run_dir=``)
    that the old registry knew and whose directories still exist. A registry file that is not a database is
    replaced. A corrupt run is indexed under what its run.json still says (else its directory name).
    """
    candidates = run_dirs_under_runs() + [path for path in registry_dirs().values() if is_run_dir(path)]
    rows_by_id = {}
    for path in candidates:
        try:
            record = read_record(path)
        except CorruptRunFile as error:
            info = corrupt_info(path, str(error))
            record = {"run_id": info.run_id, "name": None, "created": info.created, "loss": info.loss,
                      "subset_name": info.subset_name, "model": info.model}
        rows_by_id.setdefault(record["run_id"], _registry_row(record, path))
    rows = list(rows_by_id.values())
    try:
        _replace_registry_rows(rows)
    except sqlite3.DatabaseError:
        for suffix in ("", "-wal", "-shm"):
            (home_dir() / f"{REGISTRY_FILE}{suffix}").unlink(missing_ok=True)
        _replace_registry_rows(rows)
    return len(rows)


def _replace_registry_rows(rows: list[tuple]) -> None:
    with _registry() as connection:
        connection.execute("DELETE FROM runs")
        connection.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
