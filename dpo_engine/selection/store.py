"""The Selection record: a named subset of a dataset and how it was chosen; save, load, list and export it.

Saved as JSON under the workspace's ``selections/``; `export_selection` writes the chosen rows for training.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.files import atomic_write_json
from dpo_engine.paths import slug, workspace_subdir
from dpo_engine.timestamps import utc_now_iso
from dpo_engine.selection.rules import filter_by_ids

@dataclass
class Selection:
    """A named subset of a dataset and how it was chosen: ``select_pairs(table, rule, params)`` gave ``pair_ids``.

    ``dataset_fingerprint`` is `dpo_engine.data.fingerprint` of the pairs the margins were computed on (None when
    unknown); ``created`` is an ISO-8601 UTC time. ``provenance``: how the pairs were loaded, e.g. the rows left out
    (``dropped_rows``, ``dropped_count``, ``dropped_reason``: `ValidationReport.dropped_provenance`); {} for none.
    """

    name: str
    rule: str
    params: dict
    dataset_fingerprint: str | None
    pair_ids: list[str]
    created: str = field(default_factory=utc_now_iso)
    provenance: dict = field(default_factory=dict)


def _file_stem(name: str) -> str:
    """A selection name as a safe file name: runs of anything but letters, digits, '.', '_' and '-' become '_'."""
    stem = slug(name, separator="_", max_length=255)
    if not stem:
        raise UserError(f"selection name {name!r} has no usable characters (use letters, digits, '.', '_' or '-')")
    return stem


class SelectionExists(UserError):
    """A save that would replace an existing selection file without ``overwrite``."""


def selection_path(name: str, directory: str | Path | None = None) -> Path:
    """Where the selection ``name`` is saved: ``<directory>/<sanitised name>.json``, inside ``directory``.

    ``directory`` defaults to the workspace's ``selections/``. Names a user types are checked first with
    `dpo_engine.paths.check_name` (the dashboard and the CLI do); the sanitising here keeps any name inside.
    """
    directory = Path(directory) if directory is not None else workspace_subdir("selections")
    return directory / f"{_file_stem(name)}.json"


def save_selection(selection: Selection, directory: str | Path | None = None, *, path: str | Path | None = None,
                   overwrite: bool = False) -> Path:
    """Write ``selection`` as JSON and return the file's path; never replaces a file unless ``overwrite``.

    The file is `selection_path` (``directory`` defaults to the workspace's ``selections/``), or exactly ``path``
    when given. Without ``overwrite`` the file is created exclusively, so of two saves under one name (or two
    names that sanitise to one file, e.g. ``a/b`` and ``a_b``) one wins and the other raises `SelectionExists`.
    Either way the write is atomic: a reader sees the old file or the new one.
    """
    path = Path(path) if path is not None else selection_path(selection.name, directory)
    if overwrite:
        atomic_write_json(path, asdict(selection))
    else:
        _create_json(path, asdict(selection), selection.name)
    return path


def _create_json(path: Path, value: dict, name: str) -> None:
    """Write ``value`` to ``path`` only if no file is there: a complete temporary file, hard-linked into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    atomic_write_json(staging, value)
    try:
        os.link(staging, path)  # fails if the name exists: an atomic exclusive create of the whole file
    except FileExistsError:
        raise SelectionExists(
            f"selection {name!r}: {path} already exists; choose another name or overwrite it explicitly "
            "(the Overwrite box in the dashboard, --overwrite on the command line)"
        ) from None
    finally:
        staging.unlink(missing_ok=True)


def load_selection(path_or_name: str | Path) -> Selection:
    """Read a selection from a JSON file path, or by name from the workspace's ``selections/``."""
    candidate = Path(path_or_name)
    if candidate.suffix == ".json" or candidate.is_file():
        path = candidate
    else:
        path = workspace_subdir("selections") / f"{_file_stem(str(path_or_name))}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no selection file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"selection file {path} is not valid JSON: {error}") from None
    names = [f.name for f in fields(Selection)]
    required = names[:-1]  # files saved before provenance existed have none
    if not isinstance(data, dict) or set(required) - set(data):
        raise UserError(f"selection file {path} does not hold a selection (needs fields {', '.join(required)})")
    return Selection(**{name: data[name] for name in names if name in data})


def list_selections(directory: str | Path | None = None) -> list[Selection]:
    """Every readable selection in ``directory`` (default: the workspace's ``selections/``), newest first.

    Files that are not selections are skipped, so one bad file does not hide the others.
    """
    directory = Path(directory) if directory is not None else workspace_subdir("selections")
    selections = []
    for path in sorted(directory.glob("*.json")):
        try:
            selections.append(load_selection(path))
        except UserError:
            continue
    return sorted(selections, key=lambda selection: selection.created, reverse=True)


def export_selection(selection: Selection, pairs_df: pd.DataFrame, path: str | Path) -> Path:
    """Write the selected rows of a pairs DataFrame (`dpo_engine.data`) to jsonl/parquet for training.

    Rows keep the dataset's order. Every selected id must be in ``pairs_df``; otherwise the selection was made on
    another dataset and a UserError says so.
    """
    from dpo_engine.data.pairs import save_pairs  # data pulls in heavier loaders; only exporting needs it

    subset = filter_by_ids(pairs_df, selection.pair_ids)
    missing = sorted(set(map(str, selection.pair_ids)) - set(subset["pair_id"].astype(str)))
    if missing:
        raise UserError(
            f"selection '{selection.name}': {len(missing)} of its {len(selection.pair_ids)} pair ids are not in this "
            f"dataset (e.g. '{missing[0]}'); was it made on another dataset?"
        )
    path = Path(path)
    save_pairs(subset, path)
    return path
