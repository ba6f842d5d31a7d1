"""The ``dpo-engine`` command line: one subcommand group per module, all over the same engine functions.

Each submodule listed in ``COMMAND_MODULES`` exposes ``add_parser(subparsers)``, which registers its
subcommands and sets ``func`` (``args -> int`` exit code) on each parser.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dpo_engine.errors import UserError

COMMAND_MODULES: list[str] = ["data", "select", "score", "train", "runs", "eval", "rounds", "arena"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpo-engine",
        description="Margin Lab engine: validate preference data, score margins, select subsets, train and evaluate DPO runs.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"dpo_engine.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
