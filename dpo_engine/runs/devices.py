"""Device slots, one set per physical device: at most ``runs_per_device()`` runs use one device at once.

A run names the devices it needs with :func:`physical_devices` (lock names: ``cuda0``, ``cuda3`` or a GPU's UUID as
``CUDA_VISIBLE_DEVICES`` gives it, so two runs that see different visible lists still agree on which GPU is which;
``cpu`` for each CPU process) and takes one slot of each with :func:`acquire_device_slots`, all or nothing: it tries
every slot without blocking and, when one is busy, lets go of all it took and tries again later, so two runs that
overlap never hold half each (no deadlock). A run on GPUs 0-1 and a run on GPUs 2-3 go side by side; a run asking
for a busy device waits, queued.

Slot 0 of device ``d`` is ``$MARGIN_LAB_HOME/locks/<d>.lock``, slot k ``locks/<d>.<k>.lock``. Each is an flock, so
a worker that dies frees its slots with it. The holder writes ``{run_dir, pid, pid_started}`` into the lock file,
so a waiting worker can see who holds a slot: a holder that lives but is unresponsive (suspended, or silent for
longer than ``heartbeat_stale_s()``) is killed, its run recorded failed, and the slot taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
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
VISIBLE_GPUS_ENV = "CUDA_VISIBLE_DEVICES"


def resolve_device(device: str | None) -> str:
    """The config's device, with ``auto`` resolved the way the trainer resolves it."""
    if device in (None, "", "auto"):
        from dpo_engine.models.loading import detect_device  # imports torch: only when needed

        return detect_device()
    return device


def runs_per_device() -> int:
    """How many runs may train on one device at once: ``$MARGIN_LAB_RUNS_PER_DEVICE``, default 1.

    More than one suits a CPU with cores to spare, each run on its share of them (`cpu_threads_per_process`); on a
    GPU one run at a time is the safe default (memory).
    """
    value = os.environ.get(RUNS_PER_DEVICE_ENV, "1")
    try:
        return max(1, int(value))
    except ValueError:
        raise RunError(f"{RUNS_PER_DEVICE_ENV} must be a whole number, got {value!r}") from None


def core_share(shares: int) -> int:
    """This machine's cores split ``shares`` ways: ``cpu_count // shares``, at least 1."""
    return max(1, (os.cpu_count() or 1) // shares)


def cpu_threads_per_process(processes: int = 1) -> int | None:
    """Intra-op threads for each process of a CPU run when it shares the cores, or None to keep torch's default.

    The CPU's slots (`runs_per_device`) split its cores, and a run's processes split its share: each process gets
    ``core_share(max(runs_per_device, processes))`` threads. Unshared (one slot, one process), or
    when ``OMP_NUM_THREADS`` is set (the user's choice), None. Two runs that each take every core run several
    times slower than one after the other (their OpenMP threads wait on each other).
    """
    shares = max(runs_per_device(), processes)
    if shares == 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    return core_share(shares)


def physical_devices(device: str, count: int = 1, *, visible: str | None = None) -> list[str]:
    """The lock names of the ``count`` devices a run on ``device`` with ``count`` processes uses, in rank order.

    ``("cuda", 2)`` -> the first two visible GPUs, ``("cuda:1", 2)`` -> the second and third; ``visible`` is
    ``CUDA_VISIBLE_DEVICES`` (read from the environment when None; unset means GPUs 0, 1, ...), whose entries
    (indices or UUIDs) name the physical GPUs: with ``CUDA_VISIBLE_DEVICES=2,3``, ``("cuda", 1)`` is ``["cuda2"]``.
    ``("cpu", 2)`` -> ``["cpu", "cpu"]``: two slots of the CPU, but never more than the CPU has
    (`runs_per_device`): with the default one slot, a 2-process CPU run takes the one slot, the whole CPU, instead
    of waiting forever for a second; ``mps`` likewise.
    """
    if count < 1:
        raise RunError(f"a run needs at least one device, got {count} processes")
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return [kind] * min(count, runs_per_device())
    first = int(index or 0)
    visible = os.environ.get(VISIBLE_GPUS_ENV) if visible is None else visible
    if visible is None:
        return [f"cuda{first + rank}" for rank in range(count)]
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if first + count > len(entries):
        raise RunError(f"the run needs GPUs {first} to {first + count - 1} but {VISIBLE_GPUS_ENV}={visible!r} "
                       f"shows {len(entries)}")
    return [_gpu_lock_name(entry) for entry in entries[first:first + count]]


def _gpu_lock_name(entry: str) -> str:
    """``"2"`` -> ``"cuda2"``; a UUID (``GPU-...``, ``MIG-...``) as itself, made safe as a file name."""
    return f"cuda{int(entry)}" if entry.isdigit() else re.sub(r"[^A-Za-z0-9_.-]", "_", entry)


def acquire_device_slot(device: str, run_dir: Path, stop_requested: threading.Event) -> IO | None:
    """One slot of one device (see :func:`acquire_device_slots`): its open lock file, or None if stopped."""
    handles = acquire_device_slots([device], run_dir, stop_requested)
    return None if handles is None else handles[0]


def acquire_device_slots(devices: list[str], run_dir: Path, stop_requested: threading.Event) -> list[IO] | None:
    """Hold one slot of each entry of ``devices`` (a name twice: two slots of it), all at once; their lock files.

    Close every returned file to free the slots. Returns None if ``stop_requested`` is set while waiting. While
    it waits, the run is recorded queued, "waiting for <devices>", and holders that froze are recovered.
    """
    wanted = {name: devices.count(name) for name in sorted(set(devices))}
    names = ", ".join(wanted)
    slots = {name: [_slot_path(name, k) for k in range(runs_per_device())] for name in wanted}
    for name, count in wanted.items():
        if count > len(slots[name]):
            raise RunError(f"the run needs {count} slots of {name}, but {RUNS_PER_DEVICE_ENV} allows "
                           f"{len(slots[name])} runs per device")
    announced = False
    while True:
        held = _try_all(wanted, slots)
        if held is not None:
            for handle in held:
                _write_holder(handle, run_dir)
            return held
        if not announced:
            update_status(run_dir, state="queued", message=f"waiting for {names}")
            print(f"[margin-lab] waiting for {names}: other runs are using it", flush=True)
            announced = True
        for name, paths in slots.items():
            for path in paths:
                recover_slot(path, name)
        if stop_requested.wait(LOCK_POLL_S):
            return None


def _slot_path(device: str, k: int) -> Path:
    return workspace_subdir("locks") / (f"{device}.lock" if k == 0 else f"{device}.{k}.lock")


def _try_all(wanted: dict[str, int], slots: dict[str, list[Path]]) -> list[IO] | None:
    """``wanted[name]`` free slots of every device, locked without blocking; None (and nothing held) if any is busy."""
    held: list[IO] = []
    try:
        for name, count in wanted.items():
            taken = 0
            for path in slots[name]:
                if taken == count:
                    break
                handle = open(path, "a")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                held.append(handle)
                taken += 1
            if taken < count:
                for handle in held:
                    handle.close()
                return None
        return held
    except BaseException:
        for handle in held:
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
