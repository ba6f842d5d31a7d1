"""Durable background runs: run directories, the registry, detached workers, device slots, stop and resume.

    from dpo_engine import runs
    run_id = runs.create_run("config.yaml", name="dm-mul-2k")
    runs.launch(run_id)                # python -m dpo_engine.runs RUN_DIR, detached
    runs.list_runs(); runs.stop(run_id); runs.resume(run_id)

One concern per module: `layout` (a run directory's files and their checks), `creation`, `status` (status.json,
its lock, liveness), `processes` (detached processes, psutil liveness, signals; shared with `dpo_engine.jobs`),
`registry` (SQLite index), `requests` (what launch and stop take), `reading`, `control` (launch, resume, stop, delete), `devices` (slots), `worker`.
"""

from dpo_engine.runs.control import delete, launch, resume, stop, run_foreground
from dpo_engine.runs.creation import create_run
from dpo_engine.runs.devices import RUNS_PER_DEVICE_ENV, runs_per_device
from dpo_engine.runs.layout import (
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    RESOLVED_CONFIG_FILE,
    RUN_FILE,
    STATUS_FILE,
    SUBSET_FILE,
    CorruptRunFile,
    RunError,
    RunInfo,
)
from dpo_engine.runs.processes import ACTIVE_STATES, STATES
from dpo_engine.runs.reading import get_run, list_runs, read_metrics, tail_log
from dpo_engine.runs.registry import rebuild_registry
from dpo_engine.runs.requests import LaunchRequest, StopRequest, save_launch_config
from dpo_engine.runs.status import HEARTBEAT_STALE_ENV
from dpo_engine.runs.worker import HEARTBEAT_INTERVAL_ENV, TRAIN_TARGET_ENV, train_resolved

__all__ = [
    "CONFIG_FILE", "LOG_FILE", "METRICS_FILE", "RESOLVED_CONFIG_FILE", "RUN_FILE", "STATUS_FILE", "SUBSET_FILE",
    "ACTIVE_STATES", "HEARTBEAT_INTERVAL_ENV", "HEARTBEAT_STALE_ENV", "RUNS_PER_DEVICE_ENV", "STATES", "TRAIN_TARGET_ENV",
    "CorruptRunFile", "LaunchRequest", "RunError", "RunInfo", "StopRequest", "create_run", "delete", "get_run", "launch", "list_runs", "read_metrics",
    "rebuild_registry", "resume", "runs_per_device", "save_launch_config", "stop", "tail_log", "run_foreground", "train_resolved",
]
