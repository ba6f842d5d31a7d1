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

Each evaluation is saved under ``$MARGIN_LAB_HOME/evals/<eval_id>/``: ``results.csv`` (one row per run),
``per_prompt.parquet``, ``judgements.jsonl`` (raw judge output) and ``meta.json`` (judge, settings, prompt set,
baseline, notes).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from dpo_engine.errors import ConfigError, ModelError, UserError
from dpo_engine.evaluation.generation import (
    GenerationSettings,
    generate,
    load_eval_prompts,
)
from dpo_engine.evaluation.judges import PairwiseJudge, ScoreFunctionJudge
from dpo_engine.evaluation.metrics import (
    bootstrap_ci,
    length_controlled_win_rate,
    mean_length,
    paired_difference,
    win_rate,
)
from dpo_engine.files import atomic_write_json, atomic_write_text, read_json
from dpo_engine.paths import ASSETS_DIR, workspace_subdir

JUDGE_ARTIFACT = ASSETS_DIR / "judge" / "embedding_judge_uf.npz"
BASELINES = ("base", "reference")
N_BOOTSTRAP = 2000
CONFIDENCE = 0.95

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
NOTES = {
    "win_rate": "win_rate = 100 * mean preference over judged prompts (a tie counts half); standard_error = "
                "100 * sd / sqrt(n); discrete_win_rate binarises each prompt first (AlpacaEval describe_head2head).",
    "ci": f"ci_low/ci_high: {CONFIDENCE:.0%} percentile bootstrap over prompts, {N_BOOTSTRAP} resamples, seed 0.",
    "paired": "paired_difference = run minus paired_vs on the same prompts (points), with a paired bootstrap CI "
              "and a sign-flip p-value.",
    "lc_win_rate": "Computed offline: AlpacaEval's length-controlled GLM in its minimal form (length term only, no "
                   "instruction difficulty, no gamed-baseline rows, which need the Hub), fitted per run on that "
                   "run's judged prompts; the LC win rate predicts with the length term at 0.",
    "judge": "No judge here is AlpacaEval's GPT-4 Turbo annotator: use the numbers to compare runs within an "
             "evaluation, not with published AlpacaEval results.",
}

StageProgress = Callable[[str, int, int], None]


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


def offline_judge(path: str | Path = JUDGE_ARTIFACT) -> ScoreFunctionJudge:
    """The built-in offline judge: the shipped embedding reward head, preference = sigmoid(r(cand) - r(base)).

    ``extra["heldout_agreement"]`` is the fraction of held-out GPT-4-labelled UltraFeedback pairs the head orders
    like GPT-4 did (from the artifact's metadata).
    """
    from dpo_engine.models.reward_head import STAND_IN_NOTE, EmbeddingRewardModel

    path = Path(path)
    if not path.exists():
        raise ModelError(f"the offline judge artifact {path} is missing; pass another judge (reward model or API)")
    head = EmbeddingRewardModel.load(path)
    metadata = head.metadata
    return ScoreFunctionJudge(
        head.score,
        name="builtin-embedding-judge",
        description=(
            f"{head.description}. Offline stand-in for AlpacaEval's GPT-4 Turbo annotator ({STAND_IN_NOTE}); "
            "preference = sigmoid(r(candidate) - r(baseline)); not comparable with published AlpacaEval numbers."
        ),
        extra={
            "heldout_agreement": metadata.get("heldout_accuracy"),
            "heldout_pairs": metadata.get("heldout_pairs"),
            "training_data": metadata.get("training_data"),
            "n_training_pairs": metadata.get("n_pairs"),
            "artifact": str(path),
        },
    )


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
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
        "prompt_set": {**prompts.attrs.get("prompt_set", {}), "prompt_ids": prompts.prompt_id.tolist()},
        "generation_caches": {run_id: table.attrs.get("generation", {}).get("cache_dir")
                              for run_id, table in generations.items()},
        "notes": {**NOTES, "lc_fits": lc_notes},
    }
    return _save(eval_name, results, per_prompt, judgements, prompts, meta)


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


def results_table(per_prompt: pd.DataFrame, runs: list[dict], compare_to: str, baseline: str,
                  judge_info: dict) -> tuple[pd.DataFrame, dict]:
    """One row per run from the per-prompt table (see ``RESULT_COLUMNS``); also the LC fit note of each run."""
    preferences = {run_id: rows.preference.to_numpy(float) for run_id, rows in per_prompt.groupby("run_id", sort=False)}
    rows, lc_notes = [], {}
    for run in runs:
        run_id = run["run_id"]
        prompt_rows = per_prompt[per_prompt.run_id == run_id]
        p = preferences[run_id]
        head_to_head = win_rate(p)
        ci_low, ci_high = bootstrap_ci(p, n_resamples=N_BOOTSTRAP, confidence=CONFIDENCE, seed=0)
        lc = length_controlled_win_rate(
            p, prompt_rows.output.str.len().to_numpy(), prompt_rows.baseline_output.str.len().to_numpy()
        )
        lc_notes[run_id] = lc["note"]
        paired = (
            paired_difference(p, preferences[compare_to], n_resamples=N_BOOTSTRAP, confidence=CONFIDENCE, seed=0)
            if run_id != compare_to else {}
        )
        rows.append({
            **{key: run[key] for key in ("run_id", "variant", "subset", "subset_rule", "subset_size", "loss",
                                         "loss_params", "learning_rate", "num_epochs")},
            "model": run["base_model"],
            "win_rate": head_to_head["win_rate"],
            "standard_error": head_to_head["standard_error"],
            "ci_low": ci_low,
            "ci_high": ci_high,
            "discrete_win_rate": head_to_head["discrete_win_rate"],
            "lc_win_rate": lc["lc_win_rate"],
            "lc_standard_error": lc["lc_standard_error"],
            "lc_extreme_change": lc["extreme_change"],
            "mean_length": mean_length(prompt_rows.output.tolist()),
            "baseline_mean_length": mean_length(prompt_rows.baseline_output.tolist()),
            "mean_output_tokens": float(prompt_rows.output_tokens.mean()),
            **{key: head_to_head[key] for key in ("n", "n_failed", "n_wins", "n_draws", "n_losses")},
            "paired_vs": compare_to if paired else "",
            "paired_difference": paired.get("difference", math.nan),
            "paired_ci_low": paired.get("low", math.nan),
            "paired_ci_high": paired.get("high", math.nan),
            "paired_p_value": paired.get("p_value", math.nan),
            "baseline": baseline,
            "judge": judge_info["name"],
            "judge_agreement": judge_info["extra"].get("heldout_agreement", math.nan),
        })
    return pd.DataFrame(rows, columns=RESULT_COLUMNS), lc_notes


