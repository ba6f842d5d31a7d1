"""The Data map page in a real browser: a run's recorded margins drawn as a map with its region counts, with a
screenshot."""

from __future__ import annotations

import numpy as np
import pandas as pd
from browser_helpers import screenshot, wait_for_app


def test_the_data_map_draws_a_run_s_recorded_margins(page, server_env, monkeypatch, tmp_path):
    from dpo_engine import runs
    from dpo_engine.data.pairs import bundled_datasets, load_pairs
    from dpo_engine.margins.data_map import step_records, summarize
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
    hard = summarize(records).region.eq("hard").sum()

    page.goto("/data_map")
    wait_for_app(page)
    page.get_by_text("60 pairs over 4 recorded steps").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    # Picking a region, saving it and "why this pair" are driven in tests/test_data_map.py (AppTest).
    page.get_by_text(f"hard {hard}").first.wait_for()  # the caption's region counts, from the engine's summary
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "data-map")
