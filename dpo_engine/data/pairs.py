"""Load, normalise and validate preference pairs into the pairs DataFrame (see docs/architecture.md).

``load_pairs`` reads a file, a ``save_to_disk`` directory or a Hub dataset (`dpo_engine.data.readers`), maps its
columns onto the fields (`dpo_engine.data.schema`), and turns every row into one canonical pair (`dpo_engine.data.rows`):

- ``prompt_messages``: the conversation before the final reply, a list of ``{"role", "content"}``, system prompt
  first (`dpo_engine.data.conversations`). A plain prompt string becomes one user message; an HH-RLHF transcript
  becomes alternating user/assistant messages; a ``system`` column becomes a leading system message.
- ``chosen`` / ``rejected``: the final assistant reply as text, with leading and trailing whitespace removed.
  They may be plain strings, TRL conversations (with or without the prompt repeated) or full HH transcripts;
  without a prompt column the shared conversation before the two replies is the prompt (TRL "implicit prompt").
  Pairwise-with-label data gets its chosen and rejected from the label (`dpo_engine.data.schema.PairwiseLabel`).
- ``pair_id``: the data's id as text, else a content hash; made unique (`dpo_engine.data.report.unique_ids`).
- ``conversational``: whether the source held the pair as a conversation (message lists, an HH transcript or a
  system prompt) rather than plain strings; exports use TRL's conversational format then (`dpo_engine.data.export`).
- ``extra``: the row's other source columns as a JSON object text ("" when none), kept for exports.

Problems that make the data unusable raise ``DataError`` naming file, row (0-based data row) and column; every
unusable row is found in one pass (`InvalidRowsError` lists them), and ``drop_invalid`` loads the others instead.
Soft problems never drop a row: they are listed in the row's ``warnings`` and in ``report.warnings``.
``validate_source`` checks a source the same way while streaming it, keeping only what the report needs.
Loading never writes to the source.
"""

from __future__ import annotations

import itertools
import json
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from dpo_engine.data.conversations import checked_text
from dpo_engine.data.export import fingerprint, pairs_to_records, save_pairs
from dpo_engine.data.readers import FORMATS, InvalidRecord, iter_records, read_records
from dpo_engine.data.report import (
    ISSUE_LIST_CAP,
    WARNING_CODES,
    InvalidRowsError,
    Issue,
    RowProblems,
    ValidationReport,
    duplicate_issues,
    located_error,
    unique_ids,
    warning_codes_by_row,
)
from dpo_engine.data.rows import SURROGATE, normalise_row
from dpo_engine.data.schema import COLUMN_ALIASES, FIELDS, ColumnMapping, resolve_columns
from dpo_engine.errors import DataError
from dpo_engine.paths import ASSETS_DIR

__all__ = [
    "COLUMN_ALIASES", "FIELDS", "FORMATS", "ISSUE_LIST_CAP", "PAIR_COLUMNS", "WARNING_CODES", "InvalidRowsError",
    "Issue", "LoadedPairs", "SourceCheck",
    "ValidationReport", "bundled_datasets", "fingerprint", "load_pairs", "pairs_to_records", "save_pairs",
    "source_columns", "validate_source",
]

PAIR_COLUMNS = [
    "pair_id",
    "row",
    "prompt",
    "prompt_messages",
    "chosen",
    "rejected",
    "score_chosen",
    "score_rejected",
    "warnings",
    "conversational",
    "extra",
]
# Rows read before the columns are decided: JSON rows may differ in keys, and a stream cannot be read twice.
DETECTION_ROWS = 1000

_read_records = read_records  # the evaluation prompt loader reads files through the same readers


@dataclass
class LoadedPairs:
    """The pairs DataFrame (``PAIR_COLUMNS``), its report, and where it came from."""

    pairs: pd.DataFrame
    report: ValidationReport
    source: str
    columns: dict[str, str]  # field -> source column used, for the fields that were found
    found: list[str] = field(default_factory=list)  # the source's columns (of its first DETECTION_ROWS rows)


@dataclass
class SourceCheck:
    """What `validate_source` found: the report, the columns used and each pair's reply lengths in characters."""

    report: ValidationReport
    columns: dict[str, str]
    chosen_chars: array
    rejected_chars: array


