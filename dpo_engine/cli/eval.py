"""``dpo-engine eval``: win rates of trained runs against a baseline, saved as an evaluation and printed."""

from __future__ import annotations

import argparse

from dpo_engine.evaluation.judge_factory import JUDGE_HELP, make_judge
from dpo_engine.paths import NAME_RULE


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None ones (their help says what happens instead)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="generate with trained runs and compute win rates against a baseline",
        description=(
            "Generate answers with each RUN_ID's adapter to a prompt set (default: the 805 bundled AlpacaEval "
            "instructions), judge each answer against the baseline's answer to the same prompt, and compute per "
            "run: win rate (percent) with a bootstrap 95% CI, discrete and length-controlled win rates (LC: "
            "AlpacaEval's GLM, minimal offline form), mean answer length in characters, and the paired difference "
            "to the first run. Generations are cached per batch (an interrupted eval resumes). The evaluation is "
            "saved under $MARGIN_LAB_HOME/evals/<eval_id>/ (results.csv, per_prompt.parquet, judgements.jsonl, "
            "meta.json) and its results table printed. On CPU, generation runs at about 50-90 tokens/s with batch "
            "8 on the default 135M model: start with --n 32 --max-new-tokens 128. No judge here is AlpacaEval's "
            "GPT-4 Turbo annotator, so compare runs with each other, not with published numbers."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="runs to evaluate (see `dpo-engine runs list`)")
    parser.add_argument("--judge", default="builtin", help=JUDGE_HELP)
    parser.add_argument(
        "--prompts",
        help="prompt file (jsonl/csv/json/parquet with an 'instruction' or 'prompt' column; optional id, "
        "reference_output, dataset); default: the bundled AlpacaEval set",
    )
    parser.add_argument("--n", type=int, help="evaluate a random subset of N prompts (fixed by --seed); default: all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt subset and of sampling")
    parser.add_argument(
        "--baseline",
        choices=["base", "reference"],
        default="base",
        help="'base': the run's base model's own answers; 'reference': the prompts' reference answers "
        "(GPT-4 Turbo for the bundled set)",
    )
    parser.add_argument("--compare-to", metavar="RUN_ID", help="run the others are paired with (default: the first)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generated tokens per answer, at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; above 0, sampling")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="prompts per generation batch (default: GenerationSettings', 16)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="model weights precision")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto")
    parser.add_argument("--name", type=_checked_name, help=f"a name for this evaluation (prefix of its id): {NAME_RULE}")
    parser.add_argument("--progress-file", help="JSON file updated with {stage, done, total} (for the dashboard)")
    parser.set_defaults(func=run)


def _checked_name(name: str) -> str:
    from dpo_engine.errors import UserError
    from dpo_engine.paths import check_name

    try:
        return check_name(name, "evaluation name")
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args) -> int:
    from dpo_engine.cli.score import _Progress
    from dpo_engine.evaluation.generation import GenerationSettings, load_eval_prompts
    from dpo_engine.evaluation.report import evaluate

    reporter = _Progress(args.progress_file)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        batch_size=GenerationSettings.batch_size if args.batch_size is None else args.batch_size,
        seed=args.seed, dtype=args.dtype, device=args.device,
    )
    settings.validate()
    judge = make_judge(args.judge)
    prompts = load_eval_prompts(args.prompts, n=args.n, seed=args.seed)

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage != reporter.name:
            reporter.stage(stage)
        reporter.update(done, total)

    result = evaluate(
        args.run_ids, judge=judge, prompts=prompts, baseline=args.baseline, settings=settings,
        eval_name=args.name, compare_to=args.compare_to, progress=on_progress,
    )
    reporter.finish(str(result.directory))
    print(format_results(result.results))
    print(f"\njudge: {result.meta['judge']['description']}")
    print(f"saved: {result.directory}")
    return 0


def format_results(results) -> str:
    """The results table as aligned text: one line per run."""
    headers = ["run", "variant", "win rate % [95% CI]", "LC %", "paired diff", "mean len (base)", "n", "failed"]
    lines = []
    for row in results.itertuples():
        paired = f"{row.paired_difference:+.1f} [{row.paired_ci_low:+.1f}, {row.paired_ci_high:+.1f}]" \
            if row.paired_vs else "(reference)"
        lines.append([
            row.run_id, str(row.variant), f"{row.win_rate:.1f} [{row.ci_low:.1f}, {row.ci_high:.1f}]",
            f"{row.lc_win_rate:.1f}", paired, f"{row.mean_length:.0f} ({row.baseline_mean_length:.0f})",
            str(row.n), str(row.n_failed),
        ])
    widths = [max(len(cells[i]) for cells in [headers, *lines]) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
                     for cells in [headers, *lines])
