"""Reading runs: one run, every run, its metrics and log. A run that cannot be read is listed as corrupt.

Reading writes only two things, and neither is needed for it to work: a registry rebuilt when it disagrees with
the disk, and ``failed`` recorded for a run whose worker is gone. On a full or read-only disk both are skipped.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from dpo_engine.files import read_jsonl
from dpo_engine.runs.layout import (
    LOG_FILE,
    RESOLVED_CONFIG_FILE,
    RUN_ID_PATTERN,
    CorruptRunFile,
    RunInfo,
    corrupt_info,
    is_run_dir,
    missing_run,
    read_checked_json,
    read_record,
    run_dirs_under_runs,
    runs_root,
)
from dpo_engine.runs.processes import tail_lines
from dpo_engine.runs.registry import rebuild_registry, registry_dirs
from dpo_engine.runs.status import checked_status

if TYPE_CHECKING:  # a heavy import, made only where needed
    import pandas as pd


def get_run(run_id: str) -> RunInfo:
    """The run ``run_id`` as it is now (state ``corrupt`` with the reason when its files cannot be read)."""
    return load_run(find_run_dir(run_id))


def list_runs() -> list[RunInfo]:
    """Every run, newest first. Re-indexes the registry when it is missing or disagrees with the disk."""
    indexed = registry_dirs()
    on_disk = run_dirs_under_runs()
    known = {path.resolve() for path in indexed.values()}
    unindexed = any(path.resolve() not in known for path in on_disk)
    if unindexed or not all(is_run_dir(path) for path in indexed.values()):
        try:
            rebuild_registry()
            indexed = registry_dirs()
        except (sqlite3.DatabaseError, OSError):  # a full or read-only disk: list from the directories
            indexed = {path.name: path for path in on_disk} | {
                run_id: path for run_id, path in indexed.items() if is_run_dir(path)
            }
    found = []
    for run_dir in dict.fromkeys(indexed.values()):
        if is_run_dir(run_dir):  # else deleted while we were listing
            found.append(load_run(run_dir))
    return sorted(found, key=lambda run: run.created, reverse=True)


def read_metrics(run_id: str) -> pd.DataFrame:
    """metrics.jsonl as a pandas DataFrame, one row per logged step (empty before the first log)."""
    import pandas as pd

    records = [record for record in read_jsonl(get_run(run_id).metrics_path) if isinstance(record, dict)]
    return pd.DataFrame.from_records(records)


def tail_log(run_id: str, n_lines: int = 50) -> str:
    """The last ``n_lines`` lines of train.log (progress-bar redraws count as lines)."""
    return "\n".join(tail_lines(find_run_dir(run_id) / LOG_FILE, n_lines))


def find_run_dir(run_id: str) -> Path:
    """The directory of ``run_id``: under runs/, else where the registry says. ``RunError`` if there is none."""
    if RUN_ID_PATTERN.match(run_id or ""):
        candidate = runs_root() / run_id
        if is_run_dir(candidate):
            return candidate
        registered = registry_dirs().get(run_id)
        if registered is not None and is_run_dir(registered):
            return registered
    raise missing_run(run_id)


def load_run(run_dir: Path) -> RunInfo:
    """The run in ``run_dir``; a corrupt one (state ``corrupt``, reason in ``message``) rather than an exception."""
    try:
        record = read_record(run_dir)
        config = read_checked_json(run_dir / RESOLVED_CONFIG_FILE, dict, {})
        status = checked_status(run_dir)
    except CorruptRunFile as error:
        return corrupt_info(run_dir, str(error))
    return RunInfo(
        run_id=record["run_id"],
        run_dir=run_dir,
        name=record.get("name"),
        created=record["created"],
        selection_name=record.get("selection_name"),
        loss=record["loss"],
        subset_name=record["subset_name"],
        model=record["model"],
        config=config,
        status=status,
    )
