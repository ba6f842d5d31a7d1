"""The worker: ``python -m dpo_engine.runs RUN_DIR [--resume]`` (`dpo_engine.runs.__main__`), started detached by
`launch` and `resume`.

It

1. takes the run's worker lock (``.worker.lock``): one worker per run directory, a second one exits at once;
2. turns SIGTERM and SIGINT into a stop request that the trainer polls after each step (checkpoint, then return);
3. waits for a slot of each device the run uses (`dpo_engine.runs.devices`), queued meanwhile;
4. refreshes ``heartbeat`` every ``HEARTBEAT_INTERVAL_S`` from a thread;
5. calls the training function and records completed, stopped or failed (with the end of the log), retrying that
   last write while the disk is full.

The training function is ``dpo_engine.training.train``, reached through `train_resolved`; with
``num_processes > 1`` it is `dpo_engine.runs.ranks.train_across_processes` (``accelerate launch``), while the
worker keeps the status, the heartbeat and one device slot itself. Tests replace it by
setting ``MARGIN_LAB_TRAIN_TARGET=module:function`` in the environment of the process that launches: the worker
inherits it and calls ``function(resolved_config: dict, run_dir, *, resume, should_stop, on_progress) -> dict``.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO

from dpo_engine.runs.devices import (
    RUNS_PER_DEVICE_ENV,
    acquire_device_slots,
    cpu_threads_per_process,
    physical_devices,
    resolve_device,
    runs_per_device,
)
from dpo_engine.runs.layout import RESOLVED_CONFIG_FILE, WORKER_LOCK_FILE, RunError, read_checked_json, read_stored_status
from dpo_engine.runs.processes import start_time
from dpo_engine.runs.status import update_status, update_status_retrying, with_log_tail

HEARTBEAT_INTERVAL_ENV = "MARGIN_LAB_HEARTBEAT_INTERVAL_S"
TRAIN_TARGET_ENV = "MARGIN_LAB_TRAIN_TARGET"


def heartbeat_interval_s() -> float:
    """Seconds between heartbeats (``$MARGIN_LAB_HEARTBEAT_INTERVAL_S``, default 2)."""
    try:
        return max(0.05, float(os.environ.get(HEARTBEAT_INTERVAL_ENV, "2")))
    except ValueError:
        return 2.0


def train_resolved(config: dict, run_dir: str | os.PathLike, **kwargs) -> dict:
    """The default training function: ``dpo_engine.training.train`` on a resolved config dict, in this process,
    or across ``num_processes`` processes started through ``accelerate launch``."""
    from dpo_engine.training.config import TrainConfig
    from dpo_engine.training.trainer import train

    if _across_processes(config):
        from dpo_engine.runs.ranks import train_across_processes

        return train_across_processes(config, run_dir, **kwargs)
    return train(TrainConfig.from_dict(config), run_dir, **kwargs)


def _across_processes(config: dict) -> bool:
    """Whether this process must start the config's ranks (not when it already is one, under accelerate launch)."""
    from dpo_engine.training.distributed import current_world

    return int(config.get("num_processes") or 1) > 1 and not current_world().distributed


def _train_function() -> Callable[..., dict]:
    """``train_resolved``, or the ``module:function`` named by ``MARGIN_LAB_TRAIN_TARGET``."""
    target = os.environ.get(TRAIN_TARGET_ENV)
    if not target:
        return train_resolved
    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def take_worker_lock(run_dir: Path) -> IO | None:
    """The run's worker lock, held until the returned file is closed; None when another live process holds it."""
    handle = open(run_dir / WORKER_LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def worker_lock_is_held(run_dir: Path) -> bool:
    """Whether some live process holds the run's worker lock (checked without keeping it)."""
    handle = take_worker_lock(run_dir)
    if handle is None:
        return True
    handle.close()
    return False


def run_worker(run_dir: str | os.PathLike, *, resume: bool = False) -> int:
    """The detached side of `launch`: train the run in ``run_dir``; exit code 0 unless it failed."""
    run_dir = Path(run_dir)
    worker_lock = take_worker_lock(run_dir)
    if worker_lock is None:  # another worker trains this run: leave its status alone
        print(f"[margin-lab] another worker holds {run_dir / WORKER_LOCK_FILE}; not starting", flush=True)
        return 3
    with worker_lock:
        stop_requested = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop_requested.set())
        update_status(run_dir, pid=os.getpid(), pgid=os.getpgrp(), pid_started=start_time(os.getpid()),
                      heartbeat=time.time(), message="worker started")
        print(f"[margin-lab] worker pid {os.getpid()}{' (resume)' if resume else ''}", flush=True)

        def call_trainer(config: dict, on_progress: Callable[[int, int], None]) -> dict:
            train = _train_function()
            return train(config, run_dir, resume=resume, should_stop=stop_requested.is_set, on_progress=on_progress)

        final = run_training(run_dir, call_trainer, stop_requested)
    return 1 if final["state"] == "failed" else 0


