"""Detached engine jobs: run one ``dpo-engine`` command in the background and poll it through files.

The dashboard uses this for work that takes minutes (margin scoring, evaluation): it must survive a closed
browser tab and an app restart, and the UI process must not do the work itself. Training runs have their own,
richer machinery in `dpo_engine.runs`; this module is the generic minimum.

A job is a directory ``$MARGIN_LAB_HOME/jobs/<job_id>/``:

- ``job.json``: ``{"job_id", "kind", "argv", "created", "pid"}`` (``argv`` is the ``dpo-engine`` argument list);
- ``progress.json``: whatever the command writes through its ``--progress-file`` option, which `start` appends
  for commands that have one (``{"stage", "done", "total", "state", ...}`` for ``score`` and ``eval``);
- ``output.log``: the command's stdout and stderr;
- ``exit.json``: ``{"returncode", "finished"}``, written when the command returns (or raises);
- ``stop_requested``: present after `stop`.

`status` derives the state from these files: ``running`` (the process is alive), ``completed`` (return code 0),
``failed`` (non-zero, or the process vanished without an exit record), ``stopped`` (after `stop`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

from dpo_engine.files import atomic_write_json, read_json
from dpo_engine.paths import workspace_subdir


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def start(kind: str, argv: list[str], *, progress_file: bool = True) -> Path:
    """Launch ``dpo-engine <argv>`` detached and return the job directory.

    With ``progress_file`` the command gets ``--progress-file <job>/progress.json`` appended.
    """
    job_id = f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    job_dir = workspace_subdir("jobs") / job_id
    job_dir.mkdir(parents=True)
    if progress_file:
        argv = [*argv, "--progress-file", str(job_dir / "progress.json")]
    atomic_write_json(job_dir / "job.json", {"job_id": job_id, "kind": kind, "argv": argv, "created": _now()})
    with open(job_dir / "output.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dpo_engine.jobs", str(job_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: survives the UI, and `stop` can signal all of it
        )
    record = read_json(job_dir / "job.json")
    atomic_write_json(job_dir / "job.json", {**record, "pid": process.pid})
    return job_dir


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A finished child of this process stays a zombie until reaped; reap it so it does not count as alive.
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not our child: kill(0) succeeded, so it runs
    return finished == 0


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
    if "pid" not in record or _alive(record["pid"]):
        return {**info, "state": "running", "message": progress.get("stage", "starting")}
    return {**info, "state": "failed", "message": "the job's process ended without recording an exit status"}


def _last_error(job_dir: Path) -> str:
    """The last non-empty line of the job's output: the CLI prints ``error: ...`` there."""
    lines = [line for line in tail(job_dir, 40).splitlines() if line.strip()]
    return lines[-1] if lines else "failed"


def tail(job_dir: str | Path, n_lines: int = 30) -> str:
    """The last ``n_lines`` of the job's output."""
    try:
        text = (Path(job_dir) / "output.log").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-n_lines:])


def stop(job_dir: str | Path) -> None:
    """Ask the job to stop: SIGTERM to its process group."""
    job_dir = Path(job_dir)
    (job_dir / "stop_requested").touch()
    pid = read_json(job_dir / "job.json", {}).get("pid")
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def list_jobs(kind: str | None = None) -> list[Path]:
    """Job directories, newest first, optionally of one ``kind``."""
    jobs = [path for path in workspace_subdir("jobs").iterdir() if (path / "job.json").exists()]
    if kind is not None:
        jobs = [path for path in jobs if read_json(path / "job.json", {}).get("kind") == kind]
    return sorted(jobs, key=lambda path: read_json(path / "job.json", {}).get("created", ""), reverse=True)


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
    atomic_write_json(job_dir / "exit.json", {"returncode": returncode, "finished": _now()})
    return returncode


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1])))
