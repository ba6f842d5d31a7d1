"""Plotly figures of an arena: win rates with CIs beside the paired difference against the random mean, the
subsets' Jaccard heatmap, and each subset's source mix. Inputs are the arena's table, overlap and mix files."""

from __future__ import annotations

import numpy as np
import pandas as pd


def arena_figure(table: pd.DataFrame):
    """Two panels, one row per contestant: win rate against the base model (percent, 95 % CI) with a dashed 50 %
    line, and the paired difference against the random mean (points, 95 % CI, sign-flip p in the hover)."""
    from plotly.subplots import make_subplots

    labels = table.contestant.astype(str).tolist()
    win = table.win_rate.to_numpy(float)
    figure = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                           subplot_titles=("Win rate vs base model (%)", "Difference vs random mean (points)"))
    colours = ["#9e9e9e" if rule == "random" else "#1f77b4" for rule in table.rule]
    figure.add_scatter(x=win, y=labels, mode="markers", marker={"size": 11, "color": colours}, name="win rate",
                       error_x={"type": "data", "symmetric": False, "array": table.ci_high.to_numpy(float) - win,
                                "arrayminus": win - table.ci_low.to_numpy(float)},
                       hovertext=[f"{rate:.1f}% ({low:.1f}-{high:.1f})" for rate, low, high
                                  in zip(win, table.ci_low, table.ci_high)], hoverinfo="text+y", row=1, col=1)
    compared = table[table.vs_random.notna()]
    difference = compared.vs_random.to_numpy(float)
    figure.add_scatter(x=difference, y=compared.contestant.astype(str).tolist(), mode="markers",
                       marker={"size": 11, "symbol": "diamond", "color": "#d62728"}, name="vs random mean",
                       error_x={"type": "data", "symmetric": False,
                                "array": compared.vs_random_high.to_numpy(float) - difference,
                                "arrayminus": difference - compared.vs_random_low.to_numpy(float)},
                       hovertext=[f"{d:+.1f} points, p = {p:.3f}" for d, p in zip(difference, compared.vs_random_p)],
                       hoverinfo="text+y", row=1, col=2)
    figure.add_vline(x=50, line_dash="dash", line_color="grey", row=1, col=1)
    figure.add_vline(x=0, line_dash="dash", line_color="grey", row=1, col=2)
    figure.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=labels)
    figure.update_layout(showlegend=False, height=120 + 40 * len(labels), margin={"t": 50, "l": 10, "r": 10})
    return figure


def overlap_figure(overlap: pd.DataFrame):
    """Heatmap of the Jaccard matrix (contestant x contestant, 0 = disjoint subsets, 1 = the same subset)."""
    import plotly.graph_objects as go

    values = overlap.to_numpy(float)
    figure = go.Figure(go.Heatmap(z=values, x=list(overlap.columns), y=list(overlap.index), zmin=0, zmax=1,
                                  colorscale="Blues", text=np.round(values, 2), texttemplate="%{text}",
                                  colorbar={"title": "Jaccard"}))
    figure.update_layout(title="Subset overlap (Jaccard)", yaxis={"autorange": "reversed"},
                         height=160 + 40 * len(overlap), margin={"t": 50})
    return figure


def source_mix_figure(mixes: dict[str, dict]):
    """Stacked horizontal bars: each subset's share of pairs from each source (fractions summing to 1); the legend
    names the sources even when there is only one."""
    import plotly.graph_objects as go

    names = list(mixes)
    sources = sorted({source for mix in mixes.values() for source in (mix.get("sources") or {})})
    figure = go.Figure()
    for source in sources:
        figure.add_bar(y=names, x=[(mixes[name].get("sources") or {}).get(source, 0.0) for name in names],
                       name=source[:40], orientation="h")
    figure.update_layout(barmode="stack", title="Source mix of each subset", xaxis={"title": "share", "range": [0, 1]},
                         yaxis={"autorange": "reversed"}, height=160 + 30 * len(names), showlegend=True,
                         legend={"orientation": "h", "y": -0.25}, margin={"t": 50})
    return figure
