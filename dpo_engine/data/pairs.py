"""Load, normalise and validate preference pairs into the pairs DataFrame (see docs/architecture.md).

``load_pairs`` reads a file, a ``save_to_disk`` directory or a Hub dataset (`dpo_engine.data.readers`), maps its
columns onto the fields (`dpo_engine.data.schema`), and turns every row into one canonical pair:

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

Problems that make the data unusable raise ``DataError`` naming file, row (0-based data row) and column.
Soft problems never drop a row: they are listed in the row's ``warnings`` and in ``report.warnings``.
``validate_source`` checks a source the same way while streaming it, keeping only what the report needs.
Loading never writes to the source.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from dpo_engine.data.conversations import (
    as_prompt,
    checked_text,
    context,
    display_prompt,
    split_reply,
    type_name,
    with_system,
)
from dpo_engine.data.export import fingerprint, pairs_to_records, save_pairs
from dpo_engine.data.readers import FORMATS, iter_records, read_records
from dpo_engine.data.report import (
    WARNING_CODES,
    Issue,
    ValidationReport,
    duplicate_issues,
    located_error,
    row_issues,
    unique_ids,
    warning_codes_by_row,
)
from dpo_engine.data.schema import COLUMN_ALIASES, FIELDS, ColumnMapping, label_text, resolve_columns
from dpo_engine.paths import ASSETS_DIR

__all__ = [
    "COLUMN_ALIASES", "FIELDS", "FORMATS", "PAIR_COLUMNS", "WARNING_CODES", "Issue", "LoadedPairs", "SourceCheck",
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
_SURROGATE = re.compile("[\ud800-\udfff]")
_json_string = json.encoder.encode_basestring  # a str as a JSON string literal, non-ASCII kept (C speed-up)


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
) -> LoadedPairs:
    """Read ``source`` and return its preference pairs, normalised and validated.

    ``columns`` maps fields (``FIELDS``, or the pairwise fields of `dpo_engine.data.schema`) to source column
    names; unmapped fields are auto-detected (``COLUMN_ALIASES``). ``fmt`` overrides format detection
    (``FORMATS``). ``split`` picks the split of a DatasetDict directory or Hub dataset. ``max_chars`` is the
    ``very_long`` threshold. ``encoding`` / ``delimiter`` override what is sniffed from a text file.
    """
    label = str(source)
    mapping, rows = _mapped_rows(source, columns, fmt, split, label, encoding, delimiter)
    extra_columns = _extra_columns(mapping, rows.found)
    pairs, issues, content_hashes = [], [], []
    for index, record in rows:
        pair, row_problems, content_hash = _normalise_row(record, index, mapping, label, max_chars)
        pair["extra"] = _extra_text(record, extra_columns, label, index)
        pairs.append(pair)
        issues += row_problems
        content_hashes.append(content_hash)
    ids, id_issues = unique_ids([pair["pair_id"] for pair in pairs], content_hashes, label)
    issues = sorted(issues + id_issues, key=lambda issue: issue.row)  # stable: keeps check order within a row
    for pair, pair_id, codes in zip(pairs, ids, warning_codes_by_row(issues, len(pairs))):
        pair["pair_id"], pair["warnings"] = pair_id, codes

    frame = pd.DataFrame(pairs, columns=PAIR_COLUMNS)
    frame["row"] = frame["row"].astype("int64")
    frame[["score_chosen", "score_rejected"]] = frame[["score_chosen", "score_rejected"]].astype("float64")
    frame["conversational"] = frame["conversational"].astype(bool)
    report = ValidationReport(n_pairs=len(frame), warnings=issues)
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
) -> SourceCheck:
    """Check ``source`` exactly as `load_pairs` would, streaming it: no DataFrame, rows are not kept.

    Raises the same ``DataError`` as `load_pairs`; the report's warnings are the same.
    """
    label = str(source)
    mapping, rows = _mapped_rows(source, columns, fmt, split, label, encoding, delimiter)
    issues, content_keys = [], array("Q")
    ids = [] if mapping.fields["id"] else None  # without an id column every id is the content hash
    chosen_chars, rejected_chars = array("q"), array("q")
    for index, record in rows:
        pair, row_problems, content_hash = _normalise_row(record, index, mapping, label, max_chars)
        if row_problems:
            issues += row_problems
        if ids is not None:
            ids.append(pair["pair_id"])
        content_keys.append(int(content_hash, 16))
        chosen_chars.append(len(pair["chosen"]))
        rejected_chars.append(len(pair["rejected"]))
    keys = np.frombuffer(content_keys, dtype=np.uint64)
    issues = sorted(issues + duplicate_issues(ids, keys, label), key=lambda issue: issue.row)
    report = ValidationReport(n_pairs=len(keys), warnings=issues)
    return SourceCheck(report=report, columns=mapping.used(), chosen_chars=chosen_chars, rejected_chars=rejected_chars)


def source_columns(
    source: str | os.PathLike, *, fmt: str | None = None, split: str = "train", encoding: str | None = None,
    delimiter: str | None = None,
) -> list[str]:
    """The column names of ``source`` (its first ``DETECTION_ROWS`` rows), in order: what a mapping can name."""
    label = str(source)
    return _Rows(iter_records(source, fmt=fmt, split=split, label=label, encoding=encoding, delimiter=delimiter)).found


# --------------------------------------------------------------------------------------------------
# Rows and their columns
# --------------------------------------------------------------------------------------------------


class _Rows:
    """``(row index, record)`` pairs of a source; ``found`` holds the columns of the first ``DETECTION_ROWS``."""

    def __init__(self, records: Iterator[dict]):
        head = list(itertools.islice(records, DETECTION_ROWS))
        self.found = list(dict.fromkeys(key for record in head for key in record))
        self._records = itertools.chain(head, records)
        self.empty = not head

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        return enumerate(self._records)


def _mapped_rows(source, columns, fmt, split, label, encoding, delimiter) -> tuple[ColumnMapping, _Rows]:
    records = iter_records(source, fmt=fmt, split=split, label=label, encoding=encoding, delimiter=delimiter)
    rows = _Rows(records)
    if rows.empty:
        raise located_error("no_rows", "contains no rows", file=label)
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
    if _SURROGATE.search(text):  # an export could not encode it as UTF-8: name the column that holds it
        for column, value in extra.items():
            checked_text(json.dumps(value, ensure_ascii=False, default=str), file=label, row=row, column=column)
    return text


# --------------------------------------------------------------------------------------------------
# One row -> one canonical pair
# --------------------------------------------------------------------------------------------------


def _normalise_row(
    record: dict, row: int, mapping: ColumnMapping, label: str, max_chars: int
) -> tuple[dict, list[Issue], str]:
    """The canonical pair for one data row (without ``warnings`` and ``extra``), its issues and its content hash."""
    fields, where = mapping.fields, {"file": label, "row": row}
    if mapping.pairwise is None and fields["prompt"] is not None:
        prompt, chosen, rejected = record.get(fields["prompt"]), record.get(fields["chosen"]), record.get(fields["rejected"])
        if _plain_strings(prompt, chosen, rejected) and not (fields["system"] and record.get(fields["system"])):
            return _plain_pair(record, row, mapping, label, max_chars, (prompt, chosen, rejected))
    strength = None
    if mapping.pairwise is not None:
        chosen_column, rejected_column, strength = mapping.pairwise.orient(record, **where)
    else:
        chosen_column, rejected_column = fields["chosen"], fields["rejected"]
    chosen_before, chosen, chosen_conversation = split_reply(record.get(chosen_column), **where, column=chosen_column)
    rejected_before, rejected, rejected_conversation = split_reply(
        record.get(rejected_column), **where, column=rejected_column
    )
    prompt_messages, conversational = _context_of(
        record, where, mapping, (chosen_column, chosen_before), (rejected_column, rejected_before)
    )
    conversational = conversational or chosen_conversation or rejected_conversation
    conversational = conversational or len(prompt_messages) > 1 or prompt_messages[0]["role"] != "user"

    issues, scores = [], {}
    for name in ("score_chosen", "score_rejected"):
        scores[name], issue = _parse_score(record, fields[name], row, label)
        issues += [issue] if issue else []
    if strength is not None:
        scores = {"score_chosen": strength, "score_rejected": 0.0}
        if strength == 0:
            message = f"the label '{mapping.pairwise.label}' is a tie (0); '{chosen_column}' is kept as chosen"
            issues.append(Issue(label, row, mapping.pairwise.label, "tie", message))
    display = display_prompt(prompt_messages)
    texts = {
        "prompt": (fields["prompt"] or chosen_column, display),
        "chosen": (chosen_column, chosen),
        "rejected": (rejected_column, rejected),
    }
    issues += row_issues(row, texts, label, max_chars)
    content_hash = _content_hash(prompt_messages, chosen, rejected)
    data_id = _data_id(record, fields["id"], row, label)
    pair = {
        "pair_id": data_id or content_hash,
        "row": row,
        "prompt": display,
        "prompt_messages": prompt_messages,
        "chosen": chosen,
        "rejected": rejected,
        **scores,
        "conversational": bool(conversational),
    }
    return pair, issues, content_hash


def _plain_strings(prompt, chosen, rejected) -> bool:
    """True for three plain-text cells that are not HH transcripts and hold no lone surrogate: the common case,
    which `_plain_pair` normalises without the conversation machinery (the same pair, several times faster)."""
    if type(prompt) is not str or type(chosen) is not str or type(rejected) is not str:
        return False
    if "\n\nAssistant:" in prompt or "\n\nAssistant:" in chosen or "\n\nAssistant:" in rejected:
        return False
    return _SURROGATE.search(prompt) is None and _SURROGATE.search(chosen) is None and _SURROGATE.search(rejected) is None


def _plain_pair(
    record: dict, row: int, mapping: ColumnMapping, label: str, max_chars: int, texts: tuple[str, str, str]
) -> tuple[dict, list[Issue], str]:
    """`_normalise_row` for a prompt, chosen and rejected that are all plain text (see `_plain_strings`)."""
    fields = mapping.fields
    prompt, chosen, rejected = texts[0], texts[1].strip(), texts[2].strip()
    issues, scores = [], {"score_chosen": math.nan, "score_rejected": math.nan}
    for name in ("score_chosen", "score_rejected"):
        if fields[name] is not None:
            scores[name], issue = _parse_score(record, fields[name], row, label)
            if issue:
                issues.append(issue)
    longest = max(len(prompt), len(chosen), len(rejected))
    if not chosen or not rejected or chosen == rejected or longest > max_chars:  # clean rows skip the checks
        columns = {"prompt": (fields["prompt"], prompt), "chosen": (fields["chosen"], chosen),
                   "rejected": (fields["rejected"], rejected)}
        issues += row_issues(row, columns, label, max_chars)
    canonical = (  # _content_hash's text for one user message, assembled directly
        '{"chosen":' + _json_string(chosen) + ',"prompt_messages":[{"content":' + _json_string(prompt)
        + ',"role":"user"}],"rejected":' + _json_string(rejected) + "}"
    )
    content_hash = hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]
    data_id = _data_id(record, fields["id"], row, label)
    pair = {"pair_id": data_id or content_hash, "row": row, "prompt": prompt,
            "prompt_messages": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected,
            **scores, "conversational": False}
    return pair, issues, content_hash


def _context_of(
    record: dict, where: dict, mapping: ColumnMapping, chosen: tuple[str, list], rejected: tuple[str, list]
) -> tuple[list[dict], bool]:
    """(the conversation both replies answer, system prompt first; whether the prompt cell was a conversation).

    ``chosen`` / ``rejected``: (source column, messages before the final reply) of each response.
    """
    fields = mapping.fields
    (chosen_column, chosen_before), (rejected_column, rejected_before) = chosen, rejected
    prompt, conversational = [], False
    if fields["prompt"] is not None:
        prompt, conversational = as_prompt(record.get(fields["prompt"]), **where, column=fields["prompt"])
    chosen_context = context(prompt, chosen_before)
    if context(prompt, rejected_before) != chosen_context:
        message = (
            "chosen and rejected continue different conversations; "
            f"everything before the final reply must match '{chosen_column}'"
        )
        raise located_error("mismatched_prompt", message, **where, column=rejected_column)
    if not chosen_context:
        if fields["prompt"] is None:
            found = ", ".join(record)
            message = (
                f"missing required column (columns found: {found}); without it, chosen and rejected must be "
                "conversations or HH transcripts that include the prompt"
            )
            raise located_error("missing_column", message, **where, column="prompt")
        raise located_error("wrong_type", "the prompt is an empty conversation", **where, column=fields["prompt"])
    system = _system_text(record, fields["system"], where["row"], where["file"])
    return with_system(chosen_context, system), conversational or bool(system and system.strip())


def _data_id(record: dict, column: str | None, row: int, label: str) -> str | None:
    """The row's id as text, or None (no id column, or an empty cell: the content hash is used instead)."""
    if column is None:
        return None
    data_id = label_text(record.get(column))
    return None if data_id is None else checked_text(data_id, file=label, row=row, column=column)


