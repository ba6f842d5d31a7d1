"""The Data page with a broken file (AppTest, no browser): every problem listed at once, the explicit "drop the
invalid rows" choice, and the rows left out recorded in a selection saved on Margins & Select."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from dpo_engine.data.pairs import fingerprint, load_pairs
from dpo_engine.margins.table import build_margins_table, save_margins_table
from dpo_engine.selection.store import list_selections
from tests.test_data_problems import broken_file

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")


def data_page_on(path: Path) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("views/data.py")
    at.run()
    at.radio[0].set_value("Path or Hub dataset").run()
    at.text_input[0].set_value(str(path)).run()
    assert not at.exception, [error.message for error in at.exception]
    return at


def drop_box(at: AppTest):
    return next(box for box in at.checkbox if box.label.startswith("Drop the"))


def test_the_data_page_lists_every_problem_and_offers_to_drop_the_rows(workspace, tmp_path):
    at = data_page_on(broken_file(tmp_path / "prefs.jsonl"))
    box = at.error[0].value
    assert "3 rows cannot be used (2 wrong type, 1 malformed json); 3 rows are fine" in box
    for where in ("(row 1, column chosen)", "(row 2, column rejected)", "(row 4)"):
        assert where in box
    assert "columns=" not in box
    assert drop_box(at).label == "Drop the 3 invalid rows and continue" and drop_box(at).value is False
    assert at.session_state["data_source"].bundled == "ultrafeedback"  # nothing loaded yet

    drop_box(at).check().run()
    assert not at.error
    assert any("3 pairs loaded; 3 rows that cannot be used were left out" in item.value for item in at.info)
    source = at.session_state["data_source"]
    assert source.drop_invalid and source.source == str(tmp_path / "prefs.jsonl")
    assert any("empty prompt" in item.value for item in at.warning)  # the kept rows' warnings still show


def test_a_selection_saved_from_dropped_rows_records_them(workspace, tmp_path):
    path = broken_file(tmp_path / "prefs.jsonl")
    pairs = load_pairs(path, drop_invalid=True).pairs
    dataset_fp = fingerprint(pairs)
    rng = np.random.default_rng(0)
    n = len(pairs)
    implicit = pd.DataFrame({"pair_id": pairs.pair_id, "implicit_margin": rng.normal(size=n)})
    for column in ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"):
        implicit[column] = rng.normal(-300.0, 50.0, n)
    implicit["chosen_tokens"] = rng.integers(20, 500, n)
    implicit["rejected_tokens"] = rng.integers(20, 500, n)
    external = pd.DataFrame({"pair_id": pairs.pair_id, "external_margin": pairs.score_chosen - pairs.score_rejected})
    save_margins_table(build_margins_table(pairs, external, implicit),
                       Path(workspace) / "margins" / f"{dataset_fp}.parquet", {"dataset_fingerprint": dataset_fp})
    at = data_page_on(path)
    drop_box(at).check().run()
    at.switch_page("views/margins.py")
    at.run()
    assert not at.exception, [error.message for error in at.exception]
    next(button for button in at.button if button.label == "Save selection").click().run()
    assert any("records the 3 invalid source rows left out" in item.value for item in at.success)
    saved = list_selections()
    assert len(saved) == 1 and saved[0].provenance["dropped_rows"] == [1, 2, 4]
    assert saved[0].provenance["dropped_count"] == 3
    assert any("3 invalid rows left out: 1, 2, 4" in item.value for item in at.caption)
