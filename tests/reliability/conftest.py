"""Fixtures for the fault-injection tests: real worker processes with a stand-in trainer, cleaned up after."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from dpo_engine import runs
from dpo_engine.runs import processes

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


@pytest.fixture(autouse=True)
def kill_leftover_workers():
    """A failing test must not leave its workers running (or suspended): kill the groups this test started."""
    started_before = set(processes.children)
    yield
    for pid, process in list(processes.children.items()):
        if pid not in started_before and process.poll() is None:
            os.killpg(pid, signal.SIGKILL)
            process.wait()


def config_for(pairs_file: Path, **overrides) -> dict:
    return {"model": "tiny-random", "subset": str(pairs_file), "device": "cpu", "max_steps": 5, **overrides}


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    """Poll ``condition()`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
