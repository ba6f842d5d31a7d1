"""The study's summary: one results table over every evaluated variant, paired differences against random, the
orderings methods §10 asks to check, and the engine's figures.

Built from the per-variant engine evaluations (results.csv / per_prompt.parquet): every variant was judged against
the same base-model answers on the same prompts, so their per-prompt preferences pair up. The table itself is the
engine's `results_table` (win rate, bootstrap CI, LC win rate, paired difference against the first random seed);
the markdown adds the paired difference against the *mean of the random seeds* per prompt, which is steadier than
any one seed.

Files, in ``out_dir/summary/``: results.csv, per_prompt.parquet, table.md (the table alone, for
docs/study-dm-small.md), training.md (each run's loss, reward margin and reward accuracy over its last optimizer
steps), summary.md (tables, orderings, settings), summary.json, win_rates.html, paired.html.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.files import atomic_write_json, atomic_write_text
from dpo_engine.timestamps import utc_now_iso

from .config import LOSS_LABELS, STUDY

if TYPE_CHECKING:
    from .pipeline import Study

N_BOOTSTRAP = 2000
TRAINING_TAIL = 10  # logged optimizer steps averaged in training.md (a third of a 120-pair, batch-4 epoch)
RANDOM_POOLED = "random (mean of seeds)"


def _fmt(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _p(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def collect(study: Study) -> tuple[pd.DataFrame, list[dict], dict, list[str]] | None:
    """Per-prompt table of every evaluated variant, their run details (variant = key), the judge, variant keys."""
    from dpo_engine.evaluation.store import load_eval

    evaluated = study.evaluated()
    if not evaluated:
        return None
    tables, details, keys, judge, prompt_ids = [], [], [], None, None
    for key, info in evaluated:
        try:
            saved = load_eval(info["eval_id"])
        except UserError:
            study.log(f"summary: {key}'s evaluation {info['eval_id']} is gone; left out (re-run to evaluate again)")
            continue
        table = saved.per_prompt
        if prompt_ids is None:
            prompt_ids = list(table.prompt_id)
        elif list(table.prompt_id) != prompt_ids:
            study.log(f"summary: {key}'s evaluation used other prompts; left out")
            continue
        tables.append(table)
        details.append({**saved.meta["run_details"][0], "variant": key})
        keys.append(key)
        judge = judge or saved.meta["judge"]
    if not tables:
        return None
    return pd.concat(tables, ignore_index=True), details, judge, keys


def write_summary(study: Study) -> Path | None:
    """Write the summary files from the study's evaluated variants; None when nothing is evaluated yet."""
    from dpo_engine.evaluation.metrics import bootstrap_ci, paired_difference
    from dpo_engine.evaluation.figures import paired_figure, win_rate_figure
    from dpo_engine.evaluation.results import results_table

    collected = collect(study)
    if collected is None:
        return None
    per_prompt, details, judge, keys = collected
    states = study.state["variants"]
    reference = study.reference_key(keys)
    run_of = {key: detail["run_id"] for key, detail in zip(keys, details)}
    baseline = study.profile["eval"]["baseline"]
    results, _ = results_table(per_prompt, details, run_of[reference], baseline, judge)
    results.insert(1, "variant_key", keys)
    results.insert(2, "label", [states[key]["label"] for key in keys])
    results.insert(3, "group", [states[key]["group"] for key in keys])

    preferences = {key: per_prompt[per_prompt.run_id == run_of[key]].preference.to_numpy(float) for key in keys}
    random_keys = [key for key in keys if key.startswith("random-")]
    pooled = np.nanmean(np.vstack([preferences[key] for key in random_keys]), axis=0) if random_keys else None
    rows = []
    for key, result in zip(keys, results.itertuples()):
        row = {
            "variant": key, "label": states[key]["label"], "group": states[key]["group"],
            "loss": states[key]["loss"], "n_pairs": int(result.subset_size) if pd.notna(result.subset_size) else None,
            "win_rate": result.win_rate, "ci_low": result.ci_low, "ci_high": result.ci_high,
            "lc_win_rate": result.lc_win_rate, "mean_length": result.mean_length, "n_prompts": int(result.n),
            "run_id": result.run_id, "eval_id": states[key]["eval_id"], "train_seconds": states[key].get("train_seconds"),
        }
        if pooled is not None and not key.startswith("random-"):
            paired = paired_difference(preferences[key], pooled, n_resamples=N_BOOTSTRAP, seed=0)
            row.update(vs_random=paired["difference"], vs_random_low=paired["low"], vs_random_high=paired["high"],
                       vs_random_p=paired["p_value"])
        rows.append(row)
    pooled_row = None
    if pooled is not None:
        low, high = bootstrap_ci(pooled, n_resamples=N_BOOTSTRAP, seed=0)
        pooled_row = {"variant": RANDOM_POOLED, "label": f"Random (mean of {len(random_keys)} seed"
                      f"{'s' if len(random_keys) > 1 else ''})", "loss": "dpo",
                      "n_pairs": rows[keys.index(random_keys[0])]["n_pairs"], "win_rate": 100 * float(np.nanmean(pooled)),
                      "ci_low": low, "ci_high": high, "seeds": random_keys}
    checks = ordering_checks({key: preferences[key] for key in keys}, pooled)
    training = training_rows(states, keys)

    directory = study.summary_dir
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "results.csv", results.to_csv(index=False))
    per_prompt.assign(variant=per_prompt.run_id.map({run: key for key, run in run_of.items()})).to_parquet(
        directory / "per_prompt.parquet", index=False)
    table = markdown_table(rows, pooled_row)
    atomic_write_text(directory / "table.md", table + "\n")
    training_md = training_table(training)
    atomic_write_text(directory / "training.md", training_md + "\n")
    document = markdown_document(study, table, checks, judge, len(per_prompt) // max(len(keys), 1), keys, training_md)
    atomic_write_text(directory / "summary.md", document)
    atomic_write_json(directory / "summary.json", {
        "study": STUDY, "profile": study.profile.name, "created": _now(), "reference_run": run_of[reference],
        "rows": rows, "random_pooled": pooled_row, "checks": checks, "judge": judge, "training": training,
    })
    labelled = results.assign(variant=results.label)
    win_rate_figure(labelled, title=f"{STUDY} ({study.profile.name}): win rate against the base model").write_html(
        directory / "win_rates.html", include_plotlyjs="cdn")
    if len(results) > 1:
        paired_figure(labelled, title=f"Difference vs {states[reference]['label']} (points, same prompts)").write_html(
            directory / "paired.html", include_plotlyjs="cdn")
    return directory / "summary.md"


def _now() -> str:
    return utc_now_iso()


def markdown_table(rows: list[dict], pooled_row: dict | None) -> str:
    lines = [
        "| Variant | Loss | Pairs | Win rate vs base, % [95 % CI] | LC win rate, % | Δ vs random, points [95 % CI] | p |",
        "|---|---|---:|---|---:|---|---:|",
    ]
    for row in rows:
        if "vs_random" in row:
            paired = f"{_fmt(row['vs_random'], True)} [{_fmt(row['vs_random_low'], True)}, {_fmt(row['vs_random_high'], True)}]"
            p = _p(row["vs_random_p"])
        else:
            paired, p = ("(in the reference)" if row["group"] == "random" else "–"), ""
        lines.append(
            f"| {row['label']} | {LOSS_LABELS.get(row['loss'], row['loss'])} | {row['n_pairs'] or '–'} | "
            f"{_fmt(row['win_rate'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] | {_fmt(row['lc_win_rate'])} | "
            f"{paired} | {p} |"
        )
    if pooled_row is not None:
        lines.append(
            f"| {pooled_row['label']} | DPO | {pooled_row['n_pairs'] or '–'} | {_fmt(pooled_row['win_rate'])} "
            f"[{_fmt(pooled_row['ci_low'])}, {_fmt(pooled_row['ci_high'])}] | – | (reference) | |"
        )
    return "\n".join(lines)


def training_rows(states: dict, keys: list[str]) -> list[dict]:
    """End-of-training statistics of each variant's run, from its metrics.jsonl: means over the last
    ``TRAINING_TAIL`` logged steps of the loss, reward margin (nats scaled by the loss's beta) and reward accuracy
    (share of the batch's pairs whose implicit reward ranks chosen first). Runs without metrics are left out."""
    from dpo_engine import runs

    rows = []
    for key in keys:
        metrics = runs.read_metrics(states[key]["run_id"])
        if metrics.empty:
            continue
        tail = metrics.tail(TRAINING_TAIL)
        rows.append({
            "variant": key, "label": states[key]["label"], "loss": states[key]["loss"], "steps": int(metrics.step.max()),
            "final_loss": float(tail["loss"].mean()), "reward_margin": float(tail["rewards/margins"].mean()),
            "reward_accuracy": 100 * float(tail["rewards/accuracies"].mean()),
        })
    return rows


def training_table(rows: list[dict]) -> str:
    lines = [
        f"| Variant | Loss | Steps | Loss, last {TRAINING_TAIL} steps | Reward margin | Reward accuracy, % |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['label']} | {LOSS_LABELS.get(row['loss'], row['loss'])} | {row['steps']} | "
                     f"{row['final_loss']:.3f} | {row['reward_margin']:+.3f} | {row['reward_accuracy']:.0f} |")
    return "\n".join(lines)


# ---- the orderings of methods §10 -------------------------------------------------------------------------------

# (claim, variant A, variant B or "random", kind): "ge" = A at least as good as B, "worse" = A clearly worse.
CLAIMS = [
    ("DM-MUL ≥ random", "dm-mul", "random", "ge"),
    ("DM-MUL ≥ Ex-TOP", "dm-mul", "ex-top", "ge"),
    ("DM-MUL ≥ Im-TOP", "dm-mul", "im-top", "ge"),
    ("DM-ADD ≥ random", "dm-add", "random", "ge"),
    ("Ex-BOT clearly worse than random", "ex-bot", "random", "worse"),
    ("Im-BOT clearly worse than random", "im-bot", "random", "worse"),
    ("SimPO ≥ DPO (DM-MUL subset)", "dm-mul-simpo", "dm-mul", "ge"),
    ("α-DPO ≥ DPO (DM-MUL subset)", "dm-mul-alpha_dpo", "dm-mul", "ge"),
    ("DM-MUL ≥ full data", "dm-mul", "full", "ge"),
]


def verdict(kind: str, low: float, high: float, difference: float) -> str:
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high, difference)):
        return "no data"
    if kind == "worse":
        return "holds (CI below 0)" if high < 0 else ("worse, not significant" if difference < 0 else "not seen")
    if low > 0:
        return "holds, A better (CI above 0)"
    if difference >= 0:
        return "holds (A ≥ B; CI includes 0)"
    return "contradicted (CI below 0)" if high < 0 else "A < B, not significant"


