""""Why this pair": one pair's texts, every score it has with its rank under each selector, its data-map position,
lengths and warnings, as one plain record the dashboard renders.

A selector's **rank** of a pair is its position in that selector's order, 1 = picked first (ties share the lowest
rank, as in a leaderboard): a budget of k pairs takes the pair exactly when ``rank <= k``. ``top_percent`` is
``100 * rank / of`` over the ``of`` pairs that have the score. Orders (`SELECTOR_ORDERS`): the largest first for
top-k on a margin or fused score (DM, BeeS, UltraMix's curation) and for alignment potential and chosen-only
quality; the smallest first for the smallest implicit gap (Qi et al.) and Selective DPO's learning order; the
closest to the median first for the medium band (Zhang et al.), on ``|percentile - 0.5|`` (`percentile_ranks`),
and for LossDiff-IRM the largest such distance over both columns.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.selection.hypotheses import hypothesis_scores, percentile_ranks

# (selector label, score column, order): "desc" largest first, "asc" smallest first, "median" closest to the median.
SELECTOR_ORDERS = (
    ("top-k external margin", "external_margin", "desc"),
    ("top-k implicit margin", "implicit_margin", "desc"),
    ("top-k DM-ADD", "dm_add", "desc"),
    ("top-k DM-MUL", "dm_mul", "desc"),
    ("top-k BeeS", "bees", "desc"),
    ("alignment potential (Huang et al.)", "alignment_potential", "desc"),
    ("smallest implicit gap (Qi et al.)", "implicit_margin", "asc"),
    ("smallest difficulty gap (Qi et al.)", "difficulty_gap", "asc"),
    ("medium band of the implicit margin (Zhang et al.)", "implicit_margin", "median"),
    ("chosen-only quality", "chosen_score", "desc"),
    ("Selective DPO easy → hard (Gao et al.)", "learning_order", "asc"),
)
JOINT_MEDIUM = ("LossDiff-IRM medium band (Zhang et al.)", ("loss_diff", "irm"))
# Columns that describe a pair but are no selector's score: shown as lengths or log-probs, never ranked.
NOT_SCORES = frozenset({
    "row", "in_warmup", "in_validation", "chosen_tokens", "rejected_tokens", "chosen_chars", "rejected_chars", "policy_chosen_logps",
    "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "score_chosen", "score_rejected", "length_gap",
    "fold",
})


def selector_rank(values, position: int, order: str) -> tuple[float, int]:
    """``(rank, of)`` of the pair at ``position`` in ``values`` (``(n_pairs,)``) under ``order`` (``"desc"``,
    ``"asc"`` or ``"median"``); rank NaN when its value is NaN, ``of`` counts the non-NaN values."""
    values = np.asarray(values, dtype=np.float64)
    key = {"desc": -values, "asc": values, "median": np.abs(percentile_ranks(values) - 0.5)}[order]
    ranks = pd.Series(key).rank(method="min", na_option="keep").to_numpy()
    return float(ranks[position]), int(np.isfinite(values).sum())


def _rank_row(selector: str, column: str, value: float, rank: float, of: int) -> dict:
    return {"selector": selector, "column": column, "value": value, "rank": rank, "of": of,
            "top_percent": 100.0 * rank / of if of and not math.isnan(rank) else float("nan")}


def selector_ranks(table: pd.DataFrame, position: int) -> list[dict]:
    """The pair at row ``position`` of ``table`` under every selector whose column has values (`SELECTOR_ORDERS`),
    then LossDiff-IRM, then top-k on any other numeric column; each ``{selector, column, value, rank, of,
    top_percent}``."""
    rows, covered = [], set(NOT_SCORES)
    for selector, column, order in SELECTOR_ORDERS:
        covered.add(column)
        if column in table and pd.api.types.is_numeric_dtype(table[column]) and table[column].notna().any():
            rank, of = selector_rank(table[column], position, order)
            rows.append(_rank_row(selector, column, float(table[column].iloc[position]), rank, of))
    label, columns = JOINT_MEDIUM
    covered.update(columns)
    if all(column in table and table[column].notna().any() for column in columns):
        distance = np.max([np.abs(percentile_ranks(table[column]) - 0.5) for column in columns], axis=0)
        rank, of = selector_rank(distance, position, "asc")
        rows.append(_rank_row(label, "+".join(columns), float(distance[position]), rank, of))
    for column in table.columns:
        if column in covered or not pd.api.types.is_numeric_dtype(table[column]) or table[column].dtype == bool:
            continue
        if table[column].notna().any():
            rank, of = selector_rank(table[column], position, "desc")
            rows.append(_rank_row(f"top-k {column}", column, float(table[column].iloc[position]), rank, of))
    return rows


def with_alignment_potential(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its ``alignment_potential`` column (weight 1) when it lacks one and has the inputs."""
    if "alignment_potential" in table:
        return table
    try:
        return hypothesis_scores("alignment_potential", table, {})
    except UserError:  # a missing input column only means this selector is not shown
        return table


