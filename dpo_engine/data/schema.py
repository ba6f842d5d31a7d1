"""Schema: which source column holds each field, by mapping or by common names, and pairwise-with-label data.

Two shapes of row are understood:

- **chosen / rejected**: a response column for each side (``FIELDS``; names tried in ``COLUMN_ALIASES`` order);
- **pairwise with a label**: two response columns and a label saying which is preferred (`PairwiseLabel`).
  Mapped with the fields ``response_a``, ``response_b``, ``label`` and ``first_preferred``: the label value that
  means ``response_a`` is preferred (any other value means ``response_b``), or ``signed`` for a signed preference
  strength where a negative value prefers ``response_a``, a positive one ``response_b``, ``|value|`` is stored as
  the pair's external margin (``score_chosen = |value|``, ``score_rejected = 0``) and 0 is a tie, kept and flagged
  ``tie`` with ``response_a`` as chosen. Known Hub layouts (``PAIRWISE_PRESETS``) are detected by their columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from dpo_engine.data.report import located_error

FIELDS = ("prompt", "system", "chosen", "rejected", "score_chosen", "score_rejected", "id")
PAIRWISE_FIELDS = ("response_a", "response_b", "label", "first_preferred")
SIGNED = "signed"
# Column names tried, in order, for each field when no mapping is given. "prompt_messages" comes first so that
# a pairs DataFrame written as it is (where "prompt" is only display text) reloads without loss.
COLUMN_ALIASES = {
    "prompt": ("prompt_messages", "prompt", "instruction", "question", "history", "context"),
    "system": ("system", "system_prompt"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
    "score_chosen": ("score_chosen", "chosen_score", "chosen-rating", "chosen_rating", "rating_chosen"),
    "score_rejected": ("score_rejected", "rejected_score", "rejected-rating", "rejected_rating", "rating_rejected"),
    "id": ("id", "pair_id"),
}


@dataclass(frozen=True)
class PairwiseLabel:
    """Two response columns and a label column; ``first_preferred`` is the label value meaning ``response_a`` is
    preferred, or ``SIGNED`` (negative prefers ``response_a``; ``|value|`` is the preference strength)."""

    response_a: str
    response_b: str
    label: str
    first_preferred: str

    def orient(self, record: dict, *, file: str, row: int) -> tuple[str, str, float | None]:
        """(chosen column, rejected column, strength or None) for one row; strength 0 is a tie."""
        value = record.get(self.label)
        if self.first_preferred == SIGNED:
            strength = _number(value)
            if strength is None:
                message = f"the preference strength must be a number (negative: '{self.response_a}' preferred), " \
                    f"got {value!r}"
                raise located_error("bad_label", message, file=file, row=row, column=self.label)
            first = strength <= 0
            return (*self._sides(first), abs(strength))
        text = label_text(value)
        if text is None:
            message = f"the label is empty; it must say which of '{self.response_a}' and '{self.response_b}' is preferred"
            raise located_error("bad_label", message, file=file, row=row, column=self.label)
        return (*self._sides(text == self.first_preferred), None)

    def _sides(self, first: bool) -> tuple[str, str]:
        return (self.response_a, self.response_b) if first else (self.response_b, self.response_a)


PAIRWISE_PRESETS = {
    "PKU-SafeRLHF": PairwiseLabel("response_0", "response_1", "better_response_id", "0"),
    "SHP": PairwiseLabel("human_ref_A", "human_ref_B", "labels", "1"),
    "HelpSteer3": PairwiseLabel("response1", "response2", "overall_preference", SIGNED),
}


@dataclass(frozen=True)
class ColumnMapping:
    """Field -> source column (None when absent), and the pairwise label when the data has one."""

    fields: dict[str, str | None]
    pairwise: PairwiseLabel | None = None

    def used(self) -> dict[str, str]:
        """The fields that were found, as field -> column (pairwise fields included)."""
        used = {name: column for name, column in self.fields.items() if column is not None}
        if self.pairwise is not None:
            used.pop("chosen", None)
            used.pop("rejected", None)
            pairwise = self.pairwise
            used.update(response_a=pairwise.response_a, response_b=pairwise.response_b, label=pairwise.label,
                        first_preferred=pairwise.first_preferred)
        return used

    def source_columns(self) -> set[str]:
        """Every source column the mapping reads."""
        columns = {column for name, column in self.used().items() if name != "first_preferred"}
        return columns


def label_text(value: Any) -> str | None:
    """A label or id cell as text (``1.0`` -> ``"1"``, as CSV and parquet disagree on types); None when empty."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip() if isinstance(value, str) else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def resolve_columns(found: list[str], columns: Mapping[str, str] | None, label: str) -> ColumnMapping:
    """The mapping for source columns ``found``: ``columns`` where given, names from ``COLUMN_ALIASES`` otherwise.

    Mapped columns must exist. Either chosen and rejected are found, or a pairwise label is mapped or detected.
    """
    columns = {name: str(column).strip() for name, column in (columns or {}).items() if column and str(column).strip()}
    unknown = sorted(set(columns) - set(FIELDS) - set(PAIRWISE_FIELDS))
    if unknown:
        message = f"unknown field(s) in column mapping: {', '.join(unknown)}; use {', '.join(FIELDS + PAIRWISE_FIELDS)}"
        raise located_error("bad_mapping", message, file=label)
    found_text = ", ".join(found)
    for name, column in columns.items():
        if name != "first_preferred" and column not in found:
            message = f"mapped column for {name} not found (columns found: {found_text})"
            raise located_error("missing_column", message, file=label, column=column)
    fields = {
        name: columns.get(name) or next((alias for alias in COLUMN_ALIASES[name] if alias in found), None)
        for name in FIELDS
    }
    pairwise = _pairwise(columns, found, label)
    if pairwise is None and (fields["chosen"] is None or fields["rejected"] is None) and not (
        "chosen" in columns or "rejected" in columns
    ):
        pairwise = next((preset for preset in PAIRWISE_PRESETS.values() if _preset_fits(preset, found)), None)
    if pairwise is None:
        for name in ("chosen", "rejected"):
            if fields[name] is None:
                message = (
                    f"missing required column (columns found: {found_text or 'none'}); say which column holds the "
                    f"{name} response (--{name}-col on the command line, the column drop-downs on the Data page), "
                    "or for two responses and a label give response_a, response_b, label and first_preferred"
                )
                raise located_error("missing_column", message, file=label, column=name)
    return ColumnMapping(fields=fields, pairwise=pairwise)


def _preset_fits(preset: PairwiseLabel, found: list[str]) -> bool:
    return all(column in found for column in (preset.response_a, preset.response_b, preset.label))


def _pairwise(columns: dict[str, str], found: list[str], label: str) -> PairwiseLabel | None:
    """The pairwise label mapped in ``columns``, or None when none of its fields is given."""
    given = [name for name in PAIRWISE_FIELDS if name in columns]
    if not given:
        return None
    missing = [name for name in PAIRWISE_FIELDS if name not in columns]
    if missing:
        message = (
            f"a pairwise mapping needs all of {', '.join(PAIRWISE_FIELDS)}; missing {', '.join(missing)} "
            f"(first_preferred: the label value meaning response_a is preferred, or '{SIGNED}')"
        )
        raise located_error("bad_mapping", message, file=label, column=missing[0])
    return PairwiseLabel(columns["response_a"], columns["response_b"], columns["label"], columns["first_preferred"])