def run_in_this_process(run_dir: Path) -> dict:
    """Train a created, never launched run in this process with a progress bar; return the final status.

    Ctrl-C stops after the current step (a second one aborts); SIGTERM (e.g. `stop` from another terminal) acts
    like the first Ctrl-C. The status is kept up to date as for a detached run, so `resume` can continue it.
    """
    from dpo_engine.training.config import TrainConfig
    from dpo_engine.training.trainer import train_foreground

    worker_lock = take_worker_lock(run_dir)
    if worker_lock is None:
        raise RunError(f"another process is training the run in {run_dir}")
    now = time.time()
    # pgid stays None: this process shares its group with the shell, which `stop` must not signal.
    update_status(run_dir, state="queued", pid=os.getpid(), pgid=None, pid_started=start_time(os.getpid()),
                  launched=now, heartbeat=now, message="starting")

    def call_trainer(config: dict, on_progress: Callable[[int, int], None]) -> dict:
        if _across_processes(config):  # Ctrl-C interrupts, and the ranks are killed: resume continues
            return train_resolved(config, run_dir, on_progress=on_progress)
        # train_foreground draws its own bar and takes no on_progress: the status gets the summary's step counts.
        return train_foreground(TrainConfig.from_dict(config), run_dir)

    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        # Never set: Ctrl-C while waiting for the device raises KeyboardInterrupt, which counts as stopped.
        with worker_lock:
            return run_training(run_dir, call_trainer, threading.Event())
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_training(run_dir: Path, call_trainer: Callable, stop_requested: threading.Event) -> dict:
    """Take the device, keep the heartbeat, run ``call_trainer(config, on_progress)``; record and return the end."""
    heartbeat = Heartbeat(run_dir)
    heartbeat.start()
    device_slots = None
    try:
        config = read_checked_json(run_dir / RESOLVED_CONFIG_FILE, dict)
        device = resolve_device(config.get("device", "auto"))
        device_slots = acquire_device_slots(physical_devices(device, config.get("num_processes") or 1), run_dir,
                                            stop_requested)
        if device_slots is None:
            final = {"state": "stopped", "message": f"stopped while waiting for {device}"}
        elif stop_requested.is_set():  # asked during start-up: the trainer would take a step before polling
            final = {"state": "stopped", "message": "stopped before training started"}
        else:
            update_status(run_dir, state="running", device=device, started=time.time(), message=f"training on {device}")
            _share_the_cpu(device, config)
            summary = call_trainer(config, heartbeat.record_progress)
            final = _final_status(summary, heartbeat)
    except KeyboardInterrupt:
        final = {"state": "stopped", "message": "interrupted"}
    except Exception as error:
        traceback.print_exc()  # the full traceback goes to train.log
        sys.stderr.flush()
        final = {"state": "failed", "message": with_log_tail(f"{type(error).__name__}: {error}", run_dir)}
    finally:
        heartbeat.stop()
    print(f"[margin-lab] {final['state']}: {final['message'].splitlines()[0]}", flush=True)
    status = update_status_retrying(run_dir, finished=time.time(), step=heartbeat.step,
                                    total_steps=heartbeat.total_steps, **final)
    for slot in device_slots or ():
        slot.close()  # only now: the next run on these devices starts after this one is recorded as finished
    return status


def _share_the_cpu(device: str, config: dict) -> None:
    """A one-process CPU run that shares the CPU with other runs trains on its share of the cores."""
    threads = cpu_threads_per_process() if device == "cpu" and not _across_processes(config) else None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        print(f"[margin-lab] {threads} CPU thread{'s' if threads > 1 else ''} (the CPU is shared by "
              f"{RUNS_PER_DEVICE_ENV}={runs_per_device()} runs)", flush=True)


def _final_status(summary: dict, heartbeat: Heartbeat) -> dict:
    """completed or stopped, from the trainer's summary (its step counts win over the last progress call)."""
    if summary.get("steps") is not None:
        heartbeat.record_progress(summary["steps"], summary.get("total_steps", heartbeat.total_steps))
    if summary.get("stopped"):
        message = f"stopped at step {heartbeat.step}; resume continues from the last checkpoint"
        return {"state": "stopped", "message": message, "summary": summary}
    loss = summary.get("final_loss")
    message = f"completed {heartbeat.step} steps" + (f", final loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
    return {"state": "completed", "message": message, "summary": summary}


class Heartbeat:
    """A thread that refreshes status.json's ``heartbeat`` and step counters every ``heartbeat_interval_s()``."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        status = read_stored_status(run_dir)
        # A resumed run shows its old position until the trainer reports.
        self.step: int = status.get("step") or 0
        self.total_steps: int | None = status.get("total_steps")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def record_progress(self, step: int, total_steps: int | None) -> None:
        """The trainer's ``on_progress``: remembered here, written with the next beat (cheap per step)."""
        self.step, self.total_steps = step, total_steps

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(heartbeat_interval_s()):
            try:
                update_status(self.run_dir, heartbeat=time.time(), step=self.step, total_steps=self.total_steps)
            except OSError as error:  # e.g. a full disk: keep training, try again next beat
                print(f"[margin-lab] heartbeat not written: {error}", file=sys.stderr, flush=True)
