"""The Margins page's field selectors and warm-up rings (AppTest, no browser) and the figure that draws the rings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.figures import VALIDATION_RINGS, WARMUP_RINGS, Rings, margin_scatter
from dpo_engine.data.pairs import fingerprint as dataset_fingerprint, load_pairs
from dpo_engine.paths import ASSETS_DIR
from dpo_engine.selection.rules import select_pairs

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
SHIPPED = ASSETS_DIR / "margins" / "ultrafeedback.parquet"


def test_margin_scatter_rings_the_warmup_pairs_in_a_second_trace():
    table = pd.DataFrame({"pair_id": ["a", "b", "c"], "external_margin": [1.0, 2.0, 3.0], "implicit_margin": [0.5, -1.0, 2.0]})
    figure = margin_scatter(table, None, selected=None, rings=Rings(np.array([False, True, True]), WARMUP_RINGS))
    main, rings = figure.data[0], figure.data[1]
    assert list(main.customdata) == ["a", "b", "c"]  # the selectable trace stays first and whole
    assert list(rings.x) == [2.0, 3.0] and list(rings.y) == [-1.0, 2.0]
    assert rings.marker.symbol == "circle-open" and rings.hoverinfo == "skip"
    assert rings.name == "warm-up pairs (2): implicit margin in-sample"
    validation = margin_scatter(table, None, selected=None, rings=Rings(np.array([True, False, False]), VALIDATION_RINGS))
    assert validation.data[1].name == "validation pairs (1): never selected"
    plain = margin_scatter(table, None, selected=None, rings=Rings(np.zeros(3, bool), WARMUP_RINGS))
    assert [trace.type for trace in plain.data].count("scatter") == 1


@pytest.fixture
def page():
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("views/margins.py")  # the app opens on Home
    at.run()
    assert not at.exception, [error.message for error in at.exception]
    return at


def test_margins_page_rings_the_warmup_pairs_and_runs_a_field_selector(page):
    table = pd.read_parquet(SHIPPED)
    spec = json.loads(page.get("plotly_chart")[0].proto.spec)
    rings = [trace for trace in spec["data"] if trace.get("name", "").startswith("warm-up pairs")]
    assert len(rings) == 1 and "120" in rings[0]["name"]
    assert any("in-sample" in caption.value for caption in page.caption)

    fingerprint = dataset_fingerprint(load_pairs(ASSETS_DIR / "data" / "ultrafeedback_binarized_scored_1200.jsonl").pairs)
    page.button_group[0].set_value("hypothesis").run()
    hypothesis = page.selectbox(key=f"hyp-{fingerprint}")
    assert "selective_dpo" not in hypothesis.options  # the shipped table has no learning_order column
    hypothesis.set_value("smallest_gap").run()
    page.slider(key=f"pct-hypothesis-{fingerprint}").set_value(10).run()
    assert not page.exception, [error.message for error in page.exception]
    expected = select_pairs(table, "smallest_gap", {"score": "implicit_margin", "frac": 0.1})
    assert next(item.value for item in page.metric if item.label == "Selected pairs") == f"{len(expected):,}"
