"""The arena's self-contained report: ``report/report.md`` (protocol, table, overlaps, mixes), ``report/arena.html``
(every figure, plotly.js embedded once, so it opens offline) and a PNG per figure when kaleido can draw them.

report.md is written last: its presence marks the report step done.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd

from dpo_engine.arena.config import ArenaConfig
from dpo_engine.arena.figures import arena_figure, overlap_figure, source_mix_figure
from dpo_engine.arena.store import REPORT_DIR, report_path
from dpo_engine.files import atomic_write_text

FIGURES = ("arena", "overlap", "sources")


def write_report(config: ArenaConfig, directory: Path, table: pd.DataFrame, overlap: pd.DataFrame, mixes: dict,
                 eval_meta: dict) -> Path:
    """Write the report folder; return the path of report.md."""
    folder = directory / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    figures = {"arena": arena_figure(table), "overlap": overlap_figure(overlap), "sources": source_mix_figure(mixes)}
    parts = [figure.to_html(full_html=False, include_plotlyjs=index == 0) for index, figure in
             enumerate(figures.values())]
    atomic_write_text(folder / "arena.html", "<html><head><meta charset='utf-8'><title>Arena "
                      f"{config.name}</title></head><body>{''.join(parts)}</body></html>")
    png_note = _write_pngs(figures, folder)
    path = report_path(directory)
    atomic_write_text(path, report_markdown(config, table, overlap, mixes, eval_meta, png_note))
    return path


def _write_pngs(figures: dict, folder: Path) -> str:
    """PNG files beside the HTML, or a sentence saying why there are none (kaleido missing or failing)."""
    if importlib.util.find_spec("kaleido") is None:
        return "No PNG figures: kaleido is not installed (`pip install kaleido`); arena.html opens offline."
    try:
        for name, figure in figures.items():
            figure.write_image(folder / f"{name}.png", width=1000, height=max(400, figure.layout.height or 400))
    except Exception as error:  # kaleido needs a Chrome it can drive; the HTML report stands without it
        return f"No PNG figures: kaleido failed ({type(error).__name__}: {error}); arena.html opens offline."
    return "Figures: " + ", ".join(f"![{name}]({name}.png)" for name in figures)


def _number(value, digits: int = 1, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _matrix_markdown(matrix: pd.DataFrame) -> str:
    """A square matrix as a markdown table, two decimals (pandas' to_markdown needs tabulate)."""
    header = "| | " + " | ".join(map(str, matrix.columns)) + " |"
    rule = "|---" * (len(matrix.columns) + 1) + "|"
    rows = [f"| {name} | " + " | ".join(f"{value:.2f}" for value in values) + " |"
            for name, values in zip(matrix.index, matrix.to_numpy(float))]
    return "\n".join([header, rule, *rows])


def report_markdown(config: ArenaConfig, table: pd.DataFrame, overlap: pd.DataFrame, mixes: dict, eval_meta: dict,
                    png_note: str) -> str:
    """The report's markdown text."""
    judge = (eval_meta.get("judge") or {}).get("name", config.judge)
    lines = [
        f"# Arena {config.name}", "",
        f"{len(config.selectors)} selectors and random at {len(config.random_seeds)} seeds, {config.budget} pairs "
        f"each, from `{config.pairs_source}` (margins `{config.margins_source}`). One LoRA run per contestant on "
        f"`{config.model}`, the same training settings (`{config.train}`) except the subset. Evaluation "
        f"`{eval_meta.get('eval_id', '')}`: {config.eval_n} prompts, greedy answers up to "
        f"{config.eval_max_new_tokens} tokens, each judged by `{judge}` against the base model's answer.", "",
        "Win rate: percent of prompts won against the base model (ties count half), 95 % bootstrap CI. "
        "vs random: the paired difference (points) with the per-prompt mean of the random seeds, its paired "
        "bootstrap 95 % CI and two-sided sign-flip p. Loss, reward accuracy and margin: the run's last logged step.",
        "", "| contestant | rule | win rate (CI) | vs random (CI) | p | loss | reward acc. | margin | chosen / "
        "rejected chars | top source |", "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        ci = f"{_number(row.win_rate)} ({_number(row.ci_low)}-{_number(row.ci_high)})"
        versus = (f"{_number(row.vs_random, signed=True)} ({_number(row.vs_random_low, signed=True)} to "
                  f"{_number(row.vs_random_high, signed=True)})") if not pd.isna(row.vs_random) else ""
        source = f"{row.top_source} ({_number(100 * row.top_source_share, 0)} %)" if isinstance(row.top_source, str) and row.top_source else ""
        lines.append(f"| {row.contestant} | {row.rule} {row.params} | {ci} | {versus} | "
                     f"{_number(row.vs_random_p, 3)} | {_number(row.final_loss, 3)} | "
                     f"{_number(row.reward_accuracy, 2)} | {_number(row.reward_margin, 3)} | "
                     f"{_number(row.chosen_chars, 0)} / {_number(row.rejected_chars, 0)} | {source} |")
    lines += ["", "## Subset overlap (Jaccard)", "", _matrix_markdown(overlap), "",
              "## Source mix", ""]
    for name, mix in mixes.items():
        shares = ", ".join(f"{source} {100 * share:.0f} %" for source, share in mix["sources"].items())
        lines.append(f"- **{name}** ({mix['n']} pairs): {shares}")
    lines += ["", "## Figures", "", "`arena.html` (opens offline: plotly.js is embedded).", "", png_note, ""]
    return "\n".join(lines)
