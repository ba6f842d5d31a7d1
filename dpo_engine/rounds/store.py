"""A loop's directory, its file layout, and read-only views of it (for the CLI and the dashboard). Torch-free.

``$MARGIN_LAB_HOME/rounds/<name>/`` holds ``config.json`` (the RoundsConfig), ``status.json`` (state, pid, round,
step, message, progress), ``events.jsonl`` (one record per step started or finished) and ``round-NN/``, whose files
are the source of truth, one step each (a step is done when its file exists; each is written atomically, last):

- ``policy.json``: the policy that generates (``policy``), the adapter whose implicit margins score the pairs
  (``policy_adapter``, None in round 1), its ``reference``, and the base the round trains on (``train_base``);
- ``responses.parquet``: ``prompt_id, sample, instruction, output, output_tokens``;
- ``scores.parquet``: the same plus ``score``; ``scores.json``: the scorer;
- ``pairs.jsonl`` (pairs as `load_pairs` reads them) and ``ties.jsonl`` (dropped ties);
- ``margins.parquet``: ``pair_id, external_margin, implicit_margin, dm_add, dm_mul, bees``; ``margins.json``: which
  adapter and reference gave the implicit margins;
- ``subset.jsonl`` (the selected pairs), ``selection_check.json`` (did the cut fall inside tied scores) and
  ``selection.json`` (the Selection record; written last);
- ``run/``: the round's training run (`dpo_engine.runs`); ``train.json``: its run id and adapter;
- ``eval_per_prompt.parquet`` and ``eval.json``: win rate over the base model with its CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dpo_engine.files import atomic_write_text, read_json, read_jsonl
from dpo_engine.job_directory import CONFIG_FILE, STATUS_FILE
from dpo_engine.paths import workspace_subdir

EVENTS_FILE = "events.jsonl"
LOCK_FILE = ".loop.lock"
STEPS = ("policy", "generate", "score", "pairs", "margins", "select", "train", "eval")
# The file whose presence marks each step done.
STEP_FILES = {
    "policy": "policy.json",
    "generate": "responses.parquet",
    "score": "scores.parquet",
    "pairs": "pairs.jsonl",
    "margins": "margins.parquet",
    "select": "selection.json",
    "train": "train.json",
    "eval": "eval.json",
}


def loops_dir() -> Path:
    return workspace_subdir("rounds")


def loop_dir(name: str) -> Path:
    return loops_dir() / name


def round_dir(directory: Path, round_number: int) -> Path:
    return directory / f"round-{round_number:02d}"


def step_done(directory: Path, round_number: int, step: str) -> bool:
    return (round_dir(directory, round_number) / STEP_FILES[step]).is_file()


def write_config_yaml(values: dict) -> Path:
    """Write a loop's RoundsConfig fields as ``loops_dir()/<name>.yaml`` (what ``dpo-engine rounds`` reads)."""
    import yaml

    path = loops_dir() / f"{values['name']}.yaml"
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))
    return path


def list_loops() -> list[str]:
    """Names of the loops in this workspace, newest first."""
    loops = [path for path in loops_dir().iterdir() if (path / CONFIG_FILE).is_file()]
    return [path.name for path in sorted(loops, key=lambda path: path.stat().st_mtime, reverse=True)]


def loop_config(name: str) -> dict:
    return read_json(loop_dir(name) / CONFIG_FILE, {})


def loop_status(name: str) -> dict:
    """status.json, with ``state`` "interrupted" when it says running but its process is gone."""
    status = read_json(loop_dir(name) / STATUS_FILE, {}) or {}
    if status.get("state") == "running" and not _alive(status.get("pid")):
        status = {**status, "state": "interrupted", "message": "the loop process is gone; start it again to resume"}
    return status


def loop_events(name: str) -> list[dict]:
    return list(read_jsonl(loop_dir(name) / EVENTS_FILE))


def round_numbers(name: str) -> list[int]:
    directory = loop_dir(name)
    return sorted(int(path.name.split("-")[1]) for path in directory.glob("round-[0-9][0-9]") if path.is_dir())


def round_summary(name: str) -> pd.DataFrame:
    """One row per started round: steps done, answers, pairs, ties, selected, run id, win rate and CI (percent)."""
    directory = loop_dir(name)
    rows = []
    for number in round_numbers(name):
        folder = round_dir(directory, number)
        selection = read_json(folder / STEP_FILES["select"], {}) or {}
        margins = read_json(folder / "margins.json", {}) or {}
        evaluation = read_json(folder / STEP_FILES["eval"], {}) or {}
        train = read_json(folder / STEP_FILES["train"], {}) or {}
        check = read_json(folder / "selection_check.json", {}) or {}
        rows.append({
            "round": number,
            "steps_done": sum(step_done(directory, number, step) for step in STEPS),
            "pairs": margins.get("n_pairs"),
            "ties": margins.get("n_ties"),
            "selected": len(selection["pair_ids"]) if selection else None,
            "cut_tied": check.get("tied_at_cut"),
            "run_id": train.get("run_id"),
            "margins_from": margins.get("policy_adapter"),
            "win_rate": evaluation.get("win_rate"),
            "ci_low": evaluation.get("ci_low"),
            "ci_high": evaluation.get("ci_high"),
            "n_eval": evaluation.get("n"),
        })
    return pd.DataFrame(rows, columns=["round", "steps_done", "pairs", "ties", "selected", "cut_tied", "run_id", "margins_from",
                                       "win_rate", "ci_low", "ci_high", "n_eval"])


def round_margins(name: str, round_number: int) -> pd.DataFrame | None:
    """The round's margins table with a boolean ``selected`` column, or None before the select step."""
    folder = round_dir(loop_dir(name), round_number)
    if not (folder / STEP_FILES["select"]).is_file():
        return None
    table = pd.read_parquet(folder / STEP_FILES["margins"])
    chosen = set(read_json(folder / STEP_FILES["select"])["pair_ids"])
    table["selected"] = table.pair_id.astype(str).isin(chosen)
    return table


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child of this process is a zombie until reaped
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return finished == 0
