"""Training runs: self-contained run directories, a SQLite index, and detached workers that outlive the UI.

A run is the directory ``$MARGIN_LAB_HOME/runs/<run_id>/`` (or any directory given to `create_run`):

- ``run.json``: what never changes after creation (run_id, name, created, selection_name, loss, subset_name,
  model, subset_source);
- ``config.yaml``: the configuration as the user wrote it;
- ``resolved_config.json``: ``TrainConfig.to_dict()`` after defaults, with ``subset`` pointing at the copy below;
- ``subset.jsonl``: a copy of the training pairs, so the run does not depend on files that may change;
- ``status.json``: ``state`` (queued, running, completed, failed, stopped), ``pid``, ``pgid``, ``heartbeat``
  (unix time), ``step``, ``total_steps``, ``launched``, ``started``, ``finished`` (unix times), ``message``,
  ``device``, and the trainer's ``summary`` once it returns. It is only ever replaced atomically;
- what the trainer writes: ``metrics.jsonl``, ``checkpoints/``, ``adapter/``, ``pair_rewards.parquet``;
- ``train.log``: the worker's stdout and stderr.

``$MARGIN_LAB_HOME/registry.sqlite`` indexes the runs, but the directories are the source of truth:
`rebuild_registry` re-creates the index from them, and `list_runs` does so by itself when the index is missing
or out of date.

`launch` starts ``python -m dpo_engine.runs.manager worker RUN_DIR`` in its own session (process group), with its output
going to ``train.log``: closing the dashboard or the terminal does not touch it (field-notes §2.2, §7). The worker

1. turns SIGTERM and SIGINT into a stop request that the trainer polls after each step (checkpoint, then return);
2. waits for its device (one run per device, ``$MARGIN_LAB_HOME/locks/<device>.lock``; ``$MARGIN_LAB_RUNS_PER_DEVICE``
   allows more side by side), queued meanwhile;
3. refreshes ``heartbeat`` every ``HEARTBEAT_INTERVAL_S`` from a thread;
4. calls the training function and records completed, stopped or failed (with the end of the log).

A run that status.json calls queued or running but whose process is gone (or whose heartbeat is older than
``HEARTBEAT_STALE_S``, which also catches a recycled pid) is marked failed when read. It can be resumed from its
last checkpoint like a stopped one.

The training function is ``dpo_engine.training.train``, reached through `train_resolved`. Tests replace it by
setting ``MARGIN_LAB_TRAIN_TARGET=module:function`` in the environment of the process that launches: the worker
inherits it and calls ``function(resolved_config: dict, run_dir, *, resume, should_stop, on_progress) -> dict``.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from dpo_engine.errors import UserError
from dpo_engine.files import atomic_write_json, atomic_write_text, read_json, read_jsonl
from dpo_engine.paths import home_dir, workspace_subdir

if TYPE_CHECKING:  # both are heavy imports, made only where needed
    import pandas as pd

    from dpo_engine.training.config import TrainConfig

STATES = ("queued", "running", "completed", "failed", "stopped")
ACTIVE_STATES = ("queued", "running")

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
RESOLVED_CONFIG_FILE = "resolved_config.json"
SUBSET_FILE = "subset.jsonl"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
STATUS_LOCK_FILE = ".status.lock"

HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_STALE_S = 30.0
LOCK_POLL_S = 0.5
LOG_LINES_IN_MESSAGE = 20
TRAIN_TARGET_ENV = "MARGIN_LAB_TRAIN_TARGET"
RUNS_PER_DEVICE_ENV = "MARGIN_LAB_RUNS_PER_DEVICE"  # how many runs may train on one device at once (default 1)

# Workers started by this process, by pid: polling them reaps them, so a finished one is not a live-looking zombie.
_children: dict[int, subprocess.Popen] = {}

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RunError(UserError):
    """A run that does not exist, or an action its state does not allow (deleting a running run, ...)."""


@dataclass
class RunInfo:
    """One run as read from its directory: fixed facts, the resolved config, and the current status."""

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
        """Queued or running: its worker may still write to the directory."""
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
        for line in reversed(_tail_lines(self.metrics_path, 5)):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line while the trainer appends
        return None

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def resolved_config_path(self) -> Path:
        return self.run_dir / RESOLVED_CONFIG_FILE

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


# ---- creating runs ------------------------------------------------------------------------------------------------


def create_run(
    config: TrainConfig | dict | str | os.PathLike,
    name: str | None = None,
    selection_name: str | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
) -> str:
    """Validate ``config`` and write a new run directory; return its run id. Nothing is launched.

    ``config``: a ``TrainConfig``, a dict of its fields, or the path of a YAML file (copied verbatim to
    config.yaml). A bad value raises ``ConfigError`` naming the field, and no directory is left behind.
    ``name`` replaces the loss at the front of the run id. ``selection_name`` records which saved selection the
    subset came from (shown as the run's subset name). ``run_dir`` puts the run somewhere other than
    ``$MARGIN_LAB_HOME/runs/<run_id>`` (it must not exist, or be empty); the registry remembers where.
    """
    train_config, config_text = _validated_config(config)
    run_id = _new_run_id(name or train_config.loss)
    final_dir = Path(run_dir).expanduser().resolve() if run_dir else workspace_subdir("runs") / run_id
    if final_dir.exists() and any(final_dir.iterdir()):
        raise RunError(f"run directory {final_dir} already exists and is not empty")

    run_record = {
        "run_id": run_id,
        "name": name,
        "created": time.time(),
        "selection_name": selection_name,
        "loss": train_config.loss,
        "subset_name": selection_name or Path(train_config.subset).stem,
        "model": train_config.model,
        "subset_source": str(Path(train_config.subset).expanduser().resolve()),
    }
    # Built beside its final place and renamed in one step: a failure half-way leaves nothing that looks like a run.
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = final_dir.parent / f".{final_dir.name}.creating-{secrets.token_hex(2)}"
    staging.mkdir()
    try:
        _write_run_files(staging, final_dir, train_config, config_text, run_record)
        if final_dir.exists():
            final_dir.rmdir()
        staging.rename(final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _register(run_record, final_dir)
    return run_id


def _new_run_id(prefix: str) -> str:
    """``<prefix>-<yyyymmdd-hhmmss>-<4 hex>``, with the prefix reduced to letters, digits, ``_``, ``.``, ``-``."""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", prefix).strip("-.").lower()[:40] or "run"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _validated_config(config: TrainConfig | dict | str | os.PathLike) -> tuple[TrainConfig, str]:
    """``(TrainConfig, text for config.yaml)`` from any accepted form, after ``validate()``."""
    import yaml

    from dpo_engine.training.config import TrainConfig

    if isinstance(config, TrainConfig):
        train_config = config
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    elif isinstance(config, dict):
        train_config = TrainConfig.from_dict(config)
        text = yaml.safe_dump(config, sort_keys=False)
    else:
        train_config = TrainConfig.from_yaml(config)
        text = Path(config).read_text(encoding="utf-8")
    train_config.validate()
    return train_config, text


def _write_run_files(
    directory: Path, final_dir: Path, train_config: TrainConfig, config_text: str, run_record: dict
) -> None:
    """Fill ``directory`` (later renamed to ``final_dir``) with everything a run starts with."""
    from dpo_engine.data.pairs import save_pairs
    from dpo_engine.training.config import load_subset

    # load_pairs + save_pairs rather than a byte copy: any input format becomes jsonl that load_pairs reads back.
    save_pairs(load_subset(train_config), directory / SUBSET_FILE)
    resolved = train_config.to_dict()
    resolved["subset"] = str(final_dir / SUBSET_FILE)
    model_path = Path(train_config.model).expanduser()
    if model_path.exists():  # a local model directory: the worker may run from another working directory
        resolved["model"] = str(model_path.resolve())
    atomic_write_text(directory / CONFIG_FILE, config_text)
    atomic_write_json(directory / RESOLVED_CONFIG_FILE, resolved)
    atomic_write_json(directory / STATUS_FILE, _initial_status())
    atomic_write_json(directory / RUN_FILE, run_record)


def _initial_status() -> dict:
    return {
        "state": "queued",
        "pid": None,
        "pgid": None,
        "heartbeat": None,
        "step": 0,
        "total_steps": None,
        "launched": None,
        "started": None,
        "finished": None,
        "message": "created; not launched yet",
        "device": None,
    }


# ---- reading runs -------------------------------------------------------------------------------------------------


def get_run(run_id: str) -> RunInfo:
    """The run ``run_id`` as it is now. A queued/running run whose worker is gone is marked failed first."""
    return _load_run(_find_run_dir(run_id))


def list_runs() -> list[RunInfo]:
    """Every run, newest first. Re-indexes the registry when it is missing or disagrees with the disk."""
    indexed = _registry_dirs()
    known = {path.resolve() for path in indexed.values()}
    unindexed = any(path.resolve() not in known for path in _run_dirs_under_runs())
    if unindexed or not all(_is_run_dir(path) for path in indexed.values()):
        rebuild_registry()
        indexed = _registry_dirs()
    found = []
    for run_dir in indexed.values():
        try:
            found.append(_load_run(run_dir))
        except FileNotFoundError:
            continue  # deleted while we were listing
    return sorted(found, key=lambda run: run.created, reverse=True)


def read_metrics(run_id: str) -> pd.DataFrame:
    """metrics.jsonl as a pandas DataFrame, one row per logged step (empty before the first log)."""
    import pandas as pd

    return pd.DataFrame.from_records(list(read_jsonl(get_run(run_id).metrics_path)))


def tail_log(run_id: str, n_lines: int = 50) -> str:
    """The last ``n_lines`` lines of train.log (progress-bar redraws count as lines)."""
    return "\n".join(_tail_lines(_find_run_dir(run_id) / LOG_FILE, n_lines))


def _find_run_dir(run_id: str) -> Path:
    """The directory of ``run_id``: under runs/, else where the registry says. ``RunError`` if there is none."""
    if _RUN_ID.match(run_id or ""):
        candidate = workspace_subdir("runs") / run_id
        if _is_run_dir(candidate):
            return candidate
        registered = _registry_dirs().get(run_id)
        if registered is not None and _is_run_dir(registered):
            return registered
    raise RunError(f"no run '{run_id}' in {home_dir()} (see `dpo-engine runs list`)")


def _is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file()


def _run_dirs_under_runs() -> list[Path]:
    """Run directories in ``$MARGIN_LAB_HOME/runs``, skipping ones still being created (hidden staging dirs)."""
    return [path for path in workspace_subdir("runs").iterdir() if not path.name.startswith(".") and _is_run_dir(path)]


def _load_run(run_dir: Path) -> RunInfo:
    record = read_json(run_dir / RUN_FILE)
    if record is None:
        raise FileNotFoundError(run_dir / RUN_FILE)
    return RunInfo(
        run_id=record["run_id"],
        run_dir=run_dir,
        name=record.get("name"),
        created=record["created"],
        selection_name=record.get("selection_name"),
        loss=record["loss"],
        subset_name=record["subset_name"],
        model=record["model"],
        config=read_json(run_dir / RESOLVED_CONFIG_FILE, {}),
        status=_checked_status(run_dir),
    )


def _tail_lines(path: Path, n_lines: int) -> list[str]:
    """The last ``n_lines`` lines of a text file, read backwards in blocks so a long log costs little."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return []
    with handle:
        end = handle.seek(0, os.SEEK_END)
        data = b""
        while end > 0 and data.count(b"\n") <= n_lines:
            start = max(0, end - 65536)
            handle.seek(start)
            data = handle.read(end - start) + data
            end = start
    # tqdm redraws its bar with carriage returns: each redraw reads as a line.
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip()][-n_lines:]


