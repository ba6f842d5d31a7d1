"""The study's command line: ``python -m experiments.dm_small {run,summary,export,plan}`` (README.md beside this file)."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import yaml

from dpo_engine.errors import UserError

from .config import (
    DEFAULT_OUT_ROOT,
    PROFILES_FILE,
    Profile,
    all_variants,
    load_profile,
    profile_names,
    resolve_path,
    selected_variants,
)

# The estimate's CPU rates (fp32, SmolLM2-135M, LoRA); a measured cpu-profile run is in docs/benchmarks.md §12.
CPU_TRAIN_S_PER_PAIR_EPOCH_256 = 4.0
CPU_GENERATION_TOKENS_PER_S = 32.0


def parse_set(items: list[str]) -> dict:
    """``--set train.learning_rate=5e-5`` -> ``{"train": {"learning_rate": 5e-05}}`` (values parsed as YAML)."""
    overrides: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=5e-5")
        node = overrides
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # PyYAML reads 5e-5 as text
            try:
                value = float(value)
            except ValueError:
                pass
        node[leaf] = value
    return overrides


def build_profile(args) -> Profile:
    overrides = parse_set(getattr(args, "set", []) or [])
    if getattr(args, "data", None):
        overrides["data"] = args.data
    if getattr(args, "margins", None):
        overrides["margins"] = args.margins
    if getattr(args, "external", None):
        overrides.setdefault("score", {})["external"] = args.external
    return load_profile(args.profile, overrides)


def default_out(profile: Profile) -> Path:
    """``out/<profile>``, or ``out/<profile>-<data stem>`` for data other than the profile's own."""
    own = load_profile(profile.name).data_path
    suffix = "" if profile.data_path == own else f"-{profile.data_path.stem}"
    return DEFAULT_OUT_ROOT / f"{profile.name}{suffix}"


def make_study(args, profile: Profile):
    from .pipeline import Study

    out = resolve_path(args.out) if args.out else default_out(profile)
    workspace = resolve_path(args.workspace) if getattr(args, "workspace", None) else None
    command = "python -m experiments.dm_small " + " ".join(shlex.quote(arg) for arg in args.argv)
    return Study(profile, out, workspace, command=command)


def cmd_run(args) -> int:
    profile = build_profile(args)
    only = [key for item in args.only or [] for key in item.split(",") if key]
    variants = selected_variants(profile, only=only or None, with_optional=args.with_optional)
    study = make_study(args, profile)
    code = study.run(variants, evaluate=not args.no_eval)
    if args.export:
        from .export import export_demo

        export_demo(study, resolve_path(args.export), command=study.command)
    return code


def cmd_summary(args) -> int:
    from .pipeline import workspace_env
    from .summary import write_summary

    study = make_study(args, build_profile(args))
    with workspace_env(study.workspace):
        path = write_summary(study)
    if path is None:
        print(f"nothing evaluated yet in {study.out_dir}")
        return 1
    print(path.read_text(encoding="utf-8"))
    return 0


def cmd_export(args) -> int:
    from .export import export_demo

    study = make_study(args, build_profile(args))
    export_demo(study, resolve_path(args.to), command=study.command)
    return 0


def estimate(profile: Profile, variants) -> list[tuple[str, int, float, float]]:
    """``(variant, pairs, training s, generation s)`` per variant (plus the base model's generation), from the
    CPU rates above: training ``CPU_TRAIN_S_PER_PAIR_EPOCH_256`` seconds per pair per epoch at 256 tokens (scaled
    linearly with max_length), generation ``CPU_GENERATION_TOKENS_PER_S``, every answer assumed to run to
    ``max_new_tokens`` (an upper bound)."""
    from dpo_engine.data.pairs import load_pairs

    n_total = int(profile.get("data_limit") or 0) or len(load_pairs(profile.data_path).pairs)
    train, evaluation = profile["train"], profile["eval"]
    per_pair = CPU_TRAIN_S_PER_PAIR_EPOCH_256 * float(train["max_length"]) / 256 * float(train["num_epochs"])
    generation = int(evaluation["n_prompts"]) * int(evaluation["max_new_tokens"]) / CPU_GENERATION_TOKENS_PER_S
    rows = [("(base model answers)", 0, 0.0, generation)]
    for variant in variants:
        pairs = n_total if variant.subset.rule == "manual" else math.floor(float(profile["frac"]) * n_total)
        rows.append((variant.key + (" (optional)" if variant.optional else ""), pairs, pairs * per_pair, generation))
    return rows


