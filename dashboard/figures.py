"""Plotly figure builders for the dashboard pages. Pure: tables in, ``go.Figure`` out, no Streamlit."""

from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

SELECTED = "#3b5bdb"
UNSELECTED = "#b8bfcc"
GRID = "#e6e9ef"
RINGS = "#d6336c"  # rings around pairs whose implicit margin needs a caveat (warm-up, validation)
# Above this many pairs the Margins page draws a rule's selection with `margin_density` unless the user asks for
# points: each selection change draws a new chart, and a software-WebGL browser takes seconds for 60,000 points
# (docs/benchmarks.md §4).
DENSITY_ABOVE = 20_000
# Up to this many points a scatter is drawn as SVG, above it with WebGL: a browser without a GPU (software WebGL)
# spends about a third less CPU per selection change on an SVG chart of 1,200 points, and SVG falls behind WebGL
# between 2,000 and 5,000 (docs/benchmarks.md §7).
SVG_POINTS_UP_TO = 2_500
THRESHOLD_LINE = dict(color="#e8590c", dash="dash", width=1.5)  # a threshold rule's bounds on the margin chart
MARGINAL_BINS = 40
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


def _marginal_edges(values: np.ndarray) -> np.ndarray:
    """Edges of the `MARGINAL_BINS` equal bins over the finite ``values`` (shape ``(n_pairs,)``; some finite)."""
    return np.histogram_bin_edges(values[np.isfinite(values)], bins=MARGINAL_BINS)


def _histogram_bars(values: np.ndarray, selected: np.ndarray | None, orientation: str) -> list[go.Bar]:
    """Counts of the finite ``values`` (shape ``(n_pairs,)``) in `MARGINAL_BINS` bins: bars of all pairs, then of
    the selected.

    Binned here, not by plotly: 40 bars per layer instead of up to 60,000 raw values in the figure. ``selected``:
    boolean mask of shape ``(n_pairs,)``, or None for the all-pairs layer only. ``orientation``: "v" puts the values
    on x and the counts on y, "h" the other way round. No bars when no value is finite.
    """
    finite = np.isfinite(values)
    if not finite.any():
        return []
    edges = _marginal_edges(values)
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


