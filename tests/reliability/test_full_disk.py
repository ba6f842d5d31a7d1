"""A full disk: listing keeps working read-only, a worker's last status write waits for space, resume loses nothing.

The disk is a real 6 MB tmpfs mounted for the test (root only; skipped where ``mount`` is refused), filled with
a ballast file. A second test simulates ENOSPC with a patched write, so the retry is checked everywhere.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from conftest import config_for, wait_for

from dpo_engine import runs
from dpo_engine.cli import main
from dpo_engine.files import atomic_write_json, read_jsonl
from dpo_engine.runs import status as run_status


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    monkeypatch.setenv("MARGIN_LAB_HOME", str(mount_point / "home"))
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk) -> None:
    """Write a ballast file until the disk refuses."""
    with open(disk / "ballast", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_listing_works_read_only_on_a_full_disk(small_disk, pairs_file, capsys):
    first, second = runs.create_run(config_for(pairs_file)), runs.create_run(config_for(pairs_file))
    dead = runs.get_run(second)
    atomic_write_json(dead.status_path, {**dead.status, "state": "running", "pid": 2**22 + 12345, "launched": 1.0})
    for suffix in ("", "-wal", "-shm"):  # the registry must be rebuilt, which needs writing
        (small_disk / "home" / f"registry.sqlite{suffix}").unlink(missing_ok=True)
    fill(small_disk)

    listed = {run.run_id: run for run in runs.list_runs()}

    assert set(listed) == {first, second}
    assert listed[second].state == "failed" and "ended without recording a result" in listed[second].message
    assert main(["runs", "list"]) == 0 and first in capsys.readouterr().out
    assert runs.get_run(first).state == "queued"


def test_a_worker_on_a_full_disk_records_its_end_once_space_returns(small_disk, pairs_file, fake_trainer, monkeypatch):
    monkeypatch.setenv(run_status.STATUS_RETRY_ENV, "0.2")
    run_id = runs.create_run(config_for(pairs_file, max_steps=60))
    runs.launch(run_id)
    wait_for(lambda: runs.get_run(run_id).step >= 3, what="three steps")
    fill(small_disk)
    wait_for(lambda: "No space left" in runs.tail_log(run_id), what="the trainer to hit the full disk")
    assert runs.get_run(run_id).state in runs.ACTIVE_STATES  # the end is not recorded yet: no space

    (small_disk / "ballast").unlink()
    ended = wait_for(lambda: (info := runs.get_run(run_id)).state == "failed" and info, what="the end to be recorded")
    assert "No space left" in ended.message

    runs.resume(run_id)
    final = wait_for(lambda: (info := runs.get_run(run_id)).state == "completed" and info, what="completion")
    steps = [record["step"] for record in read_jsonl(final.metrics_path)]
    assert final.step == 60 and set(steps) == set(range(1, 61))


def test_the_final_status_write_is_retried_on_enospc(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    atomic_write_json(run_dir / runs.STATUS_FILE, {"state": "running"})
    monkeypatch.setenv(run_status.STATUS_RETRY_ENV, "0.01")
    real_write, refusals = run_status.atomic_write_json, []

    def full_then_free(path, value):
        if len(refusals) < 3:
            refusals.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, value)

    monkeypatch.setattr(run_status, "atomic_write_json", full_then_free)
    final = run_status.update_status_retrying(run_dir, state="completed", message="done")

    assert len(refusals) == 3 and final["state"] == "completed"
    assert run_status.read_stored_status(run_dir)["state"] == "completed"
