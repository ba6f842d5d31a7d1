"""Trainer callbacks of a run: the metrics log, progress and graceful stop, and a stateful loss's checkpoint state.

Across processes every rank runs the same callbacks; only rank 0 (``state.is_world_process_zero``) writes, and a
stop asked of any rank is agreed by all of them in the same step (``distributed.any_rank``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from dpo_engine.files import append_jsonl, atomic_write_json
from dpo_engine.training.distributed import SINGLE_PROCESS, World, any_rank

LOSS_STATE_FILE = "loss_state.json"  # written into each checkpoint directory when the loss keeps state (alpha_dpo)
# Keys of each metrics.jsonl record, in order.
METRIC_KEYS = (
    "step", "epoch", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected", "learning_rate", "grad_norm", "tokens_per_second", "elapsed_seconds",
)

ShouldStop = Callable[[], bool]
OnProgress = Callable[[int, int], None]


class StepStats:
    """Per-batch training statistics, summed until the next log, then averaged (as TRL averages its ``_metrics``)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.batches = 0
        self.tokens = 0

    def add(self, values: dict[str, float], tokens: int) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.batches += 1
        self.tokens += tokens

    def pop(self) -> tuple[dict[str, float], int]:
        """Means since the last call and the number of input tokens seen; then start over."""
        means = {key: total / self.batches for key, total in self.sums.items()}
        tokens = self.tokens
        self.sums, self.batches, self.tokens = {}, 0, 0
        return means, tokens


class MetricsLogger(TrainerCallback):
    """Appends one ``METRIC_KEYS`` record to ``metrics.jsonl`` per Trainer log.

    ``elapsed_seconds`` counts training time across resumes (it continues from the last kept record);
    ``tokens_per_second`` is input tokens (prompt and response, chosen and rejected rows) per wall second since
    the previous record.
    """

    def __init__(self, path: Path, step_stats: StepStats, elapsed_before: float = 0.0):
        self.path = path
        self.step_stats = step_stats
        self.elapsed_before = elapsed_before
        self.started = self.last_logged = 0.0  # set when training begins
        self.last_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_logged = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # the end-of-training summary log has no per-step loss
            return
        now = time.perf_counter()
        stats, tokens = self.step_stats.pop()
        logs.update(stats)  # trackers called after this one (training.trackers) report the DPO metrics too
        record = {
            "step": state.global_step,
            "epoch": logs.get("epoch", state.epoch),
            "loss": logs["loss"],
            **stats,
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens_per_second": tokens / max(now - self.last_logged, 1e-9),
            "elapsed_seconds": self.elapsed_before + now - self.started,
        }
        if state.is_world_process_zero:
            append_jsonl(self.path, {key: _json_scalar(record.get(key)) for key in METRIC_KEYS})
        self.last_logged = now
        self.last_loss = logs["loss"]


class RunControl(TrainerCallback):
    """Reports progress after each optimizer step and stops gracefully when asked: checkpoint, then exit."""

    def __init__(self, should_stop: ShouldStop | None, on_progress: OnProgress | None, world: World = SINGLE_PROCESS):
        self.should_stop = should_stop
        self.on_progress = on_progress
        self.world = world
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.on_progress is not None:
            self.on_progress(state.global_step, state.max_steps)
        if state.global_step >= state.max_steps:
            return control
        # Every rank asks every step, so that all of them leave the loop after the same step.
        asked = self.should_stop is not None and self.should_stop()
        if any_rank(asked, self.world):
            self.stopped = True
            control.should_log = True  # the steps since the last record are logged before the checkpoint
            control.should_save = True
            control.should_training_stop = True
        return control


class LossStateSaver(TrainerCallback):
    """Writes a stateful loss's ``state_dict()`` (alpha_dpo's EMA statistics) into every checkpoint."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        atomic_write_json(checkpoint / LOSS_STATE_FILE, self.loss_fn.state_dict())


def _json_scalar(value):
    """JSON-safe scalars: tensors to floats, NaN/inf to None."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