# ---- status and liveness ------------------------------------------------------------------------------------------


@contextmanager
def _status_lock(run_dir: Path) -> Iterator[None]:
    """Serialises read-modify-write of status.json between the worker, its heartbeat thread and other processes."""
    with open(run_dir / STATUS_LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _update_status(run_dir: Path, only_if: Callable[[dict], bool] | None = None, **changes) -> dict:
    """Merge ``changes`` into status.json (when ``only_if(status)`` holds) and return the status as it now is.

    The file is replaced atomically, so readers that take no lock never see half of it.
    """
    with _status_lock(run_dir):
        status = read_json(run_dir / STATUS_FILE, {})
        if only_if is None or only_if(status):
            status.update(changes)
            atomic_write_json(run_dir / STATUS_FILE, status)
        return status


def _checked_status(run_dir: Path) -> dict:
    """status.json, after marking the run failed if it claims to be active but its worker is gone."""
    status = read_json(run_dir / STATUS_FILE, {})
    if not _worker_gone(status):
        return status
    pid = status["pid"]
    message = f"the worker (pid {pid}) ended without recording a result; resume continues from the last checkpoint"
    # Re-checked under the lock: the worker may have recorded its result since we read the file.
    return _update_status(
        run_dir,
        only_if=lambda current: current.get("state") in ACTIVE_STATES and current.get("pid") == pid,
        state="failed",
        finished=time.time(),
        message=_with_log_tail(message, run_dir),
    )


def _with_log_tail(message: str, run_dir: Path) -> str:
    """``message`` followed by the last lines of train.log, which usually say what went wrong."""
    tail = "\n".join(_tail_lines(run_dir / LOG_FILE, LOG_LINES_IN_MESSAGE))
    return f"{message}\n--- last lines of {LOG_FILE} ---\n{tail}" if tail else message


def _worker_gone(status: dict) -> bool:
    """True when the status says queued/running but no live worker stands behind it."""
    pid = status.get("pid")
    if status.get("state") not in ACTIVE_STATES or pid is None:
        return False
    if not _process_alive(pid):
        return True
    # A live pid with an old heartbeat is another process that was given the same pid, or a frozen worker.
    last_sign_of_life = status.get("heartbeat") or status.get("launched") or 0
    return time.time() - last_sign_of_life > HEARTBEAT_STALE_S


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not finished (a zombie counts as finished)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A finished process whose parent has not collected it (an orphaned worker under an init that does not reap).

    Read from /proc on Linux; elsewhere assume not (the heartbeat age still catches it).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


# ---- launching, stopping, resuming, deleting ----------------------------------------------------------------------


def launch(run_id: str) -> RunInfo:
    """Start the run's worker, detached: it keeps running after this process exits. Returns the run, queued."""
    info = get_run(run_id)
    if info.status.get("launched") is not None:
        raise RunError(f"run '{run_id}' was already launched (state {info.state}); use resume to continue it")
    _spawn_worker(info.run_dir, resume=False)
    return get_run(run_id)


def resume(run_id: str) -> RunInfo:
    """Relaunch a stopped or failed run; training continues from its last checkpoint (or starts over if none)."""
    info = get_run(run_id)
    if info.status.get("launched") is None:
        raise RunError(f"run '{run_id}' was never launched; use launch")
    if info.is_active:
        raise RunError(f"run '{run_id}' is still {info.state}")
    if info.state == "completed":
        raise RunError(f"run '{run_id}' already completed")
    _spawn_worker(info.run_dir, resume=True)
    return get_run(run_id)


def stop(run_id: str, timeout: float = 60.0) -> RunInfo:
    """Stop a queued or running run and wait for it; returns the run (stopped, or as it was if not active).

    SIGTERM goes to the worker's process group; the worker finishes its step, checkpoints and records stopped.
    After ``timeout`` seconds it gets SIGKILL and is recorded stopped here (resumable from the last checkpoint).
    """
    info = get_run(run_id)
    if not info.is_active:
        return info
    pid = info.status.get("pid")
    if pid is None:
        message = "stopped before its worker started"
    else:
        _signal_worker(info.status, signal.SIGTERM)
        if _wait_for_exit(pid, timeout):
            # Normally the worker has recorded "stopped" itself; this covers a signal that came before its handlers.
            message = "stopped on request"
        else:
            _signal_worker(info.status, signal.SIGKILL)
            _wait_for_exit(pid, 10.0)
            message = f"killed after {timeout:g} s without stopping; resume continues from the last checkpoint"
    _update_status(
        info.run_dir,
        only_if=lambda current: current.get("state") in ACTIVE_STATES and current.get("pid") == pid,
        state="stopped",
        finished=time.time(),
        message=message,
    )
    return get_run(run_id)


def delete(run_id: str) -> None:
    """Remove a run's directory and registry row. Refuses while the run is queued or running."""
    info = get_run(run_id)
    if info.is_active and info.status.get("pid") is not None:
        raise RunError(f"run '{run_id}' is {info.state}: stop it before deleting it")
    shutil.rmtree(info.run_dir)
    _unregister(run_id)


def _spawn_worker(run_dir: Path, *, resume: bool) -> None:
    """``python -m dpo_engine.runs.manager worker RUN_DIR`` in a new session, output appended to train.log."""
    now = time.time()
    _update_status(
        run_dir, state="queued", pid=None, pgid=None, launched=now, heartbeat=now, started=None, finished=None,
        message="starting the worker",
    )
    command = [sys.executable, "-m", "dpo_engine.runs.manager", "worker", str(run_dir)] + (["--resume"] if resume else [])
    try:
        with open(run_dir / LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,  # own process group: survives this process, and stop() can signal all of it
                env=_worker_environment(),
            )
    except OSError as error:
        _update_status(run_dir, state="failed", finished=time.time(), message=f"could not start the worker: {error}")
        raise
    _children[process.pid] = process
    # The worker writes the same values once it runs; writing them now lets stop() reach it even before that.
    _update_status(run_dir, pid=process.pid, pgid=process.pid)


def _worker_environment() -> dict:
    """This environment, with this checkout of dpo_engine first on PYTHONPATH so the worker runs the same code."""
    package_root = str(Path(__file__).resolve().parent.parent)
    python_path = [package_root] + [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}


def _signal_worker(status: dict, signum: int) -> None:
    """Send ``signum`` to the worker's process group (or to the process alone when it has no group of its own)."""
    try:
        if status.get("pgid"):
            os.killpg(status["pgid"], signum)
        else:
            os.kill(status["pid"], signum)
    except ProcessLookupError:
        pass


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Poll until process ``pid`` is gone; False if it is still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while _process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


# ---- the registry -------------------------------------------------------------------------------------------------


@contextmanager
def _registry() -> Iterator[sqlite3.Connection]:
    """A connection to ``registry.sqlite``; the block runs in one transaction (committed unless it raises)."""
    with closing(sqlite3.connect(home_dir() / "registry.sqlite", timeout=10)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) do not block the writer
        connection.execute(
            "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, name TEXT, created REAL, run_dir TEXT, "
            "loss TEXT, subset_name TEXT, model TEXT)"
        )
        with connection:
            yield connection


def _register(run_record: dict, run_dir: Path) -> None:
    with _registry() as connection:
        connection.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", _registry_row(run_record, run_dir))


def _unregister(run_id: str) -> None:
    with _registry() as connection:
        connection.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))


