"""What validation finds: located issues, the report, and the row checks that never drop a row.

Problems that make a row unusable (a malformed line, a reply that is not text, ...) are collected row by row in
`RowProblems`, so one pass finds every one of them: the load then fails with `InvalidRowsError`, whose report lists
them all (up to ``ISSUE_LIST_CAP``, with counts per kind), or, when asked to, leaves those rows out and records
which. Problems of the whole file (no such file, a missing column) raise ``DataError`` at once (`located_error`).
Every problem names file, row (0-based data row) and column. Soft problems are `Issue`s listed in the row's
``warnings`` and in ``report.warnings``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Hashable, Sequence

import numpy as np

from dpo_engine.errors import DataError

WARNING_CODES = ("empty_prompt", "empty_response", "identical_responses", "bad_score", "duplicate_pair", "very_long", "tie")
# At most this many unusable-row problems are listed in a report; their counts per kind cover all of them.
ISSUE_LIST_CAP = 200


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

    @classmethod
    def from_error(cls, error: DataError) -> "Issue":
        return cls(error.file, error.row, error.column, getattr(error, "code", "data_error"), error.detail)


@dataclass
class ValidationReport:
    """What loading found.

    ``errors``: the fatal problems of a failed load (at most ``ISSUE_LIST_CAP`` listed); ``warnings``: the soft
    per-row problems. ``error_counts``: every unusable-row problem per code, listed or not; ``invalid_rows``: the
    data rows holding one. ``dropped``: True when those rows were left out (``drop_invalid``) and the rest loaded;
    then ``errors`` is empty and ``dropped_issues`` lists their problems. ``n_pairs``: pairs loaded, or in a
    failed load the rows that were usable.
    """

    n_pairs: int
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    error_counts: dict[str, int] = field(default_factory=dict)
    invalid_rows: list[int] = field(default_factory=list)
    dropped: bool = False
    dropped_issues: list[Issue] = field(default_factory=list)

    @classmethod
    def from_error(cls, error: DataError) -> "ValidationReport":
        """The report of a load that failed with ``error``: its own report when it has one, else one error."""
        if isinstance(error, InvalidRowsError):
            return error.report
        issue = Issue.from_error(error)
        return cls(n_pairs=0, errors=[issue], error_counts={issue.code: 1})

    @property
    def droppable(self) -> bool:
        """True for a failed load whose problems are all in rows, with usable rows left: dropping them would load."""
        return bool(self.errors) and bool(self.invalid_rows) and self.n_pairs > 0

    def dropped_provenance(self) -> dict:
        """What a selection or margins table made from these pairs records about the rows left out ({} if none):
        ``dropped_rows`` (data rows, 0-based), ``dropped_count``, ``dropped_reason``."""
        if not self.dropped:
            return {}
        counts = ", ".join(f"{count} {code.replace('_', ' ')}" for code, count in self.error_counts.items())
        return {"dropped_rows": list(self.invalid_rows), "dropped_count": len(self.invalid_rows),
                "dropped_reason": f"rows that cannot be used were left out when loading ({counts})"}

    def warning_counts(self) -> dict[str, int]:
        """Number of warnings per code, in ``WARNING_CODES`` order, codes that occur only."""
        counts = Counter(issue.code for issue in self.warnings)
        return {code: counts[code] for code in WARNING_CODES if counts[code]}

    def to_dict(self) -> dict:
        """The ``validate --json`` payload: ``n_pairs``, ``errors``, ``warnings``; with unusable rows also
        ``error_counts``, ``errors_listed_cap`` and ``invalid_rows``, and when they were dropped ``dropped`` and
        ``dropped_issues``."""
        payload = {"n_pairs": self.n_pairs, "errors": [issue.to_dict() for issue in self.errors]}
        if self.error_counts:
            payload.update(error_counts=dict(self.error_counts), errors_listed_cap=ISSUE_LIST_CAP,
                           invalid_rows=list(self.invalid_rows))
        if self.dropped:
            payload.update(dropped=True, dropped_issues=[issue.to_dict() for issue in self.dropped_issues])
        payload["warnings"] = [issue.to_dict() for issue in self.warnings]
        return payload


@dataclass
class RowProblems:
    """The unusable rows found while reading a source: problems listed up to ``ISSUE_LIST_CAP``, all counted."""

    issues: list[Issue] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    rows: list[int] = field(default_factory=list)

    def add(self, error: DataError) -> None:
        if len(self.issues) < ISSUE_LIST_CAP:
            self.issues.append(Issue.from_error(error))
        self.counts[getattr(error, "code", "data_error")] += 1
        if error.row is not None and (not self.rows or self.rows[-1] != error.row):
            self.rows.append(error.row)

    def report(self, n_pairs: int, warnings: list[Issue], *, dropped: bool) -> ValidationReport:
        """The report of a load that found these problems: failed, or with the rows ``dropped``."""
        return ValidationReport(
            n_pairs=n_pairs, errors=[] if dropped else list(self.issues), warnings=warnings,
            error_counts=dict(self.counts.most_common()), invalid_rows=list(self.rows), dropped=dropped,
            dropped_issues=list(self.issues) if dropped else [],
        )

    def error(self, label: str, report: ValidationReport) -> "InvalidRowsError":
        """The error a load without ``drop_invalid`` fails with: located at the first problem, with every problem in
        its ``report``."""
        first = self.issues[0]
        others = len(self.rows) - 1
        detail = first.message
        if others > 0:
            counts = ", ".join(f"{count} {code.replace('_', ' ')}" for code, count in self.counts.most_common())
            detail += f" (and {others} more unusable row(s); all problems: {counts})"
        detail += "; fix the row(s), or leave them out: --drop-invalid, or \"Drop the invalid rows\" on the Data page"
        return InvalidRowsError(detail, report=report, file=label, row=first.row, column=first.column, code=first.code)


class InvalidRowsError(DataError):
    """A load that found unusable rows, located at the first; ``report`` lists every problem (`ValidationReport`)."""

    def __init__(self, message: str, *, report: ValidationReport, file: str | None, row: int | None,
                 column: str | None, code: str):
        super().__init__(message, file=file, row=row, column=column)
        self.report = report
        self.code = code


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
    """``empty_prompt``, ``empty_response``, ``identical_responses`` and ``very_long`` issues of one pair.

    ``texts`` maps "prompt", "chosen", "rejected" to (source column, text).
    """
    prompt_column, prompt = texts["prompt"]
    chosen_column, chosen = texts["chosen"]
    rejected_column, rejected = texts["rejected"]
    issues = []
    if not prompt.strip():
        issues.append(Issue(label, index, prompt_column, "empty_prompt", "the prompt is empty: the replies answer nothing"))
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


def duplicate_issues(
    ids: list[str] | None, content_keys: np.ndarray, label: str, data_rows: np.ndarray | None = None
) -> list[Issue]:
    """The ``duplicate_pair`` issues `unique_ids` gives, from compact inputs (large files are validated this way).

    ``content_keys``: uint64 content hashes, shape ``(n_pairs,)``; ``ids``: the pairs' ids, or None when every id
    is its content hash (the hash as 16 hex digits); ``data_rows``: each pair's data row, shape ``(n_pairs,)``
    (default 0, 1, ...; rows left out make them differ). Only pairs that share an id or a content hash with another
    are passed to `unique_ids`, so memory stays proportional to the duplicates.
    """
    suspects = _repeated(content_keys)
    if ids is not None:
        suspects |= _repeated(np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids)))
    positions = np.flatnonzero(suspects).tolist()
    if not positions:
        return []
    keys = content_keys[positions].tolist()
    rows = positions if data_rows is None else data_rows[positions].tolist()
    if ids is None:
        return unique_ids([f"{key:016x}" for key in keys], keys, label, rows=rows)[1]
    return unique_ids([ids[position] for position in positions], keys, label, rows=rows, taken=set(ids))[1]


def warning_codes_by_row(issues: list[Issue], rows: Sequence[int]) -> list[str]:
    """The issue codes of each data row in ``rows``, ``;``-joined without repeats ("" when clean)."""
    codes_by_row: dict[int, list[str]] = {}
    for issue in issues:
        codes_by_row.setdefault(issue.row, []).append(issue.code)
    return [";".join(dict.fromkeys(codes_by_row.get(row, []))) for row in rows]
