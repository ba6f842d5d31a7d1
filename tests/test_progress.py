"""Seconds per item, ETA and de-duplicated launches, against hand-computed values."""

import pytest

from dpo_engine import launch_guard, progress


def test_estimate_rate_and_eta_by_hand():
    # 4 of 16 steps in 10 s: 2.5 s per step, 12 steps left -> 30 s.
    estimate = progress.estimate("training", 4, 16, started=100.0, now=110.0)
    assert estimate.seconds_per_item == pytest.approx(2.5)
    assert estimate.eta_seconds == pytest.approx(30.0)
    assert estimate.fraction == pytest.approx(0.25)
    assert progress.describe(estimate, "step") == "training: 4 / 16 · 2.5 s/step · ETA 30 s"


def test_estimate_unknown_before_the_first_item_and_without_total():
    assert progress.estimate("loading", 0, 16, started=100.0, now=150.0).eta_seconds is None
    no_total = progress.estimate("encoding", 5, None, started=100.0, now=110.0)
    assert no_total.seconds_per_item == pytest.approx(2.0) and no_total.eta_seconds is None
    assert progress.describe(no_total) == "encoding: 5 / ? · 2 s/item"


@pytest.mark.parametrize("seconds, text", [(42, "42 s"), (185, "3 min 05 s"), (7620, "2 h 07 min")])
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


def test_run_status_phases():
    preparing = progress.from_run_status({"step": 0, "total_steps": 16, "started": 100.0}, now=400.0)
    assert preparing.phase == "preparing" and preparing.eta_seconds is None
    # training_started excludes the preparation from the rate: 8 steps in 40 s -> 5 s/step, 8 left -> 40 s.
    training = progress.from_run_status(
        {"step": 8, "total_steps": 16, "started": 0.0, "training_started": 360.0}, now=400.0
    )
    assert (training.phase, training.seconds_per_item, training.eta_seconds) == ("training", 5.0, 40.0)


def test_job_record():
    record = {"stage": "judging", "done": 10, "total": 40, "stage_started": 50.0}
    assert progress.describe(progress.from_job_record(record, now=70.0)) == "judging: 10 / 40 · 2 s/item · ETA 1 min 00 s"


def test_identical_launch_within_the_window_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MARGIN_LAB_HOME", str(tmp_path))
    config = {"loss": "dpo", "learning_rate": 1e-5, "loss_params": {"beta": 0.1}}
    reordered = {"loss_params": {"beta": 0.1}, "learning_rate": 1e-5, "loss": "dpo"}
    assert launch_guard.claim_launch("train", config, now=1000.0)
    assert not launch_guard.claim_launch("train", reordered, now=1003.0)
    assert launch_guard.claim_launch("train", {**config, "learning_rate": 2e-5}, now=1003.0)
    assert launch_guard.claim_launch("eval", config, now=1003.0)
    assert launch_guard.claim_launch("train", config, now=1000.0 + launch_guard.DUPLICATE_WINDOW_S + 1)


def test_the_cli_progress_file_carries_the_stage_start(tmp_path, monkeypatch):
    import json
    import time

    from dpo_engine.cli import score as score_cli
    from dpo_engine.cli.score import _Progress

    monkeypatch.setattr(score_cli, "PROGRESS_INTERVAL", 0.0)  # writes are throttled to one a second otherwise

    path = tmp_path / "progress.json"
    reporter = _Progress(str(path))
    before = time.time()
    reporter.stage("encoding")
    reporter.update(3, 12)
    record = json.loads(path.read_text())
    assert (record["stage"], record["done"], record["total"]) == ("encoding", 3, 12)
    assert before <= record["stage_started"] <= time.time()
    estimate = progress.from_job_record(record, now=record["stage_started"] + 6.0)
    assert estimate.seconds_per_item == pytest.approx(2.0) and estimate.eta_seconds == pytest.approx(18.0)


def test_planned_steps_and_measured_rate_by_hand():
    assert progress.planned_steps(120, 4, 2, 1.0, -1) == 15  # 30 batches, 2 per step
    assert progress.planned_steps(121, 4, 2, 2.0, -1) == 32  # 31 batches -> 16 steps per epoch
    assert progress.planned_steps(120, 4, 2, 1.0, 7) == 7
    assert progress.measured_seconds_per_step({"started": 100.0, "finished": 140.0, "step": 16}) == 2.5
    assert progress.measured_seconds_per_step({"started": 100.0, "finished": None, "step": 3}) is None
