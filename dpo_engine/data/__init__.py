"""Preference pairs: load, normalise and validate any common file shape into the pairs DataFrame; reply lengths."""

from dpo_engine.data.pairs import (
    COLUMN_ALIASES,
    FIELDS,
    WARNING_CODES,
    Issue,
    LoadedPairs,
    SourceCheck,
    ValidationReport,
    bundled_datasets,
    fingerprint,
    load_pairs,
    save_pairs,
    source_columns,
    validate_source,
)
from dpo_engine.data.schema import PAIRWISE_FIELDS, PAIRWISE_PRESETS, PairwiseLabel

__all__ = [
    "COLUMN_ALIASES", "FIELDS", "PAIRWISE_FIELDS", "PAIRWISE_PRESETS", "WARNING_CODES", "Issue", "LoadedPairs",
    "PairwiseLabel", "SourceCheck", "ValidationReport", "bundled_datasets", "fingerprint", "load_pairs",
    "save_pairs", "source_columns", "validate_source",
]