def bundled_datasets() -> dict[str, Path]:
    """The demo datasets shipped in ``assets/data/``, by name."""
    data_dir = ASSETS_DIR / "data"
    return {
        "ultrafeedback": data_dir / "ultrafeedback_binarized_scored_1200.jsonl",
        "hh_rlhf": data_dir / "hh_rlhf_helpful_base_test_1000.jsonl",
    }


def load_pairs(
    source: str | os.PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    fmt: str | None = None,
    split: str = "train",
    max_chars: int = 20000,
    encoding: str | None = None,
    delimiter: str | None = None,
    drop_invalid: bool = False,
) -> LoadedPairs:
    """Read ``source`` and return its preference pairs, normalised and validated.

    ``columns`` maps fields (``FIELDS``, or the pairwise fields of `dpo_engine.data.schema`) to source column
    names; unmapped fields are auto-detected (``COLUMN_ALIASES``). ``fmt`` overrides format detection
    (``FORMATS``). ``split`` picks the split of a DatasetDict directory or Hub dataset. ``max_chars`` is the
    ``very_long`` threshold. ``encoding`` / ``delimiter`` override what is sniffed from a text file.
    Every row is read even when some cannot be used: the load then raises `InvalidRowsError` listing them all,
    or with ``drop_invalid`` leaves them out and records them in the report (``dropped``, ``invalid_rows``).
    """
    label = str(source)
    mapping, rows = _mapped_rows(source, columns, fmt, split, label, encoding, delimiter)
    extra_columns = _extra_columns(mapping, rows.found)
    pairs, issues, content_hashes, problems = [], [], [], RowProblems()
    for pair, row_problems, content_hash in _usable_rows(rows, mapping, label, max_chars, problems, extra_columns):
        pairs.append(pair)
        issues += row_problems
        content_hashes.append(content_hash)
    data_rows = [pair["row"] for pair in pairs]
    ids, id_issues = unique_ids([pair["pair_id"] for pair in pairs], content_hashes, label, rows=data_rows)
    issues = sorted(issues + id_issues, key=lambda issue: issue.row)  # stable: keeps check order within a row
    if problems.rows and not drop_invalid:
        raise problems.error(label, problems.report(len(pairs), issues, dropped=False))
    _no_rows_left(pairs, problems, label)
    for pair, pair_id, codes in zip(pairs, ids, warning_codes_by_row(issues, data_rows)):
        pair["pair_id"], pair["warnings"] = pair_id, codes

    frame = pd.DataFrame(pairs, columns=PAIR_COLUMNS)
    frame["row"] = frame["row"].astype("int64")
    frame[["score_chosen", "score_rejected"]] = frame[["score_chosen", "score_rejected"]].astype("float64")
    frame["conversational"] = frame["conversational"].astype(bool)
    report = problems.report(len(frame), issues, dropped=bool(problems.rows))
    return LoadedPairs(pairs=frame, report=report, source=label, columns=mapping.used(), found=rows.found)


def validate_source(
    source: str | os.PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    fmt: str | None = None,
    split: str = "train",
    max_chars: int = 20000,
    encoding: str | None = None,
    delimiter: str | None = None,
    drop_invalid: bool = False,
) -> SourceCheck:
    """Check ``source`` exactly as `load_pairs` would, streaming it: no DataFrame, rows are not kept.

    Raises the same ``DataError`` as `load_pairs` (`InvalidRowsError` listing every unusable row, unless
    ``drop_invalid``); the report's warnings are the same.
    """
    label = str(source)
    mapping, rows = _mapped_rows(source, columns, fmt, split, label, encoding, delimiter)
    issues, content_keys, data_rows, problems = [], array("Q"), array("q"), RowProblems()
    ids = [] if mapping.fields["id"] else None  # without an id column every id is the content hash
    chosen_chars, rejected_chars = array("q"), array("q")
    for pair, row_problems, content_hash in _usable_rows(rows, mapping, label, max_chars, problems):
        if row_problems:
            issues += row_problems
        if ids is not None:
            ids.append(pair["pair_id"])
        content_keys.append(int(content_hash, 16))
        data_rows.append(pair["row"])
        chosen_chars.append(len(pair["chosen"]))
        rejected_chars.append(len(pair["rejected"]))
    keys = np.frombuffer(content_keys, dtype=np.uint64)
    duplicates = duplicate_issues(ids, keys, label, np.frombuffer(data_rows, dtype=np.int64))
    issues = sorted(issues + duplicates, key=lambda issue: issue.row)
    if problems.rows and not drop_invalid:
        raise problems.error(label, problems.report(len(keys), issues, dropped=False))
    _no_rows_left(keys, problems, label)
    report = problems.report(len(keys), issues, dropped=bool(problems.rows))
    return SourceCheck(report=report, columns=mapping.used(), chosen_chars=chosen_chars, rejected_chars=rejected_chars)