def ordering_checks(preferences: dict[str, np.ndarray], pooled: np.ndarray | None) -> list[dict]:
    """Paired differences A − B for each claim whose variants were evaluated."""
    from dpo_engine.evaluation.metrics import paired_difference

    checks = []
    for claim, a, b, kind in CLAIMS:
        other = pooled if b == "random" else preferences.get(b)
        if a not in preferences or other is None:
            continue
        paired = paired_difference(preferences[a], other, n_resamples=N_BOOTSTRAP, seed=0)
        checks.append({"claim": claim, "a": a, "b": b, "difference": paired["difference"], "low": paired["low"],
                       "high": paired["high"], "p_value": paired["p_value"],
                       "verdict": verdict(kind, paired["low"], paired["high"], paired["difference"])})
    return checks


def markdown_document(study: Study, table: str, checks: list[dict], judge: dict, n_prompts: int,
                      keys: list[str], training_md: str = "") -> str:
    from .config import all_variants

    profile = study.profile
    train = profile["train"]
    data = study.state.get("data", {})
    planned = [variant.key for variant in all_variants(profile)]
    missing = [key for key in planned if key not in keys]
    agreement = (judge or {}).get("extra", {}).get("heldout_agreement")
    lines = [
        f"### {STUDY} study, `{profile.name}` profile",
        "",
        f"{len(keys)} variants evaluated on {n_prompts} AlpacaEval prompts; win rates are against the base model's own "
        f"greedy answers, judged by `{(judge or {}).get('name', '?')}`"
        + (f" (held-out agreement with GPT-4 labels {agreement:.0%})" if isinstance(agreement, (int, float)) else "")
        + ". Paired differences are per prompt against the mean preference of the random seeds; "
        "CIs are 95 % percentile bootstraps over prompts, p is a two-sided sign-flip test.",
        "",
        table,
        "",
        "**Orderings to check (methods §10)**, A − B in points [95 % CI]:",
        "",
    ]
    for check in checks:
        lines.append(f"- {check['claim']}: {_fmt(check['difference'], True)} [{_fmt(check['low'], True)}, "
                     f"{_fmt(check['high'], True)}], p {_p(check['p_value'])}: {check['verdict']}")
    if not checks:
        lines.append("- (not enough variants evaluated yet)")
    if training_md:
        lines += ["", f"**Training**, means over each run's last {TRAINING_TAIL} optimizer steps (losses differ in "
                  "scale: compare rows with the same loss):", "", training_md]
    lines += [
        "",
        (f"Setup: {data.get('n_pairs', '?')} pairs from `{Path(data.get('source', '?')).name}`, subsets of "
         f"{100 * float(profile['frac']):g} %; `{train['model']}` + LoRA r={train['lora_r']}, "
         f"lr {train['learning_rate']}, {train['num_epochs']} epoch(s), "
         f"batch {train['batch_size']}×{train['gradient_accumulation_steps']}, max_length {train['max_length']}, "
         f"{train['precision']}; generation {profile['eval']['max_new_tokens']} new tokens, greedy. "
         f"Margins: `{Path(study.state.get('margins', {}).get('path', '?')).name}`."),
    ]
    if missing:
        lines.append(f"Not evaluated (yet): {', '.join(missing)}.")
    lines += ["", f"_Generated by `python -m experiments.dm_small` on {_now()[:10]}._", ""]
    return "\n".join(lines)
