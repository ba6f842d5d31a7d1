"""The scoring form's Review → Compute margins step (AppTest, jobs recorded instead of run) and its time estimate."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.scoring_form import expected_score_time, score_summary
from dpo_engine import jobs
from dpo_engine.data.pairs import bundled_datasets, load_pairs, save_pairs
from dpo_engine.margins.config import ScoreConfig
from dpo_engine.paths import workspace_subdir
from test_dashboard_pages import APP, TIMEOUT


@pytest.fixture
def started(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(jobs, "start", lambda kind, config, **_: calls.append((kind, config)))
    return calls


def margins_page_without_margins(path) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/data.py")
    at.run()
    at.radio[0].set_value("Path or Hub dataset").run()
    at.text_input[0].set_value(str(path)).run()
    at.switch_page("views/margins.py")
    at.run()
    assert not at.exception, [error.message for error in at.exception]
    return at


def test_the_scoring_form_needs_review_then_compute(workspace, tmp_path, started):
    own = save_pairs(load_pairs(bundled_datasets()["hh_rlhf"]).pairs.head(20), tmp_path / "own.jsonl")
    at = margins_page_without_margins(own)
    assert [button.label for button in at.get("form_submit_button")] == ["Review margins job"]
    at.get("form_submit_button")[0].click().run()
    assert not started  # reviewing starts nothing
    summary = next(item.value for item in at.markdown if item.value.startswith("**Will compute:**"))
    assert ("20 pairs · external: stand-in reward head · implicit: cross-fitted warm-up proxies · smollm2-135m-instruct · "
            "auto on auto · max 512 tokens · time: the progress bar shows an ETA") in summary

    next(button for button in at.button if button.label == "Cancel").click().run()
    assert "pending_score" not in at.session_state and not started

    at.get("form_submit_button")[0].click().run()
    next(button for button in at.button if button.label == "Compute margins").click().run()
    assert len(started) == 1
    kind, config = started[0]
    assert kind == "score" and isinstance(config, ScoreConfig) and config.pairs == str(own)
    assert config.external == "builtin" and config.implicit == "crossfit"


def test_the_expected_time_comes_from_an_earlier_job_with_the_same_settings(workspace, tmp_path):
    config = ScoreConfig(pairs=str(tmp_path / "p.jsonl"), out=str(tmp_path / "m.parquet"), external="builtin",
                         implicit="warmup")
    assert expected_score_time(config, 20).startswith("time: the progress bar shows an ETA")
    job = workspace_subdir("jobs") / "score-earlier"
    job.mkdir(parents=True)
    created = time.time() - 1000
    (job / "job.json").write_text(json.dumps({"job_id": job.name, "kind": "score", "options": asdict(config),
                                              "created": created}))
    (job / "exit.json").write_text(json.dumps({"returncode": 0, "finished": created + 100.0}))
    (tmp_path / "m.parquet.meta.json").write_text(json.dumps({"n_pairs": 50}))
    assert expected_score_time(config, 20) == "time ≈ 40 s (at 2 s/pair, as an earlier job took)"
    other_model = ScoreConfig(**{**asdict(config), "model": "another-model"})
    assert expected_score_time(other_model, 20).startswith("time: the progress bar")
    assert score_summary(config, 20).startswith("20 pairs · external: stand-in reward head · implicit: warm-up")
