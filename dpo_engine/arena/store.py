"""An arena's directory, its file layout, and read-only views of it (for the CLI and the dashboard). Torch-free.

``$MARGIN_LAB_HOME/arenas/<name>/`` holds ``config.json`` (the ArenaConfig), ``status.json`` (state, pid, step,
message, progress), ``events.jsonl`` (one record per step started or finished) and the files that mark each step
done (each written atomically, last):

- ``contestants/<contestant>/subset.jsonl`` and ``selection.json`` (the Selection record): step ``select``;
- ``contestants/<contestant>/run/`` (the run, through the runs queue) and ``train.json``: step ``train``;
- ``eval.json``: the id of the saved evaluation of every run on the same prompts (`dpo_engine.evaluation.store`);
- ``results.csv`` (the arena table), ``overlap.csv`` (Jaccard matrix), ``mix.json`` (length and source mix), and
  ``report/`` (report.md, arena.html, PNGs when kaleido is installed); ``report/report.md`` is written last.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.files import atomic_write_text, read_json, read_jsonl
from dpo_engine.job_directory import CONFIG_FILE, STATUS_FILE
from dpo_engine.paths import workspace_subdir

EVENTS_FILE = "events.jsonl"
LOCK_FILE = ".arena.lock"
EVAL_FILE = "eval.json"
RESULTS_FILE = "results.csv"
OVERLAP_FILE = "overlap.csv"
MIX_FILE = "mix.json"
REPORT_DIR = "report"
REPORT_FILE = "report.md"
# The file whose presence marks a contestant's step done.
CONTESTANT_STEP_FILES = {"select": "selection.json", "train": "train.json"}


def arenas_dir() -> Path:
    return workspace_subdir("arenas")


def arena_dir(name: str) -> Path:
    return arenas_dir() / name


def contestant_dir(directory: Path, contestant: str) -> Path:
    return directory / "contestants" / contestant


def report_path(directory: Path) -> Path:
    return directory / REPORT_DIR / REPORT_FILE


def write_config_yaml(values: dict) -> Path:
    """Write an arena's ArenaConfig fields as ``arenas_dir()/<name>.yaml`` (what ``dpo-engine arena`` reads)."""
    import yaml

    path = arenas_dir() / f"{values['name']}.yaml"
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))
    return path


def list_arenas() -> list[str]:
    """Names of the arenas in this workspace, newest first."""
    arenas = [path for path in arenas_dir().iterdir() if (path / CONFIG_FILE).is_file()]
    return [path.name for path in sorted(arenas, key=lambda path: path.stat().st_mtime, reverse=True)]


def arena_config(name: str) -> dict:
    return read_json(arena_dir(name) / CONFIG_FILE, {}) or {}


def arena_status(name: str) -> dict:
    """status.json, with a running arena whose process is gone reported as ``interrupted``."""
    from dpo_engine.runs.processes import is_alive

    status = read_json(arena_dir(name) / STATUS_FILE, {}) or {}
    if status.get("state") == "running" and not is_alive(status.get("pid")):
        status = {**status, "state": "interrupted", "message": f"process ended during {status.get('step')}"}
    return status


def arena_events(name: str) -> list[dict]:
    return list(read_jsonl(arena_dir(name) / EVENTS_FILE))


def contestant_steps(name: str) -> pd.DataFrame:
    """One row per contestant: ``contestant, rule, selected`` (pairs), ``run_id``, ``run_state`` and ``trained``."""
    from dpo_engine.runs import get_run

    directory = arena_dir(name)
    config = arena_config(name)
    rows = []
    for contestant in _contestant_names(config):
        folder = contestant_dir(directory, contestant["name"])
        selection = read_json(folder / CONTESTANT_STEP_FILES["select"], {}) or {}
        train = read_json(folder / CONTESTANT_STEP_FILES["train"], {}) or {}
        run_id, run_state = train.get("run_id"), None
        if run_id is None and (folder / "run" / "run.json").is_file():
            run_id = (read_json(folder / "run" / "run.json", {}) or {}).get("run_id")
        if run_id:
            try:
                run_state = get_run(run_id).state
            except UserError:  # a run deleted from the workspace: the arena table still shows the id
                run_state = "missing"
        rows.append({"contestant": contestant["name"], "rule": contestant["rule"],
                     "selected": len(selection.get("pair_ids", [])) or None, "run_id": run_id,
                     "run_state": run_state, "trained": bool(train)})
    return pd.DataFrame(rows, columns=["contestant", "rule", "selected", "run_id", "run_state", "trained"])


def _contestant_names(config: dict) -> list[dict]:
    """``{name, rule}`` of each contestant of a stored config (no validation: a view of what is on disk)."""
    selectors = [{"name": s.get("name"), "rule": s.get("rule")} for s in config.get("selectors", [])]
    randoms = [{"name": f"random-s{seed}", "rule": "random"} for seed in config.get("random_seeds", [])]
    return selectors + randoms


def arena_results(name: str) -> tuple[pd.DataFrame, pd.DataFrame, dict] | None:
    """``(results table, Jaccard matrix, mix)`` of a finished arena, or None before its report step."""
    directory = arena_dir(name)
    if not (directory / RESULTS_FILE).is_file() or not (directory / OVERLAP_FILE).is_file():
        return None
    results = pd.read_csv(directory / RESULTS_FILE)
    overlap = pd.read_csv(directory / OVERLAP_FILE, index_col=0)
    return results, overlap, read_json(directory / MIX_FILE, {}) or {}
