"""``dpo-engine select``: pick pairs from a margins table with one rule and save the Selection as JSON.

    dpo-engine select margins.parquet --rule top_k --score dm_mul --k 2000 --name dm-mul-2k
    dpo-engine select margins.parquet --rule top_k --frac 0.1 --where external_margin:0: --where implicit_margin:0: --name bees-pos
    dpo-engine select margins.csv --rule partition --score external_margin --part mid --k 500 --tau 1.0 --name ex-mid
    dpo-engine select margins.parquet --rule bees_k --scores external_margin,rm2_margin,implicit_margin --frac 0.1 --name bees3
    dpo-engine select margins.parquet --rule selective_dpo --tau 0.5 --name sdpo
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


from dpo_engine.errors import UserError
from dpo_engine.margins.table import load_margins_table
from dpo_engine.paths import NAME_RULE, check_name
from dpo_engine.selection.hypotheses import DEFAULT_COLUMNS, HYPOTHESIS_RULES, SELECTIVE_DPO_TAU
from dpo_engine.selection.rules import DEFAULT_RANDOM_SEED, DEFAULT_SCORE, PARTS, select_pairs
from dpo_engine.selection.store import Selection, save_selection

CLI_RULES = ("top_k", "bottom_k", "random", "partition", "threshold", *HYPOTHESIS_RULES)
_SCORE_RULES = ("top_k", "bottom_k", "partition", "smallest_gap", "medium_band", "chosen_quality", "selective_dpo")
DROPPED_KEYS = ("dropped_rows", "dropped_count", "dropped_reason")
_SIZED_RULES = tuple(rule for rule in CLI_RULES if rule not in ("threshold", "selective_dpo"))


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "select",
        help="select pairs from a margins table and save the selection",
        description="Apply one selection rule to a margins table (parquet or csv with a pair_id column) and save "
        "the chosen pair ids as a named selection.",
    )
    parser.add_argument("margins_table", type=Path, metavar="MARGINS_TABLE", help="parquet or csv, one row per pair")
    parser.add_argument("--rule", required=True, choices=CLI_RULES)
    parser.add_argument("--score", help=f"score column for top_k, bottom_k, partition (default {DEFAULT_SCORE}) and the "
                        "one-column hypotheses (default: the rule's own, e.g. implicit_margin for smallest_gap)")
    parser.add_argument("--scores", help="comma-separated score columns for bees_k and lossdiff_irm")
    parser.add_argument("--weight", type=float, help="alignment_potential: weight of the implicit term (default 1.0)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--k", type=int, help="number of pairs")
    size.add_argument("--frac", type=float, help="share of the whole table, in (0, 1]")
    parser.add_argument("--part", choices=PARTS, default="top", help="partition: top, mid (random from [-tau, tau]) or bot")
    parser.add_argument("--tau", type=float, help="partition mid band half-width (default 1.0); selective_dpo: the "
                        f"hardest share dropped (default {SELECTIVE_DPO_TAU})")
    parser.add_argument("--seed", type=int, help=f"random (default {DEFAULT_RANDOM_SEED}, independent of the warm-up's "
                        "42) and partition mid (default 42)")
    parser.add_argument(
        "--where", action="append", default=[], metavar="COLUMN:LOW:HIGH",
        help="keep rows with LOW <= COLUMN <= HIGH before the rule; an empty or infinite bound is open; repeatable",
    )
    parser.add_argument("--name", required=True, type=_checked_name,
                        help=f"selection name (also its file name): {NAME_RULE}")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing selection of this name")
    parser.add_argument("--out", type=Path, help="write the selection to this .json file instead of the workspace")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table, meta = load_margins_table(args.margins_table)
    params = rule_params(args)
    pair_ids = select_pairs(table, args.rule, params)
    selection = Selection(
        name=args.name,
        rule=args.rule,
        params=params,
        dataset_fingerprint=meta.get("dataset_fingerprint"),
        pair_ids=pair_ids,
        provenance={key: meta[key] for key in DROPPED_KEYS if key in meta},  # rows `score --drop-invalid` left out
    )
    path = save_selection(selection, path=args.out, overwrite=args.overwrite)
    share = len(pair_ids) / len(table) if len(table) else 0.0
    print(f"selected {len(pair_ids)} of {len(table)} pairs ({share:.1%}) -> {path}")
    return 0


def _checked_name(name: str) -> str:
    try:
        return check_name(name, "selection name")
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def rule_params(args: argparse.Namespace) -> dict:
    """The ``select_pairs`` params of the chosen rule, only those it takes (they are stored with the selection)."""
    params: dict = {}
    if args.rule in _SCORE_RULES:
        params["score"] = args.score or DEFAULT_COLUMNS.get(args.rule, DEFAULT_SCORE)
    if args.rule in ("bees_k", "lossdiff_irm"):
        columns = args.scores.split(",") if args.scores else DEFAULT_COLUMNS[args.rule]
        params["scores"] = [column.strip() for column in columns]
    if args.rule == "alignment_potential" and args.weight is not None:
        params["weight"] = args.weight
    if args.rule == "partition":
        params.update(part=args.part, tau=1.0 if args.tau is None else args.tau)
    if args.rule == "selective_dpo":
        params["tau"] = SELECTIVE_DPO_TAU if args.tau is None else args.tau
    if args.rule in _SIZED_RULES:
        if args.k is not None:
            params["k"] = args.k
        if args.frac is not None:
            params["frac"] = args.frac
    if args.rule == "random":
        params["seed"] = DEFAULT_RANDOM_SEED if args.seed is None else args.seed
    if args.rule == "partition":
        params["seed"] = 42 if args.seed is None else args.seed
    if args.where:
        params["where"] = dict(parse_where(text) for text in args.where)
    return params


def parse_where(text: str) -> tuple[str, list[float | None]]:
    """``"external_margin:0:inf"`` -> ``("external_margin", [0.0, None])``; empty or infinite bounds are open."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise UserError(f"--where {text!r}: expected COLUMN:LOW:HIGH, e.g. external_margin:0:inf")
    column, *raw_bounds = parts
    bounds: list[float | None] = []
    for raw in raw_bounds:
        try:
            value = float(raw) if raw.strip() else math.inf
        except ValueError:
            raise UserError(f"--where {text!r}: bound {raw!r} is not a number") from None
        bounds.append(None if math.isinf(value) else value)
    return column, bounds