def cmd_plan(args) -> int:
    profile = build_profile(args)
    chosen = {variant.key for variant in selected_variants(profile, with_optional=True)}
    variants = [variant for variant in all_variants(profile) if variant.key in chosen]
    rows = estimate(profile, variants)
    print(f"profile {profile.name} ({PROFILES_FILE.name}); variants in run order; CPU estimate "
          f"({CPU_TRAIN_S_PER_PAIR_EPOCH_256:g} s/pair/epoch at 256 tokens, {CPU_GENERATION_TOKENS_PER_S:g} tok/s "
          "generation)")
    print(f"{'variant':<24}{'pairs':>7}{'train min':>11}{'eval min':>10}  subset / loss")
    by_key = {variant.key: variant for variant in variants}
    for name, pairs, train_s, gen_s in rows:
        variant = by_key.get(name.split(" ")[0])
        what = f"{variant.subset.rule}({', '.join(f'{k}={v}' for k, v in variant.subset.params.items())}) / {variant.loss}" \
            if variant else ""
        print(f"{name:<24}{pairs or '':>7}{train_s / 60:>11.1f}{gen_s / 60:>10.1f}  {what}")
    required = [row for row in rows if "(optional)" not in row[0]]
    total = sum(row[2] + row[3] for row in required)
    everything = sum(row[2] + row[3] for row in rows)
    print(f"total without optional variants: {total / 3600:.2f} h; with them: {everything / 3600:.2f} h "
          "(plus model loading, reference log-probs and judging: a few minutes)")
    if profile["train"]["device"] != "cpu":
        print("(this profile runs on a GPU: the CPU figures above overstate its cost by far)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.dm_small", description=(
        "The dm_small study: DM-MUL / DM-ADD / single-margin / random 10 % subsets and loss variants, trained and "
        "evaluated with the engine. Resumable: re-run the same command to continue."))
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("--profile", default="cpu", choices=profile_names(), help="profiles.yaml profile (default cpu)")
        sub.add_argument("--out", help="output directory (default experiments/dm_small/out/<profile>)")
        sub.add_argument("--workspace", help="engine workspace for runs and evaluations (default <out>/workspace)")
        sub.add_argument("--data", help="preference pairs file (default: the profile's)")
        sub.add_argument("--margins", help="margins table (default: the profile's); computed when it does not exist")
        sub.add_argument("--external", help="external margin source when computing margins (dataset, builtin, ...)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a profile setting, e.g. --set train.learning_rate=5e-5 (repeatable)")

    run = commands.add_parser("run", help="run (or continue) the study: margins, selections, training, evaluation")
    common(run)
    run.add_argument("--only", action="append", metavar="KEYS", help="only these variants (comma-separated)")
    run.add_argument("--with-optional", action="store_true", help="also run the optional variants (full data)")
    run.add_argument("--no-eval", action="store_true", help="train only")
    run.add_argument("--export", metavar="DIR", help="export the results into DIR afterwards (e.g. assets/demo)")
    run.set_defaults(func=cmd_run)

    summary = commands.add_parser("summary", help="rewrite and print the summary table from what is evaluated")
    common(summary)
    summary.set_defaults(func=cmd_summary)

    export = commands.add_parser("export", help="copy a shippable subset of the results into assets/demo")
    common(export)
    export.add_argument("--to", default="assets/demo", help="target directory (replaced as a whole)")
    export.set_defaults(func=cmd_export)

    plan = commands.add_parser("plan", help="list the variants in run order with a CPU cost estimate")
    common(plan)
    plan.set_defaults(func=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