def _usable_rows(
    rows: "_Rows", mapping: ColumnMapping, label: str, max_chars: int, problems: RowProblems,
    extra_columns: list[str] | None = None,
) -> Iterator[tuple[dict, list, str]]:
    """`normalise_row` of every row that can be used (with ``extra`` when ``extra_columns`` is given); the
    others' problems go to ``problems``."""
    for index, record in rows:
        if type(record) is InvalidRecord:
            problems.add(record.error)
            continue
        try:
            pair, row_problems, content_hash = normalise_row(record, index, mapping, label, max_chars)
            if extra_columns is not None:
                pair["extra"] = _extra_text(record, extra_columns, label, index)
        except DataError as error:
            problems.add(error)
            continue
        yield pair, row_problems, content_hash


def _no_rows_left(kept, problems: RowProblems, label: str) -> None:
    """Dropping the unusable rows must leave some: otherwise the load fails with every problem listed."""
    if problems.rows and not len(kept):
        raise problems.error(label, problems.report(0, [], dropped=False))


def source_columns(
    source: str | os.PathLike, *, fmt: str | None = None, split: str = "train", encoding: str | None = None,
    delimiter: str | None = None,
) -> list[str]:
    """The column names of ``source`` (its first ``DETECTION_ROWS`` rows), in order: what a mapping can name."""
    label = str(source)
    return _Rows(iter_records(source, fmt=fmt, split=split, label=label, encoding=encoding, delimiter=delimiter,
                              invalid_rows=True)).found  # a broken row does not hide the columns of the others


# --------------------------------------------------------------------------------------------------
# Rows and their columns
# --------------------------------------------------------------------------------------------------


class _Rows:
    """``(row index, record)`` pairs of a source; ``found`` holds the columns of the first ``DETECTION_ROWS``."""

    def __init__(self, records: Iterator[dict]):
        head = list(itertools.islice(records, DETECTION_ROWS))
        self.found = list(dict.fromkeys(key for record in head if type(record) is not InvalidRecord for key in record))
        # No readable row at the start (a wrong CSV delimiter, say): the first row's own error says more than
        # "missing column".
        self.unreadable = next((record.error for record in head if type(record) is InvalidRecord), None) \
            if not self.found else None
        self._records = itertools.chain(head, records)
        self.empty = not head

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        return enumerate(self._records)


def _mapped_rows(source, columns, fmt, split, label, encoding, delimiter) -> tuple[ColumnMapping, _Rows]:
    records = iter_records(source, fmt=fmt, split=split, label=label, encoding=encoding, delimiter=delimiter,
                           invalid_rows=True)
    rows = _Rows(records)
    if rows.empty:
        raise located_error("no_rows", "contains no rows", file=label)
    if rows.unreadable is not None:
        raise rows.unreadable
    return resolve_columns(rows.found, columns, label), rows


def _extra_columns(mapping: ColumnMapping, found: list[str]) -> list[str]:
    """Source columns no field reads; a pairs frame's own columns are not data, so they are not kept."""
    used = mapping.source_columns()
    return [column for column in found if column not in used and column not in PAIR_COLUMNS]


def _extra_text(record: dict, extra_columns: list[str], label: str, row: int) -> str:
    extra = {column: record[column] for column in extra_columns if column in record}
    if not extra:
        return ""
    try:
        text = json.dumps(extra, ensure_ascii=False, default=str)
    except (RecursionError, ValueError) as error:
        message = f"cannot be kept as JSON ({type(error).__name__}); drop or flatten the column"
        raise located_error("too_deep", message, file=label, row=row, column=", ".join(extra)) from None
    if SURROGATE.search(text):  # an export could not encode it as UTF-8: name the column that holds it
        for column, value in extra.items():
            checked_text(json.dumps(value, ensure_ascii=False, default=str), file=label, row=row, column=column)
    return text