def _margins_frame() -> go.Figure:
    """The margin chart's grid: the main panel at (row 2, col 1), marginal histograms above and to its right."""
    return make_subplots(
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


def _finish_margins_frame(
    fig: go.Figure,
    x: np.ndarray,
    y: np.ndarray,
    selected: np.ndarray | None,
    thresholds: dict[str, tuple[float | None, float | None]] | None,
) -> go.Figure:
    """Add the marginal histograms of ``x`` and ``y`` (with the ``selected`` counts over them unless None), the
    threshold lines and the axes' styling to a `_margins_frame` whose main panel is drawn."""
    for values, row, col, orientation in ((x, 1, 1, "v"), (y, 2, 2, "h")):
        for bar in _histogram_bars(values, selected, orientation):
            fig.add_trace(bar, row=row, col=col)
    for column, (low, high) in (thresholds or {}).items():
        add_line = fig.add_vline if column == "external_margin" else fig.add_hline
        for bound in (low, high):
            if bound is not None:
                add_line(bound, line=THRESHOLD_LINE, row=2, col=1)
    fig.update_layout(
        barmode="overlay",
        height=620,
        margin=dict(l=10, r=10, t=10, b=10),
        plot_bgcolor="white",
        hoverlabel=dict(align="left", bgcolor="white", font_size=12),
        uirevision="margins",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0, bgcolor="rgba(255,255,255,0.8)"),
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


def margin_scatter(
    table: pd.DataFrame,
    hover: list[str] | None,
    *,
    selected: np.ndarray | None,
    color: np.ndarray | None = None,
    color_label: str = "",
    thresholds: dict[str, tuple[float | None, float | None]] | None = None,
    selected_marginals: bool = True,
    rings: Rings | None = None,
) -> go.Figure:
    """External vs implicit margin, one scatter trace (``data[0]``, `points_trace`) with pair ids in ``customdata``.

    ``selected`` is a boolean mask over ``table``, or None to mark no selection (an all-False mask dims every
    point; with None plotly styles only a box/lasso selection the user drags). With ``color`` (numeric, one value
    per pair) points are coloured on a scale and unselected points are dimmed; without it, selected points are
    blue and the rest grey.
    ``hover``: one label per pair (``hover_texts``), or None for a lean label (pair id and margins), which keeps
    the figure a few MB at 60,000 pairs instead of tens (every rerun sends the whole figure to the browser).
    Marginal histograms of all pairs sit above and to the right, with the selected pairs' counts over them unless
    ``selected_marginals`` is False (the box/lasso chart, whose figure must not change with the selection: see
    `selection_marginals`). ``thresholds`` draws the bounds of a threshold rule as dashed lines. ``rings`` rings
    some pairs (e.g. the warm-up proxy's own, whose implicit margins are in-sample) in a second, unselectable
    trace with a legend entry.

    The same as ``with_selection(margin_scatter_base(...), ...)``: the dashboard keeps the base of a table and
    colour, and a selection change only assembles its own parts on it.
    """
    base = margin_scatter_base(table, hover, color=color, color_label=color_label, rings=rings)
    return with_selection(base, selected, thresholds=thresholds, selected_marginals=selected_marginals)


@dataclass(frozen=True)
class Rings:
    """Pairs the margin chart rings: ``mask``, bool, shape ``(n_pairs,)``; ``label``, their legend text, where
    ``{n}`` (e.g. ``{n:,}``) stands for their count."""

    mask: np.ndarray
    label: str


WARMUP_RINGS = "warm-up pairs ({n:,}): implicit margin in-sample"
VALIDATION_RINGS = "validation pairs ({n:,}): never selected"


@dataclass(frozen=True)
class ScatterBase:
    """What `with_selection` completes: ``figure``, a `margin_scatter` without selection or threshold lines as a
    figure dict (numpy arrays in it), and the margins it draws, shape ``(n_pairs,)``."""

    figure: dict
    x: np.ndarray
    y: np.ndarray


def margin_scatter_base(
    table: pd.DataFrame,
    hover: list[str] | None,
    *,
    color: np.ndarray | None = None,
    color_label: str = "",
    rings: Rings | None = None,
) -> ScatterBase:
    """`margin_scatter` without a selection or threshold lines. Built through plotly's validated object model, once
    per table and colour: that takes several times longer than `with_selection`'s assembly per selection."""
    fig = _margins_frame()
    x = table["external_margin"].to_numpy(dtype=float)
    y = table["implicit_margin"].to_numpy(dtype=float)
    if color is None:
        marker = dict(color=SELECTED, size=6, opacity=0.85)
        dimming = dict(selected=dict(marker=dict(color=SELECTED)), unselected=dict(marker=dict(color=UNSELECTED, opacity=0.6)))
    else:
        marker = dict(color=color, colorscale="Viridis", size=6, colorbar=_colorbar(color_label))
        dimming = dict(selected=dict(marker=dict(opacity=0.9)), unselected=dict(marker=dict(opacity=0.12)))
    margins_label = "external %{x:.3g} · implicit %{y:.3g}<extra></extra>"
    fig.add_trace(
        points_trace(len(x))(
            x=x,
            y=y,
            mode="markers",
            marker=marker,
            customdata=table["pair_id"].astype(str).to_numpy(),
            text=hover,
            hovertemplate=("%{text}<br>" if hover is not None else "<b>%{customdata}</b><br>") + margins_label,
            name="pairs",
            showlegend=False,
            **dimming,
        ),
        row=2,
        col=1,
    )
    if rings is not None and rings.mask.any():
        fig.add_trace(_rings_trace(x[rings.mask], y[rings.mask], rings.label, len(x)), row=2, col=1)
    fig = _finish_margins_frame(fig, x, y, None, None)
    # Each part's to_plotly_json keeps numpy arrays (the figure's to_dict would base64-encode them).
    return ScatterBase({"data": [trace.to_plotly_json() for trace in fig.data], "layout": fig.layout.to_plotly_json()},
                       x, y)


def with_selection(
    base: ScatterBase,
    selected: np.ndarray | None,
    *,
    thresholds: dict[str, tuple[float | None, float | None]] | None = None,
    selected_marginals: bool = True,
) -> go.Figure:
    """A `margin_scatter_base` figure with ``selected`` (boolean mask over its pairs, or None) marked on the points
    and, unless ``selected_marginals`` is False, counted over the marginal histograms, and ``thresholds`` drawn as
    dashed lines: the figure plotly's own calls in `_finish_margins_frame` would build, assembled as plain dicts.
    ``base`` is only read."""
    points = base.figure["data"][0]
    # A plain list: plotly.js does not read typed arrays in selectedpoints.
    data = [dict(points, selectedpoints=None if selected is None else np.flatnonzero(selected).tolist())]
    for trace in base.figure["data"][1:]:
        data.append(dict(trace))  # a copy: plotly re-inserts a trace's "type" key when it takes the dict
        if trace.get("name") == "all pairs" and selected is not None and selected_marginals:
            data.append(_selected_bars(trace, base.x if trace["orientation"] == "v" else base.y, selected))
    shapes = [_threshold_line(column, bound, points) for column, (low, high) in (thresholds or {}).items()
              for bound in (low, high) if bound is not None]
    layout = dict(base.figure["layout"], **({"shapes": shapes} if shapes else {}))
    return go.Figure({"data": data, "layout": layout}, skip_invalid=False, _validate=False)


def _selected_bars(all_pairs: dict, values: np.ndarray, selected: np.ndarray) -> dict:
    """The selected layer over an all-pairs bar trace of `_histogram_bars`: same bins (`_marginal_edges` of the
    same ``values``), the selected pairs' counts, the selection's colour."""
    counts = np.histogram(values[np.isfinite(values) & selected], bins=_marginal_edges(values))[0]
    axis = "y" if all_pairs["orientation"] == "v" else "x"
    return dict(all_pairs, **{axis: counts}, marker=dict(all_pairs["marker"], color=SELECTED), name="selected")


def _threshold_line(column: str, bound: float, points: dict) -> dict:
    """A dashed line across the main panel at ``bound``: vertical for the external margin, else horizontal
    (what ``fig.add_vline`` / ``add_hline`` at row 2, col 1 add to the layout's shapes)."""
    x_axis, y_axis = points.get("xaxis", "x"), points.get("yaxis", "y")
    line = dict(THRESHOLD_LINE)
    if column == "external_margin":
        return dict(type="line", x0=bound, x1=bound, xref=x_axis, y0=0, y1=1, yref=f"{y_axis} domain", line=line)
    return dict(type="line", y0=bound, y1=bound, yref=y_axis, x0=0, x1=1, xref=f"{x_axis} domain", line=line)


def points_trace(n_points: int) -> type[go.Scatter] | type[go.Scattergl]:
    """The plotly trace class for a scatter of ``n_points``: SVG up to `SVG_POINTS_UP_TO`, WebGL above."""
    return go.Scatter if n_points <= SVG_POINTS_UP_TO else go.Scattergl


def _rings_trace(x: np.ndarray, y: np.ndarray, label: str, n_points: int) -> go.Scatter | go.Scattergl:
    """Open rings over some pairs, drawn like the ``n_points`` beneath them: on top, not hoverable or selectable
    (the page reads trace 0 only); ``label`` with ``{n}`` formatted as their count."""
    return points_trace(n_points)(
        x=x, y=y, mode="markers", name=label.format(n=x.size),
        marker=dict(symbol="circle-open", size=9, color=RINGS, line=dict(width=1.2)),
        hoverinfo="skip", showlegend=True,
    )


def margin_density(
    table: pd.DataFrame,
    *,
    selected: np.ndarray,
    color: np.ndarray | None = None,
    color_label: str = "",
    thresholds: dict[str, tuple[float | None, float | None]] | None = None,
    bins: int = 100,
) -> go.Figure:
    """External vs implicit margin binned on a ``bins`` x ``bins`` grid: the margin chart for tables too large to
    redraw point by point at every selection change (a few hundred kB of figure whatever the number of pairs).

    Two ``go.Heatmap`` layers over the same cells: ``data[0]`` counts every pair in a cell (grey, log-scaled);
    ``data[1]`` covers the cells holding selected pairs, coloured by their count (log-scaled) or, with ``color``
    (numeric, shape ``(n_pairs,)``), by the mean of ``color`` over the cell's selected pairs. Cells without pairs
    are left empty. ``customdata[row][col]`` is ``[pairs, selected pairs]`` of the cell, on both layers.
    ``selected``: boolean mask of shape ``(n_pairs,)``. Pairs with a missing margin are not drawn. The marginal
    histograms and threshold lines are `margin_scatter`'s.
    """
    fig = _margins_frame()
    x = table["external_margin"].to_numpy(dtype=float)
    y = table["implicit_margin"].to_numpy(dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.any():
        x_edges, x_centers = _cells(x[finite], bins)
        y_edges, y_centers = _cells(y[finite], bins)
        in_selection = finite & selected
        # histogram2d counts x along axis 0; heatmaps take z[row = y][col = x], hence the transposes.
        pairs = np.histogram2d(x[finite], y[finite], bins=(x_edges, y_edges))[0].T
        chosen = np.histogram2d(x[in_selection], y[in_selection], bins=(x_edges, y_edges))[0].T
        counts = np.stack([pairs, chosen], axis=-1).astype(int)
        if color is None:
            shown = chosen > 0
            shade = np.log10(chosen, where=shown, out=np.zeros_like(chosen))
            scale, bar = [[0, "#91a7ff"], [1, "#1c3faa"]], None
        else:  # a cell's colour: the mean over its selected pairs that have a colour value
            colored = in_selection & np.isfinite(color)
            total = np.histogram2d(x[colored], y[colored], bins=(x_edges, y_edges), weights=color[colored])[0].T
            number = np.histogram2d(x[colored], y[colored], bins=(x_edges, y_edges))[0].T
            shown = number > 0
            shade = np.divide(total, number, where=shown, out=np.zeros_like(total))
            scale, bar = "Viridis", _colorbar(f"{color_label} (cell mean)")
        cells = dict(x=x_centers, y=y_centers,
                     customdata=counts.tolist(),  # nested lists: hovertemplate indexes into them
                     hoverongaps=False,
                     hovertemplate="external ≈ %{x:.3g} · implicit ≈ %{y:.3g}<br>"
                                   "%{customdata[0]} pairs, %{customdata[1]} selected<extra></extra>")
        grey = np.where(pairs > 0, np.log10(np.maximum(pairs, 1)), np.nan)
        fig.add_trace(go.Heatmap(z=grey, name="pairs", colorscale=[[0, "#dde1e9"], [1, "#7c8597"]], showscale=False,
                                 **cells), row=2, col=1)
        fig.add_trace(go.Heatmap(z=np.where(shown, shade, np.nan), name="selected", colorscale=scale,
                                 showscale=bar is not None, colorbar=bar, **cells), row=2, col=1)
    return _finish_margins_frame(fig, x, y, selected, thresholds)


def _cells(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges and centres over ``values`` (finite, shape ``(n,)``): one cell per distinct value when there are at
    most ``bins`` of them (scores on a scale, such as 0 to 8 in half points), centred on the value and reaching
    halfway to its neighbours as plotly draws it; otherwise ``bins`` equal cells."""
    distinct = np.unique(values)
    if len(distinct) > bins:
        edges = np.histogram_bin_edges(values, bins=bins)
        return edges, (edges[:-1] + edges[1:]) / 2
    if len(distinct) == 1:
        return np.array([distinct[0] - 0.5, distinct[0] + 0.5]), distinct
    halfway = (distinct[:-1] + distinct[1:]) / 2
    ends = [2 * distinct[0] - halfway[0]], [2 * distinct[-1] - halfway[-1]]
    return np.concatenate([ends[0], halfway, ends[1]]), distinct


def _colorbar(title: str) -> dict:
    return dict(title=dict(text=title, side="right"), thickness=12, len=0.7, y=0.42, x=1.01)


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


def response_length_chart(edges: np.ndarray, chosen_counts: np.ndarray, rejected_counts: np.ndarray) -> go.Figure:
    """Chosen and rejected reply lengths as two step outlines over the same log-spaced bins
    (`dpo_engine.lengths.length_histograms`: ``edges`` in characters, shape ``(bins + 1,)``; counts ``(bins,)``)."""
    fig = go.Figure()
    bounds = np.stack([edges[:-1], edges[1:]], axis=1)
    for name, counts, color in (("chosen", chosen_counts, PALETTE[2]), ("rejected", rejected_counts, PALETTE[1])):
        fig.add_trace(go.Scatter(
            x=edges, y=np.append(counts, counts[-1:]), customdata=np.vstack([bounds, bounds[-1:]]),
            mode="lines", line=dict(shape="hv", color=color, width=2), fill="tozeroy", name=name,
            hovertemplate=f"{name}: %{{y:,}} pairs with %{{customdata[0]:,.0f}}–%{{customdata[1]:,.0f}} characters<extra></extra>",
        ))
    fig.update_xaxes(type="log", title_text="reply length (characters, log scale)", gridcolor=GRID)
    fig.update_yaxes(title_text="pairs", gridcolor=GRID, rangemode="tozero")
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white",
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0), hovermode="x unified")
    return fig


CURVES = (("loss", "loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"))


def training_curves(metrics: dict[str, pd.DataFrame], smoothing: float = 0.0, log_loss: bool = False) -> go.Figure:
    """Loss, reward margin and reward accuracy against step, one small chart (own y axis) per metric, one colour
    per run (``{label: metrics.jsonl rows}``). With ``smoothing`` > 0 the raw curve stays faint behind its EMA
    (`dpo_engine.runs.smoothing.ema`); ``log_loss`` puts the loss on a log axis (IPO's ~25 next to DPO's 0.69).
    """
    from dpo_engine.runs.smoothing import ema

    fig = make_subplots(rows=1, cols=len(CURVES), subplot_titles=[title for _, title in CURVES], horizontal_spacing=0.06)
    for number, (label, frame) in enumerate(metrics.items()):
        color = PALETTE[number % len(PALETTE)]
        for col, (key, _) in enumerate(CURVES, start=1):
            if key not in frame or frame[key].isna().all():
                continue
            points = frame[["step", key]].dropna()
            shown = ema(points[key].to_numpy(float), smoothing) if smoothing else points[key]
            if smoothing:
                fig.add_trace(go.Scatter(x=points["step"], y=points[key], mode="lines", line=dict(color=color, width=1),
                                         opacity=0.25, showlegend=False, hoverinfo="skip", legendgroup=label), row=1, col=col)
            fig.add_trace(
                go.Scatter(
                    x=points["step"], y=shown, mode="lines+markers" if len(points) < 30 else "lines",
                    name=label, legendgroup=label, showlegend=col == 1, line=dict(color=color, width=2),
                    marker=dict(size=5), hovertemplate=f"{label}<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="step", gridcolor=GRID)
    fig.update_yaxes(gridcolor=GRID)
    if log_loss:
        fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(
        height=360, margin=dict(l=10, r=10, t=60, b=10), plot_bgcolor="white",
        legend=dict(orientation="h", y=-0.25, x=0), uirevision="curves",
    )
    return fig


def win_rate_chart(results: pd.DataFrame) -> go.Figure:
    """Win rate against the baseline per run (rows of results.csv, labelled by variant), zoomed around 50 %.

    Each bar rises or falls from the 50 % line (``base=50``, length ``win_rate - 50`` points) so a 2-point
    difference is visible; whiskers: the 95 % CI; diamonds: the LC win rate; each label carries the run's
    win / tie / loss counts. The axis spans every CI with a margin, and at least 45-55 %.
    """
    variants = results.variant.fillna("").astype(str)
    labels = [variant or run_id for variant, run_id in zip(variants, results.run_id)]
    repeated = pd.Series(labels).duplicated(keep=False)
    labels = [f"{label} [{run_id}]" if again else label for label, run_id, again in zip(labels, results.run_id, repeated)]
    win = results.win_rate.to_numpy(float)
    low, high = results.ci_low.to_numpy(float), results.ci_high.to_numpy(float)
    reach = np.nanmax(np.abs(np.concatenate([low, high, results.lc_win_rate.to_numpy(float)]) - 50), initial=0.0)
    half = max(5.0, float(reach) * 1.15 + 1.0)
    # The value and the counts sit in each label, clear of the whiskers, on lines short enough not to rotate.
    names = [f"<b>{html.escape(label)}</b><br>{row.win_rate:.1f} %<br>{row.n_wins:.0f} W · {row.n_draws:.0f} T · "
             f"{row.n_losses:.0f} L" for label, row in zip(labels, results.itertuples())]
    figure = go.Figure()
    figure.add_bar(
        x=names, y=win - 50, base=50, name="win rate (95 % CI)", marker_color=SELECTED, width=0.5,
        error_y=dict(type="data", symmetric=False, array=high - win, arrayminus=win - low, thickness=2, width=10,
                     color="#212529"),
        customdata=np.stack([win, low, high], axis=1),
        hovertemplate="%{x}<br>win rate %{customdata[0]:.1f} % [%{customdata[1]:.1f}, %{customdata[2]:.1f}]<extra></extra>",
    )
    figure.add_scatter(
        x=names, y=results.lc_win_rate.to_numpy(float), mode="markers", name="LC win rate",
        marker=dict(symbol="diamond-open", size=11, color="#e8590c", line=dict(width=2)),
        hovertemplate="%{x}<br>LC win rate %{y:.1f} %<extra></extra>",
    )
    figure.add_hline(y=50, line_dash="dash", line_color="grey")
    figure.update_yaxes(range=[50 - half, 50 + half], title_text="win rate vs baseline (%; 50 = as good)",
                        gridcolor=GRID, ticksuffix=" %")
    # Side by side up to six labels fit; more are slanted so they do not run into each other.
    figure.update_xaxes(tickfont=dict(size=11), tickangle=0 if len(results) <= 6 else -40, automargin=True)
    figure.update_layout(
        height=480 if len(results) <= 6 else 560, margin=dict(l=10, r=10, t=50, b=10), plot_bgcolor="white",
        font=dict(size=13), title=dict(text="Win rate against the baseline", x=0),
        legend=dict(orientation="h", y=1.12, x=0.5, xanchor="center"),  # clear of the title and the toolbar
    )
    return figure
