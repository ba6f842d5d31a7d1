"""Detached engine jobs: run one ``dpo-engine`` command in the background and poll it through files.

The dashboard uses this for work that takes minutes (margin scoring, evaluation, launching and stopping runs): it
must survive a closed browser tab and an app restart, and the UI process must not do the work itself. Jobs share
the process layer of training runs (`dpo_engine.runs.processes`): the same detached start, psutil liveness, state
vocabulary and unix-second timestamps.

    jobs.start("launch", LaunchRequest(config="cfg.yaml", name="dm-mul"))   # a config dataclass: argv generated
    jobs.start("score", ["score", "pairs.jsonl", "--out", "m.parquet"])       # kinds without a config class yet
    jobs.find("score", out="m.parquet")                                       # newest job with these options

A job is a directory ``$MARGIN_LAB_HOME/jobs/<job_id>/``:

- ``job.json``: ``{"job_id", "kind", "argv", "options", "created", "pid", "pid_started"}``; ``argv`` is the
  ``dpo-engine`` argument list, ``options`` the config's fields (or the ``--flag value`` pairs of a raw argv);
- ``progress.json``: whatever the command writes through its ``--progress-file`` option, which `start` appends
  for commands that take one (``{"stage", "done", "total", "state", ...}`` for ``score`` and ``eval``);
- ``output.log``: the command's stdout and stderr;
- ``exit.json``: ``{"returncode", "finished"}``, written when the command returns (or raises);
- ``stop_requested``: present after `stop`.

`status` derives the state from these files: ``running`` (the process is alive), ``completed`` (return code 0),
``failed`` (non-zero, or the process vanished without an exit record), ``stopped`` (after `stop`).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dpo_engine.cli.flags import config_to_argv
from dpo_engine.files import atomic_write_json, read_json
from dpo_engine.paths import workspace_subdir
from dpo_engine.runs.processes import (
    engine_environment,
    is_alive,
    signal_group,
    start_detached,
    start_time,
    tail_lines,
)


@dataclass(frozen=True)
class JobCommand:
    """How a job kind runs: the ``dpo-engine`` words before the config's argv, its positional fields, and whether
    the command takes ``--progress-file``."""

    prefix: tuple[str, ...]
    positional: tuple[str, ...] = ()
    progress_file: bool = True


# Kinds started from a config dataclass. A kind with a new config class (ScoreConfig, EvalConfig) adds a line.
JOB_COMMANDS: dict[str, JobCommand] = {
    "launch": JobCommand(("runs", "launch"), positional=("config",), progress_file=False),
    "stop": JobCommand(("runs", "stop"), positional=("run_id",), progress_file=False),
    "eval": JobCommand(("eval",), positional=("run_ids",)),
    "score": JobCommand(("score",), positional=("pairs",)),
    "arena": JobCommand(("arena",), positional=("config",)),
}


def start(kind: str, config, *, command: JobCommand | None = None, progress_file: bool | None = None) -> Path:
    """Launch ``dpo-engine`` detached for ``config`` and return the job directory.

    ``config``: a config dataclass, turned into argv by `dpo_engine.cli.flags.config_to_argv` after the words of
    ``command`` (default ``JOB_COMMANDS[kind]``); or, for kinds without a config class yet, a ready argv list.
    With ``progress_file`` (default: the command's) ``--progress-file <job>/progress.json`` is appended.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        command = command or JOB_COMMANDS.get(kind)
        if command is None:
            raise KeyError(f"no command for job kind '{kind}': add it to jobs.JOB_COMMANDS or pass command=")
        argv = [*command.prefix, *config_to_argv(config, positional=command.positional)]
        options = dataclasses.asdict(config)
        wants_progress = command.progress_file if progress_file is None else progress_file
    else:
        argv = [str(token) for token in config]
        options = _options_from_argv(argv)
        wants_progress = True if progress_file is None else progress_file
    job_id = f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    job_dir = workspace_subdir("jobs") / job_id
    job_dir.mkdir(parents=True)
    if wants_progress:
        argv = [*argv, "--progress-file", str(job_dir / "progress.json")]
    record = {"job_id": job_id, "kind": kind, "argv": argv, "options": options, "created": time.time()}
    atomic_write_json(job_dir / "job.json", record)
    process = start_detached([sys.executable, "-m", "dpo_engine.jobs", str(job_dir)], job_dir / "output.log",
                             env=engine_environment())
    atomic_write_json(job_dir / "job.json", {**record, "pid": process.pid, "pid_started": start_time(process.pid)})
    return job_dir


def _options_from_argv(argv: list[str]) -> dict:
    """``{"out": "m.parquet", ...}`` from the ``--flag value`` pairs of an argv (flags without a value: True)."""
    options = {}
    for index, token in enumerate(argv):
        if token.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else None
            value = following if following is not None and not following.startswith("--") else True
            options[token[2:].replace("-", "_")] = value
    return options


def status(job_dir: str | Path) -> dict:
    """The job record merged with its progress, plus ``state`` and ``message``."""
    job_dir = Path(job_dir)
    record = read_json(job_dir / "job.json", {})
    progress = read_json(job_dir / "progress.json", {}) or {}
    exit_record = read_json(job_dir / "exit.json")
    info = {**record, "progress": progress, "dir": str(job_dir)}
    if (job_dir / "stop_requested").exists() and (exit_record is None or exit_record["returncode"] != 0):
        return {**info, "state": "stopped", "message": "stopped on request"}
    if exit_record is not None:
        if exit_record["returncode"] == 0:
            return {**info, "state": "completed", "message": ""}
        return {**info, "state": "failed", "message": _last_error(job_dir)}
    if "pid" not in record or is_alive(record["pid"], record.get("pid_started")):
        return {**info, "state": "running", "message": progress.get("stage", "starting")}
    return {**info, "state": "failed", "message": "the job's process ended without recording an exit status"}


# The line that says why a job failed: the CLI's ``error: ...``, or the last line of a traceback ("KeyError: 'x'").
FAILURE_LINE = re.compile(r"^(error: |[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b)")


def _last_error(job_dir: Path) -> str:
    """The job output's last failure line (a progress bar may have printed after it); else its last line."""
    lines = tail_lines(job_dir / "output.log", 200)
    failures = [line for line in lines if FAILURE_LINE.match(line)]
    return (failures or lines or ["failed"])[-1]


def tail(job_dir: str | Path, n_lines: int = 30) -> str:
    """The last ``n_lines`` of the job's output."""
    return "\n".join(tail_lines(Path(job_dir) / "output.log", n_lines))


def stop(job_dir: str | Path) -> None:
    """Ask the job to stop: SIGTERM (and SIGCONT, should it be suspended) to its process group."""
    job_dir = Path(job_dir)
    (job_dir / "stop_requested").touch()
    record = read_json(job_dir / "job.json", {})
    pid = record.get("pid")
    if is_alive(pid, record.get("pid_started")):
        signal_group(pid, pid, signal.SIGTERM)
        signal_group(pid, pid, signal.SIGCONT)


def list_jobs(kind: str | None = None) -> list[Path]:
    """Job directories, newest first, optionally of one ``kind``."""
    records = {path: read_json(path / "job.json", {}) for path in workspace_subdir("jobs").iterdir()
               if (path / "job.json").exists()}
    if kind is not None:
        records = {path: record for path, record in records.items() if record.get("kind") == kind}
    return sorted(records, key=lambda path: _created(records[path]), reverse=True)


def find(kind: str, **options) -> dict | None:
    """`status` of the newest job of ``kind`` whose options include ``options`` (compared as text); else None."""
    wanted = {name: str(value) for name, value in options.items()}
    for job_dir in list_jobs(kind):
        record_options = read_json(job_dir / "job.json", {}).get("options") or {}
        if all(str(record_options.get(name)) == value for name, value in wanted.items()):
            return status(job_dir)
    return None


def _created(record: dict) -> float:
    """A job's creation time in unix seconds (older job files wrote ISO-8601 text)."""
    created = record.get("created", 0)
    if isinstance(created, str):
        try:
            return datetime.fromisoformat(created).timestamp()
        except ValueError:
            return 0.0
    return float(created or 0)


def _run(job_dir: Path) -> int:
    """The detached side: run the CLI in this process and record how it ended."""
    from dpo_engine.cli import main

    argv = read_json(job_dir / "job.json")["argv"]
    try:
        returncode = main(argv)
    except SystemExit as exit_:  # argparse errors
        returncode = exit_.code if isinstance(exit_.code, int) else 2
    except BaseException:
        traceback.print_exc()
        returncode = 1
    atomic_write_json(job_dir / "exit.json", {"returncode": returncode, "finished": time.time()})
    return returncode


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1])))
