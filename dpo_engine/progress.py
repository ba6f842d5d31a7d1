"""Progress arithmetic: seconds per item and the time left, from a phase's done / total and its start time.

Every long job records ``{"stage", "done", "total", "stage_started"}`` (jobs) or ``step``, ``total_steps`` and
``started`` (runs) in its files; this module turns such a record into what a person reads, so a restarted
dashboard and the CLI say the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEstimate:
    """One phase's position: ``fraction`` in [0, 1], seconds per item and ETA in seconds (None until measurable)."""

    phase: str
    done: int
    total: int | None
    seconds_per_item: float | None
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0


def estimate(phase: str, done: int, total: int | None, started: float | None, now: float) -> ProgressEstimate:
    """Rate and ETA assuming the remaining items take as long as the done ones (times in seconds, epoch).

    ``seconds_per_item = (now - started) / done``; ``eta = seconds_per_item * (total - done)``. Both are None
    before the first item (no rate yet) or without a start time; the ETA is None without a total.
    """
    if not done or started is None or now <= started:
        return ProgressEstimate(phase, done, total, None, None)
    per_item = (now - started) / done
    eta = per_item * max(total - done, 0) if total else None
    return ProgressEstimate(phase, done, total, per_item, eta)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``: a duration to the precision a person plans with."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def describe(progress: ProgressEstimate, unit: str = "item") -> str:
    """One line: ``training: 4 / 16 · 2.5 s/step · ETA 30 s`` (parts that are not known yet are left out)."""
    parts = [f"{progress.phase}: {progress.done:,} / {progress.total:,}" if progress.total
             else f"{progress.phase}: {progress.done:,} / ?"]
    if progress.seconds_per_item is not None:
        rate = progress.seconds_per_item
        parts.append(f"{rate:.2g} s/{unit}" if rate < 10 else f"{rate:.0f} s/{unit}")
    if progress.eta_seconds is not None:
        parts.append(f"ETA {format_duration(progress.eta_seconds)}")
    return " · ".join(parts)


def from_job_record(record: dict, now: float) -> ProgressEstimate:
    """A job's progress.json (``stage``, ``done``, ``total``, ``stage_started``) as an estimate."""
    return estimate(record.get("stage") or "starting", int(record.get("done") or 0), record.get("total") or None,
                    record.get("stage_started"), now)


def from_run_status(status: dict, now: float) -> ProgressEstimate:
    """A run's status.json as an estimate. Before the first step the phase is ``preparing`` (model loading,
    tokenisation, the reference pre-pass), or the ``phase`` the worker recorded; after it, ``training``.

    The rate is measured from ``training_started`` when the worker records it, else from ``started`` (which
    includes the preparation, so the first ETAs are pessimistic).
    """
    step = int(status.get("step") or 0)
    phase = status.get("phase") or ("training" if step else "preparing")
    started = status.get("training_started") or status.get("started")
    return estimate(phase, step, status.get("total_steps"), started, now)


def planned_steps(n_pairs: int, batch_size: int, accumulation: int, num_epochs: float, max_steps: int) -> int:
    """Optimizer steps a run will take: ``max_steps`` when > 0, else ``ceil(ceil(n_pairs / batch_size) /
    accumulation) * num_epochs`` rounded up (the Trainer's count for one device)."""
    if max_steps > 0:
        return max_steps
    batches = math.ceil(n_pairs / batch_size)
    return math.ceil(math.ceil(batches / accumulation) * num_epochs)


def measured_seconds_per_step(status: dict) -> float | None:
    """Seconds per optimizer step of a finished run, from its status.json (``started``, ``finished``, ``step``);
    None when it has no such record. Includes the run's preparation, so estimates from it err long."""
    started, finished, step = status.get("started"), status.get("finished"), status.get("step") or 0
    if not (started and finished and step) or finished <= started:
        return None
    return (finished - started) / step
