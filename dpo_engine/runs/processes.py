"""The process layer runs and jobs share: detached starts, liveness (psutil), signals, one state vocabulary, one clock.

A background process here is started in its own session (process group), so closing the UI or the terminal does
not touch it and a stop can signal everything it started. It is identified by its pid *and* its start time
(``psutil.Process.create_time``, unix seconds): a pid the system has since given to another process is not ours.
Every timestamp in status, job and run files is unix seconds (``time.time()``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

# One vocabulary for runs and jobs. queued/running/unresponsive: a process may still write; the rest are final.
# unresponsive: the process lives but has not given a sign of life (stopped, or no heartbeat) for too long.
# corrupt: the record itself cannot be read (only runs have one rich enough to break).
STATES = ("queued", "running", "unresponsive", "completed", "failed", "stopped", "corrupt")
ACTIVE_STATES = ("queued", "running", "unresponsive")

# Same start time within this many seconds: the clock psutil reads from /proc has a resolution of one tick.
START_TIME_TOLERANCE_S = 1.0

# Processes started by this process and not yet ended, by pid. Each has a reaper thread waiting on it, so a
# finished child is collected at once, not left a zombie until something polls it (a long-lived UI starts many).
children: dict[int, subprocess.Popen] = {}


def start_detached(command: Sequence[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``command`` in a new session with stdout and stderr appended to ``log_path``; a daemon thread reaps it."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            close_fds=True,
            start_new_session=True,  # own process group: survives this process, and stop can signal all of it
            env=env,
        )
    children[process.pid] = process
    threading.Thread(target=_reap, args=(process,), name=f"reap-{process.pid}", daemon=True).start()
    return process


def _reap(process: subprocess.Popen) -> None:
    """Wait for ``process`` to end (collecting its exit status, so no zombie stays) and forget it."""
    process.wait()
    children.pop(process.pid, None)


def start_time(pid: int | None) -> float | None:
    """When process ``pid`` started (unix seconds), or None when there is no such live process."""
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return 0.0  # exists, owned by someone else: alive, start unknown


def is_alive(pid: int | None, started: float | None = None) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as finished); with ``started``, the same process."""
    child = children.get(pid) if pid else None
    if child is not None and child.poll() is not None:
        del children[pid]
        return False
    actual = start_time(pid)
    if actual is None:
        return False
    return started is None or actual == 0.0 or abs(actual - started) <= START_TIME_TOLERANCE_S


def is_suspended(pid: int | None) -> bool:
    """Whether ``pid`` is stopped by a signal (SIGSTOP, SIGTSTP) or traced: alive, but doing nothing."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except (psutil.Error, TypeError, ValueError):
        return False


def signal_group(pid: int | None, pgid: int | None, signum: int) -> None:
    """Send ``signum`` to the process group ``pgid`` (or to ``pid`` alone when it has no group of its own)."""
    try:
        if pgid:
            os.killpg(pgid, signum)
        elif pid:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(pid: int, pgid: int | None, started: float | None, timeout: float) -> bool:
    """SIGTERM (with SIGCONT, so a suspended process can act on it), then SIGKILL after ``timeout`` seconds.

    Returns True when the process ended by itself, False when it had to be killed.
    """
    signal_group(pid, pgid, signal.SIGTERM)
    signal_group(pid, pgid, signal.SIGCONT)
    if wait_for_exit(pid, started, timeout):
        return True
    signal_group(pid, pgid, signal.SIGKILL)
    wait_for_exit(pid, started, 10.0)
    return False


def wait_for_exit(pid: int, started: float | None, timeout: float) -> bool:
    """Poll until process ``pid`` is gone; False if it is still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while is_alive(pid, started):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def tail_lines(path: Path, n_lines: int) -> list[str]:
    """The last ``n_lines`` non-blank lines of a text file, read backwards in blocks so a long log costs little."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return []
    with handle:
        end = handle.seek(0, os.SEEK_END)
        data = b""
        while end > 0 and data.count(b"\n") <= n_lines:
            begin = max(0, end - 65536)
            handle.seek(begin)
            data = handle.read(end - begin) + data
            end = begin
    # tqdm redraws its bar with carriage returns: each redraw reads as a line.
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip()][-n_lines:]


def engine_environment() -> dict:
    """This environment, with this checkout of dpo_engine first on PYTHONPATH so a child runs the same code."""
    package_root = str(Path(__file__).resolve().parents[2])
    python_path = [package_root] + [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
