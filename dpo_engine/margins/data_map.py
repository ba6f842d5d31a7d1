"""DPO data maps: dataset cartography (Swayamdipta et al. 2020, ``allenai/cartography``) on implicit reward margins.

A run with ``data_map_every = K`` records, every K optimizer steps, each subset pair's implicit margin
``m = (pc - rc) - (pr - rr)`` (summed log-probs, nats, no beta) under the policy of that step and the cached
reference. Per pair, over the recorded steps (cartography's epochs):

- ``confidence`` = mean of ``p = sigmoid(beta * m)``, the DPO model's probability that chosen beats rejected;
- ``variability`` = population std (``ddof=0``, cartography's ``np.std``) of that ``p``;
- ``correctness`` = fraction of recorded steps with ``m > 0`` (reward accuracy).

Regions, as cartography's three 33 % subsets: **ambiguous** is the most variable third of the pairs (variability
above its 2/3 quantile); the other pairs split at their median confidence into **easy** (at or above it) and
**hard** (below). Relative cut-offs, not fixed ones, because ``p`` depends on beta: with beta = 0.1 a pair the model
separates by 5 nats has ``p`` = 0.62, so fixed thirds of [0, 1] would put nearly every DPO pair in the middle.
Pure functions; no torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RECORD_COLUMNS = ("step", "pair_id", "implicit_margin", "beta")
SUMMARY_COLUMNS = ("pair_id", "confidence", "variability", "correctness", "final_margin", "n_steps", "region")
REGIONS = ("easy", "ambiguous", "hard")
AMBIGUOUS_QUANTILE = 2 / 3  # pairs with variability above this quantile are the ambiguous third


def step_records(step: int, pair_ids, implicit_margins, beta: float) -> pd.DataFrame:
    """One data-map row per pair at optimizer step ``step``: ``RECORD_COLUMNS`` (margins in nats, no beta)."""
    margins = np.asarray(implicit_margins, dtype=np.float64)
    return pd.DataFrame({
        "step": np.full(margins.shape, int(step), dtype=np.int64),
        "pair_id": np.asarray(pair_ids).astype(str),
        "implicit_margin": margins,
        "beta": np.full(margins.shape, float(beta)),
    })


def preference_probability(implicit_margin, beta) -> np.ndarray:
    """``sigmoid(beta * m)``: the Bradley-Terry probability that chosen beats rejected, same shape as ``m``."""
    scaled = np.asarray(beta, dtype=np.float64) * np.asarray(implicit_margin, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * scaled))  # sigmoid without overflow warnings at large |margin|


def summarize(records: pd.DataFrame) -> pd.DataFrame:
    """Per pair (``SUMMARY_COLUMNS``): confidence, variability, correctness over its recorded steps, the margin at
    its last recorded step (nats), the number of steps with a margin, and its region (`assign_regions`).

    ``records`` holds ``RECORD_COLUMNS`` rows; steps where a pair's margin is NaN (no reference) are skipped, and
    a pair with none has NaN statistics and region ``""``. Rows are ordered by first appearance of the pair.
    """
    frame = records.loc[:, list(RECORD_COLUMNS)].copy()
    frame["pair_id"] = frame.pair_id.astype(str)
    frame["p"] = preference_probability(frame.implicit_margin, frame.beta)
    frame["correct"] = np.where(frame.implicit_margin.isna(), np.nan, (frame.implicit_margin > 0).astype(float))
    grouped = frame.sort_values("step", kind="stable").groupby("pair_id", sort=False)
    summary = pd.DataFrame({
        "confidence": grouped.p.mean(),
        "variability": grouped.p.std(ddof=0),
        "correctness": grouped.correct.mean(),
        "final_margin": grouped.implicit_margin.last(),
        "n_steps": grouped.implicit_margin.count().astype(np.int64),
    })
    order = pd.unique(frame.pair_id)
    summary = summary.reindex(order).rename_axis("pair_id").reset_index()
    summary["region"] = assign_regions(summary.confidence.to_numpy(), summary.variability.to_numpy())
    return summary.loc[:, list(SUMMARY_COLUMNS)]


def region_cutoffs(confidence, variability) -> tuple[float, float]:
    """``(variability cut, confidence cut)``: above the first a pair is ambiguous; of the others, at or above the
    second it is easy, below it hard. NaN pairs are ignored; ``(nan, nan)`` when no pair has values."""
    confidence, variability = np.asarray(confidence, float), np.asarray(variability, float)
    known = ~(np.isnan(confidence) | np.isnan(variability))
    if not known.any():
        return float("nan"), float("nan")
    variability_cut = float(np.quantile(variability[known], AMBIGUOUS_QUANTILE))
    steady = known & (variability <= variability_cut)
    return variability_cut, float(np.median(confidence[steady]))


def assign_regions(confidence, variability) -> np.ndarray:
    """Each pair's region, ``(n_pairs,)`` of ``"easy"``, ``"ambiguous"``, ``"hard"`` or ``""`` (no values), by
    `region_cutoffs`. With one recorded step every variability is 0, so no pair is ambiguous."""
    confidence, variability = np.asarray(confidence, float), np.asarray(variability, float)
    variability_cut, confidence_cut = region_cutoffs(confidence, variability)
    regions = np.full(confidence.shape, "", dtype=object)
    known = ~(np.isnan(confidence) | np.isnan(variability))
    if not known.any():
        return regions
    ambiguous = known & (variability > variability_cut)
    regions[known & ~ambiguous & (confidence >= confidence_cut)] = "easy"
    regions[known & ~ambiguous & (confidence < confidence_cut)] = "hard"
    regions[ambiguous] = "ambiguous"
    return regions


def interval_for(total_steps: int, points: int) -> int:
    """``data_map_every`` that records about ``points`` times over ``total_steps`` steps: ``max(1, total // points)``;
    0 (off) when ``points`` is 0."""
    if points <= 0:
        return 0
    return max(1, int(total_steps) // int(points))
