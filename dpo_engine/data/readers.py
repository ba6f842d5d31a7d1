"""Readers: every supported source becomes a stream of plain-Python dicts, one per data row.

Formats (``FORMATS``): JSON Lines, a JSON list, CSV, parquet, a ``save_to_disk`` directory (``disk``) and a Hub
dataset (``hub``). Files are read as they are streamed, never whole, so validating a large file needs memory for
what is kept per row only. Text handling:

- a UTF-8 byte-order mark is accepted and CRLF line ends are read as LF;
- JSON must be UTF-8 unless ``encoding`` says otherwise;
- CSV encoding is sniffed (UTF-8, then Windows-1252, then Latin-1, which decodes any bytes) and its delimiter
  is sniffed among ``, ; tab |``; ``encoding`` / ``delimiter`` override both. Cells are read as text, so empty
  responses stay "" and ids keep their leading zeros.

Every problem raises ``DataError`` naming the file, the row (0-based data row) where known, and the flag to use.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dpo_engine.data.report import located_error
from dpo_engine.errors import DataError

FORMATS = ("jsonl", "json", "csv", "parquet", "disk", "hub")
HUB_TIMEOUT_S = 5.0
# Python's csv default (128 KiB) is smaller than one long reply; a cell larger than this is an error, not a crash.
CSV_FIELD_LIMIT = 64 * 2**20
CSV_DELIMITERS = ",;\t|"
CSV_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")

_FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SNIFF_CHARS = 64 * 1024
_CHUNK_BYTES = 2**20
_decode_json = json.JSONDecoder().decode


def read_records(
    source: str | os.PathLike, *, fmt: str | None = None, split: str = "train", label: str | None = None,
    encoding: str | None = None, delimiter: str | None = None,
) -> list[dict]:
    """All rows of ``source`` as a list of dicts (see `iter_records`); an empty source is an error."""
    label = label or str(source)
    records = list(iter_records(source, fmt=fmt, split=split, label=label, encoding=encoding, delimiter=delimiter))
    if not records:
        raise located_error("no_rows", "contains no rows", file=label)
    return records


@dataclass(frozen=True)
class InvalidRecord:
    """A data row that cannot be read (a malformed JSON line, a CSV row with too many cells): its located error,
    yielded in its place by `iter_records` with ``invalid_rows=True``, so the rows after it are still read."""

    error: DataError


def iter_records(
    source: str | os.PathLike, *, fmt: str | None = None, split: str = "train", label: str | None = None,
    encoding: str | None = None, delimiter: str | None = None, invalid_rows: bool = False,
) -> Iterator[dict | InvalidRecord]:
    """The rows of ``source`` as dicts, whatever its format, read lazily. ``split`` picks a DatasetDict's split.

    A row that cannot be read raises its ``DataError``, or with ``invalid_rows`` is yielded as an `InvalidRecord`
    (it keeps its row number) and reading goes on. Problems of the whole file always raise.
    """
    records = _records(source, fmt, split, label or str(source), encoding, delimiter)
    return records if invalid_rows else _raising(records)


def _raising(records: Iterator[dict | InvalidRecord]) -> Iterator[dict]:
    for record in records:
        if type(record) is InvalidRecord:
            raise record.error
        yield record


def _records(source, fmt, split, label, encoding, delimiter) -> Iterator[dict | InvalidRecord]:
    fmt = fmt or detect_format(source, label)
    if fmt not in FORMATS:
        raise located_error("unknown_format", f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}", file=label)
    if encoding is not None:
        _check_encoding_name(encoding, label)
    if fmt == "hub":
        return _iter_hub(str(source), split)
    path = Path(source).expanduser()
    if not path.exists():
        raise located_error("file_not_found", "file not found", file=label)
    if fmt == "jsonl":
        return _iter_jsonl(path, label, encoding or "utf-8-sig")
    if fmt == "json":
        return _iter_json(path, label, encoding or "utf-8-sig")
    if fmt == "csv":
        return _iter_csv(path, label, encoding or sniff_csv_encoding(path, label), delimiter)
    if fmt == "parquet":
        return _iter_parquet(path, label)
    return _iter_saved_dataset(path, label, split)


def detect_format(source: str | os.PathLike, label: str) -> str:
    """The format of ``source`` from what it is on disk, its suffix, or its shape as a Hub name."""
    path = Path(source).expanduser()
    if path.is_dir():
        return "disk"
    suffix = path.suffix.lower()
    if path.exists():
        if suffix in _FORMAT_BY_SUFFIX:
            return _FORMAT_BY_SUFFIX[suffix]
        raise located_error(
            "unknown_format",
            f"unknown file format '{suffix or '(no extension)'}'; use .jsonl, .json, .csv or .parquet, "
            "a directory saved by datasets.save_to_disk, or a Hub dataset name",
            file=label,
        )
    # A missing path object, or a name with a data-file suffix, is a missing file, not a Hub dataset.
    if isinstance(source, str) and suffix not in _FORMAT_BY_SUFFIX and _HUB_NAME.match(source):
        return "hub"
    raise located_error("file_not_found", "file not found", file=label)


# --------------------------------------------------------------------------------------------------
# Text: encodings
# --------------------------------------------------------------------------------------------------


def _check_encoding_name(encoding: str, label: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        message = f"unknown encoding '{encoding}' (--encoding); use e.g. utf-8, cp1252 or latin-1"
        raise located_error("bad_encoding", message, file=label) from None


def _decodes_as(path: Path, encoding: str) -> bool:
    """True when the whole file decodes as ``encoding`` (checked in chunks, so memory stays small)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def sniff_csv_encoding(path: Path, label: str) -> str:
    """The first of ``CSV_ENCODINGS`` the file decodes as (spreadsheets export Windows-1252 or Latin-1 text)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return next(encoding for encoding in CSV_ENCODINGS if _decodes_as(path, encoding))


def _decode_error(error: UnicodeDecodeError, encoding: str, label: str, row: int | None) -> Exception:
    where = "UTF-8 text" if encoding.replace("_", "-").lower() in ("utf-8", "utf-8-sig", "utf8") else encoding
    message = (
        f"is not {where} ({error.reason} at byte {error.start} of a block); "
        "give the file's encoding with --encoding (e.g. cp1252 or latin-1)"
    )
    return located_error("bad_encoding", message, file=label, row=row)


def _open_text(path: Path, label: str, encoding: str):
    try:
        return open(path, encoding=encoding, newline=None)  # newline=None reads CRLF and CR as LF
    except OSError as error:
        raise located_error("unreadable", f"cannot be read: {error.strerror or error}", file=label) from error


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------


def _parse_json(text: str, label: str, row: int | None, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        hint = "; if it has one object per line, name it .jsonl" if row is None and error.msg == "Extra data" else ""
        # A JSON Lines row is one line: the character says where in it; a whole document needs line and character.
        at = f"character {error.pos + 1}" if row is not None else f"line {error.lineno}, character {error.colno}"
        message = f"{where} is not valid JSON ({error.msg} at {at}){hint}"
        raise located_error("malformed_json", message, file=label, row=row) from error
    except RecursionError:
        message = f"{where} is nested too deeply to read (more than about {1000} levels of lists/objects)"
        raise located_error("too_deep", message, file=label, row=row) from None


def _iter_jsonl(path: Path, label: str, encoding: str) -> Iterator[dict]:
    """JSON Lines: one object per non-blank line. Text-mode iteration splits on newlines only, not on U+2028."""
    row = 0
    with _open_text(path, label, encoding) as handle:
        try:
            for line_number, line in enumerate(handle, start=1):
                try:
                    record = _decode_json(line)
                except (json.JSONDecodeError, RecursionError):
                    if not line.strip():
                        continue
                    try:
                        record = _parse_json(line, label, row, f"line {line_number}")  # raises the located error
                    except DataError as error:
                        record = InvalidRecord(error)
                if not isinstance(record, (dict, InvalidRecord)):
                    message = f"line {line_number} is a JSON {type(record).__name__}, expected an object"
                    record = InvalidRecord(located_error("wrong_type", message, file=label, row=row))
                yield record
                row += 1
        except UnicodeDecodeError as error:
            raise _decode_error(error, encoding, label, row) from None


def _iter_json(path: Path, label: str, encoding: str) -> Iterator[dict]:
    """A JSON document holding a list of objects (read whole: JSON has no streaming form in the standard library)."""
    with _open_text(path, label, encoding) as handle:
        try:
            text = handle.read()
        except UnicodeDecodeError as error:
            raise _decode_error(error, encoding, label, None) from None
    document = _parse_json(text, label, None, "the file")
    if not isinstance(document, list):
        keys = ", ".join(list(document)[:5]) if isinstance(document, dict) else type(document).__name__
        message = (
            f"expected a JSON list of row objects, got {keys!r} at the top level; "
            "save the rows as a list or as JSON Lines"
        )
        raise located_error("wrong_type", message, file=label)
    for index, record in enumerate(document):
        if not isinstance(record, dict):
            message = f"expected a JSON object, got {type(record).__name__}"
            record = InvalidRecord(located_error("wrong_type", message, file=label, row=index))
        yield record


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------


def _sniff_delimiter(sample: str) -> str:
    """The sample's delimiter among ``CSV_DELIMITERS`` (',' when the sniffer cannot tell)."""
    header = sample.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        counts = {delimiter: header.count(delimiter) for delimiter in CSV_DELIMITERS}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def _iter_csv(path: Path, label: str, encoding: str, delimiter: str | None) -> Iterator[dict]:
    """CSV with a header row, every cell as text. The csv module reads CRLF and quoted line breaks itself."""
    if delimiter is not None and len(delimiter) != 1:
        message = f"--delimiter must be one character, got {delimiter!r} (use '\\t' for tab)"
        raise located_error("bad_delimiter", message, file=label)
    csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        handle = open(path, encoding=encoding, newline="")
    except OSError as error:
        raise located_error("unreadable", f"cannot be read: {error.strerror or error}", file=label) from error
    with handle:
        try:
            sample = handle.read(_SNIFF_CHARS)
            handle.seek(0)
            delimiter = delimiter or _sniff_delimiter(sample)
            reader = csv.DictReader(handle, delimiter=delimiter, restval="")
            header = reader.fieldnames or []
        except UnicodeDecodeError as error:
            raise _decode_error(error, encoding, label, None) from None
        yield from _csv_rows(reader, header, label, encoding, delimiter)


