"""Where one pair stands among all pairs of a margins table: each margin's value and rank."""

from __future__ import annotations

import pandas as pd

RANKED_COLUMNS = ("external_margin", "implicit_margin", "dm_add", "dm_mul", "bees")


def pair_ranks(table: pd.DataFrame, pair_id: str) -> pd.DataFrame:
    """One row per margin column of ``table`` that has values: ``value``, ``rank`` (1 = the highest, ties share
    the lowest rank, as in a leaderboard), ``of`` (pairs with a value) and ``top_percent`` (``100 * rank / of``).

    A pair without a value in a column gets ``rank`` NaN there. ``KeyError`` if ``pair_id`` is not in ``table``.
    """
    position = table.index[table.pair_id.astype(str) == str(pair_id)]
    if len(position) == 0:
        raise KeyError(pair_id)
    rows = []
    for column in RANKED_COLUMNS:
        if column not in table or table[column].isna().all():
            continue
        ranks = table[column].rank(ascending=False, method="min")
        of = int(table[column].notna().sum())
        rank = ranks.loc[position[0]]
        rows.append({"margin": column, "value": table[column].loc[position[0]], "rank": rank, "of": of,
                     "top_percent": 100.0 * rank / of})
    return pd.DataFrame(rows, columns=["margin", "value", "rank", "of", "top_percent"])
