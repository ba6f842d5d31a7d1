"""The results table: one row per run of an evaluation, from its per-prompt preferences (methods §8).

Win rates, standard errors, CI bounds and paired differences are percent / percentage points (0-100);
preferences are fractions (0-1); lengths are characters unless named ``*_tokens``. Imports no torch.
"""

from __future__ import annotations

import math

import pandas as pd

from dpo_engine.evaluation.metrics import (
    bootstrap_ci,
    length_controlled_win_rate,
    mean_length,
    paired_difference,
    win_rate,
)
from dpo_engine.evaluation.store import RESULT_COLUMNS

N_BOOTSTRAP = 2000
CONFIDENCE = 0.95
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
