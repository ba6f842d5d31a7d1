"""What an evaluation's numbers cannot tell: answers identical to the baseline's or empty, and too few prompts.

A win rate of "50.0 % [50.0, 50.0]" from answers identical to the baseline is not a precise null result: the
judge compared a text with itself. These checks run on the per-prompt table (``per_prompt.parquet`` columns
``run_id``, ``output``, ``baseline_output``) and return plain sentences for the Results page and the CLI.
"""

from __future__ import annotations

import pandas as pd

MIN_PROMPTS = 30  # below this the bootstrap interval over prompts is itself too noisy to read
IDENTICAL_SHARE = 0.5  # warn when at least half the answers equal the baseline's


def evaluation_warnings(per_prompt: pd.DataFrame) -> dict[str, list[str]]:
    """``{run_id: [warning, ...]}`` for the runs whose results can mislead (runs without problems are absent).

    Identical means equal after stripping surrounding whitespace; empty means nothing but whitespace.
    """
    found: dict[str, list[str]] = {}
    for run_id, rows in per_prompt.groupby("run_id", sort=False):
        outputs = rows.output.fillna("").astype(str).str.strip()
        baseline = rows.baseline_output.fillna("").astype(str).str.strip()
        n = len(rows)
        problems = []
        identical = int((outputs == baseline).sum())
        if identical and identical >= IDENTICAL_SHARE * n:
            problems.append(
                f"{identical} of {n} answers are identical to the baseline's: the judge compared a text with itself, "
                "so a win rate near 50 % here says nothing about the training (was the adapter applied?)."
            )
        empty = int((outputs == "").sum())
        if empty:
            problems.append(f"{empty} of {n} answers are empty.")
        if n < MIN_PROMPTS:
            problems.append(
                f"Only {n} prompts: the 95 % interval over so few prompts is not reliable; evaluate at least "
                f"{MIN_PROMPTS} before reading differences."
            )
        if problems:
            found[str(run_id)] = problems
    return found
