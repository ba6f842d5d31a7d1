"""Load, normalise and validate preference pairs into the pairs DataFrame (see docs/architecture.md).

``load_pairs`` reads a file, a ``save_to_disk`` directory or a Hub dataset, maps its columns onto
prompt / chosen / rejected / scores / id, and turns every row into one canonical pair:

- ``prompt_messages``: the conversation before the response, a list of ``{"role", "content"}``. A plain
  prompt string becomes one user message; an HH-RLHF transcript (``"\\n\\nHuman: ... \\n\\nAssistant:"``)
  becomes alternating user/assistant messages (turn text stripped, the trailing empty ``Assistant:`` cue dropped).
- ``chosen`` / ``rejected``: the final assistant reply as text, with leading and trailing whitespace
  removed (the HH split form keeps a leading space after ``Assistant:``; it is a format artefact, not content).
  They may be plain strings, TRL conversations (with or without the prompt repeated) or full HH transcripts.
  Without a prompt column the shared conversation before the two replies is the prompt (TRL "implicit prompt").
- ``pair_id``: the data's id as text, else a content hash; made unique (see ``_make_ids_unique``).

Problems that make the data unusable raise ``DataError`` naming file, row (0-based data row) and column.
Soft problems never drop a row: they are listed in the row's ``warnings`` and in ``report.warnings``.
Loading never writes to the source.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from dpo_engine.errors import DataError
from dpo_engine.files import atomic_write_text
from dpo_engine.paths import ASSETS_DIR

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
]
WARNING_CODES = ("empty_response", "identical_responses", "bad_score", "duplicate_pair", "very_long")
FORMATS = ("jsonl", "json", "csv", "parquet", "disk", "hub")
FIELDS = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected", "id")
# Column names tried, in order, for each field when no mapping is given. "prompt_messages" comes first so that
# a pairs DataFrame written as it is (where "prompt" is only display text) reloads without loss.
COLUMN_ALIASES = {
    "prompt": ("prompt_messages", "prompt", "instruction", "question"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
    "score_chosen": ("score_chosen",),
    "score_rejected": ("score_rejected",),
    "id": ("id", "pair_id"),
}
HUB_TIMEOUT_S = 5.0

_FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


# --------------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------------


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


@dataclass
class LoadedPairs:
    """The pairs DataFrame (``PAIR_COLUMNS``), its report, and where it came from."""

    pairs: pd.DataFrame
    report: ValidationReport
    source: str
    columns: dict[str, str]  # field -> source column used, for the fields that were found


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_pairs(
    source: str | os.PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    fmt: str | None = None,
    split: str = "train",
    max_chars: int = 20000,
) -> LoadedPairs:
    """Read ``source`` and return its preference pairs, normalised and validated.

    ``columns`` maps fields (``FIELDS``) to source column names; unmapped fields are auto-detected
    (``COLUMN_ALIASES``). ``fmt`` overrides format detection (``FORMATS``). ``split`` picks the split
    of a DatasetDict directory or Hub dataset. ``max_chars`` is the ``very_long`` threshold.
    """
    label = str(source)
    records = _read_records(source, fmt=fmt, split=split, label=label)
    found = _columns_found(records)
    mapping = _resolve_columns(found, columns, label)
    rows, issues, content_hashes = [], [], []
    for index, record in enumerate(records):
        row, row_issues, content_hash = _normalise_row(record, index, mapping, label, found)
        rows.append(row)
        issues += row_issues
        content_hashes.append(content_hash)
    issues += _make_ids_unique(rows, content_hashes, label)
    issues += _soft_checks(rows, mapping, label, max_chars)
    issues.sort(key=lambda issue: issue.row)  # stable: keeps check order within a row
    _attach_warning_codes(rows, issues)

    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    pairs["row"] = pairs["row"].astype("int64")
    pairs[["score_chosen", "score_rejected"]] = pairs[["score_chosen", "score_rejected"]].astype("float64")
    report = ValidationReport(n_pairs=len(pairs), warnings=issues)
    used = {name: column for name, column in mapping.items() if column is not None}
    return LoadedPairs(pairs=pairs, report=report, source=label, columns=used)


def bundled_datasets() -> dict[str, Path]:
    """The demo datasets shipped in ``assets/data/``, by name."""
    data_dir = ASSETS_DIR / "data"
    return {
        "ultrafeedback": data_dir / "ultrafeedback_binarized_scored_1200.jsonl",
        "hh_rlhf": data_dir / "hh_rlhf_helpful_base_test_1000.jsonl",
    }


def _fail(code: str, message: str, *, file: str | None, row: int | None = None, column: str | None = None) -> DataError:
    """A DataError carrying a machine-readable ``code`` for the validation report."""
    error = DataError(message, file=file, row=row, column=column)
    error.code = code
    return error


# --------------------------------------------------------------------------------------------------
# Readers: every format becomes a list of plain-Python dicts, one per data row
# --------------------------------------------------------------------------------------------------


def _read_records(source: str | os.PathLike, *, fmt: str | None, split: str, label: str) -> list[dict]:
    """The rows of ``source`` as dicts, whatever its format."""
    fmt = fmt or _detect_format(source, label)
    if fmt not in FORMATS:
        raise _fail("unknown_format", f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}", file=label)
    if fmt == "hub":
        records = _read_hub(str(source), split)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise _fail("file_not_found", "file not found", file=label)
        readers = {
            "jsonl": _read_jsonl,
            "json": _read_json,
            "csv": _read_csv,
            "parquet": _read_parquet,
            "disk": lambda path, label: _read_saved_dataset(path, label, split),
        }
        records = readers[fmt](path, label)
    if not records:
        raise _fail("no_rows", "contains no rows", file=label)
    return records


def _detect_format(source: str | os.PathLike, label: str) -> str:
    """The format of ``source`` from what it is on disk, its suffix, or its shape as a Hub name."""
    path = Path(source).expanduser()
    if path.is_dir():
        return "disk"
    suffix = path.suffix.lower()
    if path.exists():
        if suffix in _FORMAT_BY_SUFFIX:
            return _FORMAT_BY_SUFFIX[suffix]
        raise _fail(
            "unknown_format",
            f"unknown file format '{suffix or '(no extension)'}'; use .jsonl, .json, .csv or .parquet, "
            "a directory saved by datasets.save_to_disk, or a Hub dataset name",
            file=label,
        )
    # A missing path object, or a name with a data-file suffix, is a missing file, not a Hub dataset.
    if isinstance(source, str) and suffix not in _FORMAT_BY_SUFFIX and _HUB_NAME.match(source):
        return "hub"
    raise _fail("file_not_found", "file not found", file=label)


def _read_text(path: Path, label: str) -> str:
    """The whole file as UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _fail("unreadable", f"is not UTF-8 text ({error.reason} at byte {error.start})", file=label) from error
    except OSError as error:
        raise _fail("unreadable", f"cannot be read: {error.strerror or error}", file=label) from error


