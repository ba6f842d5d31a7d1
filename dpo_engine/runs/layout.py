"""What a run directory holds, how its files are named, and the checks that tell a run from a corrupt one.

A run is the directory ``$MARGIN_LAB_HOME/runs/<run_id>/`` (or any directory given to `create_run`):

- ``run.json``: what never changes after creation (run_id, name, created, selection_name, loss, subset_name,
  model, subset_source);
- ``config.yaml``: the configuration as the user wrote it;
- ``resolved_config.json``: ``TrainConfig.to_dict()`` after defaults, with ``subset`` pointing at the copy below;
- ``subset.jsonl``: a copy of the training pairs, so the run does not depend on files that may change;
- ``status.json``: ``state`` (see ``STORED_STATES``), ``pid``, ``pgid``, ``pid_started`` (the worker's start time,
  which tells it from a process that later got the same pid), ``heartbeat``, ``step``, ``total_steps``,
  ``launched``, ``started``, ``finished``, ``message``, ``device``, and the trainer's ``summary`` once it returns.
  Times are unix seconds. It is only ever replaced atomically;
- what the trainer writes: ``metrics.jsonl``, ``checkpoints/``, ``adapter/``, ``pair_rewards.parquet``;
- ``train.log``: the worker's stdout and stderr; ``.worker.lock``: held by the one worker training the run.

A directory whose run.json, status.json or resolved_config.json cannot be read as what it should be is a
*corrupt* run: it is listed with the reason, and nothing else about the workspace stops working.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from dpo_engine.errors import UserError
from dpo_engine.paths import home_dir, workspace_subdir
from dpo_engine.runs.processes import ACTIVE_STATES, tail_lines

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
RESOLVED_CONFIG_FILE = "resolved_config.json"
SUBSET_FILE = "subset.jsonl"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
STATUS_LOCK_FILE = ".status.lock"
WORKER_LOCK_FILE = ".worker.lock"

# What status.json may say; "unresponsive" and "corrupt" are derived when a run is read, never stored.
STORED_STATES = ("queued", "running", "completed", "failed", "stopped")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# run.json's fields and the types each must have.
RECORD_TYPES = {
    "run_id": str, "name": (str, type(None)), "created": (int, float), "selection_name": (str, type(None)),
    "loss": str, "subset_name": str, "model": str,
}
# status.json's typed fields (all optional).
STATUS_TYPES = {
    "state": str, "pid": int, "pgid": int, "pid_started": (int, float), "heartbeat": (int, float),
    "step": int, "total_steps": int, "launched": (int, float), "started": (int, float),
    "finished": (int, float), "message": str, "device": str, "summary": dict,
}


class RunError(UserError):
    """A run that does not exist, or an action its state does not allow (deleting a running run, ...)."""


class CorruptRunFile(RunError):
    """A run file that exists but cannot be read as what it should be; the message names the file and why."""


@dataclass
class RunInfo:
    """One run as read from its directory: fixed facts, the resolved config, and the current status.

    A corrupt run has ``state == "corrupt"`` and the reason in ``message``; its other facts are what could be read.
    """

    run_id: str
    run_dir: Path
    name: str | None
    created: float
    selection_name: str | None
    loss: str
    subset_name: str
    model: str
    config: dict
    status: dict

    @property
    def state(self) -> str:
        return self.status.get("state", "queued")

    @property
    def is_active(self) -> bool:
        """Queued, running or unresponsive: its worker may still write to the directory."""
        return self.state in ACTIVE_STATES

    @property
    def step(self) -> int:
        return self.status.get("step") or 0

    @property
    def total_steps(self) -> int | None:
        return self.status.get("total_steps")

    @property
    def message(self) -> str:
        return self.status.get("message") or ""

    @property
    def last_metrics(self) -> dict | None:
        """The newest metrics.jsonl record, read from the end of the file."""
        for line in reversed(tail_lines(self.metrics_path, 5)):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line while the trainer appends
            if isinstance(record, dict):
                return record
        return None

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def subset_path(self) -> Path:
        return self.run_dir / SUBSET_FILE

    @property
    def status_path(self) -> Path:
        return self.run_dir / STATUS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def pair_rewards_path(self) -> Path:
        return self.run_dir / "pair_rewards.parquet"


def runs_root() -> Path:
    return workspace_subdir("runs")


def is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file()


def run_dirs_under_runs() -> list[Path]:
    """Run directories in ``$MARGIN_LAB_HOME/runs``, skipping ones still being created (hidden staging dirs)."""
    return [path for path in runs_root().iterdir() if not path.name.startswith(".") and is_run_dir(path)]


def missing_run(run_id: str) -> RunError:
    return RunError(f"no run '{run_id}' in {home_dir()} (see `dpo-engine runs list`)")


def read_checked_json(path: Path, kind: type, default=None):
    """``path`` parsed as JSON of type ``kind``; ``default`` when absent; `CorruptRunFile` naming why otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except (OSError, UnicodeDecodeError) as error:
        raise CorruptRunFile(f"{path}: unreadable ({error})") from None
    if not text.strip():
        raise CorruptRunFile(f"{path}: empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CorruptRunFile(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, kind):
        raise CorruptRunFile(f"{path}: expected a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def check_types(path: Path, values: dict, types: dict, required: bool) -> None:
    """`CorruptRunFile` naming the first field of ``values`` missing (when ``required``) or of the wrong type."""
    for name, kind in types.items():
        if name not in values:
            if required:
                raise CorruptRunFile(f"{path}: field '{name}' is missing")
            continue
        value = values[name]
        if value is None and not required:
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CorruptRunFile(f"{path}: field '{name}' has the wrong type ({type(value).__name__}: {value!r:.40})")


def read_record(run_dir: Path) -> dict:
    """run.json, checked field by field; `CorruptRunFile` when it is missing, empty or wrongly typed."""
    path = run_dir / RUN_FILE
    record = read_checked_json(path, dict)
    if record is None:
        raise CorruptRunFile(f"{path}: missing")
    check_types(path, record, RECORD_TYPES, required=True)
    return record


def read_stored_status(run_dir: Path) -> dict:
    """status.json as stored, checked; `CorruptRunFile` when it is truncated, not an object or wrongly typed."""
    path = run_dir / STATUS_FILE
    status = read_checked_json(path, dict, {})
    check_types(path, status, STATUS_TYPES, required=False)
    if status.get("state", "queued") not in STORED_STATES:
        raise CorruptRunFile(f"{path}: state '{status['state']}' is not one of {', '.join(STORED_STATES)}")
    return status


def corrupt_info(run_dir: Path, reason: str) -> RunInfo:
    """A listing entry for a run that cannot be read: what run.json still says, state ``corrupt``, the reason."""
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    record = record if isinstance(record, dict) else {}

    def text(key: str, default: str) -> str:
        return record[key] if isinstance(record.get(key), str) else default

    created = record.get("created")
    return RunInfo(
        run_id=text("run_id", run_dir.name), run_dir=run_dir, name=None,
        created=created if isinstance(created, (int, float)) and not isinstance(created, bool) else 0.0,
        selection_name=None, loss=text("loss", "?"), subset_name=text("subset_name", "?"), model=text("model", "?"),
        config={}, status={"state": "corrupt", "message": reason},
    )
