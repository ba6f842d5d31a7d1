"""The Data map page in a real browser: a run's recorded margins drawn as a map with its region counts; a region
picked with the page's segmented control, its count against the engine's summary, saved as a selection (the file
checked on disk), and "why this pair" opened for a picked pair; with screenshots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from browser_helpers import choose, screenshot, wait_for_app
from playwright.sync_api import expect


def test_the_data_map_draws_a_run_s_recorded_margins_and_saves_a_picked_region(page, server_env, monkeypatch,
                                                                                 tmp_path):
    from dpo_engine import runs
    from dpo_engine.data.pairs import bundled_datasets, load_pairs
    from dpo_engine.margins.data_map import step_records, summarize
    from dpo_engine.selection.store import load_selection, selection_path
    from dpo_engine.training.data_map import DATA_MAP_FILE

    monkeypatch.setenv("MARGIN_LAB_HOME", server_env["MARGIN_LAB_HOME"])  # the served app's workspace
    demo = load_pairs(bundled_datasets()["ultrafeedback"]).pairs.iloc[:60]
    subset = tmp_path / "pairs.jsonl"
    subset.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    run_id = runs.create_run({"model": "tiny-random", "subset": str(subset), "max_steps": 4})
    rng = np.random.default_rng(0)
    drift = rng.normal(0.0, 4.0, len(demo))  # each pair's margin moves at its own rate: a spread of variabilities
    records = pd.concat([step_records(step, demo.pair_id, rng.normal(step * drift, 2.0), 0.1) for step in (1, 2, 3, 4)])
    (runs.get_run(run_id).run_dir / DATA_MAP_FILE).write_text(records.to_json(orient="records", lines=True))
    summary = summarize(records).dropna(subset=["confidence"])
    hard = summary.pair_id[summary.region == "hard"].tolist()
    assert 0 < len(hard) < len(summary)

    page.goto("/data_map")
    wait_for_app(page)
    page.get_by_text("60 pairs over 4 recorded steps").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    page.get_by_text(f"hard {len(hard)}").first.wait_for()  # the caption's region counts, from the engine's summary
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "data-map")

    # A user's pick: the "Or take a region" segmented control, then its count.
    page.get_by_test_id("stButtonGroup").filter(has_text="ambiguous").get_by_text("hard", exact=True).click()
    picked = page.get_by_test_id("stMetric").filter(has_text="Picked pairs")
    picked.get_by_test_id("stMetricValue").filter(has_text=re.compile(rf"^{len(hard)}$")).wait_for()

    # Save it as a selection: the file lands in the served workspace's selections/ with exactly the region's ids.
    name = f"datamap-{run_id}-{len(hard)}"
    # The name field is drawn after the metric in the same rerun: wait for its value rather than read it once.
    expect(page.get_by_test_id("stTextInput").filter(has_text="Selection name").locator("input")).to_have_value(name)
    page.get_by_role("button", name="Save selection", exact=True).click()
    page.get_by_test_id("stAlertContentSuccess").filter(has_text=f"Saved {len(hard)} pairs").wait_for()
    path = selection_path(name)
    assert path == Path(server_env["MARGIN_LAB_HOME"]) / "selections" / f"{name}.json" and path.is_file()
    saved = load_selection(path)
    assert sorted(saved.pair_ids) == sorted(hard) and saved.rule == "manual"
    assert saved.params == {"data_map_run": run_id}
    assert json.loads(path.read_text())["name"] == name

    # "Why this pair": open the second picked pair through its selectbox.
    second = hard[1] if len(hard) > 1 else hard[0]
    choose(page, "Why this pair", second)
    why = page.get_by_text(f"Why this pair: {second}")
    why.wait_for()
    page.get_by_text(re.compile(r"Data map: hard · confidence")).first.wait_for()
    wait_for_app(page)
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "data-map-pick")
