"""The arena's numbers, as pure functions: subset overlaps, the paired comparison with the random mean, the
training-dynamics summary of a run, and the length and source mix of a subset.

Units: win rates, differences and CI bounds in percent / percentage points (0-100), as in
`dpo_engine.evaluation.metrics`; preferences are fractions (0-1), one per prompt, shape ``(n_prompts,)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from dpo_engine.evaluation.metrics import paired_difference

# metrics.jsonl keys of the training-dynamics summary, and the names they get in the arena table.
DYNAMICS_KEYS = {"loss": "final_loss", "rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin"}


def jaccard(first: Sequence[str], second: Sequence[str]) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two id collections (repeats ignored); 1.0 when both are empty."""
    a, b = set(first), set(second)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def jaccard_matrix(subsets: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Square DataFrame (contestant x contestant, in ``subsets`` order) of pairwise Jaccard indices, in [0, 1]."""
    names = list(subsets)
    values = [[jaccard(subsets[row], subsets[column]) for column in names] for row in names]
    return pd.DataFrame(values, index=names, columns=names)


def random_mean_preferences(random_preferences: np.ndarray) -> np.ndarray:
    """Per-prompt mean over the random seeds, ``(n_seeds, n_prompts)`` -> ``(n_prompts,)``; NaN (failed judgements)
    skipped, NaN where every seed failed on a prompt."""
    values = np.asarray(random_preferences, dtype=float)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"random_preferences must be (n_seeds >= 1, n_prompts), got shape {values.shape}")
    judged = ~np.isnan(values)
    counts = judged.sum(axis=0)
    totals = np.where(judged, values, 0.0).sum(axis=0)
    return np.divide(totals, counts, out=np.full(values.shape[1], np.nan), where=counts > 0)


def versus_random(preferences: np.ndarray, random_preferences: np.ndarray, n_resamples: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> dict:
    """A contestant against the random mean on the same prompts: `metrics.paired_difference` of ``preferences``
    ``(n_prompts,)`` and `random_mean_preferences` of ``random_preferences`` ``(n_seeds, n_prompts)``.

    Returns ``difference`` (points: mean over prompts of p - mean_seeds(p_random), x 100), ``low``, ``high``
    (paired bootstrap CI, points), ``p_value`` (two-sided sign-flip test) and ``n`` (prompts used).
    """
    return paired_difference(preferences, random_mean_preferences(random_preferences), n_resamples=n_resamples,
                             confidence=confidence, seed=seed)


def training_dynamics(metrics: pd.DataFrame) -> dict:
    """Last logged ``final_loss``, ``reward_accuracy`` (fraction) and ``reward_margin`` (nats, β-scaled) of a run's
    metrics.jsonl rows, plus ``steps`` (the last logged step); NaN for what was never logged."""
    summary = {name: math.nan for name in DYNAMICS_KEYS.values()}
    summary["steps"] = 0
    if metrics is None or metrics.empty:
        return summary
    for key, name in DYNAMICS_KEYS.items():
        if key in metrics:
            logged = pd.to_numeric(metrics[key], errors="coerce").dropna()
            if len(logged):
                summary[name] = float(logged.iloc[-1])
    if "step" in metrics:
        steps = pd.to_numeric(metrics["step"], errors="coerce").dropna()
        summary["steps"] = int(steps.max()) if len(steps) else 0
    return summary


def source_of(extra: str, column: str) -> str:
    """The ``column`` value of a pair's ``extra`` JSON text (its source columns), or ``"(none)"``."""
    try:
        value = json.loads(extra).get(column) if extra else None
    except (ValueError, AttributeError):
        value = None
    return str(value) if value not in (None, "") else "(none)"


def subset_mix(pairs: pd.DataFrame, margins: pd.DataFrame, pair_ids: Sequence[str], source_column: str) -> dict:
    """Lengths and sources of one subset: ``n``, mean ``chosen_chars`` / ``rejected_chars`` (characters), mean
    ``chosen_tokens`` / ``rejected_tokens`` (from the margins table; NaN without them), and ``sources``
    (``{source: share of the subset}``, shares summing to 1)."""
    ids = pd.Index(list(pair_ids)).astype(str)
    chosen = pairs.set_index(pairs.pair_id.astype(str)).reindex(ids)
    tokens = margins.set_index(margins.pair_id.astype(str)).reindex(ids)
    sources = chosen["extra"].fillna("").map(lambda extra: source_of(extra, source_column))
    shares = sources.value_counts(normalize=True).sort_index()

    def mean(frame: pd.DataFrame, column: str) -> float:
        return float(frame[column].astype(float).mean()) if column in frame and len(frame) else math.nan

    return {
        "n": len(ids),
        "chosen_chars": float(chosen.chosen.str.len().mean()) if len(ids) else math.nan,
        "rejected_chars": float(chosen.rejected.str.len().mean()) if len(ids) else math.nan,
        "chosen_tokens": mean(tokens, "chosen_tokens"),
        "rejected_tokens": mean(tokens, "rejected_tokens"),
        "sources": {str(name): float(share) for name, share in shares.items()},
    }
