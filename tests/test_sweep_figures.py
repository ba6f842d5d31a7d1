"""The parallel-coordinates view of a sweep (dashboard/sweep_figures.py): axes, categories and colour."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.sweep_figures import axis, sweep_parcoords


def sweep_table() -> pd.DataFrame:
    return pd.DataFrame({
        "subset": ["top", "top", "all", "all"],
        "learning_rate": ["1e-05", "5e-06", "1e-05", "5e-06"],
        "final loss": [0.61, 0.66, np.nan, 0.69],
        "final reward margin": [0.4, 0.2, np.nan, 0.1],
        "final accuracy": [np.nan] * 4,
    }, index=["r1", "r2", "r3", "r4"])


def test_a_sweep_is_one_line_per_run_over_its_settings_then_its_metrics():
    figure = sweep_parcoords(sweep_table(), ["subset", "learning_rate"], ["final loss", "final reward margin",
                                                                         "final accuracy"])
    [trace] = figure.data
    assert trace.type == "parcoords"
    dimensions = trace.dimensions
    assert [dimension.label for dimension in dimensions] == ["subset", "learning_rate", "final loss",
                                                             "final reward margin"]  # accuracy: no value yet
    subset = dimensions[0]
    assert list(subset.ticktext) == ["all", "top"] and list(subset.values) == [1, 1, 0, 0]
    assert list(dimensions[1].values) == [1e-05, 5e-06, 1e-05, 5e-06]  # numbers given as text become numbers
    assert trace.line.colorbar.title.text == "final loss"
    assert list(trace.line.color) == [0.61, 0.66, 0.61, 0.69]  # a run without a value takes the lowest colour


def test_an_axis_of_missing_values_is_left_out_and_text_with_gaps_is_a_category():
    assert axis(pd.Series([np.nan, np.nan]), "x") is None
    mixed = axis(pd.Series(["a", None, "b"]), "x")
    assert mixed["ticktext"] == ["a", "b", "–"] and list(mixed["values"]) == [0, 2, 1]
