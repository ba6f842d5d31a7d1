"""Preference pairs: load, normalise and validate any common file shape into the pairs DataFrame; reply lengths."""

from dpo_engine.data.pairs import (
    COLUMN_ALIASES,
    FIELDS,
    WARNING_CODES,
    Issue,
    LoadedPairs,
    ValidationReport,
    bundled_datasets,
    fingerprint,
    load_pairs,
    save_pairs,
)

__all__ = [
    "COLUMN_ALIASES", "FIELDS", "WARNING_CODES", "Issue", "LoadedPairs", "ValidationReport",
    "bundled_datasets", "fingerprint", "load_pairs", "save_pairs",
]
