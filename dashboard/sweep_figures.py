"""The parallel-coordinates view of a sweep. Pure: the sweep's table in, ``go.Figure`` out, no Streamlit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# The colour of each run's line: its final value of the first metric present, dark (low) to bright (high).
COLORSCALE = "Viridis"


def axis(values: pd.Series, label: str) -> dict | None:
    """One ``go.Parcoords`` dimension: numbers as they are, anything else as categories ticked by name.

    ``values``: one entry per run (a swept setting or a final metric). None when every entry is missing.
    """
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return {"label": label, "values": numeric.to_numpy(float)}
    if values.isna().all():
        return None
    names = values.astype(object).fillna("–").astype(str)  # object first: a float column takes no text
    categories = sorted(names.unique())
    codes = names.map({name: code for code, name in enumerate(categories)}).to_numpy(float)
    return {"label": label, "values": codes, "tickvals": list(range(len(categories))), "ticktext": categories}


def sweep_parcoords(table: pd.DataFrame, settings: list[str], metrics: list[str]) -> go.Figure:
    """One line per run across the sweep's ``settings`` (the values that differ between its runs) then its final
    ``metrics``; coloured by the first metric that has a value.

    ``table``: one row per run with those columns (settings as text or numbers; metrics as numbers, NaN while a
    run has not logged one). Axes without any value are left out.
    """
    dimensions = [dimension for column in [*settings, *metrics]
                  if (dimension := axis(table[column], column)) is not None]
    shown = [column for column in metrics if pd.to_numeric(table[column], errors="coerce").notna().any()]
    line: dict = {"color": "#4263eb"}
    if shown:
        colour = pd.to_numeric(table[shown[0]], errors="coerce").to_numpy(float)
        line = {"color": np.nan_to_num(colour, nan=np.nanmin(colour)), "colorscale": COLORSCALE, "showscale": True,
                "colorbar": {"title": {"text": shown[0]}, "thickness": 12}}
    figure = go.Figure(go.Parcoords(dimensions=dimensions, line=line, labelangle=0, labelside="top",
                                    labelfont={"size": 13}, tickfont={"size": 11}))
    figure.update_layout(height=360, margin=dict(l=60, r=40, t=60, b=20), plot_bgcolor="white")
    return figure
