"""One run launch does each thing once: the config is validated, the loss built and the subset loaded once a process.

A launch (`dpo-engine runs launch`, which the Runs form starts as a job) runs in two processes. The launching one
validates the config, so a bad value is refused before anything starts, and copies the subset into the run
directory; the worker validates again, because it reads the run's own files (its subset.jsonl, the resolved model
path) from disk, possibly long after the launch, and ``train()`` is a public function that must not trust its
caller. Each process reads the subset once; only the worker builds the loss.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

import dpo_engine.data.pairs as pairs_module
import dpo_engine.losses.functions as loss_functions
import dpo_engine.training.trainer as trainer_module
from dpo_engine import runs
from dpo_engine.cli import main
from dpo_engine.runs.layout import RESOLVED_CONFIG_FILE
from dpo_engine.runs.worker import train_resolved
from dpo_engine.training.config import TrainConfig
from tests.test_runs import config_for, fake_trainer, kill_leftover_workers, pairs_file, wait_until_finished  # noqa: F401


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """Counts of the field validation, ``make_loss`` and ``load_pairs`` of the subset made in this process."""
    counts = Counter()

    def counting(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(TrainConfig, "_check_fields", counting("validate", TrainConfig._check_fields))
    make_loss = counting("make_loss", loss_functions.make_loss)
    monkeypatch.setattr(loss_functions, "make_loss", make_loss)
    monkeypatch.setattr(trainer_module, "make_loss", make_loss)
    monkeypatch.setattr(pairs_module, "load_pairs", counting("load_pairs", pairs_module.load_pairs))
    return counts


def test_the_launching_process_validates_once_loads_the_subset_once_and_builds_no_loss(
        tmp_path, pairs_file, fake_trainer, calls, capsys):  # noqa: F811
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(config_for(pairs_file, max_steps=2)))

    assert main(["runs", "launch", str(config_file), "--name", "once"]) == 0

    assert calls == {"validate": 1, "load_pairs": 1}
    run_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert wait_until_finished(run_id).state == "completed"


def test_the_worker_validates_builds_the_loss_and_loads_the_subset_once(tmp_path, pairs_file, calls):  # noqa: F811
    run_id = runs.create_run(config_for(pairs_file, max_steps=1, batch_size=2, max_length=64, max_prompt_length=32))
    run_dir = runs.get_run(run_id).run_dir
    resolved = json.loads((run_dir / RESOLVED_CONFIG_FILE).read_text())
    calls.clear()

    summary = train_resolved(resolved, run_dir)

    assert summary["steps"] == 1 and (run_dir / "pair_rewards.parquet").is_file()
    assert calls == {"validate": 1, "make_loss": 1, "load_pairs": 1}
