"""What ``dpo-engine rounds`` and ``dpo-engine arena`` share: a job described by a YAML config file, some of its
fields overridable by flags (an absent flag keeps the YAML's value), and the progress file the dashboard polls."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from dpo_engine.cli.flags import add_config_arguments
from dpo_engine.files import atomic_write_json


def add_yaml_job_arguments(parser: argparse.ArgumentParser, config_cls, overridable: tuple[str, ...]) -> None:
    """``CONFIG.yaml``, one flag per field in ``overridable`` and ``--progress-file``."""
    parser.add_argument("config", type=Path, metavar="CONFIG.yaml", help=f"{config_cls.__name__} fields as YAML")
    others = tuple(name for name in config_cls.__dataclass_fields__ if name not in overridable)
    add_config_arguments(parser, config_cls, exclude=others)
    parser.set_defaults(**dict.fromkeys(overridable))
    parser.add_argument("--progress-file", help="JSON file updated with {stage, done, total} (for the dashboard)")


def yaml_config_with_flags(config_cls, args: argparse.Namespace, overridable: tuple[str, ...]):
    """The YAML config of ``args.config`` with the flags given on the command line applied."""
    values = config_cls.from_yaml(args.config).to_dict()
    values.update({name: getattr(args, name) for name in overridable if getattr(args, name, None) is not None})
    return config_cls.from_dict(values)


def progress_file_writer(path: str | None) -> Callable[[str, int, int], None]:
    """``report(stage, done, total)`` writing ``{stage, done, total}`` to ``path`` atomically (nothing if None)."""

    def report(stage: str, done: int, total: int) -> None:
        if path:
            atomic_write_json(path, {"stage": stage, "done": done, "total": total})

    return report
