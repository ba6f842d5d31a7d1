"""Plotly figure builders for the dashboard pages. Pure: tables in, ``go.Figure`` out, no Streamlit."""

from __future__ import annotations

import html
import textwrap

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

SELECTED = "#3b5bdb"
UNSELECTED = "#b8bfcc"
GRID = "#e6e9ef"
PALETTE = ("#3b5bdb", "#e8590c", "#2b8a3e", "#c2255c", "#5f3dc4", "#0b7285", "#e67700", "#495057")


def _snippet(text: str, width: int = 70, max_chars: int = 140) -> str:
    """Text for a hover label: truncated, HTML-escaped, wrapped with <br>."""
    text = " ".join(str(text).split())
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return "<br>".join(html.escape(line) for line in textwrap.wrap(text, width)) or "<i>(empty)</i>"


def hover_texts(pairs: pd.DataFrame) -> list[str]:
    """One hover label per pair (in ``pairs`` order): id, prompt, chosen and rejected, each truncated."""
    return [
        f"<b>{html.escape(str(pair_id))}</b><br><b>Prompt</b> {_snippet(prompt)}"
        f"<br><b>Chosen</b> {_snippet(chosen)}<br><b>Rejected</b> {_snippet(rejected)}"
        for pair_id, prompt, chosen, rejected in zip(pairs.pair_id, pairs.prompt, pairs.chosen, pairs.rejected)
    ]


def _histogram_bars(values: np.ndarray, selected: np.ndarray | None, orientation: str) -> list[go.Bar]:
    """Counts of the finite ``values`` (shape ``(n_pairs,)``) in 40 bins: bars of all pairs, then of the selected.

    Binned here, not by plotly: 40 bars per layer instead of up to 60,000 raw values in the figure. ``selected``:
    boolean mask of shape ``(n_pairs,)``, or None for the all-pairs layer only. ``orientation``: "v" puts the values
    on x and the counts on y, "h" the other way round. No bars when no value is finite.
    """
    finite = np.isfinite(values)
    if not finite.any():
        return []
    edges = np.histogram_bin_edges(values[finite], bins=40)
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    layers = [(finite, UNSELECTED, "all pairs")]
    if selected is not None:
        layers.append((finite & selected, SELECTED, "selected"))
    bars = []
    for mask, tint, name in layers:
        counts = np.histogram(values[mask], bins=edges)[0]
        axis = dict(x=centers, y=counts, width=width) if orientation == "v" else dict(y=centers, x=counts, width=width)
        bars.append(go.Bar(**axis, orientation=orientation, marker_color=tint, marker_line_width=0, name=name,
                           showlegend=False, hoverinfo="skip"))
    return bars