def _registry_row(record: dict, run_dir: Path) -> tuple:
    """The registry's columns, in table order."""
    return (record["run_id"], record["name"], record["created"], str(run_dir), record["loss"], record["subset_name"],
            record["model"])


def _registry_dirs() -> dict[str, Path]:
    """``{run_id: run_dir}`` from the registry; empty when it cannot be read (it is rebuilt from the disk then)."""
    try:
        with _registry() as connection:
            return {run_id: Path(run_dir) for run_id, run_dir in connection.execute("SELECT run_id, run_dir FROM runs")}
    except sqlite3.DatabaseError:
        return {}


def rebuild_registry() -> int:
    """Re-index the runs from disk and return how many there are.

    Indexed: every run directory under ``$MARGIN_LAB_HOME/runs``, plus runs created elsewhere (``run_dir=``)
    that the old registry knew and whose directories still exist. A registry file that is not a database is
    replaced.
    """
    candidates = _run_dirs_under_runs() + [path for path in _registry_dirs().values() if _is_run_dir(path)]
    rows_by_id = {}
    for path in candidates:
        record = read_json(path / RUN_FILE)
        rows_by_id.setdefault(record["run_id"], _registry_row(record, path))
    rows = list(rows_by_id.values())
    try:
        _replace_registry_rows(rows)
    except sqlite3.DatabaseError:
        for suffix in ("", "-wal", "-shm"):
            (home_dir() / f"registry.sqlite{suffix}").unlink(missing_ok=True)
        _replace_registry_rows(rows)
    return len(rows)


