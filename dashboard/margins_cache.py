"""What the Margins page keeps between reruns: the selection a rule picks and the chart figure that draws it.

Many reruns change neither: a click on a row of the selected-pairs table, typing a selection name, saving, a click
on a chart point, a rerun of the whole app. Each is keyed on the margins table's ``cache_key`` (margins file,
its modification time, dataset fingerprint) plus the small inputs (rule and parameters; a digest of the selection
mask, colour, threshold lines, chart kind). Cached as resources (shared, never copied or mutated): the page and
``st.plotly_chart`` only read them (``st.plotly_chart`` serialises a figure with ``to_dict``, which copies).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.figures import Rings, margin_density, margin_scatter_base, with_selection
from dpo_engine.selection.rules import ids_mask, select_pairs, selection_summary


def mask_digest(mask: np.ndarray | None) -> str:
    """A short fingerprint of a boolean mask (shape ``(n_pairs,)``), or ``"none"``."""
    if mask is None:
        return "none"
    packed = np.packbits(np.asarray(mask, dtype=bool))
    return f"{mask.size}:{hashlib.blake2b(packed.tobytes(), digest_size=16).hexdigest()}"


def params_text(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


@st.cache_resource(max_entries=16, show_spinner=False)
def _picked(_table: pd.DataFrame, key: tuple, rule: str, text: str, _params: dict, _overall: dict):
    ids = select_pairs(_table, rule, _params) if rule != "manual" or _params["pair_ids"] else []
    selected = ids_mask(_table, ids)
    return ids, selected, selection_summary(_table, ids, selected=selected, overall=_overall)


def picked(table: pd.DataFrame, key: tuple, rule: str, params: dict, overall: dict):
    """``(ids, mask, summary)`` of ``rule`` with ``params`` over the table of ``key``: `select_pairs`, `ids_mask`
    and `selection_summary`, once per (table, rule, parameters). A `UserError` of the rule is raised, not cached."""
    return _picked(table, key, rule, params_text(params), params, overall)


@st.cache_resource(max_entries=8, show_spinner=False)
def _scatter_base(kind: str, _table: pd.DataFrame, key: tuple, color_column: str | None, color_label: str, _hover,
                  _rings):
    color = None if color_column is None else _table[color_column].to_numpy(float)
    return margin_scatter_base(_table, _hover, color=color, color_label=color_label,
                               rings=_rings if kind == "points" else None)


@st.cache_resource(max_entries=12, show_spinner=False)
def _figure(kind: str, _table: pd.DataFrame, key: tuple, selection: str, _selected, color_column: str | None,
            color_label: str, thresholds: tuple, _hover, _rings):
    lines = dict(thresholds)
    if kind == "binned":
        color = None if color_column is None else _table[color_column].to_numpy(float)
        return margin_density(_table, selected=_selected, color=color, color_label=color_label, thresholds=lines)
    base = _scatter_base(kind, _table, key, color_column, color_label, _hover, _rings)
    if kind == "box":
        return with_selection(base, _selected, selected_marginals=False)
    return with_selection(base, _selected, thresholds=lines)


def chart_figure(kind: str, table: pd.DataFrame, key: tuple, *, selected: np.ndarray | None, color_column: str | None,
                 color_label: str, thresholds: dict | None = None, hover: list[str] | None = None,
                 rings: Rings | None = None):
    """The margin chart, built once per (table, kind, selection, colour, threshold lines); the points of a
    table and colour are built once (`margin_scatter_base`) and each selection assembled on them.

    ``kind``: ``"points"`` (`margin_scatter` with threshold lines and ``rings``), ``"binned"``
    (`margin_density`) or ``"box"`` (the box/lasso chart: `margin_scatter` without its selection's marginals;
    ``selected`` None marks no selection). ``hover`` and ``rings`` depend only on the table, so ``key`` covers them.
    """
    lines = tuple(sorted((column, tuple(bounds)) for column, bounds in (thresholds or {}).items()))
    return _figure(kind, table, key, mask_digest(selected), selected, color_column, color_label, lines, hover, rings)


def clear() -> None:
    """Forget every cached selection and figure (the benchmark's uncached side)."""
    _picked.clear()
    _scatter_base.clear()
    _figure.clear()