def _read_jsonl(path: Path, label: str) -> list[dict]:
    """JSON Lines: one object per non-blank line."""
    records: list[dict] = []
    # split("\n"), not splitlines(): JSON strings may legally hold U+2028 and other line separators.
    for line_number, line in enumerate(_read_text(path, label).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            message = f"line {line_number} is not valid JSON ({error.msg} at character {error.colno})"
            raise _fail("malformed_json", message, file=label, row=len(records)) from error
        if not isinstance(record, dict):
            message = f"line {line_number} is a JSON {type(record).__name__}, expected an object"
            raise _fail("wrong_type", message, file=label, row=len(records))
        records.append(record)
    return records


def _read_json(path: Path, label: str) -> list[dict]:
    """A JSON document holding a list of objects."""
    try:
        document = json.loads(_read_text(path, label))
    except json.JSONDecodeError as error:
        hint = "; if it has one object per line, name it .jsonl" if error.msg == "Extra data" else ""
        message = f"is not valid JSON ({error.msg} at line {error.lineno}, character {error.colno}){hint}"
        raise _fail("malformed_json", message, file=label) from error
    if not isinstance(document, list):
        keys = ", ".join(list(document)[:5]) if isinstance(document, dict) else type(document).__name__
        message = (
            f"expected a JSON list of row objects, got {keys!r} at the top level; "
            "save the rows as a list or as JSON Lines"
        )
        raise _fail("wrong_type", message, file=label)
    for index, record in enumerate(document):
        if not isinstance(record, dict):
            raise _fail("wrong_type", f"expected a JSON object, got {type(record).__name__}", file=label, row=index)
    return document


def _read_csv(path: Path, label: str) -> list[dict]:
    """CSV with a header; every cell is read as text so empty responses stay "" and ids keep leading zeros."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise _fail("unreadable", f"is not a readable CSV file: {error}", file=label) from error
    return table.to_dict("records")


def _read_parquet(path: Path, label: str) -> list[dict]:
    """Parquet, read with pyarrow so nested message lists come back as Python lists of dicts."""
    import pyarrow
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as error:
        raise _fail("unreadable", f"is not a readable parquet file: {error}", file=label) from error


def _read_saved_dataset(path: Path, label: str, split: str) -> list[dict]:
    """A directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (then ``split``)."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        message = "is a directory but not one saved by datasets.save_to_disk; pass a data file instead"
        raise _fail("unknown_format", message, file=label) from error
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            message = f"has no split '{split}'; available splits: {', '.join(dataset)}"
            raise _fail("unknown_split", message, file=label)
        dataset = dataset[split]
    return dataset.to_list()


def _read_hub(name: str, split: str) -> list[dict]:
    """A Hub dataset through ``datasets.load_dataset``, failing within seconds when it cannot be had.

    ``load_dataset`` retries a dead network for about half a minute, so online it is preceded by one
    short metadata request. With ``HF_HUB_OFFLINE`` set only the local cache is tried, which is fast.
    """
    import datasets
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    not_local = f"no local file named '{name}', and"
    local_hint = "pass a local .jsonl/.json/.csv/.parquet file or a directory saved by datasets.save_to_disk"
    if _offline_requested():
        if not datasets.config.HF_HUB_OFFLINE:
            # datasets read the environment before HF_HUB_OFFLINE was set, and would go online.
            message = f"{not_local} HF_HUB_OFFLINE is set, so Hub dataset '{name}' cannot be fetched; {local_hint}"
            raise _fail("hub_unreachable", message, file=name)
    else:
        try:
            HfApi().dataset_info(name, timeout=HUB_TIMEOUT_S)
        except RepositoryNotFoundError as error:
            message = f"{not_local} no Hub dataset '{name}' exists (or it is private or gated); {local_hint}"
            raise _fail("dataset_not_found", message, file=name) from error
        except Exception as error:  # any network failure: DNS, refused, timeout, proxy, HTTP 5xx
            message = (
                f"{not_local} the Hugging Face Hub ({constants.ENDPOINT}) is unreachable "
                f"({type(error).__name__}: {error}); {local_hint}"
            )
            raise _fail("hub_unreachable", message, file=name) from error
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # datasets raises many unrelated types for missing data, splits and configs
        offline = _offline_requested()
        cause = "HF_HUB_OFFLINE is set and it is not in the local cache: " if offline else ""
        message = f"{not_local} Hub dataset '{name}' (split '{split}') cannot be loaded: {cause}{error}; {local_hint}"
        raise _fail("hub_unreachable" if offline else "dataset_not_found", message, file=name) from error
    return dataset.to_list()


def _offline_requested() -> bool:
    """True when Hub offline mode is on, in the environment now or as datasets read it at import."""
    import datasets

    flags = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return datasets.config.HF_HUB_OFFLINE or any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


# --------------------------------------------------------------------------------------------------
# Column mapping
# --------------------------------------------------------------------------------------------------


def _columns_found(records: list[dict]) -> list[str]:
    """All column names in the rows, in order of first appearance (JSON rows may differ in keys)."""
    return list(dict.fromkeys(key for record in records for key in record))


def _resolve_columns(found: list[str], columns: Mapping[str, str] | None, label: str) -> dict[str, str | None]:
    """Field -> source column (None when absent). Mapped columns must exist; chosen and rejected are required."""
    columns = {name: column for name, column in (columns or {}).items() if column}
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        message = f"unknown field(s) in column mapping: {', '.join(unknown)}; use {', '.join(FIELDS)}"
        raise _fail("bad_mapping", message, file=label)
    found_text = ", ".join(found)
    mapping: dict[str, str | None] = {}
    for name in FIELDS:
        if name in columns:
            if columns[name] not in found:
                message = f"mapped column for {name} not found (columns found: {found_text})"
                raise _fail("missing_column", message, file=label, column=columns[name])
            mapping[name] = columns[name]
        else:
            mapping[name] = next((alias for alias in COLUMN_ALIASES[name] if alias in found), None)
    for name in ("chosen", "rejected"):
        if mapping[name] is None:
            message = f"missing required column (columns found: {found_text}); map it with columns={{'{name}': ...}}"
            raise _fail("missing_column", message, file=label, column=name)
    return mapping


# --------------------------------------------------------------------------------------------------
# One row -> one canonical pair
# --------------------------------------------------------------------------------------------------


def _normalise_row(
    record: dict, row: int, mapping: dict[str, str | None], label: str, found: list[str]
) -> tuple[dict, list[Issue], str]:
    """The canonical pair for one data row, its ``bad_score`` issues, and its content hash."""
    chosen_column, rejected_column, prompt_column = mapping["chosen"], mapping["rejected"], mapping["prompt"]
    where = {"file": label, "row": row}

    prompt: list[dict] = []
    if prompt_column is not None:
        prompt = _as_prompt(record.get(prompt_column), **where, column=prompt_column)
    chosen_before, chosen = _split_reply(record.get(chosen_column), **where, column=chosen_column)
    rejected_before, rejected = _split_reply(record.get(rejected_column), **where, column=rejected_column)
    chosen_context = _context(prompt, chosen_before)
    if _context(prompt, rejected_before) != chosen_context:
        message = (
            "chosen and rejected continue different conversations; "
            f"everything before the final reply must match '{chosen_column}'"
        )
        raise _fail("mismatched_prompt", message, **where, column=rejected_column)
    if not chosen_context:
        if prompt_column is None:
            message = (
                f"missing required column (columns found: {', '.join(found)}); without it, chosen and rejected must be "
                "conversations or HH transcripts that include the prompt"
            )
            raise _fail("missing_column", message, **where, column="prompt")
        raise _fail("wrong_type", "the prompt is an empty conversation", **where, column=prompt_column)

    issues = []
    scores = {}
    for name in ("score_chosen", "score_rejected"):
        scores[name], issue = _parse_score(record, mapping[name], row, label)
        issues += [issue] if issue else []

    content_hash = _content_hash(chosen_context, chosen, rejected)
    data_id = _id_text(record.get(mapping["id"])) if mapping["id"] else None
    pair = {
        "pair_id": data_id or content_hash,
        "row": row,
        "prompt": _display_prompt(chosen_context),
        "prompt_messages": chosen_context,
        "chosen": chosen,
        "rejected": rejected,
        **scores,
    }
    return pair, issues, content_hash


def _type_name(value: Any) -> str:
    """How a wrong value is described to the user."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "an empty value (null)"
    if isinstance(value, dict):
        return "an object/dict"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return f"a {type(value).__name__}"


def _as_conversation(value: Any, *, file: str, row: int, column: str) -> list[dict] | str:
    """Messages for a TRL conversation or an HH transcript; plain text is returned as the string itself."""
    if isinstance(value, str):
        return _parse_hh_transcript(value) if _is_hh_transcript(value) else value
    if isinstance(value, list):
        return [_message(item, index, file=file, row=row, column=column) for index, item in enumerate(value)]
    message = f"expected text or a list of {{role, content}} messages, got {_type_name(value)}"
    raise _fail("wrong_type", message, file=file, row=row, column=column)


def _message(item: Any, index: int, *, file: str, row: int, column: str) -> dict:
    """One ``{"role", "content"}`` message, checked; other keys are dropped."""
    if not isinstance(item, dict) or not isinstance(item.get("role"), str) or not isinstance(item.get("content"), str):
        shown = json.dumps(item, default=str)[:120]
        message = f"message {index} must be an object with text 'role' and 'content', got {shown}"
        raise _fail("wrong_type", message, file=file, row=row, column=column)
    return {"role": item["role"], "content": item["content"]}


def _is_hh_transcript(text: str) -> bool:
    """True for Anthropic HH-RLHF text: starts with a Human turn and has an Assistant turn."""
    return text.lstrip().startswith("Human:") and "\n\nAssistant:" in text


def _parse_hh_transcript(text: str) -> list[dict]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages with stripped text."""
    parts = _HH_TURN.split("\n\n" + text.lstrip())  # ["", role, text, role, text, ...]
    return [
        {"role": _HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2])
    ]


