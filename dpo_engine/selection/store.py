"""The Selection record: a named subset of a dataset and how it was chosen; save, load, list and export it.

Saved as JSON under the workspace's ``selections/``; `export_selection` writes the chosen rows for training.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.files import atomic_write_json
from dpo_engine.paths import workspace_subdir
from dpo_engine.selection.rules import filter_by_ids

def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Selection:
    """A named subset of a dataset and how it was chosen: ``select_pairs(table, rule, params)`` gave ``pair_ids``.

    ``dataset_fingerprint`` is `dpo_engine.data.fingerprint` of the pairs the margins were computed on (None when
    unknown); ``created`` is an ISO-8601 UTC time.
    """

    name: str
    rule: str
    params: dict
    dataset_fingerprint: str | None
    pair_ids: list[str]
    created: str = field(default_factory=_now_iso)


def _file_stem(name: str) -> str:
    """A selection name as a safe file name: runs of anything but letters, digits, '.', '_' and '-' become '_'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    if not stem:
        raise UserError(f"selection name {name!r} has no usable characters (use letters, digits, '.', '_' or '-')")
    return stem


def save_selection(selection: Selection, directory: str | Path | None = None, *, path: str | Path | None = None) -> Path:
    """Write ``selection`` as JSON and return the file's path, replacing a selection of the same name.

    The file is ``<directory>/<sanitised name>.json`` (``directory`` defaults to the workspace's ``selections/``),
    or exactly ``path`` when given. The write is atomic: a reader sees the old file or the new one.
    """
    if path is None:
        directory = Path(directory) if directory is not None else workspace_subdir("selections")
        path = directory / f"{_file_stem(selection.name)}.json"
    path = Path(path)
    atomic_write_json(path, asdict(selection))
    return path


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
    if not isinstance(data, dict) or set(names) - set(data):
        raise UserError(f"selection file {path} does not hold a selection (needs fields {', '.join(names)})")
    return Selection(**{name: data[name] for name in names})


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
