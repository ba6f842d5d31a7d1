"""The Rounds page with Streamlit's AppTest: two loops' files in, win rates per round, tables and scatters out."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

from dpo_engine.files import atomic_write_json
from dpo_engine.rounds.config import RoundsConfig

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
TIMEOUT = 180


def write_loop(home: Path, name: str, win_rates: list[float], selected: int, **config) -> None:
    """A finished loop's files as `dpo_engine.rounds.loop` writes them (margins, selection, eval; no training run)."""
    directory = home / "rounds" / name
    directory.mkdir(parents=True)
    atomic_write_json(directory / "config.json", RoundsConfig(name=name, **config).to_dict())
    atomic_write_json(directory / "status.json", {"state": "completed", "message": "done", "pid": None})
    for number, win_rate in enumerate(win_rates, start=1):
        folder = directory / f"round-{number:02d}"
        folder.mkdir()
        ids = [f"p{i}:0>1" for i in range(8)]
        pd.DataFrame({"pair_id": ids, "external_margin": range(8), "implicit_margin": [0.1 * i for i in range(8)]}
                     ).to_parquet(folder / "margins.parquet")
        atomic_write_json(folder / "margins.json", {"n_pairs": 8, "n_ties": 1, "policy_adapter": None})
        atomic_write_json(folder / "selection.json", {"pair_ids": ids[:selected]})
        atomic_write_json(folder / "eval.json", {"win_rate": win_rate, "ci_low": win_rate - 5,
                                                 "ci_high": win_rate + 5, "n": 32})


def test_rounds_page_compares_two_loops_round_by_round(workspace):
    write_loop(workspace, "dm25", [52.0, 55.0], selected=2,
               selection_params={"score": "dm_add", "frac": 0.25})
    write_loop(workspace, "all", [51.0, 53.0], selected=8, selection_rule="all", selection_params={})
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/rounds.py")
    at.run()
    assert not at.exception, [error.message for error in at.exception]
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    lines = charts[0]["data"]
    assert sorted(trace["name"] for trace in lines) == ["all", "dm25"]
    assert all("error_y" in trace for trace in lines)
    tables = {tuple(frame.value.selected) for frame in at.dataframe}
    assert tables == {(2, 2), (8, 8)}
    assert len(charts) == 3  # win rates, and one margins scatter per loop for the last round
    assert any("2 of 8 pairs selected" in caption.value for caption in at.caption)
    rules = [caption.value for caption in at.caption if caption.value.startswith("Selection:")]
    assert sorted(rule.split(" · ")[0] for rule in rules) == ["Selection: every online pair", "Selection: top 25% by dm_add"]


def test_rounds_page_reports_a_bad_config_without_starting(workspace):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/rounds.py")
    at.run()
    at.text_input[0].input("bad name")
    at.button[0].click()
    at.run()
    assert not at.exception
    assert any("name" in error.value for error in at.error)
    assert not (workspace / "jobs").exists() or not any((workspace / "jobs").iterdir())
