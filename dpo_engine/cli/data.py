"""``dpo-engine validate``: load a preference dataset and report what is wrong with it.

Exit 0 when the data loads (warnings are listed, never fatal); exit 2 with ``error: <message>`` when it
cannot be used. ``--json`` prints ``ValidationReport.to_dict()`` instead, on failure too.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from dpo_engine.data.pairs import COLUMN_ALIASES, WARNING_CODES, ValidationReport, load_pairs
from dpo_engine.errors import DataError
from dpo_engine.data.lengths import length_summary, response_lengths

# How many warning rows the human-readable summary shows per code.
EXAMPLES_PER_CODE = 5

# (flag, field in the column mapping, what the column holds)
COLUMN_FLAGS = (
    ("--prompt-col", "prompt", "the prompt: text, {role, content} messages or an HH transcript"),
    ("--chosen-col", "chosen", "the preferred response"),
    ("--rejected-col", "rejected", "the dispreferred response"),
    ("--score-chosen-col", "score_chosen", "a numeric score of the chosen response"),
    ("--score-rejected-col", "score_rejected", "a numeric score of the rejected response"),
    ("--id-col", "id", "a pair id (without one, ids are content hashes)"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``validate``."""
    parser = subparsers.add_parser(
        "validate",
        help="check that a preference dataset loads, and list its warnings",
        description=(
            "Load preference pairs the way every other command does and report problems. "
            "PATH is a .jsonl, .json, .csv or .parquet file, a directory saved by datasets.save_to_disk, "
            "or a Hugging Face Hub dataset name. Columns are detected by name (see the defaults below) "
            "unless mapped with the --*-col flags. "
            f"Warnings ({', '.join(WARNING_CODES)}) are reported but never drop a row."
        ),
        epilog="Exit status: 0 when the data loads (with or without warnings), 2 when it cannot be used.",
    )
    parser.add_argument("path", metavar="PATH", help="data file, save_to_disk directory, or Hub dataset name")
    parser.add_argument("--json", action="store_true", help="print the report as JSON: {n_pairs, errors, warnings}")
    parser.add_argument(
        "--split", default="train", help="split to read from a DatasetDict directory or Hub dataset (default: train)"
    )
    parser.add_argument(
        "--max-chars",
        type=int,
        default=20000,
        help="flag fields longer than this many characters as very_long (default: 20000)",
    )
    for flag, name, holds in COLUMN_FLAGS:
        detected = "|".join(COLUMN_ALIASES[name])
        help_text = f"column holding {holds} (default: detect {detected})"
        parser.add_argument(flag, dest=f"{name}_col", metavar="COLUMN", help=help_text)
    parser.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    """Load ``args.path`` and print the report; a DataError goes to the CLI's handler (exit 2) unless --json."""
    columns = {name: getattr(args, f"{name}_col") for _, name, _ in COLUMN_FLAGS if getattr(args, f"{name}_col")}
    try:
        loaded = load_pairs(args.path, columns=columns or None, split=args.split, max_chars=args.max_chars)
    except DataError as error:
        if not args.json:
            raise
        print(json.dumps(ValidationReport.from_error(error).to_dict(), indent=2))
        return 2
    if args.json:
        print(json.dumps(loaded.report.to_dict(), indent=2))
    else:
        print(summary(loaded.report, loaded.columns, loaded.pairs))
    return 0


def summary(report: ValidationReport, columns: dict[str, str], pairs: pd.DataFrame | None = None) -> str:
    """Human-readable report: pair count, columns used, how chosen and rejected lengths compare (given ``pairs``),
    counts per warning code and the first rows of each."""
    mapping = ", ".join(f"{name}={column}" for name, column in columns.items())
    lines = [f"{report.n_pairs} pairs (columns: {mapping})"]
    if pairs is not None and len(pairs):
        lengths = length_summary(*response_lengths(pairs))
        lines.append(f"lengths: chosen reply longer in {lengths.chosen_longer:.0%} of pairs, rejected in "
                     f"{lengths.rejected_longer:.0%} (median {lengths.median_chosen:,.0f} vs "
                     f"{lengths.median_rejected:,.0f} characters)")
    counts = report.warning_counts()
    if not counts:
        lines.append("no warnings")
    for code, count in counts.items():
        lines.append(f"{code}: {count} row(s)")
        examples = [issue for issue in report.warnings if issue.code == code][:EXAMPLES_PER_CODE]
        for issue in examples:
            lines.append(f"  row {issue.row}, column '{issue.column}': {issue.message}")
        if count > len(examples):
            lines.append(f"  ... and {count - len(examples)} more (use --json for all)")
    return "\n".join(lines)
