"""Per-pair training inputs from a config: loss weights, MixDPO's SFT routing and the curriculum order.

Their columns come from ``config.pair_scores`` (a margins table, joined on ``pair_id``) or, without one, from the
subset file itself, row for row (``load_pairs`` keeps every row, in order). Every problem is a ``ConfigError``
naming the config field, and the file and row where a value is bad. ``config`` is a
`dpo_engine.training.config.TrainConfig`; not imported here, because its ``validate()`` calls this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dpo_engine.errors import ConfigError, UserError
from dpo_engine.training.curriculum import curriculum_order


@dataclass
class PairInputs:
    """Per-pair arrays aligned with ``pairs`` (already in training order); None where the config asks for none."""

    pairs: pd.DataFrame
    weight: np.ndarray | None = None  # (n_pairs,) float64, >= 0
    use_sft: np.ndarray | None = None  # (n_pairs,) bool
    sequential: bool = False  # True when ``pairs`` is in curriculum order and must not be shuffled


def prepare_pair_inputs(config, pairs: pd.DataFrame) -> PairInputs:
    """``pairs`` reordered by the curriculum (if any) and the per-pair weights and SFT routing of ``config``."""
    from dpo_engine.losses.functions import madpo_weights

    wanted = {
        name: getattr(config, name)
        for name in ("weight_column", "madpo_margin_column", "sft_margin_column", "curriculum_column")
        if getattr(config, name)
    }
    if not wanted:
        return PairInputs(pairs)
    columns = _read_columns(config, pairs, wanted)
    inputs = PairInputs(pairs)
    if "weight_column" in columns:
        inputs.weight = _checked_weights(columns["weight_column"], config, wanted["weight_column"])
    if "madpo_margin_column" in columns:
        inputs.weight = madpo_weights(columns["madpo_margin_column"], strength=config.madpo_strength,
                                      scale=config.madpo_scale).numpy()
    if "sft_margin_column" in columns:
        inputs.use_sft = columns["sft_margin_column"] < config.sft_margin_threshold  # NaN: no margin, no SFT
    if "curriculum_column" in columns:
        order = curriculum_order(columns["curriculum_column"], descending=config.curriculum_descending)
        inputs.pairs = pairs.iloc[order].reset_index(drop=True)
        inputs.weight = None if inputs.weight is None else inputs.weight[order]
        inputs.use_sft = None if inputs.use_sft is None else inputs.use_sft[order]
        inputs.sequential = True
    return inputs


def _read_columns(config, pairs: pd.DataFrame, wanted: dict[str, str]) -> dict[str, np.ndarray]:
    """``{config field: (n_pairs,) float64}`` for each named column, from the scores table or the subset file."""
    source_field = "pair_scores" if config.pair_scores else "subset"
    source = Path(config.pair_scores or config.subset).expanduser()
    table = _read_table(source, source_field)
    if config.pair_scores:
        if "pair_id" not in table.columns:
            raise ConfigError("pair_scores", f"{source} has no 'pair_id' column to join the subset on")
        table = table.assign(pair_id=table["pair_id"].astype(str)).drop_duplicates("pair_id").set_index("pair_id")
        missing = sorted(set(pairs.pair_id.astype(str)) - set(table.index))
        if missing:
            raise ConfigError("pair_scores", f"{source} has no row for {len(missing)} subset pairs, e.g. '{missing[0]}'")
        table = table.loc[pairs.pair_id.astype(str).to_numpy()].reset_index()
    elif len(table) != len(pairs):
        raise ConfigError("subset", f"{source} has {len(table)} rows but {len(pairs)} pairs were loaded from it")
    columns = {}
    for field_name, column in wanted.items():
        if column not in table.columns:
            raise ConfigError(field_name, f"column '{column}' is not in {source} (have: {', '.join(map(str, table.columns))})")
        values = pd.to_numeric(table[column], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() & table[column].notna().to_numpy())
        if bad.size:
            raise ConfigError(field_name, f"file {source}, row {bad[0]}, column '{column}': "
                                          f"{table[column].iloc[bad[0]]!r} is not a number")
        columns[field_name] = values.to_numpy(dtype=np.float64)
    return columns


def _read_table(path: Path, field_name: str) -> pd.DataFrame:
    """A jsonl, json, csv or parquet file as a DataFrame (``pair_id`` kept as text)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".csv":
            return pd.read_csv(path, dtype={"pair_id": str})
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype={"pair_id": str})
    except (OSError, ValueError, UserError) as error:
        raise ConfigError(field_name, f"cannot read {path}: {error}") from None
    raise ConfigError(field_name, f"{path}: per-pair columns are read from .jsonl, .json, .csv or .parquet files")


def _checked_weights(weights: np.ndarray, config, column: str) -> np.ndarray:
    """Weights must be finite and >= 0, and not all 0."""
    source = config.pair_scores or config.subset
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise ConfigError("weight_column", f"file {source}, row {bad[0]}, column '{column}': weight {weights[bad[0]]!r} "
                                           "must be a finite number >= 0")
    if not weights.any():
        raise ConfigError("weight_column", f"column '{column}' of {source}: every weight is 0")
    return weights
