"""``dpo-engine rounds CONFIG.yaml``: iterative DPO with dual-margin selection, resumable step by step.

The loop runs in this process; the dashboard starts the same command as a detached job (`dpo_engine.jobs`).

    dpo-engine rounds docs/rounds-dm25.yaml                 # run (or resume) the loop in this terminal
    dpo-engine rounds docs/rounds-dm25.yaml --rounds 4      # one more round on a finished 3-round loop
    dpo-engine rounds-status NAME                            # what each round of a loop has done
"""

from __future__ import annotations

import argparse

from dpo_engine.cli.yaml_job import add_yaml_job_arguments, progress_file_writer, yaml_config_with_flags
from dpo_engine.rounds.config import RoundsConfig

OVERRIDABLE = ("name", "rounds", "prompts_per_round", "samples_per_prompt", "device", "precision")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "rounds",
        help="iterative DPO: rounds of generate -> score -> select -> train -> evaluate",
        description="Run the loop a RoundsConfig YAML file describes (see docs/rounds.md). Each round is a directory "
        "under $MARGIN_LAB_HOME/rounds/<name>/; running the same config again resumes at the step where it stopped.",
    )
    add_yaml_job_arguments(parser, RoundsConfig, OVERRIDABLE)
    parser.set_defaults(func=run)

    status = subparsers.add_parser("rounds-status", help="what each round of a loop has done")
    status.add_argument("name", help="the loop's name")
    status.set_defaults(func=show_status)


def run(args: argparse.Namespace) -> int:
    config = yaml_config_with_flags(RoundsConfig, args, OVERRIDABLE)
    config.validate()
    from dpo_engine.rounds.loop import run_loop

    directory = run_loop(config, report=progress_file_writer(args.progress_file))
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
