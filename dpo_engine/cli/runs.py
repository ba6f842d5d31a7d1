"""``dpo-engine runs``: launch training runs in the background and look after them.

    dpo-engine runs launch config.yaml --name dm-mul-2k     # prints the run id; the run outlives this command
    dpo-engine runs list
    dpo-engine runs show RUN_ID
    dpo-engine runs stop RUN_ID                             # checkpoint, then stop
    dpo-engine runs resume RUN_ID                           # continue from the last checkpoint
    dpo-engine runs delete RUN_ID --yes
    dpo-engine runs export RUN_ID --merged DIR              # a standalone model with the adapter merged in

Runs live in ``$MARGIN_LAB_HOME/runs/<run_id>/`` (default ``~/.margin_lab``); see ``dpo_engine.runs``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dpo_engine import progress, runs
from dpo_engine.cli.flags import add_config_arguments, config_from_args
from dpo_engine.runs.annotations import Annotations, parse_tags, read_annotations, write_annotations
from dpo_engine.runs.requests import LaunchRequest, StopRequest

# Status fields `runs show` prints, in this order (times are shown as local dates).
STATUS_FIELDS = ("state", "message", "step", "total_steps", "device", "pid", "launched", "started", "finished", "heartbeat")
TIME_FIELDS = ("launched", "started", "finished", "heartbeat")


def add_parser(subparsers) -> None:
    """Register ``runs`` and its subcommands."""
    parser = subparsers.add_parser(
        "runs",
        help="launch, list, inspect, stop, resume and delete background training runs",
        description="Training runs that run detached from the terminal and the dashboard. Each run is a directory "
        "under $MARGIN_LAB_HOME/runs/ holding its config, a copy of its training pairs, status.json, "
        "metrics.jsonl, train.log, checkpoints and the trained adapter.",
    )
    commands = parser.add_subparsers(dest="runs_command", required=True, metavar="ACTION")

    launch = commands.add_parser(
        "launch",
        help="validate a config, create a run and start it in the background",
        description="Validate CONFIG.yaml (a TrainConfig: model, subset, loss, ...), create a run directory and start "
        "its worker detached. Prints the run id. Only one run trains per device at a time; later ones wait queued.",
    )
    launch.add_argument("config", type=Path, metavar="CONFIG.yaml", help="training configuration (TrainConfig fields)")
    add_config_arguments(launch, LaunchRequest, exclude=("config",))
    launch.set_defaults(func=run_launch)

    listing = commands.add_parser(
        "list", help="table of all runs, newest first", description="One line per run: id, state, loss, step/total, "
        "last logged loss, creation time. A run whose worker died is shown as failed.",
    )
    listing.set_defaults(func=run_list)

    show = commands.add_parser(
        "show", help="a run's config, status and last metrics", description="Print the resolved config, the status "
        "(state, message, progress, times) and the last metrics record of one run.",
    )
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--log", type=int, default=0, metavar="N", help="also print the last N lines of train.log")
    show.set_defaults(func=run_show)

    stop = commands.add_parser(
        "stop", help="stop a run gracefully (checkpoint first)", description="Ask a queued or running run to stop: "
        "it finishes the current step, writes a checkpoint and records 'stopped'. After --timeout seconds it is killed.",
    )
    stop.add_argument("run_id", metavar="RUN_ID")
    add_config_arguments(stop, StopRequest, exclude=("run_id",))
    stop.set_defaults(func=run_stop)

    resume = commands.add_parser(
        "resume", help="continue a stopped or failed run from its last checkpoint",
        description="Relaunch a stopped or failed run in the background; training continues from its last checkpoint.",
    )
    resume.add_argument("run_id", metavar="RUN_ID")
    resume.set_defaults(func=run_resume)

    delete = commands.add_parser(
        "delete", help="delete a run's directory", description="Delete a run (its whole directory, checkpoints and "
        "adapter included) and its registry entry. Refuses while the run is queued or running.",
    )
    delete.add_argument("run_id", metavar="RUN_ID")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(func=run_delete)

    export = commands.add_parser(
        "export", help="write a finished run's model for other tools",
        description="Write the base model with the run's LoRA adapter merged in (and its tokenizer) to DIR: a plain "
        "model directory AutoModelForCausalLM loads without PEFT. The adapter itself, run_dir/adapter, already "
        "loads with peft's AutoPeftModelForCausalLM as it is.",
    )
    export.add_argument("run_id", metavar="RUN_ID")
    export.add_argument("--merged", type=Path, required=True, metavar="DIR", help="new directory to write")
    export.set_defaults(func=run_export)


def run_launch(args: argparse.Namespace) -> int:
    request = config_from_args(LaunchRequest, args, config=str(args.config))
    tags = parse_tags(request.tags)  # before creating the run: a bad tag leaves nothing behind
    run_id = runs.create_run(request.config, name=request.name, selection_name=request.selection)
    if tags:
        write_annotations(runs.get_run(run_id).run_dir, Annotations(tags=tags))
    runs.launch(run_id)
    print(run_id)
    return 0


def run_list(args: argparse.Namespace) -> int:
    all_runs = runs.list_runs()
    if not all_runs:
        print("no runs yet (start one with `dpo-engine runs launch CONFIG.yaml`)")
        return 0
    rows = [("RUN ID", "STATE", "LOSS", "STEP", "LAST LOSS", "CREATED")]
    for run in all_runs:
        last = run.last_metrics or {}
        rows.append((
            run.run_id,
            run.state,
            run.loss,
            f"{run.step}/{run.total_steps if run.total_steps is not None else '?'}",
            _number(last.get("loss")),
            _local_time(run.created),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def run_show(args: argparse.Namespace) -> int:
    import yaml

    run = runs.get_run(args.run_id)
    print(f"run {run.run_id}" + (f" ({run.name})" if run.name else ""))
    print(f"  directory: {run.run_dir}")
    print(f"  subset:    {run.subset_name}")
    print(f"  created:   {_local_time(run.created)}")
    print("status:")
    for field in STATUS_FIELDS:
        value = run.status.get(field)
        if field in TIME_FIELDS:
            value = _local_time(value)
        lines = str(value if value is not None else "-").splitlines() or [""]
        print(f"  {field}: {lines[0]}")
        for line in lines[1:]:
            print(f"    {line}")
    if run.is_active:
        print(f"  progress: {progress.describe(progress.from_run_status(run.status, time.time()), 'step')}")
    notes = read_annotations(run.run_dir)
    if notes.tags or notes.notes:
        print(f"  tags: {', '.join(notes.tags) or '-'}")
        print(f"  notes: {notes.notes or '-'}")
    print("config:")
    for line in yaml.safe_dump(run.config, sort_keys=False).splitlines():
        print(f"  {line}")
    print("last metrics:")
    print(f"  {json.dumps(run.last_metrics) if run.last_metrics else '-'}")
    if args.log:
        print(f"last {args.log} lines of {run.log_path}:")
        print(runs.tail_log(run.run_id, args.log))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    before = runs.get_run(args.run_id)
    if not before.is_active:
        print(f"run {before.run_id} is not running (state {before.state})")
        return 0
    print(f"stopping {before.run_id} (checkpoint first; up to {args.timeout:g} s)...")
    after = runs.stop(args.run_id, timeout=args.timeout)
    print(f"{after.run_id}: {after.state}: {after.message.splitlines()[0] if after.message else ''}")
    return 0


def run_resume(args: argparse.Namespace) -> int:
    run = runs.resume(args.run_id)
    print(f"resumed {run.run_id} from step {run.step}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    run = runs.get_run(args.run_id)
    if not args.yes and not _confirm(f"delete run {run.run_id} and {run.run_dir}? [y/N] "):
        print("not deleted")
        return 1
    runs.delete(run.run_id)
    print(f"deleted {run.run_id}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from dpo_engine.errors import UserError
    from dpo_engine.models.adapters import merge_adapter

    run = runs.get_run(args.run_id)
    adapter = run.run_dir / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise UserError(f"run {run.run_id} has no trained adapter yet (state: {run.state}); export it once it completes")
    print(f"wrote {merge_adapter(adapter, args.merged)}")
    return 0


def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:  # no terminal to answer from
        return False


def _local_time(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"
