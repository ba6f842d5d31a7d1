"""Fixtures for the fault-injection tests: real worker processes with a stand-in trainer, cleaned up after."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dpo_engine import runs
# The runs tests' helpers, shared: config_for and wait_for are imported from here by the reliability tests, and the
# autouse kill_leftover_workers fixture applies to this folder too.
from tests.test_runs import config_for, kill_leftover_workers, wait_for  # noqa: F401

HERE = Path(__file__).resolve().parent
PAIRS = [
    {"prompt": "Say hello.", "chosen": "Hello there!", "rejected": "No."},
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(pair) + "\n" for pair in PAIRS))
    return path


@pytest.fixture
def fake_trainer(monkeypatch):
    """Workers launched from now on train with tests/runs_fake_train.py, beat every 0.2 s, go stale after 1.5 s."""
    monkeypatch.setenv(runs.TRAIN_TARGET_ENV, "runs_fake_train:train")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE.parent), str(HERE)]))
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.05")
    monkeypatch.setenv(runs.HEARTBEAT_INTERVAL_ENV, "0.2")
    monkeypatch.setenv(runs.HEARTBEAT_STALE_ENV, "1.5")
