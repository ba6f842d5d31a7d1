"""Sharded scoring: ``dpo-engine score --num-processes N`` splits the log-prob passes over N processes and merges.

The log-prob passes are embarrassingly parallel, so no collective is needed. The command scores share 0 itself;
the worker of each other share is ``dpo-engine score`` itself, started with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
(what ``accelerate launch`` sets) and ``SHARD_WORKER_ENV``: it scores its share of the pairs into the shared
log-prob cache (parts named by its rank, ``dpo_engine.models.shards``) and exits; the command then reads the whole
table from the cache. A share a killed
worker left unfinished is the only work a rerun redoes. Under ``accelerate launch`` the launcher's processes are
the workers and :func:`wait_for_every_process` (accelerate's barrier) comes before rank 0's merge; on a CPU that
is ``accelerate launch --multi_gpu --num_processes N`` (``--cpu`` starts one process unless MPI is set up) or
``torchrun --nproc-per-node N``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dpo_engine.cli.flags import config_to_argv
from dpo_engine.errors import UserError
from dpo_engine.files import read_json
from dpo_engine.margins.config import ScoreConfig
from dpo_engine.models.shards import Shard
from dpo_engine.runs.devices import core_share
from dpo_engine.runs.processes import tail_lines
from dpo_engine.training.distributed import end_process_group

SHARD_WORKER_ENV = "MARGIN_LAB_SCORE_SHARD_WORKER"  # "1": score this process's share of the log-probs, then exit
POLL_S = 0.5
Progress = Callable[[int, int], None]


class ShardFailed(UserError):
    """A scoring worker exited with an error; the message carries the end of its log."""


def shards_dir(config: ScoreConfig) -> Path:
    """Where the workers' logs and progress files go while they run: next to the margins table."""
    return Path(Path(config.out).with_suffix("").as_posix() + "-shards")


def worker_config(config: ScoreConfig, policy: str, rank: int) -> ScoreConfig:
    """What worker ``rank`` runs: the job's implicit passes with ``policy`` (no warm-up, no external margin)."""
    return dataclasses.replace(config, implicit="policy", policy=str(policy), external="none", num_processes=1,
                               progress_file=str(shards_dir(config) / f"rank{rank}.progress.json"))


def score_in_processes(config: ScoreConfig, policy: str, progress: Progress,
                       score_share: Callable[[Shard, Progress], None]) -> None:
    """Run the implicit log-prob passes of ``config`` (with ``policy``) in ``config.num_processes`` processes.

    This process is rank 0: it starts workers for ranks 1 to N-1 (their start-up overlaps its own share), runs
    ``score_share(shard, progress)`` for its share, then waits for them. Returns when every share is finished;
    ``progress(done, total)`` sums the shares. Raises ``ShardFailed`` (with that worker's log tail) when a
    worker fails, after stopping the others.
    """
    directory = shards_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    size = config.num_processes
    workers = {rank: _start_worker(worker_config(config, policy, rank), rank, size, directory)
               for rank in range(1, size)}
    own = {"done": 0, "total": 0}

    def report(done: int | None = None, total: int | None = None) -> None:
        if done is not None:
            own.update(done=done, total=total)
        _report(directory, own, size, progress)

    try:
        score_share(Shard(0, size, 0), report)
        while any(worker.poll() is None for worker in workers.values()):
            _raise_if_failed(directory, workers)
            report()
            time.sleep(POLL_S)
        _raise_if_failed(directory, workers)
        report()
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.terminate()
            worker.wait()
    shutil.rmtree(directory, ignore_errors=True)


def _start_worker(config: ScoreConfig, rank: int, size: int, directory: Path) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(rank), SHARD_WORKER_ENV: "1"}
    env.setdefault("OMP_NUM_THREADS", str(core_share(size)))  # a share of the cores each
    argv = [sys.executable, "-m", "dpo_engine.cli", "score", *config_to_argv(config, positional=("pairs",))]
    with open(directory / f"rank{rank}.log", "w") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _report(directory: Path, own: dict, size: int, progress: Progress) -> None:
    """This process's progress and the workers' progress files, summed, to ``progress(done, total)``.

    A worker that has not reported yet counts as a share the size of this process's, none of it done.
    """
    states = [own] + [read_json(directory / f"rank{rank}.progress.json", {}) or {} for rank in range(1, size)]
    if own["total"]:
        progress(sum(state.get("done", 0) for state in states if state.get("total")),
                 sum(state.get("total") or own["total"] for state in states))


def _raise_if_failed(directory: Path, workers: dict[int, subprocess.Popen]) -> None:
    for rank, worker in workers.items():
        if worker.poll() not in (None, 0):
            raise _failure(directory, rank, worker.returncode)


def _failure(directory: Path, rank: int, code: int) -> ShardFailed:
    tail = "\n".join(tail_lines(directory / f"rank{rank}.log", 15))
    return ShardFailed(f"scoring process {rank} exited with code {code}; running the job again resumes every "
                       f"share where it stopped. End of {directory / f'rank{rank}.log'}:\n{tail}")


def wait_for_every_process(shard: Shard, device: str) -> None:
    """Under a multi-process launch: return when every process has reached this point (accelerate's barrier), out
    of the process group.

    On a CPU the process group is gloo (``PartialState(cpu=True)``; without it accelerate would not join the
    processes and the barrier would not wait). Raises ``ShardFailed`` if the group is not the launch's.
    """
    from accelerate import PartialState

    state = PartialState(cpu=not device.startswith("cuda"))
    if state.num_processes != shard.world_size:
        raise ShardFailed(f"WORLD_SIZE is {shard.world_size} but accelerate joined {state.num_processes} processes: "
                          "launch with `accelerate launch --multi_gpu --num_processes N` or `torchrun`")
    state.wait_for_everyone()
    end_process_group()  # nothing after the barrier talks to the others