def _save(eval_name, results, per_prompt, judgements, prompts, meta) -> EvalResult:
    """Write the evaluation into a staging directory, then rename it into place (all files or none)."""
    evals = workspace_subdir("evals")
    eval_id = f"{_slug(eval_name) or 'eval'}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    staging = evals / f".{eval_id}.partial"
    staging.mkdir()
    try:
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
        os.replace(staging, evals / eval_id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_eval(eval_id)


def _slug(name: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name or "").strip(".-_")[:60]


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


def _row_labels(results: pd.DataFrame) -> list[str]:
    """The variant label of each row, with the run id added where labels repeat."""
    variants = results.variant.fillna("").astype(str)
    labels = [variant or run_id for variant, run_id in zip(variants, results.run_id)]
    repeated = pd.Series(labels).duplicated(keep=False)
    return [f"{label} [{run_id}]" if again else label for label, run_id, again in zip(labels, results.run_id, repeated)]


def win_rate_figure(results: pd.DataFrame, title: str = "Win rate against the baseline"):
    """A plotly bar chart of ``results`` (rows of results.csv): one bar per run.

    Bars: win rate (percent) with asymmetric bootstrap 95 % CI error bars; diamonds beside each bar: LC win rate;
    a dashed line at 50 % (as good as the baseline); labels and hover show mean lengths (characters) and n.
    """
    import plotly.graph_objects as go

    labels = _row_labels(results)
    positions = np.arange(len(results), dtype=float)
    win = results.win_rate.to_numpy(float)
    hover = [
        f"<b>{label}</b><br>win rate {row.win_rate:.1f}% (95% CI {row.ci_low:.1f}-{row.ci_high:.1f})<br>"
        f"LC win rate {row.lc_win_rate:.1f}%<br>mean length {row.mean_length:.0f} chars "
        f"(baseline {row.baseline_mean_length:.0f})<br>n = {row.n}, failed = {row.n_failed}"
        for label, row in zip(labels, results.itertuples())
    ]
    figure = go.Figure()
    figure.add_bar(
        x=positions,
        y=win,
        width=0.55,
        name="win rate",
        error_y={
            "type": "data",
            "symmetric": False,
            "array": results.ci_high.to_numpy(float) - win,
            "arrayminus": win - results.ci_low.to_numpy(float),
        },
        text=[f"{rate:.1f}%<br>{length:.0f} ch" for rate, length in zip(win, results.mean_length)],
        textposition="inside",
        insidetextanchor="start",  # at the foot of the bar, clear of the error bar
        hovertext=hover,
        hoverinfo="text",
    )
    figure.add_scatter(
        x=positions + 0.38,
        y=results.lc_win_rate.to_numpy(float),
        mode="markers",
        marker={"symbol": "diamond", "size": 11},
        name="LC win rate",
        hovertext=hover,
        hoverinfo="text",
    )
    figure.add_hline(y=50, line_dash="dash", line_color="grey", annotation_text="50% = baseline",
                     annotation_position="top right")
    figure.update_layout(
        title=title,
        xaxis={"tickvals": positions, "ticktext": labels, "title": None},
        yaxis={"title": "win rate vs baseline (%)", "range": [0, 100]},
        legend={"orientation": "h", "y": -0.2},
        margin={"t": 60},
    )
    return figure


def paired_figure(results: pd.DataFrame, title: str | None = None):
    """A plotly forest plot of each run's paired difference (points) against ``paired_vs``, with its 95 % CI."""
    import plotly.graph_objects as go

    paired = results[results.paired_vs.fillna("") != ""]
    labels = [label for label, has_pair in zip(_row_labels(results), results.paired_vs.fillna("") != "") if has_pair]
    difference = paired.paired_difference.to_numpy(float)
    figure = go.Figure()
    figure.add_scatter(
        x=difference,
        y=labels,
        mode="markers",
        marker={"size": 10},
        error_x={
            "type": "data",
            "symmetric": False,
            "array": paired.paired_ci_high.to_numpy(float) - difference,
            "arrayminus": difference - paired.paired_ci_low.to_numpy(float),
        },
        hovertext=[f"{d:+.1f} points (p = {p:.3f})" for d, p in zip(difference, paired.paired_p_value)],
        hoverinfo="text+y",
        name="paired difference",
    )
    figure.add_vline(x=0, line_dash="dash", line_color="grey")
    reference = paired.paired_vs.iloc[0] if len(paired) else ""
    figure.update_layout(
        title=title or f"Win-rate difference vs {reference} (same prompts, points)",
        xaxis={"title": "difference in win rate (percentage points)"},
        yaxis={"autorange": "reversed"},
    )
    return figure
