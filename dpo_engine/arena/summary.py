"""The arena's report step: one table (win rate with CI, paired difference against the random mean, training
dynamics, subset lengths and sources), the subsets' Jaccard matrix, and the exported report.

Units as in `dpo_engine.arena.stats`: win rates and differences in percent / points, preferences fractions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from dpo_engine.arena.config import ArenaConfig
from dpo_engine.arena.stats import jaccard_matrix, random_mean_preferences, subset_mix, training_dynamics, versus_random
from dpo_engine.arena.store import CONTESTANT_STEP_FILES, EVAL_FILE, MIX_FILE, OVERLAP_FILE, RESULTS_FILE, contestant_dir
from dpo_engine.files import atomic_write_json, atomic_write_text, read_json

RANDOM_MEAN = "random (mean)"
TABLE_COLUMNS = [
    "contestant", "rule", "params", "run_id", "subset_size", "win_rate", "ci_low", "ci_high", "n",
    "vs_random", "vs_random_low", "vs_random_high", "vs_random_p", "final_loss", "reward_accuracy", "reward_margin",
    "steps", "chosen_chars", "rejected_chars", "chosen_tokens", "rejected_tokens", "top_source", "top_source_share",
]


def preference_matrix(per_prompt: pd.DataFrame, run_ids: list[str]) -> np.ndarray:
    """``(n_runs, n_prompts)`` preferences of the evaluation's per-prompt table, rows in ``run_ids`` order and
    columns in the first run's prompt order (every run was judged on the same prompts)."""
    order = per_prompt[per_prompt.run_id == run_ids[0]].prompt_id.tolist()
    wide = per_prompt.pivot(index="run_id", columns="prompt_id", values="preference")
    return wide.loc[run_ids, order].to_numpy(float)


def arena_table(contestants: list[dict], run_ids: list[str], preferences: np.ndarray, eval_results: pd.DataFrame,
                dynamics: dict[str, dict], mixes: dict[str, dict]) -> pd.DataFrame:
    """One row per contestant, then a ``random (mean)`` row; ``vs_random*`` is each selector's paired comparison
    with the per-prompt mean of the random contestants (empty on the random rows themselves)."""
    from dpo_engine.evaluation.metrics import bootstrap_ci, win_rate
    from dpo_engine.evaluation.results import CONFIDENCE, N_BOOTSTRAP

    is_random = np.array([c["rule"] == "random" for c in contestants])
    randoms = preferences[is_random]
    by_run = eval_results.set_index("run_id")
    rows = []
    for index, (contestant, run_id) in enumerate(zip(contestants, run_ids)):
        row = {"contestant": contestant["name"], "rule": contestant["rule"], "params": _params_text(contestant),
               "run_id": run_id, **{name: by_run.loc[run_id, name] for name in ("win_rate", "ci_low", "ci_high", "n")}}
        if not is_random[index]:
            compared = versus_random(preferences[index], randoms, n_resamples=N_BOOTSTRAP, confidence=CONFIDENCE)
            row.update(vs_random=compared["difference"], vs_random_low=compared["low"],
                       vs_random_high=compared["high"], vs_random_p=compared["p_value"])
        rows.append({**row, **dynamics[contestant["name"]], **_mix_columns(mixes[contestant["name"]])})
    mean = random_mean_preferences(randoms)
    low, high = bootstrap_ci(mean, n_resamples=N_BOOTSTRAP, confidence=CONFIDENCE)
    summary = win_rate(mean)
    rows.append({"contestant": RANDOM_MEAN, "rule": "random", "params": f"{int(is_random.sum())} seeds",
                 "win_rate": summary["win_rate"], "ci_low": low, "ci_high": high, "n": summary["n"]})
    return pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)


def _params_text(contestant: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(contestant["params"].items()))


def _mix_columns(mix: dict) -> dict:
    sources = mix.get("sources") or {}
    top = max(sources, key=sources.get) if sources else ""
    return {"subset_size": mix["n"], "chosen_chars": mix["chosen_chars"], "rejected_chars": mix["rejected_chars"],
            "chosen_tokens": mix["chosen_tokens"], "rejected_tokens": mix["rejected_tokens"], "top_source": top,
            "top_source_share": sources.get(top, math.nan)}


def write_summary(config: ArenaConfig, directory: Path) -> None:
    """Compute the table, the overlaps and the mixes from the arena's files; write them and the report."""
    from dpo_engine.arena.inputs import load_inputs
    from dpo_engine.arena.report import write_report
    from dpo_engine.evaluation.store import load_eval
    from dpo_engine.runs import read_metrics

    contestants = config.contestants()
    evaluation = load_eval(read_json(directory / EVAL_FILE)["eval_id"])
    run_ids = [read_json(contestant_dir(directory, c["name"]) / CONTESTANT_STEP_FILES["train"])["run_id"]
               for c in contestants]
    subsets = {c["name"]: read_json(contestant_dir(directory, c["name"]) / CONTESTANT_STEP_FILES["select"])["pair_ids"]
               for c in contestants}
    pairs, margins = load_inputs(config)
    mixes = {name: subset_mix(pairs, margins, ids, config.source_column) for name, ids in subsets.items()}
    dynamics = {c["name"]: training_dynamics(read_metrics(run_id)) for c, run_id in zip(contestants, run_ids)}
    preferences = preference_matrix(evaluation.per_prompt, run_ids)
    table = arena_table(contestants, run_ids, preferences, evaluation.results, dynamics, mixes)
    overlap = jaccard_matrix(subsets)
    atomic_write_json(directory / MIX_FILE, mixes)
    atomic_write_text(directory / OVERLAP_FILE, overlap.to_csv())
    atomic_write_text(directory / RESULTS_FILE, table.to_csv(index=False))
    write_report(config, directory, table, overlap, mixes, evaluation.meta)  # report.md last: the step's marker
