"""What `dpo-engine runs launch` and `runs stop` take, as config dataclasses: the CLI's flags are generated from
them and `dpo_engine.jobs.start` turns them back into argv, so no caller writes those argv lists by hand."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from dpo_engine.files import atomic_write_text
from dpo_engine.paths import check_name, workspace_subdir

if TYPE_CHECKING:  # torch-free, but only needed for the annotation
    from dpo_engine.training.config import TrainConfig


@dataclass
class LaunchRequest:
    """Create a run from a config file and start it in the background."""

    config: str = field(metadata={"help": "training configuration (TrainConfig fields)"})
    name: str | None = field(default=None, metadata={"help": "readable name; replaces the loss at the front of the run id"})
    selection: str | None = field(default=None, metadata={
        "help": "name of the saved selection the subset was exported from"})
    tags: str = field(default="", metadata={"help": "comma-separated tags stored with the run (e.g. sweep:lr-grid)"})

    def __post_init__(self):
        if self.name is not None:
            check_name(self.name, "run name")


@dataclass
class StopRequest:
    """Stop a run: checkpoint first, killed after ``timeout`` seconds."""

    run_id: str = field(metadata={"help": "the run to stop"})
    timeout: float = field(default=60.0, metadata={"help": "seconds to wait before killing it (default 60)"})


def save_launch_config(config: TrainConfig) -> Path:
    """Write ``config`` as YAML under ``$MARGIN_LAB_HOME/launches/`` (a new file each time) and return its path."""
    path = workspace_subdir("launches") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.loss}-{secrets.token_hex(2)}.yaml"
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path
