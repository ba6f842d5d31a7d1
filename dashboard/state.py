"""What every page shares: the current dataset, its pairs and its margins table.

The dataset choice lives in ``st.session_state``; loaded pairs and margins are cached per source and file
modification time, so a page switch does not reload them. Everything here only calls the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from dpo_engine.data.pairs import LoadedPairs, ValidationReport, bundled_datasets, fingerprint, load_pairs, save_pairs
from dpo_engine.errors import DataError
from dpo_engine.margins.table import load_margins_table
from dpo_engine.paths import ASSETS_DIR, workspace_subdir

DEFAULT_DATASET = "ultrafeedback"
SOURCE_KEY = "data_source"
DATASET_PARAM, UPLOAD_PARAM = "dataset", "upload"  # query parameters that restore the dataset after a reload


@dataclass(frozen=True)
class DataSource:
    """Where the current pairs come from: a path or Hub name, an optional column mapping, a display label."""

    source: str
    label: str
    columns: tuple[tuple[str, str], ...] = ()
    bundled: str | None = None  # the bundled dataset's name, when it is one
    drop_invalid: bool = False  # the user chose to leave out the rows that cannot be used

    @property
    def column_map(self) -> dict[str, str]:
        return dict(self.columns)


def bundled_source(name: str) -> DataSource:
    return DataSource(source=str(bundled_datasets()[name]), label=f"{name} (bundled demo)", bundled=name)


def current_source() -> DataSource:
    """This session's dataset: chosen on the Data page, else restored from the page address, else the default."""
    if SOURCE_KEY not in st.session_state:
        st.session_state[SOURCE_KEY] = source_from_query() or bundled_source(DEFAULT_DATASET)
    return st.session_state[SOURCE_KEY]


def set_source(source: DataSource) -> None:
    st.session_state[SOURCE_KEY] = source
    keep_source_in_address(source)


def source_address(source: DataSource) -> dict[str, str]:
    """The query parameter that names ``source`` (``source_from_query`` reads it back), or {} for a source an
    address cannot name (a path, mapped columns, dropped rows)."""
    if source.bundled is not None:
        return {DATASET_PARAM: source.bundled}
    if Path(source.source).parent == workspace_subdir("uploads") and not source.columns and not source.drop_invalid:
        return {UPLOAD_PARAM: Path(source.source).name}
    return {}


def keep_source_in_address(source: DataSource) -> None:
    """Make the address name ``source`` (a page switch may have dropped it), writing only what changes."""
    wanted = source_address(source)
    for key in (DATASET_PARAM, UPLOAD_PARAM):
        if key in wanted:
            if st.query_params.get(key) != wanted[key]:
                st.query_params[key] = wanted[key]
        elif key in st.query_params:
            del st.query_params[key]


def source_from_query() -> DataSource | None:
    """The dataset named in the address (``?dataset=<bundled name>`` or ``?upload=<uploaded file>``), so a reload
    keeps it. Only those two: a link cannot make the server read an arbitrary path."""
    name = st.query_params.get(DATASET_PARAM)
    if name in bundled_datasets():
        return bundled_source(name)
    upload = st.query_params.get(UPLOAD_PARAM)
    uploads = workspace_subdir("uploads")
    if upload and (uploads / Path(upload).name).is_file():
        path = uploads / Path(upload).name
        return DataSource(source=str(path), label=path.name)
    return None


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner="Loading pairs…", max_entries=8)
def _load(source: str, columns: tuple[tuple[str, str], ...], mtime: float,
          drop_invalid: bool = False) -> tuple[LoadedPairs | None, ValidationReport]:
    """Load once per (source, mapping, file version, drop choice); a failed load becomes its report (every
    unusable row listed, `ValidationReport.from_error`).

    ``cache_resource``: the pairs are shared read-only across reruns and sessions, not copied on every call.
    """
    try:
        loaded = load_pairs(source, columns=dict(columns) or None, drop_invalid=drop_invalid)
    except DataError as error:
        return None, ValidationReport.from_error(error)
    return loaded, loaded.report


def load(source: DataSource) -> tuple[LoadedPairs | None, ValidationReport]:
    """The loaded pairs (None when loading failed) and the validation report.

    A successful load also fingerprints the pairs (cached like the load), so the pages that key margins and
    selections by it do not pay for it (about a second at 60,000 pairs) when they open.
    """
    loaded, report = _load(source.source, source.columns, _mtime(source.source), source.drop_invalid)
    if loaded is not None:
        dataset_fingerprint(source)
    return loaded, report


@st.cache_resource(show_spinner="Fingerprinting pairs…", max_entries=8)
def _fingerprint(source: str, columns: tuple[tuple[str, str], ...], mtime: float, drop_invalid: bool = False) -> str:
    loaded, _ = _load(source, columns, mtime, drop_invalid)
    return fingerprint(loaded.pairs)


def dataset_fingerprint(source: DataSource) -> str:
    return _fingerprint(source.source, source.columns, _mtime(source.source), source.drop_invalid)


def pairs_file(source: DataSource, loaded: LoadedPairs, dataset_fp: str) -> str:
    """A file the engine's commands can read these pairs from: the source, or a normalised copy if columns were
    mapped or invalid rows dropped."""
    if not source.columns and not source.drop_invalid:
        return source.source
    path = workspace_subdir("datasets") / f"{dataset_fp}.jsonl"
    if not path.exists():
        save_pairs(loaded.pairs, path)
    return str(path)


# ---- margins tables ----------------------------------------------------------------------------------------------


def computed_margins_path(dataset_fp: str) -> Path:
    """Where a margins job started from the dashboard writes the table for a dataset."""
    return workspace_subdir("margins") / f"{dataset_fp}.parquet"


def shipped_margins_path(source: DataSource) -> Path | None:
    """The precomputed table shipped for a bundled dataset (``assets/margins/<name>.parquet``), if any."""
    if source.bundled is None:
        return None
    path = ASSETS_DIR / "margins" / f"{source.bundled}.parquet"
    return path if path.exists() else None


def margins_path(source: DataSource, dataset_fp: str) -> Path | None:
    """The margins table to show: one computed here for these exact pairs, else the shipped one."""
    computed = computed_margins_path(dataset_fp)
    if computed.exists():
        return computed
    return shipped_margins_path(source)


@st.cache_resource(show_spinner="Loading margins…", max_entries=8)
def _load_margins(path: str, mtime: float) -> tuple[pd.DataFrame, dict]:
    return load_margins_table(path)


def load_margins(path: Path) -> tuple[pd.DataFrame, dict]:
    """The margins table and its ``.meta.json`` description (read-only, shared)."""
    return _load_margins(str(path), _mtime(str(path)))