def _csv_rows(reader: csv.DictReader, header: list[str], label: str, encoding: str, delimiter: str) -> Iterator[dict]:
    row = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as error:
            raise _decode_error(error, encoding, label, row) from None
        except csv.Error as error:
            message = f"is not a readable CSV file at line {reader.line_num} ({error}); cells are limited to " \
                f"{CSV_FIELD_LIMIT // 2**20} MiB"
            raise located_error("unreadable", message, file=label, row=row) from error
        if None in record:
            message = (
                f"has {len(header) + len(record[None])} cells but the header has {len(header)}; "
                f"the delimiter used is {delimiter!r}: give the right one with --delimiter"
            )
            record = InvalidRecord(located_error("unreadable", message, file=label, row=row))
        yield record
        row += 1


# --------------------------------------------------------------------------------------------------
# Parquet, save_to_disk directories and the Hub
# --------------------------------------------------------------------------------------------------


def _iter_parquet(path: Path, label: str) -> Iterator[dict]:
    """Parquet, batch by batch, read with pyarrow so nested message lists come back as lists of dicts."""
    import pyarrow
    import pyarrow.parquet

    try:
        batches = pyarrow.parquet.ParquetFile(path).iter_batches(batch_size=4096)
        for batch in batches:
            yield from batch.to_pylist()
    except (pyarrow.ArrowException, OSError) as error:
        raise located_error("unreadable", f"is not a readable parquet file: {error}", file=label) from error


