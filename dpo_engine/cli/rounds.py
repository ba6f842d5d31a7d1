"""``dpo-engine rounds CONFIG.yaml``: iterative DPO with dual-margin selection, resumable step by step.

The loop runs in this process; the dashboard starts the same command as a detached job (`dpo_engine.jobs`).

    dpo-engine rounds docs/rounds-dm25.yaml                 # run (or resume) the loop in this terminal
    dpo-engine rounds docs/rounds-dm25.yaml --rounds 4      # one more round on a finished 3-round loop
    dpo-engine rounds-status NAME                            # what each round of a loop has done
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dpo_engine.cli.flags import add_config_arguments
from dpo_engine.files import atomic_write_json
from dpo_engine.rounds.config import RoundsConfig

OVERRIDABLE = ("name", "rounds", "prompts_per_round", "samples_per_prompt", "device", "precision")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "rounds",
        help="iterative DPO: rounds of generate -> score -> select -> train -> evaluate",
        description="Run the loop a RoundsConfig YAML file describes (see docs/rounds.md). Each round is a directory "
        "under $MARGIN_LAB_HOME/rounds/<name>/; running the same config again resumes at the step where it stopped.",
    )
    parser.add_argument("config", type=Path, metavar="CONFIG.yaml", help="RoundsConfig fields as YAML")
    add_config_arguments(parser, RoundsConfig,
                         exclude=tuple(f.name for f in dataclasses.fields(RoundsConfig) if f.name not in OVERRIDABLE))
    parser.set_defaults(**dict.fromkeys(OVERRIDABLE))  # an absent flag keeps the YAML's value
    parser.add_argument("--progress-file", help="JSON file updated with {stage, done, total} (for the dashboard)")
    parser.set_defaults(func=run)

    status = subparsers.add_parser("rounds-status", help="what each round of a loop has done")
    status.add_argument("name", help="the loop's name")
    status.set_defaults(func=show_status)


def load_config(args: argparse.Namespace) -> RoundsConfig:
    """The YAML config with the command-line overrides applied."""
    values = RoundsConfig.from_yaml(args.config).to_dict()
    values.update({name: getattr(args, name) for name in OVERRIDABLE if getattr(args, name, None) is not None})
    return RoundsConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    config.validate()
    from dpo_engine.rounds.loop import run_loop

    def report(stage: str, done: int, total: int) -> None:
        if args.progress_file:
            atomic_write_json(args.progress_file, {"stage": stage, "done": done, "total": total})

    directory = run_loop(config, report=report)
    print(f"loop '{config.name}' completed: {directory}")
    _print_summary(config.name)
    return 0


def show_status(args: argparse.Namespace) -> int:
    from dpo_engine.rounds.store import loop_status

    status = loop_status(args.name)
    print(f"{args.name}: {status.get('state', 'not started')} - {status.get('message', '')}")
    _print_summary(args.name)
    return 0


def _print_summary(name: str) -> None:
    from dpo_engine.rounds.store import round_summary

    summary = round_summary(name)
    if not summary.empty:
        print(summary.drop(columns=["margins_from"]).to_string(index=False))