def pair_warnings(pair: pd.Series, row: pd.Series, max_length: int | None, max_prompt_length: int | None) -> list[str]:
    """Warning codes of one pair: the data's own (``warnings``), then ``identical_responses``, ``empty_response``,
    ``truncated_at_max_length`` (a response of at least ``max_length - max_prompt_length`` tokens, the budget left
    when the prompt fills its share: probably cut), ``in_warmup`` (its implicit margin is in-sample) and
    ``in_validation`` (LossDiff-IRM's validation model trained on it: no scores, never selected)."""
    codes = [code for code in str(pair.get("warnings") or "").split(";") if code]
    chosen, rejected = str(pair.get("chosen") or ""), str(pair.get("rejected") or "")
    if chosen.strip() == rejected.strip():
        codes.append("identical_responses")
    if not chosen.strip() or not rejected.strip():
        codes.append("empty_response")
    if max_length and max_prompt_length is not None:
        budget = max_length - max_prompt_length
        tokens = [row.get(name) for name in ("chosen_tokens", "rejected_tokens")]
        if any(value is not None and pd.notna(value) and value >= budget for value in tokens):
            codes.append("truncated_at_max_length")
    if bool(row.get("in_warmup", False)):
        codes.append("in_warmup")
    if bool(row.get("in_validation", False)):
        codes.append("in_validation")
    return list(dict.fromkeys(codes))


def _lengths(pair: pd.Series, row: pd.Series) -> dict:
    """Characters from the texts, tokens from the margins table (None when it has none)."""
    def tokens(name):
        value = row.get(f"{name}_tokens")
        return int(value) if value is not None and pd.notna(value) else None

    return {"chosen_chars": len(str(pair.get("chosen") or "")), "rejected_chars": len(str(pair.get("rejected") or "")),
            "chosen_tokens": tokens("chosen"), "rejected_tokens": tokens("rejected")}


def data_map_position(data_map: pd.DataFrame | None, pair_id: str) -> dict | None:
    """The pair's row of a data-map summary (`dpo_engine.margins.data_map.summarize`) as a dict, or None."""
    if data_map is None or data_map.empty:
        return None
    found = data_map[data_map.pair_id.astype(str) == pair_id]
    return None if found.empty else {key: _plain(value) for key, value in found.iloc[0].items()}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def pair_explanation(pair_id: str, pairs: pd.DataFrame, margins_table: pd.DataFrame,
                     data_map: pd.DataFrame | None = None, *, max_length: int | None = None,
                     max_prompt_length: int | None = None) -> dict:
    """Everything about one pair, for the "why this pair" view.

    ``pairs``: the dataset (`dpo_engine.data` columns); ``margins_table``: one row per pair (`margins.table`, any
    extra score columns); ``data_map``: a data-map summary of a run that trained on the pair, or None;
    ``max_length`` / ``max_prompt_length``: the token limits the margins were computed with (the table's sidecar),
    for the truncation warning. Returns ``{pair_id, row, prompt_messages, chosen, rejected, score_chosen,
    score_rejected, ranks: [selector_ranks rows], lengths, warnings: [codes], data_map: dict | None}``.
    ``KeyError`` when ``pair_id`` is in neither table.
    """
    pair_id = str(pair_id)
    text_rows = pairs[pairs.pair_id.astype(str) == pair_id]
    table = with_alignment_potential(margins_table.reset_index(drop=True))
    positions = np.flatnonzero(table.pair_id.astype(str).to_numpy() == pair_id)
    if text_rows.empty and positions.size == 0:
        raise KeyError(pair_id)
    pair = text_rows.iloc[0] if not text_rows.empty else pd.Series(dtype=object)
    row = table.iloc[positions[0]] if positions.size else pd.Series(dtype=object)
    return {
        "pair_id": pair_id,
        "row": _plain(pair.get("row")),
        "prompt_messages": list(pair.get("prompt_messages", [])),
        "chosen": str(pair.get("chosen", "")),
        "rejected": str(pair.get("rejected", "")),
        "score_chosen": _plain(pair.get("score_chosen", float("nan"))),
        "score_rejected": _plain(pair.get("score_rejected", float("nan"))),
        "ranks": selector_ranks(table, int(positions[0])) if positions.size else [],
        "lengths": _lengths(pair, row),
        "warnings": pair_warnings(pair, row, max_length, max_prompt_length),
        "data_map": data_map_position(data_map, pair_id),
    }
