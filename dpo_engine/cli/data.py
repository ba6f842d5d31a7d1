"""``dpo-engine validate``: load a preference dataset and report what is wrong with it.

Exit 0 when the data loads (warnings are listed, never fatal); exit 2 with ``error: <message>`` when it
cannot be used, followed by every unusable row (``--drop-invalid`` leaves them out and checks the rest). ``--json`` prints ``ValidationReport.to_dict()`` instead, on failure too. The file is streamed
(`dpo_engine.data.validate_source`), so large files are checked without being held in memory.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from dpo_engine.data.lengths import length_summary
from dpo_engine.data.pairs import (
    COLUMN_ALIASES,
    ISSUE_LIST_CAP,
    WARNING_CODES,
    InvalidRowsError,
    ValidationReport,
    validate_source,
)
from dpo_engine.data.schema import PAIRWISE_PRESETS, SIGNED
from dpo_engine.errors import DataError

# How many warning rows the human-readable summary shows per code.
EXAMPLES_PER_CODE = 5

# (flag, field in the column mapping, what the column holds)
COLUMN_FLAGS = (
    ("--prompt-col", "prompt", "the prompt: text, {role, content} messages or an HH transcript"),
    ("--system-col", "system", "a system prompt, put first in the conversation"),
    ("--chosen-col", "chosen", "the preferred response"),
    ("--rejected-col", "rejected", "the dispreferred response"),
    ("--score-chosen-col", "score_chosen", "a numeric score of the chosen response"),
    ("--score-rejected-col", "score_rejected", "a numeric score of the rejected response"),
    ("--id-col", "id", "a pair id (without one, ids are content hashes)"),
)
# Pairwise-with-label data: two responses and a label saying which is preferred (dpo_engine.data.schema).
PAIRWISE_FLAGS = (
    ("--response-a-col", "response_a", "the first response of pairwise-with-label data"),
    ("--response-b-col", "response_b", "the second response of pairwise-with-label data"),
    ("--label-col", "label", "the label saying which response is preferred"),
    ("--first-preferred", "first_preferred",
     f"the label value meaning the first response is preferred, or '{SIGNED}' for a signed strength "
     "(negative: the first is preferred; |value| becomes the external margin; 0 is a tie, kept and flagged)"),
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
        "--encoding", help="text encoding of a CSV or JSON file (default: UTF-8 for JSON; sniffed for CSV: "
        "UTF-8, then cp1252, then latin-1)",
    )
    parser.add_argument("--delimiter", help="CSV cell separator, one character (default: sniffed among , ; tab |)")
    parser.add_argument(
        "--drop-invalid", action="store_true",
        help="leave out the rows that cannot be used and check the rest (exit 0 when some are left); without it "
        "every unusable row is listed and the exit status is 2",
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
    presets = "; ".join(
        f"{name}: {preset.response_a}, {preset.response_b}, {preset.label}, {preset.first_preferred}"
        for name, preset in PAIRWISE_PRESETS.items()
    )
    group = parser.add_argument_group(
        "pairwise-with-label data", f"Give all four instead of chosen/rejected. Detected without flags: {presets}.",
    )
    for flag, name, holds in PAIRWISE_FLAGS:
        metavar = "VALUE" if name == "first_preferred" else "COLUMN"
        group.add_argument(flag, dest=f"{name}_col", metavar=metavar, help=holds)
    parser.set_defaults(func=run_validate)


def column_mapping(args: argparse.Namespace) -> dict[str, str] | None:
    """The column mapping given by the ``--*-col`` and pairwise flags, or None."""
    names = [name for _, name, _ in COLUMN_FLAGS + PAIRWISE_FLAGS]
    columns = {name: getattr(args, f"{name}_col") for name in names if getattr(args, f"{name}_col", None)}
    return columns or None


def run_validate(args: argparse.Namespace) -> int:
    """Check ``args.path`` and print the report. Unusable rows are all listed on stderr (exit 2); another
    DataError goes to the CLI's handler (exit 2). With --json the report goes to stdout, on failure too."""
    delimiter = "\t" if args.delimiter in ("\\t", "tab") else args.delimiter
    try:
        checked = validate_source(
            args.path, columns=column_mapping(args), split=args.split, max_chars=args.max_chars,
            encoding=args.encoding, delimiter=delimiter, drop_invalid=args.drop_invalid,
        )
    except DataError as error:
        if args.json:
            print(json.dumps(ValidationReport.from_error(error).to_dict(), indent=2))
            return 2
        if not isinstance(error, InvalidRowsError):
            raise
        print(f"error: {error}\n" + "\n".join(problem_lines(error.report)), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(checked.report.to_dict(), indent=2))
    else:
        lengths = (np.frombuffer(checked.chosen_chars, dtype=np.int64), np.frombuffer(checked.rejected_chars, dtype=np.int64))
        print(summary(checked.report, checked.columns, lengths))
    return 0


def summary(
    report: ValidationReport, columns: dict[str, str], lengths: tuple[np.ndarray, np.ndarray] | None = None
) -> str:
    """Human-readable report: pair count, columns used, how chosen and rejected lengths compare (given ``lengths``,
    characters of each pair's chosen and rejected reply), counts per warning code and the first rows of each."""
    mapping = ", ".join(f"{name}={column}" for name, column in columns.items())
    lines = [f"{report.n_pairs} pairs (columns: {mapping})"]
    if lengths is not None and len(lengths[0]):
        lengths = length_summary(*lengths)
        lines.append(f"lengths: chosen reply longer in {lengths.chosen_longer:.0%} of pairs, rejected in "
                     f"{lengths.rejected_longer:.0%} (median {lengths.median_chosen:,.0f} vs "
                     f"{lengths.median_rejected:,.0f} characters)")
    if report.dropped:
        lines += problem_lines(report)
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


def problem_lines(report: ValidationReport) -> list[str]:
    """The unusable rows of a report, counted per kind then listed (at most ``ISSUE_LIST_CAP``)."""
    issues = report.dropped_issues if report.dropped else report.errors
    verb = "left out" if report.dropped else "cannot be used"
    counts = ", ".join(f"{count} {code}" for code, count in report.error_counts.items())
    lines = [f"{len(report.invalid_rows)} row(s) {verb} ({counts}):"]
    for issue in issues:
        column = f", column '{issue.column}'" if issue.column else ""
        lines.append(f"  row {issue.row}{column}: {issue.message}")
    listed = sum(report.error_counts.values())
    if listed > len(issues):
        lines.append(f"  ... and {listed - len(issues)} more (the first {ISSUE_LIST_CAP} are listed)")
    return lines
