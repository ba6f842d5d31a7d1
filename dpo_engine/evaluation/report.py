"""Evaluate training runs: generate, judge against a baseline, compute win rates, save and plot the results.

``evaluate(run_ids)`` generates answers with each run's adapter on a prompt set (``generation.py``), has a pairwise
judge compare each answer with the baseline's answer to the same prompt (``judges.py``), and computes AlpacaEval-style
numbers per run (``metrics.py``, methods §8). The baseline is either

- ``"base"`` (default): the runs' base model's own greedy answers, so the win rate measures what training changed;
  meaningful for small models, whose answers would lose almost every prompt against GPT-4 Turbo;
- ``"reference"``: the bundled GPT-4 Turbo answers (AlpacaEval 2's baseline).

The default judge is the offline stand-in (``offline_judge``): a Bradley-Terry head on MiniLM embeddings trained on
GPT-4-scored UltraFeedback pairs. No judge here is AlpacaEval's GPT-4 Turbo annotator, so the numbers rank runs
against each other and are not comparable with the published leaderboard.

Units: win rates, standard errors, CI bounds and paired differences are percent / percentage points (0-100);
preferences and the judge's held-out agreement are fractions (0-1); lengths are characters unless named ``*_tokens``.

The evaluation is saved by `dpo_engine.evaluation.store` (read it back with ``store.load_eval``, which imports no
torch); the table is `dpo_engine.evaluation.results`, the charts `dpo_engine.evaluation.figures`, the judges by
name `dpo_engine.evaluation.judge_factory`. Their names are re-exported here, where they used to live.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from dpo_engine.errors import ConfigError, UserError
from dpo_engine.evaluation.figures import paired_figure, win_rate_figure
from dpo_engine.evaluation.generation import GenerationSettings, generate, load_eval_prompts
from dpo_engine.evaluation.judge_factory import JUDGE_ARTIFACT, offline_judge
from dpo_engine.evaluation.judges import PairwiseJudge
from dpo_engine.timestamps import utc_now_iso
from dpo_engine.evaluation.results import CONFIDENCE, N_BOOTSTRAP, NOTES, results_table
from dpo_engine.evaluation.store import (
    PER_PROMPT_COLUMNS,
    RESULT_COLUMNS,
    TEXT_RESULT_COLUMNS,
    EvalResult,
    export_results_csv,
    list_evals,
    load_eval,
    save_evaluation,
)

__all__ = [
    "BASELINES", "CONFIDENCE", "JUDGE_ARTIFACT", "N_BOOTSTRAP", "NOTES", "PER_PROMPT_COLUMNS", "RESULT_COLUMNS",
    "TEXT_RESULT_COLUMNS", "EvalResult", "describe_run", "evaluate", "export_results_csv", "list_evals", "load_eval",
    "offline_judge", "paired_figure", "results_table", "win_rate_figure",
]

BASELINES = ("base", "reference")

StageProgress = Callable[[str, int, int], None]


def evaluate(
    run_ids: Sequence[str],
    *,
    judge: PairwiseJudge | None = None,
    prompts: pd.DataFrame | str | Path | None = None,
    baseline: str = "base",
    settings: GenerationSettings | None = None,
    eval_name: str | None = None,
    compare_to: str | None = None,
    progress: StageProgress | None = None,
) -> EvalResult:
    """Generate with each run, judge it against ``baseline``, compute its numbers, and save the evaluation.

    ``run_ids``: runs with a trained adapter (``dpo_engine.runs``). ``judge``: default ``offline_judge()``.
    ``prompts``: a DataFrame from ``load_eval_prompts``, a prompt file, or None for all 805 bundled AlpacaEval prompts.
    ``baseline``: ``"base"`` (each run's base model's answers, generated with the same settings) or
    ``"reference"`` (the prompts' reference answers, GPT-4 Turbo for the bundled set).
    ``compare_to``: the run every other run is paired with (default: the first).
    ``progress(stage, done, total)``: ``stage`` names the step; ``done`` and ``total`` count prompts while
    generating with one model (stage ``"generating: ..."``) and runs while judging (stage ``"judging"``).
    """
    run_ids = list(dict.fromkeys(run_ids))
    if not run_ids:
        raise ConfigError("run_ids", "give at least one run to evaluate")
    if baseline not in BASELINES:
        raise ConfigError("baseline", f"must be one of {', '.join(BASELINES)}, got '{baseline}'")
    compare_to = compare_to or run_ids[0]
    if compare_to not in run_ids:
        raise ConfigError("compare_to", f"'{compare_to}' is not one of the evaluated runs")
    settings = settings or GenerationSettings()
    settings.validate()
    judge = judge or offline_judge()
    if not isinstance(prompts, pd.DataFrame):
        prompts = load_eval_prompts(prompts)
    if baseline == "reference" and (prompts.reference_output.str.strip() == "").any():
        missing = int((prompts.reference_output.str.strip() == "").sum())
        raise ConfigError("baseline", f"{missing} of {len(prompts)} prompts have no reference output; use 'base'")
    runs = [describe_run(run_id) for run_id in run_ids]

    def stage(name: str):
        return (lambda done, total: progress(name, done, total)) if progress else None

    generations, baseline_outputs = {}, {}
    for run in runs:
        generations[run["run_id"]] = generate(
            run["model"], run["adapter"], prompts, settings, progress=stage(f"generating: {run['run_id']}")
        )
        if baseline == "reference":
            baseline_outputs[run["run_id"]] = prompts.reference_output.tolist()
        else:
            base_model = run["base_model"]
            base = generate(base_model, None, prompts, settings, progress=stage(f"generating: base {base_model}"))
            baseline_outputs[run["run_id"]] = base.output.tolist()

    judgements, per_prompt_tables = [], []
    for number, run in enumerate(runs):
        run_id = run["run_id"]
        if progress:
            progress("judging", number, len(runs))
        outputs = generations[run_id]
        result = judge.judge(prompts.instruction.tolist(), outputs.output.tolist(), baseline_outputs[run_id])
        judgements.append((run_id, result))
        per_prompt_tables.append(pd.DataFrame({
            "prompt_id": prompts.prompt_id.to_numpy(),
            "run_id": run_id,
            "dataset": prompts.dataset.to_numpy(),
            "instruction": prompts.instruction.to_numpy(),
            "output": outputs.output.to_numpy(),
            "output_tokens": outputs.output_tokens.to_numpy(),
            "baseline_output": baseline_outputs[run_id],
            "preference": result.preferences,
        }))
    if progress:
        progress("judging", len(runs), len(runs))
    per_prompt = pd.concat(per_prompt_tables, ignore_index=True)[PER_PROMPT_COLUMNS]

    judge_info = {"name": judge.name, "description": judge.description, "extra": dict(judge.extra)}
    results, lc_notes = results_table(per_prompt, runs, compare_to, baseline, judge_info)
    meta = {
        "name": eval_name or "",
        "created": utc_now_iso(),
        "runs": run_ids,
        "run_details": runs,
        "baseline": baseline,
        "baseline_description": (
            "each run's base model, same generation settings" if baseline == "base"
            else "the prompts' reference answers (GPT-4 Turbo for the bundled AlpacaEval set)"
        ),
        "compare_to": compare_to,
        "judge": judge_info,
        "settings": settings.to_dict(),
        # As the device resolved them (auto dtype, device-sized slots and answer lengths), from the first generation.
        "resolved_settings": next(iter(generations.values())).attrs.get("generation", {}).get("settings"),
        "prompt_set": {**prompts.attrs.get("prompt_set", {}), "prompt_ids": prompts.prompt_id.tolist()},
        "generation_caches": {run_id: table.attrs.get("generation", {}).get("cache_dir")
                              for run_id, table in generations.items()},
        "notes": {**NOTES, "lc_fits": lc_notes},
    }
    return save_evaluation(eval_name, results, per_prompt, judgements, prompts, meta)


def describe_run(run_id: str) -> dict:
    """What an evaluation needs to know about a run: base model, trained weights, and its row labels.

    Returns ``run_id, model`` (what to load), ``adapter`` (the LoRA directory; None after full fine-tuning, when
    ``model`` is the trained model directory), ``base_model``, ``variant`` (the run's name, else loss and subset),
    ``subset`` (selection name or subset file stem), ``subset_rule`` (the selection's rule and parameters when the
    selection is saved in this workspace, else ""), ``subset_size`` (training pairs), ``loss``, ``loss_params``,
    ``learning_rate``, ``num_epochs``.
    """
    from dpo_engine.runs import get_run

    run = get_run(run_id)
    config = run.config
    full_model = run.run_dir / "model"
    if (run.adapter_dir / "adapter_config.json").exists():
        model, adapter = config.get("model", run.model), str(run.adapter_dir)
    elif (full_model / "config.json").exists():
        model, adapter = str(full_model), None
    else:
        raise UserError(f"run '{run_id}' has no trained adapter yet (state: {run.state}): train it first")
    subset_size = _count_lines(run.subset_path)
    loss_params = config.get("loss_params") or {}
    return {
        "run_id": run_id,
        "model": model,
        "adapter": adapter,
        "base_model": config.get("model", run.model),
        "variant": run.name or f"{run.loss} · {run.subset_name}" + (f" ({subset_size})" if subset_size else ""),
        "subset": run.subset_name,
        "subset_rule": _selection_rule(run.selection_name),
        "subset_size": subset_size,
        "loss": run.loss,
        "loss_params": ", ".join(f"{key}={value}" for key, value in sorted(loss_params.items())),
        "learning_rate": config.get("learning_rate"),
        "num_epochs": config.get("num_epochs"),
    }


def _selection_rule(selection_name: str | None) -> str:
    """``rule(param=value, ...)`` of a saved selection (explicit id lists left out); "" when it is not saved here."""
    if not selection_name:
        return ""
    from dpo_engine.selection.store import load_selection

    try:
        selection = load_selection(selection_name)
    except UserError:
        return ""
    params = ", ".join(f"{key}={value}" for key, value in selection.params.items() if key != "pair_ids")
    return f"{selection.rule}({params})"


def _count_lines(path: Path) -> int | None:
    """Non-blank lines of a text file (pairs in a jsonl subset); None when it does not exist."""
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())