def _replace_registry_rows(rows: list[tuple]) -> None:
    with _registry() as connection:
        connection.execute("DELETE FROM runs")
        connection.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


# ---- the worker ---------------------------------------------------------------------------------------------------


def train_resolved(config: dict, run_dir: str | os.PathLike, **kwargs) -> dict:
    """The default training function: ``dpo_engine.training.train`` on a resolved config dict."""
    from dpo_engine.training.config import TrainConfig
    from dpo_engine.training.trainer import train

    return train(TrainConfig.from_dict(config), run_dir, **kwargs)


def _train_function() -> Callable[..., dict]:
    """``train_resolved``, or the ``module:function`` named by ``MARGIN_LAB_TRAIN_TARGET``."""
    target = os.environ.get(TRAIN_TARGET_ENV)
    if not target:
        return train_resolved
    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_worker(run_dir: str | os.PathLike, *, resume: bool = False) -> int:
    """The detached side of `launch`: train the run in ``run_dir``; exit code 0 unless it failed."""
    run_dir = Path(run_dir)
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    _update_status(run_dir, pid=os.getpid(), pgid=os.getpgrp(), heartbeat=time.time(), message="worker started")
    print(f"[margin-lab] worker pid {os.getpid()}{' (resume)' if resume else ''}", flush=True)

    def call_trainer(config: dict, on_progress: Callable[[int, int], None]) -> dict:
        train = _train_function()
        return train(config, run_dir, resume=resume, should_stop=stop_requested.is_set, on_progress=on_progress)

    final = _run_training(run_dir, call_trainer, stop_requested)
    return 1 if final["state"] == "failed" else 0


