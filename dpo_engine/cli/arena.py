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

from dpo_engine.arena.config import ArenaConfig
from dpo_engine.cli.yaml_job import add_yaml_job_arguments, progress_file_writer, yaml_config_with_flags

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
    add_yaml_job_arguments(parser, ArenaConfig, OVERRIDABLE)
    parser.set_defaults(func=run)

    status = subparsers.add_parser("arena-status", help="what each contestant of an arena has done, and its table")
    status.add_argument("name", help="the arena's name")
    status.set_defaults(func=show_status)


def run(args: argparse.Namespace) -> int:
    config = yaml_config_with_flags(ArenaConfig, args, OVERRIDABLE)
    config.validate()
    from dpo_engine.arena.loop import run_arena

    directory = run_arena(config, report=progress_file_writer(args.progress_file))
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
