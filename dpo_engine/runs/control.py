"""Acting on runs: launch, resume, stop and delete. Each checks the run's state and its worker first.

`launch` starts ``python -m dpo_engine.runs RUN_DIR`` in its own session, with its output going to
``train.log``: closing the dashboard or the terminal does not touch it (a job that depends on the UI session stalls
when the browser sleeps, as LLaMA-Factory's web UI does: hiyouga/LLaMA-Factory#8817).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from dpo_engine.runs.layout import LOG_FILE, RunError, RunInfo
from dpo_engine.runs.processes import ACTIVE_STATES, engine_environment, start_detached, start_time, terminate, wait_for_exit
from dpo_engine.runs.reading import find_run_dir, get_run, load_run
from dpo_engine.runs.registry import unregister
from dpo_engine.runs.status import update_status, worker_is_ours
from dpo_engine.runs.worker import run_in_this_process, worker_lock_is_held


def launch(run_id: str) -> RunInfo:
    """Start the run's worker, detached: it keeps running after this process exits. Returns the run, queued."""
    info = _usable(run_id)
    if info.status.get("launched") is not None:
        raise RunError(f"run '{run_id}' was already launched (state {info.state}); use resume to continue it")
    _spawn_worker(info.run_dir, resume=False)
    return get_run(run_id)


def resume(run_id: str) -> RunInfo:
    """Relaunch a stopped or failed run; training continues from its last checkpoint (or starts over if none).

    Refused while any process of the run lives (its recorded worker, or whoever holds its worker lock).
    """
    info = _usable(run_id)
    if info.status.get("launched") is None:
        raise RunError(f"run '{run_id}' was never launched; use launch")
    if info.is_active:
        raise RunError(f"run '{run_id}' is still {info.state}: stop it first")
    if info.state == "completed":
        raise RunError(f"run '{run_id}' already completed")
    if not _worker_ended(info, grace_s=5.0):
        raise RunError(f"run '{run_id}' still has a live worker (pid {info.status.get('pid')}): stop it first")
    _spawn_worker(info.run_dir, resume=True)
    return get_run(run_id)


def run_foreground(run_id: str) -> dict:
    """Train a created run in this process with a progress bar (``dpo-engine train``); return the final status.

    Ctrl-C stops after the current step (a second one aborts); SIGTERM (e.g. `stop` from another terminal) acts
    like the first Ctrl-C. The status is kept up to date as for a detached run, so `resume` can continue it.
    """
    info = _usable(run_id)
    if info.status.get("launched") is not None:
        raise RunError(f"run '{run_id}' was already launched (state {info.state}); use resume to continue it")
    return run_in_this_process(info.run_dir)


def stop(run_id: str, timeout: float = 60.0) -> RunInfo:
    """Stop a run and wait for it; returns the run (stopped, or as it was if nothing of it was running).

    Any live recorded process of the run gets SIGTERM (and SIGCONT, so a suspended one can act on it): the
    worker finishes its step, checkpoints and records stopped. After ``timeout`` seconds it gets SIGKILL and is
    recorded stopped here (resumable from the last checkpoint).
    """
    info = get_run(run_id)
    status = info.status
    pid = status.get("pid")
    live = pid is not None and worker_is_ours(status)
    if not info.is_active and not live:
        return info
    if pid is None:
        message = "stopped before its worker started"
    elif not live:
        message = "stopped; its worker had already ended"
    elif terminate(pid, status.get("pgid"), status.get("pid_started"), timeout):
        # Normally the worker has recorded "stopped" itself; this covers a signal that came before its handlers.
        message = "stopped on request"
    else:
        message = f"killed after {timeout:g} s without stopping; resume continues from the last checkpoint"
    update_status(
        info.run_dir,
        only_if=lambda current: current.get("state") in ACTIVE_STATES and current.get("pid") == pid,
        state="stopped",
        finished=time.time(),
        message=message,
    )
    return get_run(run_id)


def delete(run_id: str) -> None:
    """Remove a run's directory and registry row. Refuses while the run is active or any process of it lives."""
    run_dir = find_run_dir(run_id)
    info = load_run(run_dir)
    if info.is_active and info.status.get("pid") is not None:
        raise RunError(f"run '{run_id}' is {info.state}: stop it before deleting it")
    if worker_lock_is_held(run_dir):
        raise RunError(f"run '{run_id}' still has a live worker: stop it before deleting it")
    shutil.rmtree(run_dir)
    unregister(info.run_id)


def _worker_ended(info: RunInfo, grace_s: float) -> bool:
    """Whether no process of the run lives, waiting up to ``grace_s`` for a worker that has recorded its end."""
    pid = info.status.get("pid")
    if pid is not None and worker_is_ours(info.status):
        # A worker that wrote its final status is still closing its files for a moment.
        wait_for_exit(pid, info.status.get("pid_started"), grace_s)
    if worker_is_ours(info.status):
        return False
    # A SIGKILLed worker's lock was seen still held just after its process had gone (CI): wait, up to the grace.
    deadline = time.monotonic() + grace_s
    while worker_lock_is_held(info.run_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _usable(run_id: str) -> RunInfo:
    """The run, unless it is corrupt (then `RunError` with the reason: nothing can be started from it)."""
    info = get_run(run_id)
    if info.state == "corrupt":
        raise RunError(f"run '{run_id}' cannot be used: {info.message}")
    return info


def _spawn_worker(run_dir: Path, *, resume: bool) -> None:
    """``python -m dpo_engine.runs RUN_DIR`` in a new session, output appended to train.log."""
    now = time.time()
    update_status(
        run_dir, state="queued", pid=None, pgid=None, pid_started=None, launched=now, heartbeat=now, started=None,
        finished=None, message="starting the worker",
    )
    command = [sys.executable, "-m", "dpo_engine.runs", str(run_dir)] + (["--resume"] if resume else [])
    try:
        process = start_detached(command, run_dir / LOG_FILE, env=engine_environment())
    except OSError as error:
        update_status(run_dir, state="failed", finished=time.time(), message=f"could not start the worker: {error}")
        raise
    # The worker writes the same values once it runs; writing them now lets stop() reach it even before that.
    update_status(run_dir, only_if=lambda current: current.get("pid") is None,
                  pid=process.pid, pgid=process.pid, pid_started=start_time(process.pid))
