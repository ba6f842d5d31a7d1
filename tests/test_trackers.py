"""``report_to``: TensorBoard event files read back with TensorBoard's own reader; W&B offline; config errors."""

from __future__ import annotations

import json

import pytest

from dpo_engine.errors import ConfigError
from dpo_engine.files import read_jsonl
from dpo_engine.models.loading import TINY_MODEL
from dpo_engine.training.config import TrainConfig
from dpo_engine.training.trackers import check_report_to
from dpo_engine.training.trainer import train


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    subset = tmp_path / "pairs.jsonl"
    subset.write_text("".join(
        json.dumps({"prompt": f"Q{i}?", "chosen": f"Yes {i}.", "rejected": f"No {'!' * i}"}) + "\n" for i in range(4)
    ))
    values = dict(model=TINY_MODEL, subset=str(subset), max_steps=3, learning_rate=1e-2, lr_scheduler="constant",
                  warmup_ratio=0.0, batch_size=2, max_length=128, max_prompt_length=64, device="cpu")
    return TrainConfig(**{**values, **overrides})


def test_tensorboard_events_match_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train(tiny_config(tmp_path, report_to=["tensorboard"]), run_dir)
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    losses = events.Scalars("train/loss")
    ours = list(read_jsonl(run_dir / "metrics.jsonl"))
    assert [event.step for event in losses] == [record["step"] for record in ours] == [1, 2, 3]
    assert [event.value for event in losses] == pytest.approx([record["loss"] for record in ours], rel=1e-6)
    assert "train/rewards/margins" in events.Tags()["scalars"]


def test_wandb_offline_run_is_written_in_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    train(tiny_config(tmp_path, report_to=["wandb"], max_steps=1), run_dir)
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert len(list(read_jsonl(run_dir / "metrics.jsonl"))) == 1  # still the source of truth


def test_report_to_errors_name_the_field(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'") as caught:
        tiny_config(tmp_path, report_to=["neptune"]).validate()
    assert caught.value.field == "report_to"
    with pytest.raises(ConfigError, match="must be a list"):
        check_report_to("tensorboard")
    import dpo_engine.training.trackers as trackers

    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        check_report_to(["tensorboard"])
