"""``dpo-engine eval``: win rates of trained runs against a baseline, saved as an evaluation and printed."""

from __future__ import annotations

import argparse

from dpo_engine.cli.flags import add_config_arguments, config_from_args
from dpo_engine.evaluation.config import EvalConfig
from dpo_engine.evaluation.judge_factory import make_judge


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
            "meta.json) and its results table printed. The generation settings used are printed first: on a CUDA "
            "GPU bf16, 64 slots and answers up to 2048 tokens; elsewhere fp32, 16 slots and 256 tokens. On CPU, "
            "generation runs at about 50-90 tokens/s with batch 8 on the default 135M model: start with --n 32 "
            "--max-new-tokens 128. No judge here is AlpacaEval's GPT-4 Turbo annotator, so compare runs with each "
            "other, not with published numbers."
        ),
        formatter_class=_HelpFormatter,
    )
    add_config_arguments(parser, EvalConfig, positional=("run_ids",))
    parser.set_defaults(func=run)


def run(args) -> int:
    from dpo_engine.cli.score import _Progress
    from dpo_engine.evaluation.generation import GenerationSettings, load_eval_prompts
    from dpo_engine.evaluation.report import evaluate
    from dpo_engine.models.loading import detect_device

    config = config_from_args(EvalConfig, args)
    config.validate()
    settings = GenerationSettings.from_eval_config(config)
    settings.validate()
    reporter = _Progress(config.progress_file)
    judge = make_judge(config.judge)
    prompts = load_eval_prompts(config.prompts, n=config.n, seed=config.seed)
    device = detect_device() if config.device == "auto" else config.device
    print(f"generation: {settings.resolved(device).describe()}", flush=True)

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage != reporter.name:
            reporter.stage(stage)
        reporter.update(done, total)

    result = evaluate(
        config.run_ids, judge=judge, prompts=prompts, baseline=config.baseline, settings=settings,
        eval_name=config.name, compare_to=config.compare_to, progress=on_progress,
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
