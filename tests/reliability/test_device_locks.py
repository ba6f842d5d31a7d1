"""Per-device locks: which physical devices a run names, all-or-nothing slots over several, runs side by side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dpo_engine import runs
from dpo_engine.runs import devices
from tests.test_runs import config_for, wait_for, wait_until_finished

NEVER = threading.Event()
STOPPED = threading.Event()
STOPPED.set()


@pytest.mark.parametrize(("device", "count", "visible", "expected"), [
    ("cuda", 2, None, ["cuda0", "cuda1"]),
    ("cuda:1", 2, None, ["cuda1", "cuda2"]),
    ("cuda", 2, "2,3", ["cuda2", "cuda3"]),  # the lock names the physical GPU, not the process's index
    ("cuda:1", 1, "5, 7", ["cuda7"]),
    ("cuda", 1, "GPU-8f3c-11aa,GPU-0b2d", ["GPU-8f3c-11aa"]),
    ("cuda", 1, "MIG-GPU-8f3c/1/0", ["MIG-GPU-8f3c_1_0"]),
    ("cpu", 2, None, ["cpu", "cpu"]),
    ("cpu", 3, None, ["cpu", "cpu"]),  # never more slots than the CPU has (two here)
    ("mps", 1, "0", ["mps"]),
])
def test_physical_devices_names_the_devices_a_run_uses(device, count, visible, expected, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # None: unset, GPUs 0, 1, ...
    monkeypatch.setenv(devices.RUNS_PER_DEVICE_ENV, "2")
    assert devices.physical_devices(device, count, visible=visible) == expected


def test_a_multi_process_cpu_run_takes_the_cpu_s_one_slot_instead_of_waiting_for_a_second(monkeypatch):
    monkeypatch.delenv(devices.RUNS_PER_DEVICE_ENV, raising=False)
    assert devices.physical_devices("cpu", 2) == ["cpu"]


def test_physical_devices_refuses_more_gpus_than_are_visible():
    with pytest.raises(runs.RunError, match=r"GPUs 0 to 2 but CUDA_VISIBLE_DEVICES='0,1' shows 2"):
        devices.physical_devices("cuda", 3, visible="0,1")
    with pytest.raises(runs.RunError, match="shows 0"):
        devices.physical_devices("cuda", 1, visible="")
    with pytest.raises(runs.RunError, match="at least one device"):
        devices.physical_devices("cpu", 0)


def test_physical_devices_reads_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert devices.physical_devices("cuda", 2) == ["cuda3", "cuda1"]


def close_all(handles):
    for handle in handles:
        handle.close()


def lock_names(handles) -> list[str]:
    return sorted(Path(handle.name).name for handle in handles)


def test_disjoint_gpu_lists_hold_together_and_an_overlapping_one_queues(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = devices.acquire_device_slots(["cuda0", "cuda1"], run_dir, NEVER)
    second = devices.acquire_device_slots(["cuda3", "cuda2"], run_dir, NEVER)
    assert lock_names(first) == ["cuda0.lock", "cuda1.lock"] and lock_names(second) == ["cuda2.lock", "cuda3.lock"]

    assert devices.acquire_device_slots(["cuda1", "cuda4"], run_dir, STOPPED) is None  # cuda1 is busy
    status = json.loads((run_dir / runs.STATUS_FILE).read_text())
    assert (status["state"], status["message"]) == ("queued", "waiting for cuda1, cuda4")
    fourth = devices.acquire_device_slots(["cuda4"], run_dir, STOPPED)  # the failed try let go of cuda4
    assert lock_names(fourth) == ["cuda4.lock"]
    holder = devices.slot_holder(Path(fourth[0].name))
    assert holder["pid"] == os.getpid() and holder["run_dir"] == str(run_dir)

    close_all(first)
    third = devices.acquire_device_slots(["cuda1", "cuda0"], run_dir, STOPPED)
    assert lock_names(third) == ["cuda0.lock", "cuda1.lock"]
    close_all(second), close_all(third), close_all(fourth)


def test_a_name_twice_takes_two_slots_of_that_device(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.RUNS_PER_DEVICE_ENV, "3")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pair = devices.acquire_device_slots(["cpu", "cpu"], run_dir, NEVER)
    assert lock_names(pair) == ["cpu.1.lock", "cpu.lock"]
    assert devices.acquire_device_slots(["cpu", "cpu"], run_dir, STOPPED) is None  # one slot left, two wanted
    single = devices.acquire_device_slots(["cpu"], run_dir, STOPPED)
    assert lock_names(single) == ["cpu.2.lock"]
    close_all(pair), close_all(single)
    with pytest.raises(runs.RunError, match="needs 4 slots of cpu"):
        devices.acquire_device_slots(["cpu"] * 4, run_dir, NEVER)


def test_overlapping_requests_in_opposite_orders_never_deadlock(tmp_path):
    """Two workers each wanting GPUs 0 and 1, named in opposite orders, take turns many times and both finish."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    turns: list[str] = []

    def worker(name: str, wanted: list[str]) -> None:
        for _ in range(15):
            handles = devices.acquire_device_slots(wanted, run_dir, NEVER)
            turns.append(name)
            time.sleep(0.01)
            close_all(handles)

    threads = [threading.Thread(target=worker, args=("a", ["cuda0", "cuda1"])),
               threading.Thread(target=worker, args=("b", ["cuda1", "cuda0"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "the two requests deadlocked"
    assert sorted(turns) == ["a"] * 15 + ["b"] * 15


HOLD_SCRIPT = """
import sys, threading, time
from pathlib import Path
from dpo_engine.runs import devices
handles = devices.acquire_device_slots(sys.argv[2:], Path(sys.argv[1]), threading.Event())
print("held", flush=True)
time.sleep(600)
"""


def test_a_holder_in_another_process_frees_its_gpus_when_it_dies(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(run_dir), "cuda0", "cuda1"],
                              stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert holder.stdout.readline().strip() == "held"
        assert devices.acquire_device_slots(["cuda1"], run_dir, STOPPED) is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        taken = devices.acquire_device_slots(["cuda1", "cuda0"], run_dir, STOPPED)
        assert lock_names(taken) == ["cuda0.lock", "cuda1.lock"]
        close_all(taken)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(("cpus", "slots", "processes", "omp", "expected"), [
    (8, 1, 1, None, None),  # one run on the whole CPU: torch's default
    (8, 2, 1, None, 4),
    (8, 4, 2, None, 2),  # a 2-process run holds 2 of 4 slots: half the cores, 2 per process
    (8, 1, 2, None, 4),  # one slot, taken whole by a 2-process run
    (2, 4, 1, None, 1),  # never fewer than one thread
    (8, 2, 1, "3", None),  # the user's OMP_NUM_THREADS stands
])
def test_cpu_threads_per_process_splits_the_cores_over_slots_and_processes(cpus, slots, processes, omp, expected,
                                                                          monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setenv(runs.RUNS_PER_DEVICE_ENV, str(slots))
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert devices.cpu_threads_per_process(processes) == expected


def test_two_cpu_runs_go_side_by_side_while_a_third_queues(pairs_file, fake_trainer, monkeypatch):
    monkeypatch.setenv(runs.RUNS_PER_DEVICE_ENV, "2")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.1")
    first, second = (runs.create_run(config_for(pairs_file, max_steps=20)) for _ in range(2))
    third = runs.create_run(config_for(pairs_file, max_steps=2))
    runs.launch(first), runs.launch(second)
    for run_id in (first, second):
        wait_for(lambda run_id=run_id: runs.get_run(run_id).state == "running", what=f"{run_id} to start")
    runs.launch(third)

    wait_for(lambda: runs.get_run(third).message == "waiting for cpu", what="the third run to queue")
    assert [runs.get_run(run_id).state for run_id in (first, second)] == ["running", "running"]
    finals = [wait_until_finished(run_id, timeout=60) for run_id in (first, second, third)]
    assert [final.state for final in finals] == ["completed"] * 3
    first_done, second_done, third_done = finals
    assert second_done.status["started"] < first_done.status["finished"]  # the two overlapped
    assert third_done.status["started"] >= min(first_done.status["finished"], second_done.status["finished"])
    # Each run trained on its share of the cores, not on all of them at once (which thrashes).
    assert {final.status["summary"]["torch_threads"] for final in finals} == {max(1, os.cpu_count() // 2)}
