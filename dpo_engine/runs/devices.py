"""Device slots: at most ``runs_per_device()`` runs train on one device at once; the others wait, queued.

Slot 0 is ``$MARGIN_LAB_HOME/locks/<device>.lock``, slot k ``locks/<device>.<k>.lock``. Each is an flock, so a
worker that dies frees its slot with it. The holder writes ``{run_dir, pid, pid_started}`` into the lock file, so
a waiting worker can see who holds a slot: a holder that lives but is unresponsive (suspended, or silent for
longer than ``heartbeat_stale_s()``) is killed, its run recorded failed, and the slot taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import IO

from dpo_engine.paths import workspace_subdir
from dpo_engine.runs.layout import CorruptRunFile, RunError, read_stored_status
from dpo_engine.runs.processes import is_alive, is_suspended, signal_group, start_time, wait_for_exit
from dpo_engine.runs.status import heartbeat_stale_s, silent_for, update_status

LOCK_POLL_S = 0.5
RUNS_PER_DEVICE_ENV = "MARGIN_LAB_RUNS_PER_DEVICE"  # how many runs may train on one device at once (default 1)


def resolve_device(device: str | None) -> str:
    """The config's device, with ``auto`` resolved the way the trainer resolves it."""
    if device in (None, "", "auto"):
        from dpo_engine.models.loading import detect_device  # imports torch: only when needed

        return detect_device()
    return device


def runs_per_device() -> int:
    """How many runs may train on one device at once: ``$MARGIN_LAB_RUNS_PER_DEVICE``, default 1.

    More than one suits a CPU with cores to spare, each run with a share of them (``OMP_NUM_THREADS``); on a GPU
    one run at a time is the safe default (memory).
    """
    value = os.environ.get(RUNS_PER_DEVICE_ENV, "1")
    try:
        return max(1, int(value))
    except ValueError:
        raise RunError(f"{RUNS_PER_DEVICE_ENV} must be a whole number, got {value!r}") from None


def acquire_device_slot(device: str, run_dir: Path, stop_requested: threading.Event) -> IO | None:
    """Hold one of the device's slots and return its open lock file (close it to free the slot).

    Returns None if ``stop_requested`` is set while waiting. While it waits, the run is recorded queued,
    "waiting for <device>".
    """
    slots = [f"{device}.lock"] + [f"{device}.{k}.lock" for k in range(1, runs_per_device())]
    handles = [open(workspace_subdir("locks") / name, "a") for name in slots]
    try:
        announced = False
        while True:
            for handle in handles:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                for other in handles:
                    if other is not handle:
                        other.close()
                _write_holder(handle, run_dir)
                return handle
            if not announced:
                update_status(run_dir, state="queued", message=f"waiting for {device}")
                print(f"[margin-lab] waiting for {device}: {len(slots)} other run(s) are using it", flush=True)
                announced = True
            for handle in handles:
                recover_slot(Path(handle.name), device)
            if stop_requested.wait(LOCK_POLL_S):
                for handle in handles:
                    handle.close()
                return None
    except BaseException:
        for handle in handles:
            handle.close()
        raise


def _write_holder(handle: IO, run_dir: Path) -> None:
    os.ftruncate(handle.fileno(), 0)
    handle.write(json.dumps({"run_dir": str(run_dir), "pid": os.getpid(), "pid_started": start_time(os.getpid())}))
    handle.flush()


def slot_holder(lock_path: Path) -> dict | None:
    """What the holder of a slot wrote into it, or None when unreadable (being written, or never held)."""
    try:
        holder = json.loads(lock_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def recover_slot(lock_path: Path, device: str) -> bool:
    """Free a slot whose holder lives but is unresponsive: kill it, record its run failed. True if it did."""
    holder = slot_holder(lock_path)
    if holder is None or holder["pid"] == os.getpid() or not is_alive(holder["pid"], holder.get("pid_started")):
        return False
    run_dir = Path(str(holder.get("run_dir", "")))
    try:
        status = read_stored_status(run_dir)
    except (CorruptRunFile, OSError):
        return False
    silent = silent_for(status)
    if not (is_suspended(holder["pid"]) and silent > heartbeat_stale_s()) and silent <= 2 * heartbeat_stale_s():
        return False
    signal_group(holder["pid"], status.get("pgid"), signal.SIGKILL)
    wait_for_exit(holder["pid"], holder.get("pid_started"), 10.0)
    message = (f"the worker (pid {holder['pid']}) was unresponsive for {silent:.0f} s while holding {device}; "
               "it was killed to free the device. resume continues from the last checkpoint")
    try:
        update_status(run_dir, only_if=lambda current: current.get("pid") == holder["pid"],
                      state="failed", finished=time.time(), message=message)
    except (CorruptRunFile, OSError):
        pass
    return True
