"""dpo_engine.runs: run directories, the registry, detached workers, stop/resume, liveness, device queue, CLI.

Most tests launch real worker processes with a stand-in trainer (tests/runs_fake_train.py, picked through
MARGIN_LAB_TRAIN_TARGET) so they take seconds; the last two train the tiny random model for real.
"""

from __future__ import annotations

import json
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dpo_engine import runs
from dpo_engine.runs import devices, processes, status as run_status
from dpo_engine.cli import main
from dpo_engine.errors import ConfigError
from dpo_engine.files import atomic_write_json, read_json, read_jsonl

TESTS_DIR = Path(__file__).resolve().parent

PAIRS = [
    {"prompt": "Say hello.", "chosen": "Hello there!", "rejected": "No."},
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "What colour is the sky?", "chosen": "Blue.", "rejected": "Green."},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(pair) + "\n" for pair in PAIRS))
    return path


@pytest.fixture
def fake_trainer(monkeypatch):
    """Workers launched from now on train with runs_fake_train (FAKE_STEP_SECONDS per step)."""
    monkeypatch.setenv(runs.TRAIN_TARGET_ENV, "runs_fake_train:train")
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.02")


@pytest.fixture(autouse=True)
def kill_leftover_workers():
    """A failing test must not leave its workers running: kill the process groups this test started."""
    started_before = set(processes.children)
    yield
    for pid, process in list(processes.children.items()):
        if pid not in started_before and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may end between poll() and killpg()
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


def wait_until_finished(run_id: str, timeout: float = 30.0) -> runs.RunInfo:
    return wait_for(lambda: (info := runs.get_run(run_id)) and not info.is_active and info, timeout, f"{run_id} to finish")


def metric_steps(run_id: str) -> list[int]:
    return [record["step"] for record in read_jsonl(runs.get_run(run_id).metrics_path)]


# ---- creating, listing, the registry ------------------------------------------------------------------------------


def test_create_run_writes_a_self_contained_directory(pairs_file, tmp_path, workspace):
    config_yaml = tmp_path / "config.yaml"
    config_yaml.write_text(f"# my run\nmodel: tiny-random\nsubset: {pairs_file}\nloss: ipo\nmax_steps: 3\n")

    run_id = runs.create_run(config_yaml, selection_name="dm-mul-2k")

    info = runs.get_run(run_id)
    assert run_id.startswith("ipo-") and len(run_id.split("-")) == 4
    assert info.run_dir == workspace / "runs" / run_id
    assert info.config_path.read_text() == config_yaml.read_text()  # verbatim, comment included
    assert info.config["subset"] == str(info.subset_path) and info.config["loss"] == "ipo"
    assert [json.loads(line)["chosen"] for line in info.subset_path.read_text().splitlines()] == [p["chosen"] for p in PAIRS]
    assert info.config["learning_rate"] == 5e-5  # defaults are resolved
    assert (info.state, info.status["pid"], info.status["launched"]) == ("queued", None, None)
    assert (info.subset_name, info.selection_name, info.model) == ("dm-mul-2k", "dm-mul-2k", "tiny-random")


def test_registry_lists_runs_and_is_rebuilt_from_disk(pairs_file, tmp_path, workspace):
    first = runs.create_run(config_for(pairs_file), name="Baseline run")
    second = runs.create_run(config_for(pairs_file, loss="simpo"))
    elsewhere = runs.create_run(config_for(pairs_file), run_dir=tmp_path / "my-run")
    assert first.startswith("baseline-run-") and second.startswith("simpo-")

    listed = runs.list_runs()
    assert [run.run_id for run in listed] == [elsewhere, second, first]  # newest first
    assert runs.get_run(elsewhere).run_dir == tmp_path / "my-run"
    with sqlite3.connect(workspace / "registry.sqlite") as connection:
        rows = dict(connection.execute("SELECT run_id, loss FROM runs"))
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert rows == {first: "dpo", second: "simpo", elsewhere: "dpo"}

    assert runs.rebuild_registry() == 3  # runs elsewhere stay indexed while the registry knows them
    # The directories are the truth: a lost or corrupt registry is rebuilt from runs/.
    for path in workspace.glob("registry.sqlite*"):
        path.unlink()
    assert {run.run_id for run in runs.list_runs()} == {first, second}
    (workspace / "registry.sqlite").write_text("not a database")
    assert runs.rebuild_registry() == 2
    assert {run.run_id for run in runs.list_runs()} == {first, second}

    runs.delete(first)  # directory and registry row
    assert [run.run_id for run in runs.list_runs()] == [second]


