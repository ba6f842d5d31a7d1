"""What validation finds: located issues, the report, and the row checks that never drop a row.

Problems that make the data unusable raise ``DataError`` (via `located_error`) naming file, row (0-based data row)
and column. Soft problems are `Issue`s listed in the row's ``warnings`` and in ``report.warnings``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Hashable

import numpy as np

from dpo_engine.errors import DataError

WARNING_CODES = ("empty_response", "identical_responses", "bad_score", "duplicate_pair", "very_long", "tie")


@dataclass(frozen=True)
class Issue:
    """One problem found in the data, located by file, 0-based row and source column."""

    file: str | None
    row: int | None
    column: str | None
    code: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ValidationReport:
    """What loading found: fatal ``errors`` (only in a failed load) and per-row ``warnings``."""

    n_pairs: int
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    @classmethod
    def from_error(cls, error: DataError) -> "ValidationReport":
        """The report of a load that failed with ``error``: no pairs, one error."""
        issue = Issue(error.file, error.row, error.column, getattr(error, "code", "data_error"), error.detail)
        return cls(n_pairs=0, errors=[issue])

    def warning_counts(self) -> dict[str, int]:
        """Number of warnings per code, in ``WARNING_CODES`` order, codes that occur only."""
        counts = Counter(issue.code for issue in self.warnings)
        return {code: counts[code] for code in WARNING_CODES if counts[code]}

    def to_dict(self) -> dict:
        """The ``validate --json`` payload."""
        return {
            "n_pairs": self.n_pairs,
            "errors": [issue.to_dict() for issue in self.errors],
            "warnings": [issue.to_dict() for issue in self.warnings],
        }


def located_error(
    code: str, message: str, *, file: str | None, row: int | None = None, column: str | None = None
) -> DataError:
    """A DataError carrying a machine-readable ``code`` for the validation report."""
    error = DataError(message, file=file, row=row, column=column)
    error.code = code
    return error


def row_issues(
    index: int, texts: dict[str, tuple[str, str]], label: str, max_chars: int
) -> list[Issue]:
    """``empty_response``, ``identical_responses`` and ``very_long`` issues of one pair.

    ``texts`` maps "prompt", "chosen", "rejected" to (source column, text); the prompt is not checked for emptiness.
    """
    chosen_column, chosen = texts["chosen"]
    rejected_column, rejected = texts["rejected"]
    issues = []
    for column, text in (texts["chosen"], texts["rejected"]):
        if not text:
            issues.append(Issue(label, index, column, "empty_response", "the response is empty"))
    if chosen == rejected:
        message = "chosen and rejected are the same text, so the pair carries no preference"
        issues.append(Issue(label, index, f"{chosen_column},{rejected_column}", "identical_responses", message))
    for column, text in texts.values():
        if len(text) > max_chars:
            message = f"{len(text)} characters, more than max_chars={max_chars}"
            issues.append(Issue(label, index, column, "very_long", message))
    return issues


def unique_ids(
    ids: list[str], content_keys: list[Hashable], label: str, *, rows: list[int] | None = None,
    taken: set[str] | None = None,
) -> tuple[list[str], list[Issue]]:
    """Unique pair ids for ``ids`` (in row order) and the ``duplicate_pair`` issues.

    The first row with an id keeps it; later rows with the same id get ``<id>-dup1``, ``-dup2``, ... in file
    order, skipping names already ``taken`` (default: ``ids``). Rows whose content (``content_keys``: equal
    exactly when prompt, chosen and rejected are) repeats an earlier row under another id are flagged too. Ids of
    non-repeated rows therefore do not depend on row order. ``rows``: the data rows ``ids`` belong to (default
    0, 1, ...), so the rows that repeat something can be passed on their own.
    """
    taken = set(ids) if taken is None else taken
    rows = range(len(ids)) if rows is None else rows
    first_row_of_id: dict[str, int] = {}
    first_row_of_content: dict[Hashable, int] = {}
    unique, issues = list(ids), []
    for index, (row, base, content_key) in enumerate(zip(rows, ids, content_keys)):
        if base in first_row_of_id:
            number = 1
            while f"{base}-dup{number}" in taken:
                number += 1
            unique[index] = f"{base}-dup{number}"
            taken.add(unique[index])
            message = f"pair id '{base}' repeats row {first_row_of_id[base]}; this row is kept as '{unique[index]}'"
            issues.append(Issue(label, row, "pair_id", "duplicate_pair", message))
        elif content_key in first_row_of_content:
            message = f"same prompt, chosen and rejected as row {first_row_of_content[content_key]}"
            issues.append(Issue(label, row, "pair_id", "duplicate_pair", message))
        first_row_of_id.setdefault(base, row)
        first_row_of_content.setdefault(content_key, row)
    return unique, issues


def _repeated(keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the entries of ``keys`` (shape ``(n,)``) whose value occurs more than once."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


def duplicate_issues(ids: list[str] | None, content_keys: np.ndarray, label: str) -> list[Issue]:
    """The ``duplicate_pair`` issues `unique_ids` gives, from compact inputs (large files are validated this way).

    ``content_keys``: uint64 content hashes, shape ``(n_rows,)``; ``ids``: the rows' ids, or None when every id is
    its content hash (the hash as 16 hex digits). Only rows that share an id or a content hash with another row
    are passed to `unique_ids`, so memory stays proportional to the duplicates.
    """
    suspects = _repeated(content_keys)
    if ids is not None:
        suspects |= _repeated(np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids)))
    rows = np.flatnonzero(suspects).tolist()
    if not rows:
        return []
    keys = content_keys[rows].tolist()
    if ids is None:
        return unique_ids([f"{key:016x}" for key in keys], keys, label, rows=rows)[1]
    return unique_ids([ids[row] for row in rows], keys, label, rows=rows, taken=set(ids))[1]


def warning_codes_by_row(issues: list[Issue], n_rows: int) -> list[str]:
    """Each row's issue codes, ``;``-joined without repeats ("" when clean)."""
    codes_by_row: dict[int, list[str]] = {}
    for issue in issues:
        codes_by_row.setdefault(issue.row, []).append(issue.code)
    return [";".join(dict.fromkeys(codes_by_row.get(row, []))) for row in range(n_rows)]
