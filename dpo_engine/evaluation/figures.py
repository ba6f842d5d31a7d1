"""Plotly figures of an evaluation's results table: win rates with their CIs, and paired differences."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _row_labels(results: pd.DataFrame) -> list[str]:
    """The variant label of each row, with the run id added where labels repeat."""
    variants = results.variant.fillna("").astype(str)
    labels = [variant or run_id for variant, run_id in zip(variants, results.run_id)]
    repeated = pd.Series(labels).duplicated(keep=False)
    return [f"{label} [{run_id}]" if again else label for label, run_id, again in zip(labels, results.run_id, repeated)]


def win_rate_figure(results: pd.DataFrame, title: str = "Win rate against the baseline"):
    """A plotly bar chart of ``results`` (rows of results.csv): one bar per run.

    Bars: win rate (percent) with asymmetric bootstrap 95 % CI error bars; diamonds beside each bar: LC win rate;
    a dashed line at 50 % (as good as the baseline); labels and hover show mean lengths (characters) and n.
    """
    import plotly.graph_objects as go

    labels = _row_labels(results)
    positions = np.arange(len(results), dtype=float)
    win = results.win_rate.to_numpy(float)
    hover = [
        f"<b>{label}</b><br>win rate {row.win_rate:.1f}% (95% CI {row.ci_low:.1f}-{row.ci_high:.1f})<br>"
        f"LC win rate {row.lc_win_rate:.1f}%<br>mean length {row.mean_length:.0f} chars "
        f"(baseline {row.baseline_mean_length:.0f})<br>n = {row.n}, failed = {row.n_failed}"
        for label, row in zip(labels, results.itertuples())
    ]
    figure = go.Figure()
    figure.add_bar(
        x=positions,
        y=win,
        width=0.55,
        name="win rate",
        error_y={
            "type": "data",
            "symmetric": False,
            "array": results.ci_high.to_numpy(float) - win,
            "arrayminus": win - results.ci_low.to_numpy(float),
        },
        text=[f"{rate:.1f}%<br>{length:.0f} ch" for rate, length in zip(win, results.mean_length)],
        textposition="inside",
        insidetextanchor="start",  # at the foot of the bar, clear of the error bar
        hovertext=hover,
        hoverinfo="text",
    )
    figure.add_scatter(
        x=positions + 0.38,
        y=results.lc_win_rate.to_numpy(float),
        mode="markers",
        marker={"symbol": "diamond", "size": 11},
        name="LC win rate",
        hovertext=hover,
        hoverinfo="text",
    )
    figure.add_hline(y=50, line_dash="dash", line_color="grey", annotation_text="50% = baseline",
                     annotation_position="top right")
    figure.update_layout(
        title=title,
        xaxis={"tickvals": positions, "ticktext": labels, "title": None},
        yaxis={"title": "win rate vs baseline (%)", "range": [0, 100]},
        legend={"orientation": "h", "y": -0.2},
        margin={"t": 60},
    )
    return figure


def paired_figure(results: pd.DataFrame, title: str | None = None):
    """A plotly forest plot of each run's paired difference (points) against ``paired_vs``, with its 95 % CI."""
    import plotly.graph_objects as go

    paired = results[results.paired_vs.fillna("") != ""]
    labels = [label for label, has_pair in zip(_row_labels(results), results.paired_vs.fillna("") != "") if has_pair]
    difference = paired.paired_difference.to_numpy(float)
    figure = go.Figure()
    figure.add_scatter(
        x=difference,
        y=labels,
        mode="markers",
        marker={"size": 10},
        error_x={
            "type": "data",
            "symmetric": False,
            "array": paired.paired_ci_high.to_numpy(float) - difference,
            "arrayminus": difference - paired.paired_ci_low.to_numpy(float),
        },
        hovertext=[f"{d:+.1f} points (p = {p:.3f})" for d, p in zip(difference, paired.paired_p_value)],
        hoverinfo="text+y",
        name="paired difference",
    )
    figure.add_vline(x=0, line_dash="dash", line_color="grey")
    reference = paired.paired_vs.iloc[0] if len(paired) else ""
    figure.update_layout(
        title=title or f"Win-rate difference vs {reference} (same prompts, points)",
        xaxis={"title": "difference in win rate (percentage points)"},
        yaxis={"autorange": "reversed"},
    )
    return figure
