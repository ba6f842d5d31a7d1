"""Saved evaluations: write one in a single step, read it back, list and export them. Imports no torch.

Each evaluation is saved under ``$MARGIN_LAB_HOME/evals/<eval_id>/``: ``results.csv`` (one row per run),
``per_prompt.parquet``, ``judgements.jsonl`` (raw judge output) and ``meta.json`` (judge, settings, prompt set,
baseline, notes). Units as in `dpo_engine.evaluation.report`: win rates in percent, preferences as fractions.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.files import atomic_write_json, atomic_write_text, read_json, staged_directory
from dpo_engine.paths import slug, workspace_subdir

# results.csv, in this column order.
RESULT_COLUMNS = [
    "run_id", "variant", "model", "subset", "subset_rule", "subset_size", "loss", "loss_params", "learning_rate",
    "num_epochs", "win_rate", "standard_error", "ci_low", "ci_high", "discrete_win_rate", "lc_win_rate",
    "lc_standard_error", "lc_extreme_change", "mean_length", "baseline_mean_length", "mean_output_tokens", "n",
    "n_failed", "n_wins", "n_draws", "n_losses", "paired_vs", "paired_difference", "paired_ci_low",
    "paired_ci_high", "paired_p_value", "baseline", "judge", "judge_agreement",
]
TEXT_RESULT_COLUMNS = {"run_id", "variant", "model", "subset", "subset_rule", "loss", "loss_params", "paired_vs",
                       "baseline", "judge", "eval_id"}
PER_PROMPT_COLUMNS = [
    "prompt_id", "run_id", "dataset", "instruction", "output", "output_tokens", "baseline_output", "preference",
]

@dataclass
class EvalResult:
    """One saved evaluation.

    ``results``: results.csv, one row per run (see ``RESULT_COLUMNS``). ``per_prompt``: one row per (run, prompt)
    with both answers and the preference (fraction, NaN = judgement failed). ``meta``: what was evaluated and how.
    """

    eval_id: str
    directory: Path
    results: pd.DataFrame
    per_prompt: pd.DataFrame
    meta: dict


def save_evaluation(eval_name, results, per_prompt, judgements, prompts, meta) -> EvalResult:
    """Write the evaluation into a staging directory, then rename it into place (all files or none).

    ``eval_name`` (optional, free text: names typed in the dashboard or the CLI are checked there with
    `dpo_engine.paths.check_name`) is kept in meta.json; its slug starts the evaluation id, inside ``evals/``.
    """
    evals = workspace_subdir("evals")
    eval_id = f"{slug(eval_name) or 'eval'}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    with staged_directory(evals / eval_id) as staging:
        meta = {"eval_id": eval_id, **meta}
        results = results.assign(eval_id=eval_id)
        results.to_csv(staging / "results.csv", index=False)
        per_prompt.to_parquet(staging / "per_prompt.parquet", index=False)
        lines = []
        for run_id, result in judgements:
            errors_by_index: dict[int, list] = {}
            for error in result.errors:
                errors_by_index.setdefault(error["index"], []).append(error)
            for index, (prompt_id, preference, raw) in enumerate(zip(prompts.prompt_id, result.preferences,
                                                                     result.raw)):
                lines.append(json.dumps({
                    "run_id": run_id,
                    "prompt_id": prompt_id,
                    "index": index,
                    "preference": float(preference) if math.isfinite(preference) else None,
                    "raw": raw,
                    "errors": errors_by_index.get(index, []),
                }, default=str))
        atomic_write_text(staging / "judgements.jsonl", "".join(line + "\n" for line in lines))
        atomic_write_json(staging / "meta.json", meta)
    return load_eval(eval_id)


def load_eval(eval_id: str) -> EvalResult:
    """Read a saved evaluation back."""
    directory = workspace_subdir("evals") / eval_id
    if not (directory / "meta.json").exists():
        raise UserError(f"no evaluation '{eval_id}' in {directory.parent}")
    return EvalResult(
        eval_id=eval_id,
        directory=directory,
        results=_read_results(directory / "results.csv"),
        per_prompt=pd.read_parquet(directory / "per_prompt.parquet"),
        meta=read_json(directory / "meta.json"),
    )


def _read_results(path: Path) -> pd.DataFrame:
    """results.csv with its text columns as text ("" where empty) and its numbers as numbers."""
    results = pd.read_csv(path, dtype={column: str for column in TEXT_RESULT_COLUMNS})
    return results.fillna({column: "" for column in TEXT_RESULT_COLUMNS if column in results.columns})


def list_evals() -> pd.DataFrame:
    """Saved evaluations, newest first: ``eval_id, name, created, runs, baseline, judge, n_prompts``."""
    rows = []
    for directory in workspace_subdir("evals").iterdir():
        if not directory.is_dir() or directory.name.startswith((".", "_")):
            continue  # staging directories and the generation cache
        meta = read_json(directory / "meta.json")
        if meta is None:
            continue
        rows.append({
            "eval_id": meta["eval_id"],
            "name": meta.get("name", ""),
            "created": meta.get("created", ""),
            "runs": ", ".join(meta.get("runs", [])),
            "baseline": meta.get("baseline", ""),
            "judge": meta.get("judge", {}).get("name", ""),
            "n_prompts": len(meta.get("prompt_set", {}).get("prompt_ids", [])),
        })
    columns = ["eval_id", "name", "created", "runs", "baseline", "judge", "n_prompts"]
    return pd.DataFrame(rows, columns=columns).sort_values("created", ascending=False, ignore_index=True)


def export_results_csv(path: str | Path, eval_ids: Sequence[str] | None = None) -> Path:
    """Write the results tables of ``eval_ids`` (default: every saved evaluation) as one CSV; return its path.

    Each row keeps its ``eval_id``; an ``eval_name`` column is added.
    """
    eval_ids = list(eval_ids) if eval_ids is not None else list_evals().eval_id
    tables = []
    for eval_id in eval_ids:
        saved = load_eval(eval_id)
        tables.append(saved.results.assign(eval_name=saved.meta.get("name", "")))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    combined = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=[*RESULT_COLUMNS, "eval_id"])
    atomic_write_text(path, combined.to_csv(index=False))
    return path