def _iter_dataset(dataset) -> Iterator[dict]:
    for batch in dataset.iter(batch_size=1024):
        names = list(batch)
        yield from (dict(zip(names, values)) for values in zip(*batch.values()))


def _iter_saved_dataset(path: Path, label: str, split: str) -> Iterator[dict]:
    """A directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (then ``split``)."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        message = "is a directory but not one saved by datasets.save_to_disk; pass a data file instead"
        raise located_error("unknown_format", message, file=label) from error
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            message = f"has no split '{split}'; available splits: {', '.join(dataset)}"
            raise located_error("unknown_split", message, file=label)
        dataset = dataset[split]
    return _iter_dataset(dataset)


def _iter_hub(name: str, split: str) -> Iterator[dict]:
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
            raise located_error("hub_unreachable", message, file=name)
    else:
        try:
            HfApi().dataset_info(name, timeout=HUB_TIMEOUT_S)
        except RepositoryNotFoundError as error:
            message = f"{not_local} no Hub dataset '{name}' exists (or it is private or gated); {local_hint}"
            raise located_error("dataset_not_found", message, file=name) from error
        except Exception as error:  # any network failure: DNS, refused, timeout, proxy, HTTP 5xx
            message = (
                f"{not_local} the Hugging Face Hub ({constants.ENDPOINT}) is unreachable "
                f"({type(error).__name__}: {error}); {local_hint}"
            )
            raise located_error("hub_unreachable", message, file=name) from error
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # datasets raises many unrelated types for missing data, splits and configs
        offline = _offline_requested()
        cause = "HF_HUB_OFFLINE is set and it is not in the local cache: " if offline else ""
        message = f"{not_local} Hub dataset '{name}' (split '{split}') cannot be loaded: {cause}{error}; {local_hint}"
        raise located_error("hub_unreachable" if offline else "dataset_not_found", message, file=name) from error
    return _iter_dataset(dataset)


def _offline_requested() -> bool:
    """True when Hub offline mode is on, in the environment now or as datasets read it at import."""
    import datasets

    flags = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return datasets.config.HF_HUB_OFFLINE or any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)

