"""``dpo-engine train CONFIG.yaml``: train in this terminal with a progress bar.

The run is registered like a background one (``dpo-engine runs list`` shows it, ``runs stop`` stops it). For a run
that must outlive the terminal, use ``dpo-engine runs launch`` instead.

Under ``accelerate launch --num_processes N -m dpo_engine.cli train CONFIG.yaml`` rank 0 creates and trains the
one run (status, metrics, registry) and the other ranks train alongside it in its directory (``runs.ranks``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dpo_engine import runs


def add_parser(subparsers) -> None:
    """Register ``train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a run in the foreground with a progress bar",
        description="Validate CONFIG.yaml (TrainConfig fields: model, subset, loss, loss_params, max_steps, ...), "
        "create a run and train it in this process. Ctrl-C stops after the current step with a checkpoint (a second "
        "Ctrl-C aborts); `dpo-engine runs resume RUN_ID` continues it in the background.",
        epilog="Exit status: 0 when training completed or was stopped, 1 when it failed, 2 for a bad config.",
    )
    parser.add_argument("config", type=Path, metavar="CONFIG.yaml", help="training configuration")
    parser.add_argument(
        "--run-dir", type=Path, metavar="DIR",
        help="write the run here instead of $MARGIN_LAB_HOME/runs/<run_id> (must not exist, or be empty)",
    )
    parser.add_argument("--name", help="readable name; replaces the loss at the front of the run id")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="validate the config, encode the pairs and print the memory estimate of the longest batch against the "
        "device's memory; train nothing (exit status 2 when it will not fit)",
    )
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    if args.dry_run:
        return run_dry(args)
    from dpo_engine.training.distributed import current_world

    if current_world().distributed:
        return run_train_as_rank(args)
    run_id = runs.create_run(args.config, name=args.name, run_dir=args.run_dir)
    run = runs.get_run(run_id)
    print(f"run {run_id}: {run.run_dir}")
    final = runs.run_foreground(run_id)  # prints "[margin-lab] <state>: <message>" when it ends
    if final["state"] in ("stopped", "failed"):
        print(f"continue it in the background with: dpo-engine runs resume {run_id}")
    return 1 if final["state"] == "failed" else 0


def run_train_as_rank(args: argparse.Namespace) -> int:
    """One rank under ``accelerate launch``: rank 0 creates the run and tells the others where it is."""
    from dpo_engine.runs.devices import resolve_device
    from dpo_engine.training.config import TrainConfig
    from dpo_engine.training.distributed import current_world, end_process_group, start_process_group

    world = current_world()
    config = TrainConfig.from_yaml(args.config)
    start_process_group(resolve_device(config.device), world)
    try:
        return _train_as_rank(args, world)
    finally:
        end_process_group()


def _train_as_rank(args: argparse.Namespace, world) -> int:
    from dpo_engine.errors import UserError
    from dpo_engine.runs.ranks import train_rank
    from dpo_engine.training.distributed import from_main

    created, problem = None, None
    if world.is_main:
        try:
            created = runs.create_run(args.config, name=args.name, run_dir=args.run_dir)
        except UserError as error:
            problem = error
    created, failed = from_main((created, problem is not None), world)
    if problem is not None:
        raise problem
    if failed:
        return 2
    if not world.is_main:
        train_rank(runs.get_run(created).run_dir)
        return 0
    print(f"run {created}: {runs.get_run(created).run_dir}")
    final = runs.run_foreground(created)
    return 1 if final["state"] == "failed" else 0


def run_dry(args: argparse.Namespace) -> int:
    from dpo_engine.training.config import TrainConfig
    from dpo_engine.training.memory import GIB
    from dpo_engine.training.trainer import dry_run

    estimate, device, available = dry_run(TrainConfig.from_yaml(args.config))
    print(f"memory estimate: {estimate.describe()}")
    print(f"device {device}: {available / GIB:.1f} GiB; the run fits")
    return 0
