"""Response lengths: how often, and by how much, the chosen answer is the longer one (length bias).

Reward models and LLM judges favour longer answers, which is why AlpacaEval reports a length-controlled win rate
(methods.md §8). A preference set whose chosen answers are mostly the longer ones teaches a policy length as much
as quality, so the Data page and ``dpo-engine validate`` show it before any pair is scored. Lengths are characters
of the final reply (the pairs' ``chosen`` / ``rejected`` text): no tokenizer, so any dataset gets them at load time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class LengthSummary:
    """How chosen and rejected lengths compare over ``pairs`` pairs. Shares are fractions in [0, 1]; medians and
    the median ratio are in characters (ratio = chosen / rejected per pair, pairs with an empty rejected left out)."""

    pairs: int
    chosen_longer: float
    rejected_longer: float
    median_chosen: float
    median_rejected: float
    median_ratio: float


def response_lengths(pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Characters of each pair's chosen and rejected reply: two int64 arrays of shape ``(n_pairs,)``."""
    return (pairs.chosen.str.len().to_numpy(dtype=np.int64), pairs.rejected.str.len().to_numpy(dtype=np.int64))


def length_summary(chosen_chars: np.ndarray, rejected_chars: np.ndarray) -> LengthSummary:
    """Share of pairs whose chosen reply is longer (and whose rejected one is; ties count for neither), the median
    lengths and the median chosen/rejected ratio. Inputs: characters, shape ``(n_pairs,)``; NaN medians when empty."""
    chosen, rejected = np.asarray(chosen_chars, dtype=float), np.asarray(rejected_chars, dtype=float)
    n = len(chosen)
    if n == 0:
        return LengthSummary(0, 0.0, 0.0, float("nan"), float("nan"), float("nan"))
    nonempty = rejected > 0
    ratio = float(np.median(chosen[nonempty] / rejected[nonempty])) if nonempty.any() else float("nan")
    return LengthSummary(
        pairs=n,
        chosen_longer=float(np.mean(chosen > rejected)),
        rejected_longer=float(np.mean(rejected > chosen)),
        median_chosen=float(np.median(chosen)),
        median_rejected=float(np.median(rejected)),
        median_ratio=ratio,
    )


def length_histograms(
    chosen_chars: np.ndarray, rejected_chars: np.ndarray, bins: int = 40
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of chosen and of rejected lengths in ``bins`` shared bins, equal in log10(characters).

    Returns ``(edges, chosen_counts, rejected_counts)``: edges in characters, shape ``(bins + 1,)``; counts int64,
    shape ``(bins,)``. Lengths span orders of magnitude (a one-line answer next to an essay), hence log bins from
    the shortest non-empty reply to the longest; an empty reply is counted in the first bin.
    No pairs: empty arrays.
    """
    chosen, rejected = np.asarray(chosen_chars, dtype=float), np.asarray(rejected_chars, dtype=float)
    both = np.concatenate([chosen, rejected])
    if both.size == 0:
        return np.array([]), np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    nonempty = both[both > 0]
    low, high = (np.log10(nonempty.min()), np.log10(nonempty.max())) if nonempty.size else (0.0, 0.0)
    if high - low < 1e-9:  # every reply the same length: one decade around it
        low, high = low - 0.5, high + 0.5
    edges = np.logspace(low, high, bins + 1)

    def counts(values: np.ndarray) -> np.ndarray:  # clipped: 0 characters, and logspace's rounding at both ends
        return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0].astype(np.int64)

    return edges, counts(chosen), counts(rejected)
