"""The margins table: one row per pair, external and implicit margins, log-probs, lengths and fused scores.

A parquet (or csv) file plus a ``<file>.meta.json`` sidecar saying how it was computed (docs/architecture.md).
No torch here: the dashboard and ``dpo-engine select`` read tables without loading a model stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.files import atomic_write_json, read_json
from dpo_engine.margins import formulas as margin_math
from dpo_engine.timestamps import utc_now_iso

IMPLICIT_COLUMNS = [
    "implicit_margin", "policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
    "chosen_tokens", "rejected_tokens",
]
# Out-of-fold scoring (`dpo_engine.training.crossfit`, `dpo_engine.training.selective_dpo`): which fold a pair is in,
# and which fold's proxy scored it. A table with a fold column has no in-sample implicit margin.
FOLD_COLUMN = "crossfit_fold"
SCORER_COLUMN = "scored_by_fold"


def build_margins_table(pairs: pd.DataFrame, external: pd.DataFrame | None, implicit: pd.DataFrame | None,
                        warmup_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Join external and implicit margins on ``pair_id``; add lengths, DM-ADD, DM-MUL, BeeS and alignment potential.

    ``external``: ``pair_id, external_margin``; ``implicit``: ``pair_id`` + ``IMPLICIT_COLUMNS``. A missing source
    gives NaN columns. Rows follow ``pairs``. Alignment potential (Huang et al., methods §6) uses the per-token
    log-probs of the model about to be trained, i.e. the reference. ``warmup_ids``, the pairs the implicit margin's
    proxy trained on, fill the ``in_warmup`` column (see `mark_warmup`). Any further columns of ``implicit`` (the
    folds of cross-fitted margins, Selective DPO's validation losses and ``learning_order``, LossDiff-IRM's
    ``loss_diff``, ``irm``, ``val_implicit_margin`` and ``in_validation``) are carried over.
    """
    table = pd.DataFrame({"pair_id": pairs.pair_id.to_numpy()})
    table["external_margin"] = np.nan if external is None else table.pair_id.map(external.set_index("pair_id").external_margin)
    indexed = None if implicit is None else implicit.set_index("pair_id")
    for column in IMPLICIT_COLUMNS:
        table[column] = np.nan if indexed is None else table.pair_id.map(indexed[column])
    extra = [] if indexed is None else [column for column in indexed.columns if column not in IMPLICIT_COLUMNS]
    table["chosen_chars"] = pairs.chosen.str.len().to_numpy()
    table["rejected_chars"] = pairs.rejected.str.len().to_numpy()
    table = margin_math.fused_scores(table)
    if table[["external_margin", "ref_chosen_logps", "ref_rejected_logps"]].notna().all(axis=None):
        table["alignment_potential"] = margin_math.alignment_potential(
            table.external_margin.to_numpy(float),
            (table.ref_chosen_logps / table.chosen_tokens).to_numpy(float),
            (table.ref_rejected_logps / table.rejected_tokens).to_numpy(float),
        )
    else:
        table["alignment_potential"] = np.nan
    for column in extra:
        table[column] = table.pair_id.map(indexed[column]).to_numpy()
    return mark_warmup(table, warmup_ids or [])


def mark_warmup(table: pd.DataFrame, warmup_ids: Sequence[str]) -> pd.DataFrame:
    """A copy of ``table`` with ``in_warmup`` (bool): the pair is in the warm-up proxy's training subset.

    Those pairs' implicit margins are in-sample: on the bundled UltraFeedback table the 120 warm-up pairs have a
    mean implicit margin of 2.11 against 0.12 for the other 1,080, so any rule that ranks by the implicit margin
    over-picks them (docs/study-dm-small.md). Cross-fitted margins (`dpo_engine.training.crossfit`) have none.
    """
    marked = table.copy()
    wanted = {str(pair_id) for pair_id in warmup_ids}
    marked["in_warmup"] = marked.pair_id.astype(str).map(wanted.__contains__).astype(bool)
    return marked


def save_margins_table(table: pd.DataFrame, path: str | Path, meta: dict) -> Path:
    """Write the table (parquet or csv by suffix) and its ``<file>.meta.json`` sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path, index=False)
    meta = {"created": utc_now_iso(), "n_pairs": len(table), **meta}
    atomic_write_json(meta_path(path), meta)
    return path


def load_margins_table(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a margins table (``pair_id`` as strings) and its sidecar (empty dict when there is none)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"margins table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pd.read_parquet(path)
    elif suffix == ".csv":
        table = pd.read_csv(path, dtype={"pair_id": str})  # ids like "001" must stay strings
    else:
        raise UserError(f"margins table {path}: expected a .parquet or .csv file")
    if "pair_id" not in table.columns:
        raise UserError(f"margins table {path} has no 'pair_id' column")
    table["pair_id"] = table["pair_id"].astype(str)
    try:
        meta = read_json(meta_path(path), {})
    except ValueError as error:
        raise UserError(f"sidecar {meta_path(path)} is not valid JSON: {error}") from None
    return table, meta if isinstance(meta, dict) else {}


def meta_path(path: str | Path) -> Path:
    """``margins.parquet`` -> ``margins.parquet.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")
