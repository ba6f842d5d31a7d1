"""Creating a run: validate its config, write its directory in one step, index it. Nothing is launched here."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dpo_engine.files import atomic_write_json, atomic_write_text, staged_directory
from dpo_engine.paths import check_name, slug
from dpo_engine.runs.layout import (
    CONFIG_FILE,
    RESOLVED_CONFIG_FILE,
    RUN_FILE,
    STATUS_FILE,
    SUBSET_FILE,
    RunError,
    runs_root,
)
from dpo_engine.runs.registry import register

if TYPE_CHECKING:  # heavy imports, made only where needed
    import pandas as pd

    from dpo_engine.training.config import TrainConfig


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
    ``name`` replaces the loss at the front of the run id (checked by `dpo_engine.paths.check_name`).
    ``selection_name`` records which saved selection the subset came from (shown as the run's subset name).
    ``run_dir`` puts the run somewhere other than ``$MARGIN_LAB_HOME/runs/<run_id>`` (it must not exist, or be
    empty); the registry remembers where.
    """
    if name is not None:
        check_name(name, "run name")
    train_config, config_text, pairs = _validated_config(config)
    run_id = _new_run_id(name or train_config.loss)
    final_dir = Path(run_dir).expanduser().resolve() if run_dir else runs_root() / run_id
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
    with staged_directory(final_dir) as staging:
        _write_run_files(staging, final_dir, train_config, config_text, pairs, run_record)
    register(run_record, final_dir)
    return run_id


def _new_run_id(prefix: str) -> str:
    """``<prefix>-<yyyymmdd-hhmmss>-<4 hex>``, with the prefix reduced to letters, digits, ``_``, ``.``, ``-``."""
    stem = slug(prefix, max_length=40).lower() or "run"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _validated_config(config: TrainConfig | dict | str | os.PathLike) -> tuple[TrainConfig, str, pd.DataFrame]:
    """``(TrainConfig, text for config.yaml, its pairs)`` from any accepted form, validated: the pairs are the
    ones validation loaded, so the subset is read once here."""
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
    pairs, _ = train_config.checked_inputs()
    return train_config, text, pairs


def _write_run_files(
    directory: Path, final_dir: Path, train_config: TrainConfig, config_text: str, pairs: pd.DataFrame,
    run_record: dict,
) -> None:
    """Fill ``directory`` (later renamed to ``final_dir``) with everything a run starts with; ``pairs`` are the
    subset's, as loaded."""
    from dpo_engine.data.pairs import save_pairs

    # load_pairs + save_pairs rather than a byte copy: any input format becomes jsonl that load_pairs reads back.
    save_pairs(pairs, directory / SUBSET_FILE)
    resolved = train_config.to_dict()
    resolved["subset"] = str(final_dir / SUBSET_FILE)
    model_path = Path(train_config.model).expanduser()
    if model_path.exists():  # a local model directory: the worker may run from another working directory
        resolved["model"] = str(model_path.resolve())
    if train_config.accelerate_config:
        resolved["accelerate_config"] = str(Path(train_config.accelerate_config).expanduser().resolve())
    atomic_write_text(directory / CONFIG_FILE, config_text)
    atomic_write_json(directory / RESOLVED_CONFIG_FILE, resolved)
    atomic_write_json(directory / STATUS_FILE, initial_status())
    atomic_write_json(directory / RUN_FILE, run_record)


def initial_status() -> dict:
    return {
        "state": "queued",
        "pid": None,
        "pgid": None,
        "pid_started": None,
        "heartbeat": None,
        "step": 0,
        "total_steps": None,
        "launched": None,
        "started": None,
        "finished": None,
        "message": "created; not launched yet",
        "device": None,
    }