def _as_prompt(value: Any, *, file: str, row: int, column: str) -> list[dict]:
    """The prompt as messages: plain text is one user message; a trailing empty assistant cue is dropped."""
    conversation = _as_conversation(value, file=file, row=row, column=column)
    if isinstance(conversation, str):
        return [{"role": "user", "content": conversation}]
    if conversation and conversation[-1]["role"] == "assistant" and not conversation[-1]["content"].strip():
        conversation = conversation[:-1]  # the HH split form ends with "\n\nAssistant:" awaiting the reply
    return conversation


def _split_reply(value: Any, *, file: str, row: int, column: str) -> tuple[list[dict], str]:
    """(messages before the final reply, final reply text stripped) of a chosen or rejected value."""
    conversation = _as_conversation(value, file=file, row=row, column=column)
    if isinstance(conversation, str):
        return [], conversation.strip()
    if not conversation or conversation[-1]["role"] != "assistant":
        last = conversation[-1]["role"] if conversation else "none, the list is empty"
        message = f"a conversation must end with the assistant's reply (last role: {last})"
        raise _fail("wrong_type", message, file=file, row=row, column=column)
    return conversation[:-1], conversation[-1]["content"].strip()


def _context(prompt: list[dict], before_reply: list[dict]) -> list[dict]:
    """The conversation a reply answers: its own preceding messages if they repeat the prompt, else prompt + them."""
    if before_reply[: len(prompt)] == prompt:
        return before_reply
    return prompt + before_reply


