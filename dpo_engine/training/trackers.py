"""Experiment trackers beside ``metrics.jsonl`` (which stays the source of truth): ``report_to`` in a TrainConfig.

- ``tensorboard``: event files under ``<run_dir>/tensorboard/`` (TensorBoard's own reader reads them);
- ``wandb``: Weights & Biases in offline mode under ``<run_dir>/wandb/`` unless ``WANDB_MODE`` says otherwise
  (``wandb sync`` uploads it later);
- ``trackio``: trackio's local store (``TRACKIO_DIR``, default ``<run_dir>/trackio``).

Each needs its package installed; `check_report_to` says which is missing before a run is launched. The Trainer's
own ``report_to`` stays "none": the trackers are callbacks ordered after ``MetricsLogger`` (see `tracker_setup`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from dpo_engine.errors import ConfigError

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}  # name -> package to install
TENSORBOARD_DIR = "tensorboard"


def check_report_to(report_to: object) -> None:
    """Raise ``ConfigError('report_to', ...)`` unless it is a list of known trackers whose packages are installed."""
    if not isinstance(report_to, list) or not all(isinstance(name, str) for name in report_to):
        raise ConfigError("report_to", f"must be a list of tracker names such as ['tensorboard'], got {report_to!r}")
    for name in report_to:
        if name not in TRACKERS:
            raise ConfigError("report_to", f"unknown tracker '{name}'; use any of {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError("report_to", f"'{name}' needs its package: pip install {TRACKERS[name]}")


def tracker_setup(report_to: list[str], run_dir: Path) -> list:
    """Trainer callbacks for ``report_to``, keeping every tracker's files in ``run_dir``.

    Passed to the Trainer after our ``MetricsLogger``, so they also report the DPO metrics it adds to each log.
    """
    from transformers.integrations import TensorBoardCallback, get_reporting_integration_callbacks

    if "wandb" in report_to:
        os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; the run syncs later
        os.environ.setdefault("WANDB_DIR", str(run_dir))
    if "trackio" in report_to:
        os.environ.setdefault("TRACKIO_DIR", str(Path(run_dir) / "trackio"))
    callbacks = []
    for name in report_to:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR))
            callbacks.append(TensorBoardCallback(tb_writer=writer))
        else:
            callbacks += [callback() for callback in get_reporting_integration_callbacks([name])]
    return callbacks
