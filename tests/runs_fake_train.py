"""A stand-in for the trainer, for tests/test_runs.py: the call `dpo_engine.runs` makes, no model, no torch.

The worker uses it when launched with ``MARGIN_LAB_TRAIN_TARGET=runs_fake_train:train`` and ``tests/`` on
``PYTHONPATH``. It runs ``config["max_steps"]`` steps of ``FAKE_STEP_SECONDS`` (environment, default 0.02) each;
every step appends a metrics record and writes ``checkpoints/checkpoint-<step>/state.json``, like the trainer
with ``save_steps: 1``. Its summary's ``torch_threads`` is the worker's torch thread count when the worker has
imported torch (it does to give a run its share of a shared CPU), else None.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from dpo_engine.files import append_jsonl, atomic_write_json


def train(config: dict, run_dir, *, resume=False, should_stop=None, on_progress=None) -> dict:
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    step_seconds = float(os.environ.get("FAKE_STEP_SECONDS", "0.02"))
    total = config["max_steps"]
    start = last_checkpoint_step(checkpoints) if resume else 0
    print(f"fake training from step {start} to {total}", flush=True)
    for step in range(start + 1, total + 1):
        time.sleep(step_seconds)
        append_jsonl(run_dir / "metrics.jsonl", {"step": step, "loss": 1.0 / step})
        atomic_write_json(checkpoints / f"checkpoint-{step}" / "state.json", {"step": step})
        on_progress(step, total)
        if should_stop():
            return {"stopped": True, "steps": step, "total_steps": total}
    torch = sys.modules.get("torch")
    return {"stopped": False, "steps": total, "total_steps": total, "final_loss": 1.0 / total,
            "torch_threads": torch.get_num_threads() if torch else None}


def last_checkpoint_step(checkpoints: Path) -> int:
    steps = [int(path.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*")]
    return max(steps, default=0)