def run_foreground(run_id: str) -> dict:
    """Train a created run in this process with a progress bar (``dpo-engine train``); return the final status.

    Ctrl-C stops after the current step (a second one aborts); SIGTERM (e.g. `stop` from another terminal) acts
    like the first Ctrl-C. The status is kept up to date as for a detached run, so `resume` can continue it.
    """
    from dpo_engine.training.config import TrainConfig
    from dpo_engine.training.trainer import train_foreground

    info = get_run(run_id)
    if info.status.get("launched") is not None:
        raise RunError(f"run '{run_id}' was already launched (state {info.state}); use resume to continue it")
    run_dir = info.run_dir
    now = time.time()
    # pgid stays None: this process shares its group with the shell, which `stop` must not signal.
    _update_status(run_dir, state="queued", pid=os.getpid(), pgid=None, launched=now, heartbeat=now, message="starting")

    def call_trainer(config: dict, on_progress: Callable[[int, int], None]) -> dict:
        # train_foreground draws its own bar and takes no on_progress: the status gets the summary's step counts.
        return train_foreground(TrainConfig.from_dict(config), run_dir)

    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        # Never set: Ctrl-C while waiting for the device raises KeyboardInterrupt, which counts as stopped.
        return _run_training(run_dir, call_trainer, threading.Event())
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_training(run_dir: Path, call_trainer: Callable, stop_requested: threading.Event) -> dict:
    """Take the device, keep the heartbeat, run ``call_trainer(config, on_progress)``; record and return the end."""
    heartbeat = _Heartbeat(run_dir)
    heartbeat.start()
    device_lock = None
    try:
        config = read_json(run_dir / RESOLVED_CONFIG_FILE)
        device = _resolve_device(config.get("device", "auto"))
        device_lock = _acquire_device_lock(device, run_dir, stop_requested)
        if device_lock is None:
            final = {"state": "stopped", "message": f"stopped while waiting for {device}"}
        elif stop_requested.is_set():  # asked during start-up: the trainer would take a step before polling
            final = {"state": "stopped", "message": "stopped before training started"}
        else:
            _update_status(run_dir, state="running", device=device, started=time.time(), message=f"training on {device}")
            summary = call_trainer(config, heartbeat.record_progress)
            final = _final_status(summary, heartbeat)
    except KeyboardInterrupt:
        final = {"state": "stopped", "message": "interrupted"}
    except Exception as error:
        traceback.print_exc()  # the full traceback goes to train.log
        sys.stderr.flush()
        final = {"state": "failed", "message": _with_log_tail(f"{type(error).__name__}: {error}", run_dir)}
    finally:
        heartbeat.stop()
    print(f"[margin-lab] {final['state']}: {final['message'].splitlines()[0]}", flush=True)
    status = _update_status(run_dir, finished=time.time(), step=heartbeat.step, total_steps=heartbeat.total_steps, **final)
    if device_lock is not None:
        device_lock.close()  # only now: the next run on this device starts after this one is recorded as finished
    return status


