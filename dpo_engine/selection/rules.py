"""Choosing which pairs to train on: index rules, threshold masks, and summaries of a selection.

Index rules (pure, ``(n_pairs,)`` array-likes in, numpy int64 indices out):
`select_top_k`, `select_bottom_k`, `select_random`, `select_partition`. `select_threshold` gives a boolean mask
over a table. `select_pairs` runs one named rule over a margins table and returns pair ids: the CLI, the dashboard
and the stored `Selection` all go through it, so a saved ``(rule, params)`` reproduces its ``pair_ids``.

Rules follow docs/methods.md §1.6 (top-k of the fused score) and §1.7 (random, TOP/MID/BOT partitions).
NaN scores are never selected.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.margins.formulas import _as_array, fused_scores
from dpo_engine.selection import hypotheses
from dpo_engine.selection.hypotheses import HYPOTHESIS_PARAMS, HYPOTHESIS_RULES, check_score_column

RULES = ("top_k", "bottom_k", "random", "partition", "threshold", "manual", *HYPOTHESIS_RULES)
PARTS = ("top", "mid", "bot")
DEFAULT_SCORE = "dm_mul"
# The random rule's default seed. Not 42: the warm-up proxy draws its seed subset with seed 42 from the same
# permutation, so random at 42 would be exactly the warm-up pairs, whose implicit margins are in-sample.
DEFAULT_RANDOM_SEED = 20250219
# Rows a scoring proxy trained on (`dpo_engine.training.lossdiff_irm`): never candidates of a rule but manual.
HELD_OUT_COLUMN = "in_validation"
# Parameters each rule accepts in `select_pairs`; anything else is a typo worth reporting.
RULE_PARAMS: dict[str, frozenset[str]] = {
    "top_k": frozenset({"score", "k", "frac", "where"}),
    "bottom_k": frozenset({"score", "k", "frac", "where"}),
    "random": frozenset({"k", "frac", "seed", "where"}),
    "partition": frozenset({"score", "part", "k", "frac", "tau", "seed", "where"}),
    "threshold": frozenset({"where"}),
    "manual": frozenset({"pair_ids"}),
    **HYPOTHESIS_PARAMS,
}
_FUSED_COLUMNS = ("dm_add", "dm_mul", "bees")
_SCORED_RULES = ("top_k", "bottom_k", "partition")
# Numeric columns `selection_summary` compares between the selection and the whole table, when present.
SUMMARY_COLUMNS = (
    "external_margin", "implicit_margin", "dm_add", "dm_mul", "bees",
    "chosen_tokens", "rejected_tokens", "chosen_chars", "rejected_chars",
)


# ---- index rules ------------------------------------------------------------------------------------------------


def _resolve_k(n: int, k: int | None, frac: float | None) -> int:
    """How many pairs to take out of ``n``: exactly one of ``k`` (a count) or ``frac`` (a share of ``n``).

    ``frac`` rounds down, as ``int(select_ratio * len(ds))`` in Huang et al.'s code.
    """
    if (k is None) == (frac is None):
        raise UserError("give exactly one of k (a number of pairs) or frac (a share of the data)")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise UserError(f"k must be a whole number >= 0, got {k!r}")
        return int(k)
    if not 0.0 < frac <= 1.0:
        raise UserError(f"frac must be in (0, 1], got {frac!r}")
    return math.floor(frac * n)


def select_top_k(score, k: int | None = None, frac: float | None = None):
    """Indices of the ``k`` highest scores (or the top ``frac`` share), best first, shape ``(<= k,)`` int64.

    Stable: equal scores keep their original order. NaN is never selected, so fewer than ``k`` come back when
    fewer than ``k`` scores are not NaN.
    """
    values = _as_array(score)
    count = _resolve_k(values.size, k, frac)
    order = np.argsort(-values, kind="stable")  # NaN sorts last
    ranked = order[~np.isnan(values[order])]
    return ranked[:count]


def select_bottom_k(score, k: int | None = None, frac: float | None = None):
    """Indices of the ``k`` lowest scores (or the bottom ``frac`` share), lowest first; stable, NaN never selected."""
    values = _as_array(score)
    count = _resolve_k(values.size, k, frac)
    order = np.argsort(values, kind="stable")  # NaN sorts last
    ranked = order[~np.isnan(values[order])]
    return ranked[:count]


def select_random(n: int, k: int, seed: int = 42) -> np.ndarray:
    """``k`` distinct indices out of ``range(n)``, int64 numpy, in draw order (all ``n`` when ``k >= n``).

    The same draw as the official baseline ``ds.shuffle(seed=42).select(range(k))``: HF datasets shuffles with
    ``np.random.default_rng(seed).permutation(n)``.
    """
    count = _resolve_k(n, k, None)
    return np.random.default_rng(seed).permutation(n)[:count].astype(np.int64)


def select_partition(margin, part: str, k: int, tau: float = 1.0, seed: int = 42):
    """The TOP / MID / BOT baselines of methods.md §1.7 on one margin, int64 indices of shape ``(<= k,)``.

    - ``top``: `select_top_k`; ``bot``: `select_bottom_k` (both in rank order).
    - ``mid``: ``k`` pairs drawn at random (``seed``) from the band ``-tau <= margin <= tau``, returned in index
      order. When the band holds fewer than ``k`` pairs, all of them come back: **fewer than k**, as in the
      official code. tau = 1.0 for external/implicit margins, 0.1 for IFD.
    """
    if part == "top":
        return select_top_k(margin, k=k)
    if part == "bot":
        return select_bottom_k(margin, k=k)
    if part != "mid":
        raise UserError(f"partition part must be one of {', '.join(PARTS)}, got {part!r}")
    if not tau >= 0:
        raise UserError(f"tau must be >= 0, got {tau!r}")
    values = _as_array(margin)
    count = _resolve_k(values.size, k, None)
    band = np.flatnonzero((values >= -tau) & (values <= tau))
    if band.size > count:
        band = np.sort(np.random.default_rng(seed).choice(band, size=count, replace=False))
    return band.astype(np.int64)


def select_threshold(table: pd.DataFrame, rules: dict[str, Sequence[float | None]]) -> np.ndarray:
    """Boolean mask, shape ``(len(table),)``: rows whose every ruled column lies in its ``[low, high]``.

    Bounds are inclusive; ``None`` leaves that side open. A NaN never passes a rule, even a fully open one, so
    ``{"implicit_margin": (None, None)}`` means "has an implicit margin".
    """
    mask = np.ones(len(table), dtype=bool)
    for column, bounds in rules.items():
        if column not in table.columns:
            raise UserError(f"threshold on column '{column}': no such column (have: {', '.join(map(str, table.columns))})")
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise UserError(f"threshold on column '{column}': the column is not numeric")
        if len(bounds) != 2:
            raise UserError(f"threshold on column '{column}': expected (low, high), got {bounds!r}")
        low, high = bounds
        if low is not None and high is not None and low > high:
            raise UserError(f"threshold on column '{column}': low ({low}) is above high ({high})")
        values = table[column].to_numpy(dtype=np.float64)
        keep = ~np.isnan(values)
        if low is not None:
            keep &= values >= low
        if high is not None:
            keep &= values <= high
        mask &= keep
    return mask


# ---- named rules over a margins table ---------------------------------------------------------------------------


def select_pairs(table: pd.DataFrame, rule: str, params: dict) -> list[str]:
    """Run one named rule over a margins table (one row per pair, a ``pair_id`` column) and return pair ids.

    Rules and their ``params`` (defaults in brackets):

    - ``top_k`` / ``bottom_k``: ``score`` [dm_mul], and ``k`` or ``frac``; ids in rank order.
    - ``random``: ``k`` or ``frac``, ``seed`` [`DEFAULT_RANDOM_SEED`, not the warm-up's 42]; ids in draw order.
    - ``partition``: ``score`` [dm_mul], ``part`` [top] (top, mid or bot), ``k`` or ``frac``, ``tau`` [1.0],
      ``seed`` [42]; see `select_partition`.
    - ``threshold``: ``where``; ids in table order.
    - ``manual``: ``pair_ids``, an explicit list; every id must be in the table; ids in the given order.
    - the field's hypotheses (`dpo_engine.selection.hypotheses`): ``smallest_gap`` (``score`` [implicit_margin],
      ascending), ``alignment_potential`` (``weight`` [1.0]), ``medium_band`` (``score``), ``lossdiff_irm``
      (``scores`` [loss_diff, irm]), ``bees_k`` (``scores``: K margin columns), ``chosen_quality`` (``score``
      [chosen_score]), each with ``k`` or ``frac``; ``selective_dpo`` (``score`` [learning_order], ``tau`` [0.5]:
      the hardest share dropped, no k), ids easy to hard.

    Rows with ``in_validation`` true (the validation split a LossDiff-IRM proxy trained on,
    `dpo_engine.training.lossdiff_irm`) are never candidates of any rule but ``manual``.

    Every rule but ``manual`` takes an optional ``where`` ({column: [low, high]}, see `select_threshold`) that
    restricts the candidates first, e.g. BeeS' "both margins > 0". ``frac`` is always a share of the whole table,
    so ``frac=0.1`` asks for 10 % of the data however many pairs pass ``where``. A fused score column (dm_add,
    dm_mul, bees) missing from the table is computed on the fly with `dpo_engine.margins.fused_scores`.
    """
    if rule not in RULES:
        raise UserError(f"unknown selection rule '{rule}' (choose from {', '.join(RULES)})")
    unknown = set(params) - RULE_PARAMS[rule]
    if unknown:
        raise UserError(f"rule '{rule}' does not take {', '.join(sorted(unknown))} (it takes {', '.join(sorted(RULE_PARAMS[rule]))})")
    if "pair_id" not in table.columns:
        raise UserError("the margins table has no 'pair_id' column")
    if rule == "manual":
        return _manual_ids(table, params.get("pair_ids"))
    if rule == "threshold" and not params.get("where"):
        raise UserError("rule 'threshold' needs where: {column: [low, high]}")

    score_name = params.get("score", DEFAULT_SCORE)
    if rule in HYPOTHESIS_RULES:
        table = hypotheses.hypothesis_scores(rule, table, params)
    elif rule in _SCORED_RULES:
        if score_name in _FUSED_COLUMNS and score_name not in table.columns:
            table = fused_scores(table)
        check_score_column(table, score_name)
    n_total = len(table)
    table = _candidates(table, params.get("where"))
    pair_ids = table["pair_id"].astype(str).to_numpy()

    if rule == "threshold":
        return pair_ids.tolist()
    if rule in HYPOTHESIS_RULES:
        # selective_dpo's size is set by tau (the hardest share dropped), not by k or frac
        count = None if rule == "selective_dpo" else _resolve_k(n_total, params.get("k"), params.get("frac"))
        return pair_ids[hypotheses.pick(rule, table, params, count)].tolist()
    count = _resolve_k(n_total, params.get("k"), params.get("frac"))
    if rule == "random":
        return pair_ids[select_random(len(table), count, params.get("seed", DEFAULT_RANDOM_SEED))].tolist()
    score = table[score_name].to_numpy(dtype=np.float64)
    if rule == "top_k":
        indices = select_top_k(score, k=count)
    elif rule == "bottom_k":
        indices = select_bottom_k(score, k=count)
    else:
        indices = select_partition(score, params.get("part", "top"), count, params.get("tau", 1.0), params.get("seed", 42))
    return pair_ids[indices].tolist()


def _candidates(table: pd.DataFrame, where: dict | None) -> pd.DataFrame:
    """The rows a rule may pick: not ``in_validation`` (a scoring proxy trained on them), then inside ``where``."""
    if HELD_OUT_COLUMN in table.columns:
        table = table[~table[HELD_OUT_COLUMN].astype("boolean").fillna(False).to_numpy(dtype=bool)]
    return table[select_threshold(table, where)] if where else table


def _manual_ids(table: pd.DataFrame, pair_ids) -> list[str]:
    """The ``manual`` rule: the given ids, checked against the table."""
    if not pair_ids:
        raise UserError("rule 'manual' needs pair_ids: a non-empty list of pair ids")
    pair_ids = list(dict.fromkeys(str(pair_id) for pair_id in pair_ids))  # drop repeats, keep order
    unknown = set(pair_ids) - set(table["pair_id"].astype(str))
    if unknown:
        raise UserError(f"{len(unknown)} pair ids are not in the margins table, e.g. '{sorted(unknown)[0]}'")
    return pair_ids


def ids_mask(df: pd.DataFrame, pair_ids: Sequence[str]) -> np.ndarray:
    """Boolean mask, shape ``(len(df),)``: the rows of ``df`` (any table with ``pair_id``) whose id is in ``pair_ids``.

    Ids are compared as strings. A Python set lookup per row: pandas' ``isin`` on its string dtype takes about
    ten times longer at 60,000 rows.
    """
    if "pair_id" not in df.columns:
        raise UserError("the table has no 'pair_id' column")
    wanted = {str(pair_id) for pair_id in pair_ids}
    ids = df["pair_id"].astype(str).to_numpy(dtype=object)
    return np.fromiter(map(wanted.__contains__, ids), dtype=bool, count=len(ids))


def filter_by_ids(df: pd.DataFrame, pair_ids: Sequence[str]) -> pd.DataFrame:
    """The rows of ``df`` (any table with ``pair_id``) whose id is in ``pair_ids``, in ``df``'s order and index."""
    return df[ids_mask(df, pair_ids)]


