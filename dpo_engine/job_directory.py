"""A durable multi-step job's directory (an iterative-rounds loop, an arena): one process at a time, the settings it
was started with, and its status file.

The directory holds ``config.json`` (the settings, written at the start), ``status.json`` (state, pid, step,
message, updated) and a lock file held by the one process running the job.
"""

from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from pathlib import Path

from dpo_engine.errors import ConfigError, UserError
from dpo_engine.files import atomic_write_json, read_json

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"


@contextmanager
def exclusive(directory: Path, lock_file: str, kind: str):
    """Hold ``directory/lock_file`` while the block runs; ``UserError`` naming the holder's pid when another process
    runs this ``kind`` of job (``"loop"``, ``"arena"``) already."""
    with open(directory / lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = (read_json(directory / STATUS_FILE, {}) or {}).get("pid")
            raise UserError(f"{kind} '{directory.name}' is already running (pid {pid})") from None
        yield


def check_same_config(directory: Path, current: dict, kind: str, *, may_change: tuple[str, ...] = ()) -> None:
    """A resumed job must keep its settings, since its files were made with them: ``ConfigError`` naming the first
    field of ``current`` that differs from the stored ``config.json`` (fields in ``may_change`` excepted)."""
    stored = read_json(directory / CONFIG_FILE)
    if stored is None:
        return
    for name, value in current.items():
        if name not in may_change and stored.get(name) != value:
            raise ConfigError(name, f"differs from the {kind}'s stored config ({stored.get(name)!r}); "
                                    f"use another name for a new {kind}")


def set_status(directory: Path, **changes) -> None:
    """Merge ``changes`` into ``status.json`` and stamp it ``updated`` (seconds since the epoch)."""
    status = read_json(directory / STATUS_FILE, {}) or {}
    atomic_write_json(directory / STATUS_FILE, {**status, **changes, "updated": time.time()})