@pytest.mark.parametrize(
    "overrides, field",
    [({"learning_rate": -1}, "learning_rate"), ({"bogus": 1}, "bogus"), ({"loss": "nope"}, "loss"),
     ({"subset": "/no/such/pairs.jsonl"}, "subset"), ({"beta": 0.1}, "beta")],
)
def test_bad_config_is_rejected_before_anything_is_created(pairs_file, workspace, overrides, field):
    with pytest.raises(ConfigError) as raised:
        runs.create_run(config_for(pairs_file, **overrides))
    assert raised.value.field == field and field in str(raised.value)
    runs_dir = workspace / "runs"
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


def test_a_failure_while_writing_leaves_no_directory(pairs_file, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    with pytest.raises(runs.RunError, match="not empty"):
        runs.create_run(config_for(pairs_file), run_dir=taken)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pairs.jsonl", "taken"]


def test_status_writes_are_atomic_for_a_reader_polling_the_file(pairs_file):
    info = runs.get_run(runs.create_run(config_for(pairs_file)))

    def write_many():
        for index in range(150):
            run_status.update_status(info.run_dir, step=index, message="x" * (index * 37 % 5000))

    writer = threading.Thread(target=write_many)
    writer.start()
    reads = 0
    while writer.is_alive():
        status = json.loads(info.status_path.read_text())  # must never fail: old file or new file, never half
        assert status["state"] == "queued"
        reads += 1
    writer.join()
    assert reads > 10 and read_json(info.status_path)["step"] == 149


# ---- detached runs ------------------------------------------------------------------------------------------------


def test_detached_run_completes_and_leaves_its_records(pairs_file, fake_trainer):
    run_id = runs.create_run(config_for(pairs_file, max_steps=5))
    launched = runs.launch(run_id)
    assert launched.state in ("queued", "running") and launched.status["pid"]

    final = wait_until_finished(run_id)

    assert final.state == "completed", final.message
    assert (final.step, final.total_steps, final.status["device"]) == (5, 5, "cpu")
    assert final.message == "completed 5 steps, final loss 0.2000"
    assert final.status["started"] <= final.status["finished"] and final.status["summary"]["stopped"] is False
    assert list(runs.read_metrics(run_id)["step"]) == [1, 2, 3, 4, 5]
    assert final.last_metrics == {"step": 5, "loss": 0.2}
    assert "fake training from step 0 to 5" in runs.tail_log(run_id)
    with pytest.raises(runs.RunError, match="already launched"):
        runs.launch(run_id)
    with pytest.raises(runs.RunError, match="already completed"):
        runs.resume(run_id)


def test_run_outlives_the_process_that_launched_it(pairs_file, fake_trainer, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.05")
    run_id = runs.create_run(config_for(pairs_file, max_steps=40))

    launcher = [sys.executable, "-c", f"from dpo_engine import runs; runs.launch({run_id!r})"]
    subprocess.run(launcher, check=True, timeout=60)

    info = runs.get_run(run_id)
    assert info.is_active and info.step < 40  # the launcher is gone; the run is not
    os.kill(info.status["pid"], 0)
    final = wait_until_finished(run_id)
    assert final.state == "completed" and final.step == 40, final.message


def test_stop_is_graceful(pairs_file, fake_trainer, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.1")
    run_id = runs.create_run(config_for(pairs_file, max_steps=200))
    runs.launch(run_id)
    wait_for(lambda: len(metric_steps(run_id)) >= 2, what="two steps")

    stopped = runs.stop(run_id, timeout=30)

    assert stopped.state == "stopped", stopped.message
    assert stopped.message.startswith(f"stopped at step {stopped.step}")
    assert stopped.status["summary"]["stopped"] is True
    assert (stopped.checkpoints_dir / f"checkpoint-{stopped.step}").is_dir()
    assert max(metric_steps(run_id)) == stopped.step < 200
    assert runs.stop(run_id).state == "stopped"  # stopping a stopped run is a no-op


def test_killed_worker_is_reported_failed_and_resumes_from_its_checkpoint(pairs_file, fake_trainer, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.1")
    run_id = runs.create_run(config_for(pairs_file, max_steps=30))
    runs.launch(run_id)
    wait_for(lambda: len(metric_steps(run_id)) >= 3, what="three steps")

    os.killpg(runs.get_run(run_id).status["pgid"], signal.SIGKILL)

    failed = wait_for(lambda: (info := runs.get_run(run_id)).state == "failed" and info, what="failed state")
    assert "ended without recording a result" in failed.message
    assert "fake training from step 0 to 30" in failed.message  # the end of train.log
    killed_at = max(int(path.name.split("-")[1]) for path in failed.checkpoints_dir.iterdir())

    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.005")
    runs.resume(run_id)
    final = wait_until_finished(run_id)

    assert final.state == "completed" and final.step == 30, final.message
    assert f"fake training from step {killed_at} to 30" in runs.tail_log(run_id)
    assert set(metric_steps(run_id)) == set(range(1, 31))


def test_a_worker_whose_pid_was_reused_is_reported_failed(pairs_file):
    info = runs.get_run(runs.create_run(config_for(pairs_file)))
    # This test's own pid is alive, but the heartbeat is a minute old: not our worker.
    stale = {**info.status, "state": "running", "pid": os.getpid(), "launched": time.time() - 60, "heartbeat": time.time() - 60}
    atomic_write_json(info.status_path, stale)
    assert runs.get_run(info.run_id).state == "failed"

    atomic_write_json(info.status_path, {**stale, "heartbeat": time.time()})
    assert runs.get_run(info.run_id).state == "running"  # fresh heartbeat, live pid: left alone


def test_a_trainer_error_marks_the_run_failed_with_the_error(pairs_file, fake_trainer, monkeypatch):
    monkeypatch.setenv(runs.TRAIN_TARGET_ENV, "runs_fake_train:no_such_function")
    run_id = runs.create_run(config_for(pairs_file))
    runs.launch(run_id)

    final = wait_until_finished(run_id)

    assert final.state == "failed"
    assert final.message.startswith("AttributeError:") and "no_such_function" in final.message
    assert "Traceback (most recent call last)" in runs.tail_log(run_id)


def test_runs_on_one_device_wait_in_turn(pairs_file, fake_trainer, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.05")
    first = runs.create_run(config_for(pairs_file, max_steps=30))
    second = runs.create_run(config_for(pairs_file, max_steps=3))
    third = runs.create_run(config_for(pairs_file, max_steps=3))
    runs.launch(first)
    wait_for(lambda: runs.get_run(first).state == "running", what="the first run to start")
    runs.launch(second)
    runs.launch(third)

    for run_id in (second, third):
        wait_for(lambda run_id=run_id: runs.get_run(run_id).message == "waiting for cpu", what=f"{run_id} to queue")
    assert runs.get_run(first).state == "running" and runs.get_run(second).state == "queued"
    stopped = runs.stop(third, timeout=10)
    assert (stopped.state, stopped.message) == ("stopped", "stopped while waiting for cpu")

    done_first, done_second = wait_until_finished(first), wait_until_finished(second)
    assert (done_first.state, done_second.state) == ("completed", "completed")
    assert done_second.status["started"] >= done_first.status["finished"]


# ---- the command line ---------------------------------------------------------------------------------------------


def test_cli_launch_list_show_stop_resume_delete(pairs_file, tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.05")
    config_yaml = tmp_path / "config.yaml"
    config_yaml.write_text(f"model: tiny-random\nsubset: {pairs_file}\ndevice: cpu\nmax_steps: 100\n")

    assert main(["runs", "launch", str(config_yaml), "--name", "CLI test"]) == 0
    run_id = capsys.readouterr().out.strip()
    assert run_id.startswith("cli-test-")
    wait_for(lambda: metric_steps(run_id), what="the first step")

    assert main(["runs", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["RUN", "ID", "STATE", "LOSS", "STEP", "LAST", "LOSS", "CREATED"]
    assert listing[1].split()[:3] == [run_id, "running", "dpo"]

    assert main(["runs", "show", run_id, "--log", "5"]) == 0
    shown = capsys.readouterr().out
    assert "state: running" in shown and "max_steps: 100" in shown and "fake training from step 0" in shown

    assert main(["runs", "delete", run_id, "--yes"]) == 2
    assert "stop it before deleting" in capsys.readouterr().err

    assert main(["runs", "stop", run_id]) == 0
    assert f"{run_id}: stopped: stopped at step" in capsys.readouterr().out

    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.001")
    assert main(["runs", "resume", run_id]) == 0
    assert capsys.readouterr().out.startswith(f"resumed {run_id} from step")
    assert wait_until_finished(run_id).state == "completed"

    monkeypatch.setattr("builtins.input", lambda question: "n")
    assert main(["runs", "delete", run_id]) == 1
    assert main(["runs", "delete", run_id, "--yes"]) == 0
    assert runs.list_runs() == []
    capsys.readouterr()
    assert main(["runs", "show", run_id]) == 2
    assert f"no run '{run_id}'" in capsys.readouterr().err


def test_cli_help_covers_every_command(capsys):
    for argv in (["runs", "--help"], ["train", "--help"], ["runs", "launch", "--help"], ["runs", "stop", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
    assert "--run-dir" in capsys.readouterr().out


# ---- with the real trainer and the tiny random model --------------------------------------------------------------

TINY_TRAINING = {"batch_size": 2, "max_length": 64, "max_prompt_length": 32, "save_steps": 50}


def test_real_tiny_model_run_stops_resumes_and_completes(pairs_file, tiny_model_dir):
    # Enough steps that the stop lands mid-run: a tiny-model step takes milliseconds on an idle machine, and 4 steps
    # could finish between the first logged step and the stop request.
    steps = 100
    run_id = runs.create_run(config_for(pairs_file, max_steps=steps, **TINY_TRAINING))
    runs.launch(run_id)
    wait_for(lambda: metric_steps(run_id), timeout=180, what="the first training step")

    stopped = runs.stop(run_id, timeout=120)
    assert stopped.state == "stopped", stopped.message
    assert 1 <= stopped.step < steps and (stopped.checkpoints_dir / f"checkpoint-{stopped.step}").is_dir()

    runs.resume(run_id)
    final = wait_until_finished(run_id, timeout=240)

    assert final.state == "completed", final.message
    assert (final.step, final.total_steps) == (steps, steps)
    assert metric_steps(run_id) == list(range(1, steps + 1))  # the resumed curve continues without duplicates
    assert (final.adapter_dir / "adapter_config.json").is_file()
    assert len(runs.read_metrics(run_id)) == steps and final.pair_rewards_path.is_file()
    log = (final.run_dir / runs.LOG_FILE).read_text()
    assert "RuntimeWarning" not in log and "is_gradient_checkpointing" not in log  # no library noise in the log


def test_cli_train_in_the_foreground_registers_the_run(pairs_file, tmp_path, tiny_model_dir, capsys):
    config_yaml = tmp_path / "config.yaml"
    config_yaml.write_text(
        f"model: tiny-random\nsubset: {pairs_file}\ndevice: cpu\nmax_steps: 2\n"
        + "".join(f"{key}: {value}\n" for key, value in TINY_TRAINING.items())
    )

    assert main(["train", str(config_yaml), "--run-dir", str(tmp_path / "fg-run")]) == 0

    assert "[margin-lab] completed: completed 2 steps" in capsys.readouterr().out
    (run,) = runs.list_runs()
    assert run.run_dir == tmp_path / "fg-run" and run.state == "completed" and run.step == 2
    assert run.status["pid"] == os.getpid() and run.pair_rewards_path.is_file()


def test_runs_per_device_gives_that_many_slots_then_waits(tmp_path, monkeypatch):
    """MARGIN_LAB_RUNS_PER_DEVICE=2: two runs hold the device at once; a third waits (and gives up when stopped)."""
    monkeypatch.setenv(runs.RUNS_PER_DEVICE_ENV, "2")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    never, stopped = threading.Event(), threading.Event()
    stopped.set()
    first = devices.acquire_device_slot("cpu", run_dir, never)
    second = devices.acquire_device_slot("cpu", run_dir, never)
    assert {Path(first.name).name, Path(second.name).name} == {"cpu.lock", "cpu.1.lock"}
    assert devices.acquire_device_slot("cpu", run_dir, stopped) is None  # both slots taken
    assert json.loads((run_dir / runs.STATUS_FILE).read_text())["message"] == "waiting for cpu"
    second.close()
    third = devices.acquire_device_slot("cpu", run_dir, stopped)
    assert Path(third.name).name == "cpu.1.lock"
    first.close(), third.close()
    monkeypatch.setenv(runs.RUNS_PER_DEVICE_ENV, "two")
    with pytest.raises(runs.RunError, match="MARGIN_LAB_RUNS_PER_DEVICE must be a whole number"):
        runs.runs_per_device()