def _finite_or_none(value) -> float | None:
    """A float for display and JSON, None instead of NaN."""
    return float(value) if pd.notna(value) else None


def column_stats(table: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """Mean and median over all rows of each `SUMMARY_COLUMNS` entry of ``table`` that is numeric and has a value.

    Returns ``{column: {"mean", "median"}}`` (NaN skipped): the whole-table half of `selection_summary`, which
    a caller that summarises many selections of one table can compute once and pass as ``overall``.
    """
    stats = {}
    for column in SUMMARY_COLUMNS:
        if column not in table.columns or not pd.api.types.is_numeric_dtype(table[column]) or table[column].isna().all():
            continue
        stats[column] = {"mean": _finite_or_none(table[column].mean()), "median": _finite_or_none(table[column].median())}
    return stats


def margin_correlations(table: pd.DataFrame) -> dict[str, float | None]:
    """Pearson r and Spearman rho between ``external_margin`` and ``implicit_margin`` over the rows that have both.

    Spearman's rho is Pearson's r of the average ranks (ties share the mean of their ranks, as in
    ``scipy.stats.spearmanr``); computed here so that a page showing it does not import scipy (about a second).
    Returns ``{"pearson", "spearman"}``, None where fewer than two rows have both margins or a margin is constant.
    """
    both = table[["external_margin", "implicit_margin"]].dropna()
    external, implicit = both.external_margin, both.implicit_margin
    return {
        "pearson": _finite_or_none(external.corr(implicit)),
        "spearman": _finite_or_none(external.rank().corr(implicit.rank())),
    }


def selection_summary(
    table: pd.DataFrame,
    pair_ids: Sequence[str],
    *,
    selected: np.ndarray | None = None,
    overall: dict[str, dict[str, float | None]] | None = None,
) -> dict:
    """How a selection compares with the whole table.

    Returns ``{"size", "n_total", "share", "missing", "columns"}``: ``size`` is the number of selected pairs
    found in ``table``, ``share = size / n_total``, ``missing`` counts selected ids that are not in ``table`` (a
    selection made on another dataset), and ``columns`` maps each `SUMMARY_COLUMNS` entry that has values to
    ``{"selected_mean", "selected_median", "all_mean", "all_median"}`` (None where there is nothing to average).

    A caller that already has them passes ``selected``, the mask ``ids_mask(table, pair_ids)`` (bool, shape
    ``(len(table),)``), and ``overall``, ``column_stats(table)``; they are used as given, not recomputed.
    """
    if selected is None:
        selected = ids_mask(table, pair_ids)
    if overall is None:
        overall = column_stats(table)
    size = int(selected.sum())
    found_ids = set(table["pair_id"].astype(str).to_numpy(dtype=object)[selected])
    columns = {}
    for column, whole in overall.items():
        values = table[column][selected]
        columns[column] = {
            "selected_mean": _finite_or_none(values.mean()),
            "selected_median": _finite_or_none(values.median()),
            "all_mean": whole["mean"],
            "all_median": whole["median"],
        }
    return {
        "size": size,
        "n_total": len(table),
        "share": size / len(table) if len(table) else 0.0,
        "missing": len({str(pair_id) for pair_id in pair_ids} - found_ids),
        "columns": columns,
    }
