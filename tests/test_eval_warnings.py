"""The checks that keep an evaluation from misleading, on hand-built per-prompt tables."""

import pandas as pd

from dpo_engine.evaluation.warnings import MIN_PROMPTS, evaluation_warnings


def table(run_id, outputs, baselines):
    return pd.DataFrame({"run_id": run_id, "output": outputs, "baseline_output": baselines})


def test_identical_empty_and_too_few_prompts_are_flagged():
    n = MIN_PROMPTS
    same = table("same", [f" answer {i}" for i in range(n)], [f"answer {i} " for i in range(n)])
    empty = table("empty", [""] * 3 + [f"mine {i}" for i in range(n - 3)], [f"base {i}" for i in range(n)])
    fine = table("fine", [f"mine {i}" for i in range(n)], [f"base {i}" for i in range(n)])
    found = evaluation_warnings(pd.concat([same, empty, fine], ignore_index=True))
    assert list(found) == ["same", "empty"]
    assert found["same"] == [found["same"][0]] and found["same"][0].startswith(f"{n} of {n} answers are identical")
    assert found["empty"] == ["3 of 30 answers are empty."]


def test_few_prompts_warn_even_when_answers_differ():
    found = evaluation_warnings(table("small", ["a", "b"], ["c", "d"]))
    assert found["small"][0].startswith("Only 2 prompts")
