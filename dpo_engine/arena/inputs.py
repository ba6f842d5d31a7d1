"""The arena's inputs: the pairs file and its margins table, restricted to the pairs both hold."""

from __future__ import annotations

import pandas as pd

from dpo_engine.arena.config import ArenaConfig
from dpo_engine.errors import UserError


def load_inputs(config: ArenaConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(pairs, margins)`` restricted to the pairs present in both; ``UserError`` when they share none."""
    from dpo_engine.data.pairs import load_pairs
    from dpo_engine.margins.table import load_margins_table

    pairs = load_pairs(config.pairs_source).pairs
    margins, _ = load_margins_table(config.margins_source)
    shared = set(pairs.pair_id.astype(str)) & set(margins.pair_id)
    if not shared:
        raise UserError(f"margins table {config.margins_source} shares no pair_id with {config.pairs_source}")
    margins = margins[margins.pair_id.isin(shared)].reset_index(drop=True)
    return pairs[pairs.pair_id.astype(str).isin(shared)].reset_index(drop=True), margins
