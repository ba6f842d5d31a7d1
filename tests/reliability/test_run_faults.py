"""Runs that never wedge: unreadable run files, a suspended worker, a worker that ignores SIGTERM, two workers.

Real worker processes (the stand-in trainer of tests/runs_fake_train.py); faults injected with signals and by
overwriting files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import config_for, wait_for

from dpo_engine import runs
from dpo_engine.cli import main
from dpo_engine.files import atomic_write_json
from dpo_engine.runs import processes
from dpo_engine.runs.processes import engine_environment


def test_unreadable_run_files_are_listed_corrupt_and_the_rest_keeps_working(pairs_file, fake_trainer, capsys):
    truncated, wrong_type, empty_record, healthy = (runs.create_run(config_for(pairs_file)) for _ in range(4))
    runs.get_run(truncated).status_path.write_text('{"state": "runn')
    atomic_write_json(runs.get_run(wrong_type).status_path, {"state": "running", "pid": "not a pid"})
    empty_dir = runs.get_run(empty_record).run_dir
    (empty_dir / runs.RUN_FILE).write_text("")

    listed = {run.run_dir.name: run for run in runs.list_runs()}

    assert len(listed) == 4
    assert listed[truncated].state == "corrupt" and "status.json: not valid JSON" in listed[truncated].message
    assert listed[wrong_type].state == "corrupt" and "field 'pid' has the wrong type" in listed[wrong_type].message
    assert listed[empty_record].state == "corrupt" and "run.json: empty" in listed[empty_record].message
    assert listed[healthy].state == "queued"
    assert main(["runs", "list"]) == 0 and "corrupt" in capsys.readouterr().out
    assert main(["runs", "show", truncated]) == 0 and "not valid JSON" in capsys.readouterr().out
    assert main(["runs", "resume", wrong_type]) == 2  # a message, not a traceback
    assert "cannot be used" in capsys.readouterr().err

    runs.launch(healthy)  # a new run still starts and finishes
    final = wait_for(lambda: (info := runs.get_run(healthy)).state == "completed" and info, what="completed")
    assert final.step == 5
    runs.delete(empty_record)  # a corrupt run can be cleaned away
    assert not empty_dir.exists() and len(runs.list_runs()) == 3


def test_a_suspended_worker_is_unresponsive_and_its_device_slot_is_recovered(pairs_file, fake_trainer):
    frozen = runs.create_run(config_for(pairs_file, max_steps=400))
    queued = runs.create_run(config_for(pairs_file, max_steps=3))
    runs.launch(frozen)
    wait_for(lambda: runs.get_run(frozen).state == "running", what="the first run to train")
    pgid = runs.get_run(frozen).status["pgid"]
    os.killpg(pgid, signal.SIGSTOP)

    wait_for(lambda: runs.get_run(frozen).state == "unresponsive", timeout=5, what="unresponsive")
    with pytest.raises(runs.RunError, match="still unresponsive"):
        runs.resume(frozen)

    runs.launch(queued)  # waits for cpu, sees the silent holder, kills it and takes the slot
    done = wait_for(lambda: (info := runs.get_run(queued)).state == "completed" and info, what="the queued run")
    killed = runs.get_run(frozen)
    assert done.step == 3
    assert killed.state == "failed" and "unresponsive" in killed.message and "killed to free the device" in killed.message
    assert not processes.is_alive(pgid)  # the worker leads its group: pgid is its pid


def test_stop_escalates_to_sigkill_for_a_worker_that_ignores_sigterm(pairs_file, fake_trainer, monkeypatch):
    monkeypatch.setenv(runs.TRAIN_TARGET_ENV, "stubborn_train:train")
    run_id = runs.create_run(config_for(pairs_file))
    runs.launch(run_id)
    wait_for(lambda: runs.get_run(run_id).step >= 2, what="two steps")
    pid = runs.get_run(run_id).status["pid"]

    started = time.monotonic()
    stopped = runs.stop(run_id, timeout=1.0)

    assert stopped.state == "stopped" and stopped.message.startswith("killed after 1 s")
    assert time.monotonic() - started < 8
    assert not processes.is_alive(pid)
    runs.resume(run_id)  # the killed run can be continued


def test_one_worker_per_run_directory(pairs_file, fake_trainer):
    run_id = runs.create_run(config_for(pairs_file, max_steps=200))
    runs.launch(run_id)
    info = wait_for(lambda: (run := runs.get_run(run_id)).state == "running" and run, what="training")

    # A second worker on the same directory (e.g. a resume that raced) exits at once and leaves the status alone.
    second = subprocess.run([sys.executable, "-m", "dpo_engine.runs", str(info.run_dir), "--resume"],
                            env=engine_environment(), capture_output=True, text=True, timeout=60)
    assert second.returncode == 3 and "another worker holds" in second.stdout
    assert "RuntimeWarning" not in second.stderr  # the entry point is not a module the package already imported
    assert runs.get_run(run_id).status["pid"] == info.status["pid"]

    # A status that says failed while the worker still lives: resume refuses.
    status = json.loads(info.status_path.read_text())
    atomic_write_json(info.status_path, {**status, "state": "failed"})
    with pytest.raises(runs.RunError, match="still has a live worker"):
        runs.resume(run_id)
    stopped = runs.stop(run_id, timeout=10)  # stop ends any live recorded process, whatever the status says
    assert stopped.status.get("pid") == info.status["pid"]
    wait_for(lambda: not runs.get_run(run_id).is_active, what="the worker to end")
    assert not processes.is_alive(info.status["pid"])
