"""The field's margin hypotheses as selectors: pure index picks and the rules of `select_pairs` built on them.

Each selector answers "which pairs?" under one published hypothesis (each function names its paper and reference code):

- ``smallest_gap``: Qi, Xu, Jin (methods §7): the smallest implicit reward gaps of a DPO model, ascending.
- ``alignment_potential``: Huang et al. (methods §6): the largest M_AP.
- ``medium_band`` / ``lossdiff_irm``: Zhang et al.'s truncated-influence finding: medium scores beat high ones.
- ``bees_k``: BeeS (methods §1.5) over any K margin columns, e.g. several reward models.
- ``chosen_quality``: the chosen response's reward alone (arXiv 2508.18312).
- ``selective_dpo``: Gao et al.: easy to hard by cross-fitted validation loss, the hardest tau dropped.

Pure functions take ``(n_pairs,)`` array-likes (or ``(n_pairs, C)`` for several columns) and return numpy int64
indices; NaN is never selected. The ``*_scores`` / ``pick`` pair below is what `select_pairs` calls.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.margins.formulas import _as_array, alignment_potential, bees

HYPOTHESIS_RULES = (
    "smallest_gap", "alignment_potential", "medium_band", "lossdiff_irm", "bees_k", "chosen_quality", "selective_dpo",
)
# Parameters each hypothesis rule takes in `select_pairs` (``where`` restricts the candidates, as for every rule).
HYPOTHESIS_PARAMS: dict[str, frozenset[str]] = {
    "smallest_gap": frozenset({"score", "k", "frac", "where"}),
    "alignment_potential": frozenset({"weight", "k", "frac", "where"}),
    "medium_band": frozenset({"score", "k", "frac", "where"}),
    "lossdiff_irm": frozenset({"scores", "k", "frac", "where"}),
    "bees_k": frozenset({"scores", "k", "frac", "where"}),
    "chosen_quality": frozenset({"score", "k", "frac", "where"}),
    "selective_dpo": frozenset({"score", "tau", "where"}),
}
# Score column each rule reads by default.
DEFAULT_COLUMNS = {
    "smallest_gap": "implicit_margin",
    "medium_band": "implicit_margin",
    "lossdiff_irm": ("loss_diff", "irm"),
    "bees_k": ("external_margin", "implicit_margin"),
    "chosen_quality": "chosen_score",
    "selective_dpo": "learning_order",
}
SELECTIVE_DPO_TAU = 0.5  # Gao et al.'s run_selective_dpo.py keeps the easiest 50 % (60 % for gemma-2-9b)
ALIGNMENT_POTENTIAL_COLUMN = "alignment_potential"


# ---- pure picks -------------------------------------------------------------------------------------------------


def _ranked(values: np.ndarray, descending: bool = False) -> np.ndarray:
    """Indices of the non-NaN values in a stable sort (ascending unless ``descending``)."""
    order = np.argsort(-values if descending else values, kind="stable")  # NaN sorts last either way
    return order[~np.isnan(values[order])]


def select_medium_band(score, count: int) -> np.ndarray:
    """The ``count`` pairs around the median of ``score``: drop ``(m - count) // 2`` from the bottom, the rest from
    the top, of the ``m`` non-NaN scores. Returned in ascending score order, shape ``(min(count, m),)`` int64.

    Zhang et al. (ICLR 2026) find that medium-influence pairs, not the highest, help most; this is the budgeted
    pick of that band on one score.
    """
    ranked = _ranked(_as_array(score))
    count = min(count, ranked.size)
    start = (ranked.size - count) // 2
    return ranked[start:start + count].astype(np.int64)


def percentile_ranks(score) -> np.ndarray:
    """Mid-rank percentiles in (0, 1) of the non-NaN values, ``(rank - 0.5) / m`` with ties at their mean rank; NaN stays."""
    series = pd.Series(_as_array(score))
    return ((series.rank(method="average") - 0.5) / series.notna().sum()).to_numpy(dtype=np.float64)


def select_joint_medium_band(scores, count: int) -> np.ndarray:
    """The ``count`` pairs closest to the middle of every score at once, shape ``(<= count,)`` int64.

    Each pair's distance is ``max_j |percentile_j - 0.5|`` over the C columns of ``scores`` (``(n_pairs, C)`` or
    a list of C arrays); the pairs with the smallest distances are the tightest central band that is central in
    *all* columns: for LossDiff and IRM, Zhang et al.'s combined rule, which offsets the two proxies' different
    errors. Ties keep index order; a pair with NaN in any column is never selected. Returned closest first.
    """
    columns = [_as_array(column) for column in (scores.T if isinstance(scores, np.ndarray) else scores)]
    if not columns:
        raise UserError("a joint medium band needs at least one score column")
    distance = np.max([np.abs(percentile_ranks(column) - 0.5) for column in columns], axis=0)
    return _ranked(distance)[:count].astype(np.int64)


def select_highest(score, count: int) -> np.ndarray:
    """The ``count`` highest scores, best first, int64 (stable; NaN never selected).

    Chosen-only quality is this on the chosen response's reward alone, rejected quality ignored.
    """
    return _ranked(_as_array(score), descending=True)[:count].astype(np.int64)


def fold_assignment(n_pairs: int, n_folds: int = 2, seed: int = 42) -> np.ndarray:
    """Fold of each pair, ``(n_pairs,)`` int64 in ``[0, n_folds)``: Selective DPO's disjoint validation folds.

    As Gao et al.'s ``run_half.py`` (2 folds): ``np.random.permutation`` under ``seed`` (their ``set_seed`` seeds
    numpy's global generator, i.e. ``RandomState(seed)``), fold j = positions ``[j*n//K, (j+1)*n//K)`` of it. The
    proxy of fold j trains on every other fold and scores fold j: each pair's validation loss comes from a model
    that never trained on it.
    """
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise UserError(f"n_folds must be a whole number >= 2, got {n_folds!r}")
    if n_pairs < n_folds:
        raise UserError(f"cannot split {n_pairs} pairs into {n_folds} folds")
    order = np.random.RandomState(seed).permutation(n_pairs)
    folds = np.empty(n_pairs, dtype=np.int64)
    for fold in range(n_folds):
        folds[order[fold * n_pairs // n_folds:(fold + 1) * n_pairs // n_folds]] = fold
    return folds


def learning_order(validation_losses) -> np.ndarray:
    """Selective DPO's difficulty of each pair: the mean of its validation losses (nats), ``(n_pairs,)``.

    ``validation_losses`` is ``(n_pairs, C)``: one column per (seed, evaluation step) of the fold proxies, each
    pair's loss under the proxy that did not train on it. NaN cells are skipped, as pandas' ``mean(axis=1)`` in
    their ``make_curricula.py``; a pair with no loss at all stays NaN. Lower is easier.
    """
    losses = np.asarray(validation_losses, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError(f"expected validation losses of shape (n_pairs, C), got {losses.shape}")
    return pd.DataFrame(losses).mean(axis=1).to_numpy(dtype=np.float64)


def select_easy_to_hard(order, tau: float = SELECTIVE_DPO_TAU) -> np.ndarray:
    """Selective DPO's subset: pairs easy to hard by ``order``, the hardest share ``tau`` dropped, int64 indices.

    Keeps ``floor(n * (1 - tau))`` of the ``n`` pairs that have an order, as ``select(range(int(len * 0.5)))``
    after a stable ascending sort in ``run_selective_dpo.py``. The result is also the training order.
    """
    if not 0.0 <= tau < 1.0:
        raise UserError(f"tau (the hardest share dropped) must be in [0, 1), got {tau!r}")
    ranked = _ranked(_as_array(order))
    return ranked[:math.floor(ranked.size * (1.0 - tau) + 1e-9)].astype(np.int64)


# ---- rules over a margins table ---------------------------------------------------------------------------------


def check_score_column(table: pd.DataFrame, name: str) -> None:
    """Fail with a message that says what to do when a score column is missing, not numeric or empty."""
    if name not in table.columns:
        raise UserError(f"score column '{name}' is not in the margins table (have: {', '.join(map(str, table.columns))})")
    if not pd.api.types.is_numeric_dtype(table[name]):
        raise UserError(f"score column '{name}' is not numeric")
    if table[name].isna().all():
        raise UserError(f"score column '{name}' has no values: score that margin source first")


def score_columns(rule: str, params: dict) -> list[str]:
    """The table columns a hypothesis rule ranks by (``score`` or ``scores`` param, else its default)."""
    if rule == "alignment_potential":
        return [ALIGNMENT_POTENTIAL_COLUMN]
    if rule in ("lossdiff_irm", "bees_k"):
        columns = list(params.get("scores", DEFAULT_COLUMNS[rule]))
        if not columns or not all(isinstance(column, str) for column in columns):
            raise UserError(f"rule '{rule}': scores must be a non-empty list of column names, got {columns!r}")
        return columns
    return [params.get("score", DEFAULT_COLUMNS[rule])]


def hypothesis_scores(rule: str, table: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The table with the rule's score columns checked, and computed where the rule computes its own.

    Scores are computed over the whole table, before any ``where`` filter, because z-scores (alignment potential)
    and bounds (BeeS) are dataset-wide in the reference code.
    """
    if rule == "alignment_potential":
        needed = ("external_margin", "ref_chosen_logps", "ref_rejected_logps", "chosen_tokens", "rejected_tokens")
        for column in needed:
            check_score_column(table, column)
        table = table.copy()
        table[ALIGNMENT_POTENTIAL_COLUMN] = alignment_potential(
            table.external_margin.to_numpy(float),
            (table.ref_chosen_logps / table.chosen_tokens).to_numpy(float),
            (table.ref_rejected_logps / table.rejected_tokens).to_numpy(float),
            weight=float(params.get("weight", 1.0)),
        )
        return table
    columns = score_columns(rule, params)
    for column in columns:
        check_score_column(table, column)
    if rule == "bees_k":
        table = table.copy()
        table["bees_k"] = bees([table[column].to_numpy(float) for column in columns])
    return table


def pick(rule: str, table: pd.DataFrame, params: dict, count: int | None) -> np.ndarray:
    """Row indices of ``table`` (already scored and filtered) that the hypothesis rule keeps, in its order."""
    columns = score_columns(rule, params)
    values = table[columns[0]].to_numpy(dtype=np.float64)
    if rule == "selective_dpo":
        return select_easy_to_hard(values, float(params.get("tau", SELECTIVE_DPO_TAU)))
    if rule == "smallest_gap":
        return _ranked(values)[:count].astype(np.int64)
    if rule in ("alignment_potential", "chosen_quality"):
        return select_highest(values, count)
    if rule == "bees_k":
        return select_highest(table["bees_k"].to_numpy(dtype=np.float64), count)
    if rule == "medium_band":
        return select_medium_band(values, count)
    return select_joint_medium_band([table[column].to_numpy(dtype=np.float64) for column in columns], count)
