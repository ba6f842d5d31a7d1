"""Plotly figures of the Rounds page. Pure: round summaries in, ``go.Figure`` out, no Streamlit."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.figures import GRID, PALETTE


def win_rate_by_round(summaries: dict[str, pd.DataFrame]) -> go.Figure:
    """Win rate over the base model (percent) against round, one line per loop, with its CI as error bars.

    ``summaries``: ``{loop name: dpo_engine.rounds.round_summary(name)}``; rounds without an evaluation are skipped.
    """
    fig = go.Figure()
    for number, (name, summary) in enumerate(summaries.items()):
        done = summary.dropna(subset=["win_rate"])
        fig.add_trace(go.Scatter(
            x=done["round"], y=done.win_rate, mode="lines+markers", name=name,
            line=dict(color=PALETTE[number % len(PALETTE)], width=2),
            error_y=dict(type="data", symmetric=False, array=done.ci_high - done.win_rate,
                         arrayminus=done.win_rate - done.ci_low),
            hovertemplate=f"{name}<br>round %{{x}}: %{{y:.1f}} %<extra></extra>",
        ))
    fig.add_hline(y=50, line=dict(color="#868e96", dash="dot"))
    fig.update_xaxes(title_text="round", dtick=1, gridcolor=GRID)
    fig.update_yaxes(title_text="win rate vs base (%)", gridcolor=GRID)
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      legend=dict(orientation="h", y=-0.25, x=0))
    return fig