def margin_scatter(
    table: pd.DataFrame,
    hover: list[str] | None,
    *,
    selected: np.ndarray | None,
    color: np.ndarray | None = None,
    color_label: str = "",
    thresholds: dict[str, tuple[float | None, float | None]] | None = None,
    selected_marginals: bool = True,
) -> go.Figure:
    """External vs implicit margin, one ``go.Scattergl`` trace (``data[0]``) with pair ids in ``customdata``.

    ``selected`` is a boolean mask over ``table``, or None to mark no selection (an all-False mask dims every
    point; with None plotly styles only a box/lasso selection the user drags). With ``color`` (numeric, one value
    per pair) points are coloured on a scale and unselected points are dimmed; without it, selected points are
    blue and the rest grey.
    ``hover``: one label per pair (``hover_texts``), or None for a lean label (pair id and margins), which keeps
    the figure a few MB at 60,000 pairs instead of tens (every rerun sends the whole figure to the browser).
    Marginal histograms of all pairs sit above and to the right, with the selected pairs' counts over them unless
    ``selected_marginals`` is False (the box/lasso chart, whose figure must not change with the selection: see
    `selection_marginals`). ``thresholds`` draws the bounds of a threshold rule as dashed lines.
    """
    fig = make_subplots(
        rows=2,
        cols=2,
        specs=[[{"type": "xy"}, None], [{"type": "xy"}, {"type": "xy"}]],
        column_widths=[0.84, 0.16],
        row_heights=[0.16, 0.84],
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.012,
        vertical_spacing=0.012,
    )
    x = table["external_margin"].to_numpy(dtype=float)
    y = table["implicit_margin"].to_numpy(dtype=float)
    # Plotly's selectedpoints styles the selection from a list of indices: no per-point colour strings to send.
    if color is None:
        marker = dict(color=SELECTED, size=6, opacity=0.85)
        dimming = dict(selected=dict(marker=dict(color=SELECTED)), unselected=dict(marker=dict(color=UNSELECTED, opacity=0.6)))
    else:
        marker = dict(
            color=color,
            colorscale="Viridis",
            size=6,
            colorbar=dict(title=dict(text=color_label, side="right"), thickness=12, len=0.7, y=0.42, x=1.01),
        )
        dimming = dict(selected=dict(marker=dict(opacity=0.9)), unselected=dict(marker=dict(opacity=0.12)))
    margins_label = "external %{x:.3g} · implicit %{y:.3g}<extra></extra>"
    fig.add_trace(
        go.Scattergl(
            x=x,
            y=y,
            mode="markers",
            marker=marker,
            customdata=table["pair_id"].astype(str).to_numpy(),
            text=hover,
            hovertemplate=("%{text}<br>" if hover is not None else "<b>%{customdata}</b><br>") + margins_label,
            name="pairs",
            showlegend=False,
            # A plain list: plotly.js does not read typed arrays here.
            selectedpoints=None if selected is None else np.flatnonzero(selected).tolist(),
            **dimming,
        ),
        row=2,
        col=1,
    )
    for values, row, col, orientation in ((x, 1, 1, "v"), (y, 2, 2, "h")):
        for bar in _histogram_bars(values, selected if selected_marginals else None, orientation):
            fig.add_trace(bar, row=row, col=col)
    for column, (low, high) in (thresholds or {}).items():
        add_line = fig.add_vline if column == "external_margin" else fig.add_hline
        for bound in (low, high):
            if bound is not None:
                add_line(bound, line_dash="dash", line_color="#e8590c", line_width=1.5, row=2, col=1)
    fig.update_layout(
        barmode="overlay",
        height=620,
        margin=dict(l=10, r=10, t=10, b=10),
        plot_bgcolor="white",
        hoverlabel=dict(align="left", bgcolor="white", font_size=12),
        uirevision="margins",
    )
    fig.update_xaxes(gridcolor=GRID, zerolinecolor="#c9ced8")
    fig.update_yaxes(gridcolor=GRID, zerolinecolor="#c9ced8")
    fig.update_xaxes(title_text="external margin (reward model / data scores)", row=2, col=1)
    fig.update_yaxes(title_text="implicit margin (policy vs reference log-ratio)", row=2, col=1)
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_yaxes(showticklabels=False, row=2, col=2)
    fig.update_xaxes(showticklabels=False, row=2, col=2)
    fig.update_yaxes(showticklabels=False, row=1, col=1)
    return fig


def selection_marginals(table: pd.DataFrame, selected: np.ndarray) -> go.Figure:
    """Histograms of the external (left) and implicit (right) margin: all pairs, with the selected pairs' counts over them.

    ``selected``: boolean mask over ``table``. The same bins as `margin_scatter`'s marginals; shown under the
    box/lasso chart, whose own marginals leave the selection out.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=["external margin", "implicit margin"], horizontal_spacing=0.06)
    for col, column in enumerate(("external_margin", "implicit_margin"), start=1):
        for bar in _histogram_bars(table[column].to_numpy(dtype=float), selected, "v"):
            fig.add_trace(bar, row=1, col=col)
    fig.update_layout(barmode="overlay", height=240, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white")
    fig.update_xaxes(gridcolor=GRID, zerolinecolor="#c9ced8")
    fig.update_yaxes(gridcolor=GRID, zerolinecolor="#c9ced8", title_text="pairs", col=1)
    return fig


CURVES = (("loss", "loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"))


def training_curves(metrics: dict[str, pd.DataFrame]) -> go.Figure:
    """Loss, reward margin and reward accuracy against step, one colour per run (``{label: metrics.jsonl rows}``)."""
    fig = make_subplots(rows=1, cols=len(CURVES), subplot_titles=[title for _, title in CURVES], horizontal_spacing=0.06)
    for number, (label, frame) in enumerate(metrics.items()):
        color = PALETTE[number % len(PALETTE)]
        for col, (key, _) in enumerate(CURVES, start=1):
            if key not in frame or frame[key].isna().all():
                continue
            points = frame[["step", key]].dropna()
            fig.add_trace(
                go.Scatter(
                    x=points["step"], y=points[key], mode="lines+markers" if len(points) < 30 else "lines",
                    name=label, legendgroup=label, showlegend=col == 1, line=dict(color=color, width=2),
                    marker=dict(size=5), hovertemplate=f"{label}<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="step", gridcolor=GRID)
    fig.update_yaxes(gridcolor=GRID)
    fig.update_layout(
        height=360, margin=dict(l=10, r=10, t=60, b=10), plot_bgcolor="white",
        legend=dict(orientation="h", y=-0.25, x=0), uirevision="curves",
    )
    return fig