def _system_text(record: dict, column: str | None, row: int, label: str) -> str | None:
    """The system prompt cell as text; None when there is no system column or the cell is empty."""
    if column is None:
        return None
    value = record.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        message = f"expected the system prompt as text, got {type_name(value)}"
        raise located_error("wrong_type", message, file=label, row=row, column=column)
    return checked_text(value, file=label, row=row, column=column)


def _parse_score(record: dict, column: str | None, row: int, label: str) -> tuple[float, Issue | None]:
    """A score as float; NaN when the column is absent, NaN plus a ``bad_score`` issue when unusable."""
    if column is None:
        return math.nan, None
    value = record.get(column)
    try:
        score = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        score = math.nan
    if math.isfinite(score):
        return score, None
    return math.nan, Issue(label, row, column, "bad_score", f"score {value!r} is not a finite number; stored as NaN")


def _content_hash(prompt_messages: list[dict], chosen: str, rejected: str) -> str:
    """First 16 hex digits of the SHA-1 of the pair's canonical JSON (sorted keys, compact, UTF-8).

    The JSON is ``{"chosen":..,"prompt_messages":[{"content":..,"role":..},..],"rejected":..}``, assembled from
    the standard library's string encoder: the same text as ``json.dumps(sort_keys=True, ensure_ascii=False,
    separators=(",", ":"))`` at a fraction of the cost (messages hold only role and content).
    """
    messages = ",".join([
        '{"content":' + _json_string(message["content"]) + ',"role":' + _json_string(message["role"]) + "}"
        for message in prompt_messages
    ])
    canonical = (
        '{"chosen":' + _json_string(chosen) + ',"prompt_messages":[' + messages + '],"rejected":'
        + _json_string(rejected) + "}"
    )
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]
