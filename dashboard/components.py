"""Small Streamlit building blocks used on several pages."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from dpo_engine.data.pairs import ValidationReport
from dpo_engine.errors import UserError
from dpo_engine.margins.ranks import pair_ranks

MARGIN_NAMES = {"external_margin": "external", "implicit_margin": "implicit", "dm_add": "DM-ADD", "dm_mul": "DM-MUL",
                "bees": "BeeS"}

PAIR_TABLE_COLUMNS = {
    "pair_id": st.column_config.TextColumn("pair id", width="medium"),
    "prompt": st.column_config.TextColumn("prompt", width="large"),
    "score_chosen": st.column_config.NumberColumn("score chosen", format="%.2f", width="small"),
    "score_rejected": st.column_config.NumberColumn("score rejected", format="%.2f", width="small"),
    "external_margin": st.column_config.NumberColumn("external", format="%.3g", width="small"),
    "implicit_margin": st.column_config.NumberColumn("implicit", format="%.3g", width="small"),
    "dm_mul": st.column_config.NumberColumn("DM-MUL", format="%.3f", width="small"),
    "warnings": st.column_config.TextColumn("warnings", width="small"),
}


PROMPT_PREVIEW_CHARS = 200
# What lets text become markup in Streamlit's markdown: code spans, images and links ([...], also Streamlit's
# :red[...] directives), HTML and autolinks (<...>), emphasis, strikethrough, tables, LaTeX ($). Characters that only
# matter at the start of a line (#, -, 1.) are harmless once lines are joined; '_' is left alone so ids stay readable.
MARKDOWN_SPECIAL = re.compile(r"([\\`*!\[\]<>~|$])")


def escape_markdown(text, *, keep_lines: bool = False) -> str:
    """``text`` shown literally inside Streamlit markdown: special characters backslash-escaped.

    For anything that comes from a dataset, a file name or a log (pair ids, labels, messages): a backtick cannot
    close a code span, ``![](url)`` cannot load an image, ``[x](url)`` cannot become a link. Lines are joined
    with spaces, or with markdown line breaks when ``keep_lines`` (a log tail).
    """
    lines = [MARKDOWN_SPECIAL.sub(r"\\\1", line) for line in str(text).splitlines()]
    return ("  \n" if keep_lines else " ").join(lines)


@st.cache_data(max_entries=64, show_spinner=False)
def cached_pair_ranks(_table: pd.DataFrame, table_key: tuple, pair_id: str) -> pd.DataFrame:
    """`pair_ranks` of one pair, once per (table, pair): ``table_key`` names the table (a page's cache key)."""
    return pair_ranks(_table, pair_id)


def pair_browser(pairs: pd.DataFrame, columns: list[str], *, key: str, ranked_in: pd.DataFrame | None = None,
                 ranked_key: tuple | None = None) -> None:
    """A table of pairs; the row the user clicks is shown in full below it (with its margins' ranks among
    ``ranked_in``'s pairs, when given; cached per pair when ``ranked_key`` names that table)."""
    if pairs.empty:
        st.info("No pairs to show.")
        return
    shown = pairs[columns]
    if "prompt" in columns:  # the table shows a line of each prompt (the viewer below has it whole): less to send
        shown = shown.assign(prompt=pairs.prompt.str.slice(0, PROMPT_PREVIEW_CHARS))
    event = st.dataframe(
        shown,
        key=key,
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        column_config={name: PAIR_TABLE_COLUMNS[name] for name in columns if name in PAIR_TABLE_COLUMNS},
        height=320,
    )
    rows = event.selection.rows
    position = rows[0] if rows else 0
    if not rows:
        st.caption("Click a row to read that pair in full. Showing the first one.")
    pair = pairs.iloc[position]
    if ranked_in is None:
        ranks = None
    elif ranked_key is None:
        ranks = pair_ranks(ranked_in, pair["pair_id"])
    else:
        ranks = cached_pair_ranks(ranked_in, ranked_key, str(pair["pair_id"]))
    pair_viewer(pair, ranks)


def pair_viewer(pair: pd.Series, ranks: pd.DataFrame | None = None) -> None:
    """Full text of one pair: its margins and ranks (`dpo_engine.margins.ranks.pair_ranks`), the prompt
    conversation, then chosen and rejected side by side."""
    with st.container(border=True):
        st.markdown(f"**Pair {escape_markdown(pair['pair_id'])}** · source row {pair['row']}")
        if ranks is not None and not ranks.empty:
            st.markdown(" · ".join(
                f"{MARGIN_NAMES.get(row.margin, row.margin)} **{row.value:.3g}** (rank {row.rank:,.0f} of {row.of:,}, "
                f"top {row.top_percent:.0f} %)" if pd.notna(row.rank) else f"{MARGIN_NAMES.get(row.margin, row.margin)} –"
                for row in ranks.itertuples()
            ))
        if pair.get("warnings"):
            st.warning(f"Warnings: {escape_markdown(pair['warnings'].replace(';', ', '))}")
        for message in pair["prompt_messages"]:
            st.markdown(f"**{message['role'].capitalize()}**")
            st.text(message["content"])
        chosen, rejected = st.columns(2)
        for column, name in ((chosen, "chosen"), (rejected, "rejected")):
            with column:
                score = pair.get(f"score_{name}")
                label = f"**{name.capitalize()}**" + (f" · score {score:g}" if pd.notna(score) else "")
                st.markdown(label)
                st.text(pair[name] or "(empty response)")


PROBLEMS_IN_BOX = 10  # unusable-row problems spelled out in the error box; the table below lists them all


def validation_report(report: ValidationReport) -> bool:
    """Show a validation report: every problem found (unusable rows counted per kind and listed, rows left out,
    warnings); True when the data is usable (no errors)."""
    if report.errors:
        unusable_rows(report)
        return False
    if report.dropped:
        st.info(f"{report.n_pairs:,} pairs loaded; {len(report.invalid_rows):,} rows that cannot be used were left "
                f"out ({kinds(report.error_counts)}), as you chose. Selections saved from these pairs record them.")
        with st.expander(f"Rows left out ({len(report.invalid_rows):,})"):
            st.dataframe(issue_table(report.dropped_issues), hide_index=True)
    counts = report.warning_counts()
    if not counts:
        st.success(f"{report.n_pairs:,} pairs, no problems found.")
        return True
    summary = ", ".join(f"{count} {code.replace('_', ' ')}" for code, count in counts.items())
    st.warning(f"{report.n_pairs:,} pairs loaded; {len(report.warnings)} warnings ({summary}). Rows are kept; review them below.")
    with st.expander(f"Warnings by row ({len(report.warnings)})"):
        st.dataframe(issue_table(report.warnings), hide_index=True)
    return True


def unusable_rows(report: ValidationReport) -> None:
    """The error box of a failed load: how many problems of each kind, the first ones, and a table of all listed."""
    total = sum(report.error_counts.values()) or len(report.errors)
    lines = [f"- {escape_markdown(issue.message)}" + _where(issue) for issue in report.errors[:PROBLEMS_IN_BOX]]
    heading = "This data cannot be used"
    if report.invalid_rows:
        heading += (f": {len(report.invalid_rows):,} rows cannot be used ({kinds(report.error_counts)}); "
                    f"{report.n_pairs:,} rows are fine")
    more = total - len(lines)
    st.error(heading + ":\n\n" + "\n".join(lines) + (f"\n\n… and {more:,} more, listed below." if more > 0 else ""))
    if len(report.errors) > PROBLEMS_IN_BOX:
        if total > len(report.errors):
            st.caption(f"The first {len(report.errors):,} of {total:,} problems:")
        st.dataframe(issue_table(report.errors), hide_index=True, key="unusable_rows")
    if report.warnings:
        st.caption(f"The usable rows also have {len(report.warnings):,} warning(s) "
                   f"({kinds(report.warning_counts())}); they are listed once the data loads.")


def kinds(counts: dict[str, int]) -> str:
    """``{"wrong_type": 2}`` -> ``"2 wrong type"``: counts per kind in words."""
    return ", ".join(f"{count:,} {code.replace('_', ' ')}" for code, count in counts.items())


def issue_table(issues) -> pd.DataFrame:
    """Issues as a table in the user's terms: row, column, kind, problem."""
    frame = pd.DataFrame([issue.to_dict() for issue in issues], columns=["row", "column", "code", "message"])
    frame["code"] = frame["code"].str.replace("_", " ")
    frame["row"] = frame["row"].astype("Int64")
    frame["column"] = frame["column"].fillna("")
    return frame.rename(columns={"code": "kind", "message": "problem"})


def _where(issue) -> str:
    parts = [f"row {issue.row}" if issue.row is not None else "", f"column {escape_markdown(issue.column)}" if issue.column else ""]
    where = ", ".join(part for part in parts if part)
    return f" ({where})" if where else ""


def confirmed(pending_key: str, action: str, kind: str, options: dict, summary=None) -> bool:
    """The review box of a launch: ``summary`` (markdown, or a callable that draws it), then ``action`` / Cancel.

    True once, when ``action`` is pressed and no identical ``kind`` launch (same ``options``) started seconds ago
    (`dpo_engine.launch_guard`); Cancel forgets ``st.session_state[pending_key]``, so does pressing ``action``.
    """
    from dpo_engine.launch_guard import claim_launch

    with st.container(border=True):
        if callable(summary):
            summary()
        elif summary:
            st.markdown(summary)
        start, cancel = st.columns([1, 6])
        if cancel.button("Cancel", key=f"cancel-{pending_key}"):
            del st.session_state[pending_key]
            st.rerun()
        if not start.button(action, type="primary", key=f"confirm-{pending_key}"):
            return False
    del st.session_state[pending_key]
    if not claim_launch(kind, options):
        st.warning(f"An identical {kind} was launched seconds ago; not starting it twice.")
        return False
    return True


# Streamlit's Material icons, not emoji: they draw on machines without an emoji font.
JOB_STATE_ICONS = {"running": ":green[:material/play_circle:]", "completed": ":green[:material/check_circle:]",
                   "failed": ":red[:material/error:]", "interrupted": ":orange[:material/pause_circle:]"}


def job_state_line(name: str, status: dict, resume, *, key: str) -> bool:
    """A loop's or an arena's state, message and progress on one line, with Resume when it failed or was interrupted.

    ``resume()`` starts the job again (``UserError`` is shown, not raised). True when it was resumed.
    """
    state = status.get("state", "not started")
    progress = status.get("progress") or {}
    counts = f" ({progress['done']} / {progress['total']})" if progress.get("total") else ""
    st.markdown(f"{JOB_STATE_ICONS.get(state, '')} **{name}**: {state} · {status.get('message', '')}{counts}")
    if state in ("failed", "interrupted") and st.button("Resume", key=key):
        try:
            resume()
        except UserError as error:
            st.error(str(error))
        else:
            return True
    return False
