"""Preference pairs from scored samples: best vs worst per prompt (the paper's online setting), or every pair.

Pure pandas. Input: one row per sampled answer, ``prompt_id, sample, instruction, output, score`` (score in the
scorer's units, higher = better). A pair whose two scores differ by at most ``tie_tolerance``, or whose two texts
are identical, is a tie: it carries no preference, so it is dropped and reported. An answer without a score (NaN:
the scorer failed on it) takes part in no pair.
"""

from __future__ import annotations

from itertools import combinations

import pandas as pd

PAIR_RECORD_COLUMNS = ["id", "prompt_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected",
                       "chosen_sample", "rejected_sample"]
TIE_COLUMNS = ["prompt_id", "sample_a", "sample_b", "score_a", "score_b", "reason"]


def build_pairs(scored: pd.DataFrame, pairing: str = "best_vs_worst",
                tie_tolerance: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(pairs, ties)`` from scored samples.

    ``pairing="best_vs_worst"``: per prompt, the highest-scored answer (chosen) against the lowest (rejected); the
    first sample wins equal scores. ``"all_pairs"``: every two answers of a prompt, the higher-scored one chosen.
    ``pairs`` has ``PAIR_RECORD_COLUMNS`` (``id`` = ``<prompt_id>:<chosen sample>>``<rejected sample>``), one row
    per pair, prompts in input order; ``ties`` has ``TIE_COLUMNS``, one row per dropped candidate pair.
    """
    pair_rows, tie_rows = [], []
    for prompt_id, group in scored.groupby("prompt_id", sort=False):
        samples = group[group.score.notna()].sort_values("sample", kind="stable")
        if len(samples) < 2:
            tie_rows.append([prompt_id, -1, -1, float("nan"), float("nan"), "fewer than two scored answers"])
            continue
        if pairing == "best_vs_worst":
            ranked = samples.sort_values("score", ascending=False, kind="stable")
            candidates = [(ranked.iloc[0], ranked.iloc[-1])]
        else:
            candidates = [_ordered(a, b) for (_, a), (_, b) in combinations(samples.iterrows(), 2)]
        for chosen, rejected in candidates:
            reason = _tie_reason(chosen, rejected, tie_tolerance)
            if reason:
                tie_rows.append([prompt_id, int(chosen["sample"]), int(rejected["sample"]), float(chosen["score"]),
                                 float(rejected["score"]), reason])
                continue
            pair_rows.append([
                f"{prompt_id}:{int(chosen['sample'])}>{int(rejected['sample'])}", prompt_id, chosen["instruction"],
                chosen["output"], rejected["output"], float(chosen["score"]), float(rejected["score"]),
                int(chosen["sample"]), int(rejected["sample"]),
            ])
    return pd.DataFrame(pair_rows, columns=PAIR_RECORD_COLUMNS), pd.DataFrame(tie_rows, columns=TIE_COLUMNS)


def _ordered(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``(higher-scored, lower-scored)``; the earlier sample first when equal."""
    return (b, a) if b["score"] > a["score"] else (a, b)


def _tie_reason(chosen: pd.Series, rejected: pd.Series, tie_tolerance: float) -> str:
    if chosen["output"] == rejected["output"]:
        return "identical answers"
    if chosen["score"] - rejected["score"] <= tie_tolerance:
        return f"score difference {chosen['score'] - rejected['score']:.4g} <= tie_tolerance {tie_tolerance:g}"
    return ""
