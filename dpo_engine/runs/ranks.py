"""Runs trained by several processes: the worker starts ``accelerate launch`` and watches it.

With ``num_processes > 1`` the worker (`dpo_engine.runs.worker`) keeps the run's status and heartbeat itself and
starts ``python -m accelerate.commands.launch ... -m dpo_engine.runs.ranks RUN_DIR [--resume]`` in its own session,
which starts one process per rank, each calling ``train_rank``. The worker and rank 0 talk through two files of the
run directory, each written by one side only:

- ``.stop_requested`` (worker to rank 0): a stop was asked; rank 0 tells the other ranks after the step
  (``distributed.any_rank``), and all of them checkpoint and end. Rank 0 also stops when the worker is gone.
- ``.rank0_progress.json`` (rank 0 to worker): ``step`` and ``total_steps`` after each step, and the summary at
  the end. A launch that exits without a summary (a rank killed, an error) fails the run; `resume` continues it.

Ranks other than 0 write nothing into the run directory (the Trainer's checkpoints hold one RNG state per rank).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from dpo_engine.files import atomic_write_json, read_json
from dpo_engine.runs.devices import cpu_threads_per_process
from dpo_engine.runs.layout import RESOLVED_CONFIG_FILE, RunError, read_checked_json
from dpo_engine.runs.processes import engine_environment, is_alive

STOP_FILE = ".stop_requested"
PROGRESS_FILE = ".rank0_progress.json"
WORKER_PID_ENV = "MARGIN_LAB_WORKER_PID"
POLL_S = 0.2


def accelerate_command(config: dict, run_dir: Path, *, resume: bool, device: str, port: int) -> list[str]:
    """The ``accelerate launch`` command line that trains ``run_dir`` with ``config["num_processes"]`` ranks.

    An ``accelerate_config`` file is passed as it is (FSDP, DeepSpeed, several machines); without one, the ranks
    are started by torchrun on this machine (``--multi_gpu``). accelerate's ``--cpu`` would start one process and
    leave the others to mpirun, so CPU ranks are started the same way, their config saying ``device: cpu``.
    """
    processes = int(config["num_processes"])
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--main_process_port", str(port)]
    if config.get("accelerate_config"):
        command += ["--config_file", str(config["accelerate_config"])]
    else:
        command += ["--multi_gpu", "--num_machines", "1"]
    if device == "cpu":
        threads = int(os.environ.get("OMP_NUM_THREADS") or cpu_threads_per_process(processes) or 1)
        command += ["--num_cpu_threads_per_process", str(threads)]
    return command + ["-m", "dpo_engine.runs.ranks", str(run_dir)] + (["--resume"] if resume else [])


def train_across_processes(config: dict, run_dir: str | os.PathLike, *, resume: bool = False,
                           should_stop: Callable[[], bool] | None = None,
                           on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Train ``run_dir`` through ``accelerate launch`` and return rank 0's summary (the worker's training function).

    Polls ``should_stop`` (then asks rank 0 to stop) and reports rank 0's progress to ``on_progress``. Raises
    ``RunError`` when the launch ends without a summary; the ranks are killed if this function is left early.
    """
    from dpo_engine.runs.devices import resolve_device

    run_dir = Path(run_dir)
    for name in (STOP_FILE, PROGRESS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    command = accelerate_command(config, run_dir, resume=resume, device=resolve_device(config.get("device")),
                                 port=_free_port())
    print(f"[margin-lab] starting {config['num_processes']} training processes: {' '.join(command)}", flush=True)
    env = {**engine_environment(), WORKER_PID_ENV: str(os.getpid())}
    # Its own session: a stop's SIGTERM to the worker's group must reach the worker, not kill the ranks mid-step.
    launch = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        while launch.poll() is None:
            if should_stop is not None and should_stop():
                (run_dir / STOP_FILE).touch()
            _report(run_dir, on_progress)
            time.sleep(POLL_S)
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
    progress = _report(run_dir, on_progress)
    if launch.returncode != 0 or "summary" not in progress:
        raise RunError(f"the training processes ended with exit status {launch.returncode} before finishing "
                       "(a rank failed or was killed; its error is above in the log)")
    return progress["summary"]


def _report(run_dir: Path, on_progress: Callable[[int, int], None] | None) -> dict:
    """Rank 0's last progress record (``{}`` before the first), passed on to ``on_progress``."""
    progress = read_json(run_dir / PROGRESS_FILE, {}) or {}
    if on_progress is not None and "step" in progress:
        on_progress(progress["step"], progress.get("total_steps"))
    return progress


def _free_port() -> int:
    """A TCP port nobody listens on now, for the ranks' rendezvous (two runs side by side need two)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_rank(run_dir: str | os.PathLike, *, resume: bool = False, should_stop: Callable[[], bool] | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> dict:
    """One rank's part of training the run in ``run_dir`` (its resolved config); returns the trainer's summary."""
    from dpo_engine.training.config import TrainConfig
    from dpo_engine.training.trainer import train

    config = TrainConfig.from_dict(read_checked_json(Path(run_dir) / RESOLVED_CONFIG_FILE, dict))
    return train(config, run_dir, resume=resume, should_stop=should_stop, on_progress=on_progress)


def main(argv: list[str] | None = None) -> int:
    """``python -m dpo_engine.runs.ranks RUN_DIR [--resume]``: one rank, started by ``accelerate launch``."""
    from dpo_engine.training.distributed import current_world

    parser = argparse.ArgumentParser(prog="python -m dpo_engine.runs.ranks",
                                     description="One training rank of a run; the run's worker starts these.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    if not current_world().is_main:
        train_rank(args.run_dir, resume=args.resume)
        return 0
    worker_pid = int(os.environ.get(WORKER_PID_ENV) or 0) or None
    progress_path = args.run_dir / PROGRESS_FILE

    def should_stop() -> bool:
        return (args.run_dir / STOP_FILE).exists() or (worker_pid is not None and not is_alive(worker_pid))

    def on_progress(step: int, total: int) -> None:
        atomic_write_json(progress_path, {"step": step, "total_steps": total})

    summary = train_rank(args.run_dir, resume=args.resume, should_stop=should_stop, on_progress=on_progress)
    atomic_write_json(progress_path, {"step": summary["steps"], "total_steps": summary["total_steps"],
                                      "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
