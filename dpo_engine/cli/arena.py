"""``dpo-engine arena CONFIG.yaml``: N selectors at one budget plus random at several seeds, one LoRA run each,
one evaluation on the same prompts, one table and report; resumable step by step (docs/arena.md).

The arena runs in this process; the dashboard starts the same command as a detached job (`dpo_engine.jobs`).

    dpo-engine arena docs/arena-example.yaml                 # run (or resume) the arena in this terminal
    dpo-engine arena docs/arena-example.yaml --device cuda    # a field of the YAML overridden
    dpo-engine arena-status NAME                              # what each contestant has done, and the table
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dpo_engine.arena.config import ArenaConfig
from dpo_engine.cli.flags import add_config_arguments
from dpo_engine.files import atomic_write_json

# Fields a flag cannot express (lists of mappings, a mapping): set in the YAML only.
YAML_ONLY = ("selectors", "random_seeds", "train")
OVERRIDABLE = tuple(f.name for f in dataclasses.fields(ArenaConfig) if f.name not in YAML_ONLY)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "arena",
        help="selectors side by side: one LoRA run each at the same budget, evaluated on the same prompts",
        description="Run the arena an ArenaConfig YAML file describes (see docs/arena.md). Its directory is "
        "$MARGIN_LAB_HOME/arenas/<name>/; running the same config again resumes at the step where it stopped.",
    )
    parser.add_argument("config", type=Path, metavar="CONFIG.yaml", help="ArenaConfig fields as YAML")
    add_config_arguments(parser, ArenaConfig, exclude=YAML_ONLY)
    parser.set_defaults(**dict.fromkeys(OVERRIDABLE))  # an absent flag keeps the YAML's value
    parser.add_argument("--progress-file", help="JSON file updated with {stage, done, total} (for the dashboard)")
    parser.set_defaults(func=run)

    status = subparsers.add_parser("arena-status", help="what each contestant of an arena has done, and its table")
    status.add_argument("name", help="the arena's name")
    status.set_defaults(func=show_status)


def load_config(args: argparse.Namespace) -> ArenaConfig:
    """The YAML config with the command-line overrides applied."""
    values = ArenaConfig.from_yaml(args.config).to_dict()
    values.update({name: getattr(args, name) for name in OVERRIDABLE if getattr(args, name, None) is not None})
    return ArenaConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    config.validate()
    from dpo_engine.arena.loop import run_arena

    def report(stage: str, done: int, total: int) -> None:
        if args.progress_file:
            atomic_write_json(args.progress_file, {"stage": stage, "done": done, "total": total})

    directory = run_arena(config, report=report)
    print(f"arena '{config.name}' completed: {directory / 'report' / 'report.md'}")
    _print_summary(config.name)
    return 0


def show_status(args: argparse.Namespace) -> int:
    from dpo_engine.arena.store import arena_status, contestant_steps

    status = arena_status(args.name)
    print(f"{args.name}: {status.get('state', 'not started')} - {status.get('message', '')}")
    steps = contestant_steps(args.name)
    if not steps.empty:
        print(steps.to_string(index=False))
    _print_summary(args.name)
    return 0


def _print_summary(name: str) -> None:
    from dpo_engine.arena.store import arena_results

    results = arena_results(name)
    if results is not None:
        columns = ["contestant", "win_rate", "ci_low", "ci_high", "vs_random", "vs_random_p", "final_loss"]
        print(results[0][columns].round(3).to_string(index=False))