def _final_status(summary: dict, heartbeat: "_Heartbeat") -> dict:
    """completed or stopped, from the trainer's summary (its step counts win over the last progress call)."""
    if summary.get("steps") is not None:
        heartbeat.record_progress(summary["steps"], summary.get("total_steps", heartbeat.total_steps))
    if summary.get("stopped"):
        message = f"stopped at step {heartbeat.step}; resume continues from the last checkpoint"
        return {"state": "stopped", "message": message, "summary": summary}
    loss = summary.get("final_loss")
    message = f"completed {heartbeat.step} steps" + (f", final loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
    return {"state": "completed", "message": message, "summary": summary}


def _resolve_device(device: str) -> str:
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


def _acquire_device_lock(device: str, run_dir: Path, stop_requested: threading.Event):
    """Hold one of the device's ``runs_per_device()`` slots and return its open lock file; None if stopped while
    waiting. Slot 0 is ``locks/<device>.lock``, slot k ``locks/<device>.<k>.lock``.

    Each slot is an flock: it goes away with the process, so a killed worker never leaves the device locked.
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
                return handle
            if not announced:
                _update_status(run_dir, state="queued", message=f"waiting for {device}")
                print(f"[margin-lab] waiting for {device}: {len(slots)} other run(s) are using it", flush=True)
                announced = True
            if stop_requested.wait(LOCK_POLL_S):
                for handle in handles:
                    handle.close()
                return None
    except BaseException:
        for handle in handles:
            handle.close()
        raise


class _Heartbeat:
    """A thread that refreshes status.json's ``heartbeat`` and step counters every ``HEARTBEAT_INTERVAL_S``."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        status = read_json(run_dir / STATUS_FILE, {})
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
        while not self._done.wait(HEARTBEAT_INTERVAL_S):
            try:
                _update_status(self.run_dir, heartbeat=time.time(), step=self.step, total_steps=self.total_steps)
            except OSError as error:  # e.g. a full disk: keep training, try again next beat
                print(f"[margin-lab] heartbeat not written: {error}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m dpo_engine.runs.manager worker RUN_DIR [--resume]``: started by `launch` and `resume`, not by hand."""
    parser = argparse.ArgumentParser(
        prog="python -m dpo_engine.runs",
        description="Margin Lab's detached training worker. `dpo-engine runs launch` starts it; use that instead.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="train the run in RUN_DIR, recording progress in its status.json")
    worker.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by create_run")
    worker.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    args = parser.parse_args(argv)
    return run_worker(args.run_dir, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