def _display_prompt(messages: list[dict]) -> str:
    """Readable prompt: the user text for a single-turn prompt, else a ``Role: text`` transcript."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in messages)


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


def _id_text(value: Any) -> str | None:
    """The data's id as text; None when the cell is empty (the content hash is used instead)."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # ids read as floats (a column with gaps) must still match "7", not "7.0"
    return str(value)


def _content_hash(prompt_messages: list[dict], chosen: str, rejected: str) -> str:
    """First 16 hex digits of the SHA-1 of the pair's canonical JSON."""
    canonical = json.dumps(
        {"prompt_messages": prompt_messages, "chosen": chosen, "rejected": rejected},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Ids and soft checks
# --------------------------------------------------------------------------------------------------


def _make_ids_unique(rows: list[dict], content_hashes: list[str], label: str) -> list[Issue]:
    """Make ``pair_id`` unique and flag repeated pairs as ``duplicate_pair``.

    The first row with an id keeps it; later rows with the same id get ``<id>-dup1``, ``-dup2``, ... in file
    order. Rows whose prompt, chosen and rejected repeat an earlier row under another id are flagged too.
    Ids of non-repeated rows therefore do not depend on row order.
    """
    taken = {row["pair_id"] for row in rows}
    first_row_of_id: dict[str, int] = {}
    first_row_of_content: dict[str, int] = {}
    issues = []
    for row, content_hash in zip(rows, content_hashes):
        base = row["pair_id"]
        if base in first_row_of_id:
            number = 1
            while f"{base}-dup{number}" in taken:
                number += 1
            row["pair_id"] = f"{base}-dup{number}"
            taken.add(row["pair_id"])
            message = f"pair id '{base}' repeats row {first_row_of_id[base]}; this row is kept as '{row['pair_id']}'"
            issues.append(Issue(label, row["row"], "pair_id", "duplicate_pair", message))
        elif content_hash in first_row_of_content:
            message = f"same prompt, chosen and rejected as row {first_row_of_content[content_hash]}"
            issues.append(Issue(label, row["row"], "pair_id", "duplicate_pair", message))
        first_row_of_id.setdefault(base, row["row"])
        first_row_of_content.setdefault(content_hash, row["row"])
    return issues


def _attach_warning_codes(rows: list[dict], issues: list[Issue]) -> None:
    """Set each row's ``warnings`` to its issue codes, ``;``-joined without repeats ("" when clean)."""
    codes_by_row: dict[int, list[str]] = {}
    for issue in issues:
        codes_by_row.setdefault(issue.row, []).append(issue.code)
    for row in rows:
        row["warnings"] = ";".join(dict.fromkeys(codes_by_row.get(row["row"], [])))


def _soft_checks(rows: list[dict], mapping: dict[str, str | None], label: str, max_chars: int) -> list[Issue]:
    """``empty_response``, ``identical_responses`` and ``very_long`` issues, row by row."""
    chosen_column, rejected_column = mapping["chosen"], mapping["rejected"]
    prompt_column = mapping["prompt"] or chosen_column  # implicit prompts live inside the chosen column
    issues = []
    for row in rows:
        index = row["row"]
        for column, text in ((chosen_column, row["chosen"]), (rejected_column, row["rejected"])):
            if not text:
                issues.append(Issue(label, index, column, "empty_response", "the response is empty"))
        if row["chosen"] == row["rejected"]:
            message = "chosen and rejected are the same text, so the pair carries no preference"
            issues.append(Issue(label, index, f"{chosen_column},{rejected_column}", "identical_responses", message))
        fields = ((prompt_column, row["prompt"]), (chosen_column, row["chosen"]), (rejected_column, row["rejected"]))
        for column, text in fields:
            if len(text) > max_chars:
                message = f"{len(text)} characters, more than max_chars={max_chars}"
                issues.append(Issue(label, index, column, "very_long", message))
    return issues


# --------------------------------------------------------------------------------------------------
# Writing and fingerprints
# --------------------------------------------------------------------------------------------------


def pairs_to_records(pairs: pd.DataFrame) -> list[dict]:
    """Pairs as plain dicts that ``load_pairs`` reads back to the same ids, prompts, responses and scores.

    The prompt is written as its message list. Score columns are left out when they are all NaN (the
    source had none); a NaN among real scores is written as null and reloads as NaN with ``bad_score``.
    """
    score_columns = [name for name in ("score_chosen", "score_rejected") if pairs[name].notna().any()]
    records = []
    for pair in pairs.itertuples(index=False):
        record = {
            "pair_id": str(pair.pair_id),
            "prompt": [{"role": message["role"], "content": message["content"]} for message in pair.prompt_messages],
            "chosen": pair.chosen,
            "rejected": pair.rejected,
        }
        for name in score_columns:
            score = getattr(pair, name)
            record[name] = None if pd.isna(score) else float(score)
        records.append(record)
    return records


def save_pairs(pairs: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write pairs to ``.jsonl`` or ``.parquet`` (by suffix) so that ``load_pairs(path)`` reads them back."""
    path = Path(path).expanduser()
    records = pairs_to_records(pairs)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    elif suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet

        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(records), temporary)
        os.replace(temporary, path)  # readers see the old file or the new one, never half of it
    else:
        raise _fail("unknown_format", "cannot write this format; use a .jsonl or .parquet path", file=str(path))
    return path


# One encoder for every row: json.dumps with options builds a new encoder per call, a third of the time at 60,000 pairs.
_CANONICAL_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def fingerprint(pairs: pd.DataFrame) -> str:
    """A stable hash of the pairs' ids and texts, independent of row order (cache keys, selections).

    Each pair, in ``pair_id`` order, is the compact JSON ``[pair_id, prompt_messages, chosen, rejected]`` plus a
    newline; the hash is the first 16 hex digits of the SHA-1 of those lines.
    """
    digest = hashlib.sha1()
    ordered = pairs.sort_values("pair_id", kind="stable")
    columns = (ordered[name].tolist() for name in ("pair_id", "prompt_messages", "chosen", "rejected"))
    for pair_id, messages, chosen, rejected in zip(*columns):  # lists: iterating pandas' Arrow strings is slower
        digest.update(_CANONICAL_JSON.encode([str(pair_id), list(messages), chosen, rejected]).encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]
