"""status.json: its lock, atomic updates (retried on a full disk where it matters), and what a reader concludes.

A reader never trusts ``state`` alone. A run that says queued or running is

- ``failed`` (written back) when its worker is gone, or when the pid now belongs to another process;
- ``unresponsive`` (shown, not written) when its worker lives but is suspended or has not refreshed its heartbeat
  for ``heartbeat_stale_s()`` seconds: `stop` ends it, `resume` waits for it to end.

Writes that fail (a full or read-only disk) never make reading fail: the reader returns what it concluded.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dpo_engine.files import atomic_write_json
from dpo_engine.runs.layout import LOG_FILE, STATUS_FILE, STATUS_LOCK_FILE, read_stored_status
from dpo_engine.runs.processes import ACTIVE_STATES, is_alive, is_suspended, tail_lines

HEARTBEAT_STALE_ENV = "MARGIN_LAB_HEARTBEAT_STALE_S"
DEFAULT_HEARTBEAT_STALE_S = 30.0
LOG_LINES_IN_MESSAGE = 20
STATUS_RETRY_ENV = "MARGIN_LAB_STATUS_RETRY_S"
FINAL_WRITE_ATTEMPTS = 720  # an hour of retries: long enough for someone to free disk space


def heartbeat_stale_s() -> float:
    """Seconds without a heartbeat after which a live worker counts as unresponsive (``$MARGIN_LAB_HEARTBEAT_STALE_S``)."""
    try:
        return max(0.5, float(os.environ.get(HEARTBEAT_STALE_ENV, DEFAULT_HEARTBEAT_STALE_S)))
    except ValueError:
        return DEFAULT_HEARTBEAT_STALE_S


@contextmanager
def status_lock(run_dir: Path) -> Iterator[None]:
    """Serialises read-modify-write of status.json between the worker, its heartbeat thread and other processes."""
    with open(run_dir / STATUS_LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_status(run_dir: Path, only_if: Callable[[dict], bool] | None = None, **changes) -> dict:
    """Merge ``changes`` into status.json (when ``only_if(status)`` holds) and return the status as it now is.

    The file is replaced atomically, so readers that take no lock never see half of it.
    """
    with status_lock(run_dir):
        status = read_stored_status(run_dir)
        if only_if is None or only_if(status):
            status.update(changes)
            atomic_write_json(run_dir / STATUS_FILE, status)
        return status


def status_retry_s() -> float:
    """Seconds between tries of a status write the disk refused (``$MARGIN_LAB_STATUS_RETRY_S``, default 5)."""
    try:
        return max(0.01, float(os.environ.get(STATUS_RETRY_ENV, "5")))
    except ValueError:
        return 5.0


def update_status_retrying(run_dir: Path, attempts: int = FINAL_WRITE_ATTEMPTS, **changes) -> dict:
    """`update_status`, retried every ``status_retry_s()`` while the disk refuses (``OSError``: full, read-only)."""
    retry_s = status_retry_s()
    for attempt in range(1, attempts + 1):
        try:
            return update_status(run_dir, **changes)
        except OSError as error:
            if attempt == attempts:
                raise
            print(f"[margin-lab] status not written ({error}); retrying in {retry_s:g} s", file=sys.stderr, flush=True)
            time.sleep(retry_s)
    raise AssertionError("unreachable")


def worker_is_ours(status: dict) -> bool:
    """Whether the recorded worker process still runs (the same process, when its start time was recorded)."""
    return is_alive(status.get("pid"), status.get("pid_started"))


def silent_for(status: dict) -> float:
    """Seconds since the worker's last heartbeat (or since the launch, before the first beat)."""
    return time.time() - (status.get("heartbeat") or status.get("launched") or 0)


def checked_status(run_dir: Path) -> dict:
    """status.json as a reader should see it: failed when the worker is gone, unresponsive when it is silent."""
    status = read_stored_status(run_dir)
    if status.get("state") not in ACTIVE_STATES or status.get("pid") is None:
        return status
    alive = worker_is_ours(status)
    if alive and is_suspended(status["pid"]):
        return {**status, "state": "unresponsive", "message": f"the worker (pid {status['pid']}) is suspended"}
    stale = silent_for(status) > heartbeat_stale_s()
    if alive and not stale:
        return status
    if alive and status.get("pid_started") is not None:
        # Known to be our worker: it lives, but says nothing.
        message = f"the worker (pid {status['pid']}) has not sent a heartbeat for {silent_for(status):.0f} s"
        return {**status, "state": "unresponsive", "message": message}
    # Gone, or a live pid with an old heartbeat and no start time to tell: another process that got the same pid.
    return mark_worker_gone(run_dir, status)


def mark_worker_gone(run_dir: Path, status: dict) -> dict:
    """Record failed for a worker that ended without a result; on a disk that refuses writes, only say so."""
    pid = status["pid"]
    message = with_log_tail(
        f"the worker (pid {pid}) ended without recording a result; resume continues from the last checkpoint", run_dir
    )
    changes = {"state": "failed", "finished": time.time(), "message": message}
    try:
        # Re-checked under the lock: the worker may have recorded its result since we read the file.
        return update_status(
            run_dir, only_if=lambda current: current.get("state") in ACTIVE_STATES and current.get("pid") == pid,
            **changes,
        )
    except OSError:
        return {**status, **changes}


def with_log_tail(message: str, run_dir: Path) -> str:
    """``message`` followed by the last lines of train.log, which usually say what went wrong."""
    tail = "\n".join(tail_lines(run_dir / LOG_FILE, LOG_LINES_IN_MESSAGE))
    return f"{message}\n--- last lines of {LOG_FILE} ---\n{tail}" if tail else message
