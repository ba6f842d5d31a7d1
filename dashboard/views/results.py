"""Results: evaluate trained runs with a judge (a background job), then compare their win rates."""

import time

import pandas as pd
import streamlit as st

from dashboard.components import confirmed, escape_markdown
from dashboard.figures import win_rate_chart
from dpo_engine import jobs, progress, runs
from dpo_engine.errors import UserError
from dpo_engine.evaluation import figures, store
from dpo_engine.evaluation.config import CUDA_GENERATION, OTHER_GENERATION, EvalConfig
from dpo_engine.evaluation.judge_factory import judge_specs
from dpo_engine.evaluation.results import results_table
from dpo_engine.evaluation.warnings import evaluation_warnings

REWARD_MODEL = "reward-model"
TABLE_COLUMNS = {
    "variant": st.column_config.TextColumn("variant"),
    "win_rate": st.column_config.NumberColumn("win rate %", format="%.1f"),
    "n_wins": st.column_config.NumberColumn("wins"),
    "n_draws": st.column_config.NumberColumn("ties"),
    "n_losses": st.column_config.NumberColumn("losses"),
    "ci_low": st.column_config.NumberColumn("CI low", format="%.1f"),
    "ci_high": st.column_config.NumberColumn("CI high", format="%.1f"),
    "lc_win_rate": st.column_config.NumberColumn("LC win rate %", format="%.1f"),
    "mean_length": st.column_config.NumberColumn("mean length (chars)", format="%.0f"),
    "baseline_mean_length": st.column_config.NumberColumn("baseline length", format="%.0f"),
    "paired_difference": st.column_config.NumberColumn("paired diff (points)", format="%+.1f"),
    "paired_p_value": st.column_config.NumberColumn("p", format="%.3f"),
    "n": st.column_config.NumberColumn("n"),
    "n_failed": st.column_config.NumberColumn("failed"),
}


# ---- evaluating as a job -------------------------------------------------------------------------------------------


def eval_form(completed: list) -> None:
    ids = [run.run_id for run in completed]
    picked = st.multiselect("Runs to evaluate", ids, default=ids[:4], help="Completed runs (they have a trained adapter).")
    # Endpoints come from the server's allow-list ($MARGIN_LAB_JUDGE_ENDPOINTS), never from a text box.
    try:
        judges = {**judge_specs(), REWARD_MODEL: "a local reward model (AutoModelForSequenceClassification directory)"}
    except UserError as error:
        st.error(str(error))
        judges = {"builtin": "built-in offline judge", REWARD_MODEL: "a local reward model"}
    judge = st.selectbox("Judge", list(judges), format_func=judges.get,
                         help="OpenAI-compatible judges are the server's allow-listed endpoints (docs/security.md).")
    with st.form("evaluate", enter_to_submit=False):
        spec = judge
        if judge == REWARD_MODEL:
            spec = "reward-model:" + st.text_input("Reward model directory")
        left, middle, right = st.columns(3)
        baseline = left.selectbox(
            "Baseline", ["base", "reference"],
            format_func={"base": "each run's base model (same settings)", "reference": "GPT-4 Turbo reference answers"}.get,
        )
        n_prompts = middle.number_input("Prompts (of the 805 AlpacaEval ones; 0 = all)", min_value=0, value=32, step=8)
        max_new_tokens = right.number_input(
            "Max new tokens per answer", min_value=0, value=128, step=16,
            help=f"0 = the device's default: {CUDA_GENERATION['max_new_tokens']} on a CUDA GPU (long enough for "
            f"AlpacaEval answers), {OTHER_GENERATION['max_new_tokens']} elsewhere (the CPU demo's).")
        compare_to = left.selectbox("Paired differences against", picked or ids)
        dtype = middle.selectbox("Precision", ["auto", "fp32", "bf16"], help="auto: bf16 on CUDA, fp32 elsewhere")
        device = right.selectbox("Device", ["auto", "cpu", "cuda", "mps"])
        name = st.text_input("Evaluation name (optional)")
        if st.form_submit_button("Review evaluation", type="primary"):
            st.session_state["pending_eval"] = None
            config = EvalConfig(
                run_ids=picked, judge=spec, baseline=baseline, max_new_tokens=int(max_new_tokens) or None,
                dtype=dtype, device=device, compare_to=compare_to if compare_to in picked else (picked or [None])[0],
                n=int(n_prompts) or None, name=name.strip() or None,
            )
            try:
                config.validate()  # field by field, at once (no torch): e.g. no run picked, a bad name
            except UserError as error:
                st.error(str(error))
            else:
                tokens = max_new_tokens or "the device's default"
                summary = (f"{len(picked)} runs ({', '.join(picked)}) · {n_prompts or 805} prompts · up to {tokens} "
                           f"new tokens · baseline {baseline} · judge {judge} · {device} {dtype}")
                st.session_state["pending_eval"] = (config, summary)
    if st.session_state.get("pending_eval"):
        review_eval(*st.session_state["pending_eval"])


def review_eval(config: EvalConfig, summary: str) -> None:
    """What "Evaluate" would start, then Evaluate / Cancel; the same evaluation twice in seconds starts once."""
    if confirmed("pending_eval", "Evaluate", "evaluation", config.to_dict(), f"**Will evaluate:** {summary}"):
        jobs.start("eval", config)
        st.rerun()


@st.fragment(run_every=2)
def eval_progress(job_dir) -> None:
    info = jobs.status(job_dir)
    if info["state"] != "running":
        st.rerun(scope="app")
    estimate = progress.from_job_record(info["progress"], time.time())
    st.progress(estimate.fraction, text=f"Evaluating: {progress.describe(estimate)}")
    if st.button("Stop evaluation"):
        jobs.stop(job_dir)
    with st.expander("Job log"):
        st.code(jobs.tail(job_dir) or "(no output yet)", language=None)


def eval_jobs() -> bool:
    """Progress of a running evaluation, or the error of the last one; True while one runs."""
    recent = jobs.list_jobs("eval")[:1]
    if not recent:
        return False
    info = jobs.status(recent[0])
    if info["state"] == "running":
        eval_progress(recent[0])
        return True
    if info["state"] in ("failed", "stopped") and not (recent[0] / "dismissed").exists():
        st.error(f"The last evaluation {info['state']}: {escape_markdown(info['message'], keep_lines=True)}")
        with st.expander("Job log"):
            st.code(jobs.tail(recent[0]) or "(no output)", language=None)
        if st.button("Dismiss"):
            (recent[0] / "dismissed").touch()
            st.rerun()
    return False


# ---- one evaluation ------------------------------------------------------------------------------------------------


@st.cache_data(max_entries=16, show_spinner="Pairing runs…")
def repaired(eval_id: str, compare_to: str) -> pd.DataFrame:
    """The evaluation's results with paired differences against ``compare_to`` (the engine's results_table)."""
    result = store.load_eval(eval_id)
    meta = result.meta
    if compare_to == meta.get("compare_to"):
        return result.results
    table, _ = results_table(result.per_prompt, meta["run_details"], compare_to, meta["baseline"], meta["judge"])
    return table


def show_eval(eval_id: str) -> None:
    result = store.load_eval(eval_id)
    meta = result.meta
    run_ids = list(result.results.run_id)
    st.caption(
        f"{len(meta['prompt_set']['prompt_ids'])} prompts · baseline: {meta['baseline_description']} · "
        f"judge: {meta['judge']['description']}"
    )
    with st.expander("How these numbers were computed"):
        for key, note in meta.get("notes", {}).items():
            if isinstance(note, str):
                st.markdown(f"**{key}**: {note}")
        st.json(meta.get("settings", {}), expanded=False)

    compare_to = st.selectbox(
        "Paired differences against",
        run_ids,
        index=run_ids.index(meta["compare_to"]) if meta.get("compare_to") in run_ids else 0,
        key="pair_against",
    )
    results = repaired(eval_id, compare_to)
    grouped: dict[tuple[str, ...], list[str]] = {}
    for run_id, problems in evaluation_warnings(result.per_prompt).items():
        grouped.setdefault(tuple(problems), []).append(run_id)
    for problems, flagged in grouped.items():  # one box per kind of problem, however many runs share it
        who = flagged[0] if len(flagged) == 1 else f"{len(flagged)} runs ({', '.join(flagged)})"
        st.warning(f"**{who}**: " + " ".join(problems), icon=":material/warning:")
    image = {"toImageButtonOptions": {"filename": f"{eval_id}-win-rates", "format": "png", "scale": 3}}
    st.plotly_chart(win_rate_chart(results), key="win_rates", config=image)
    if len(results) > 1:
        against = results.set_index("run_id").variant.get(compare_to) or compare_to
        st.plotly_chart(
            figures.paired_figure(results, title=f"Difference vs {against} (points, same prompts)"),
            key="paired",
            config={"toImageButtonOptions": {"filename": f"{eval_id}-paired", "format": "png", "scale": 3}},
        )
    else:
        st.caption("Paired differences need at least two runs in the evaluation.")
    st.dataframe(results[["run_id", *TABLE_COLUMNS]], hide_index=True, column_config=TABLE_COLUMNS)

    csv, html, _ = st.columns([1, 1, 3])
    csv.download_button("Table (.csv)", results.to_csv(index=False), file_name=f"{eval_id}-results.csv", mime="text/csv",
                        icon=":material/download:")
    # include_plotlyjs=True: the file opens offline (plotly.js inside, several MB).
    html.download_button("Chart (.html, offline)", lambda: win_rate_chart(results).to_html(include_plotlyjs=True),
                         file_name=f"{eval_id}-win-rates.html", mime="text/html", icon=":material/download:")
    st.caption("PNG: the camera icon in each chart's toolbar saves it at 3x resolution (server-side PNG export "
               "would need kaleido and a Chrome it drives, which this install does not have).")

    st.subheader("Per prompt")
    per_prompt_view(result.per_prompt, run_ids)


def per_prompt_view(per_prompt: pd.DataFrame, run_ids: list[str]) -> None:
    """One prompt at a time: the run's answer beside the baseline's, or beside another run's."""
    left, middle, right = st.columns([2, 2, 1], vertical_alignment="bottom")
    run_id = left.selectbox("Run", run_ids)
    others = ["baseline", *(other for other in run_ids if other != run_id)]
    against = middle.selectbox("Beside", others, help="The baseline's answer, or another run's answer to the same prompt.")
    outcome = right.segmented_control("Show", ["all", "wins", "losses", "ties"], default="all", required=True)
    rows = per_prompt[per_prompt.run_id == run_id].reset_index(drop=True)
    if against != "baseline":
        theirs = per_prompt[per_prompt.run_id == against].set_index("prompt_id")
        rows = rows.assign(other_output=rows.prompt_id.map(theirs.output), other_preference=rows.prompt_id.map(theirs.preference))
    if outcome != "all":
        value = {"wins": rows.preference > 0.5, "losses": rows.preference < 0.5, "ties": rows.preference == 0.5}[outcome]
        rows = rows[value].reset_index(drop=True)
    if rows.empty:
        st.info("No prompts with this outcome.")
        return
    number = st.slider("Prompt", 1, len(rows), 1) if len(rows) > 1 else 1
    row = rows.iloc[number - 1]
    with st.container(border=True):
        st.markdown(f"**{escape_markdown(row.prompt_id)}** ({escape_markdown(row.dataset)}) · preference for the run over the baseline: **{row.preference:.2f}**")
        st.text(row.instruction)
        mine, other = st.columns(2)
        mine.markdown(f"**{run_id}**")
        mine.text(row.output or "(empty answer)")
        if against == "baseline":
            other.markdown("**Baseline**")
            other.text(row.baseline_output or "(empty answer)")
        else:
            other.markdown(f"**{against}** · preference over the baseline: {row.other_preference:.2f}")
            other.text(row.other_output if isinstance(row.other_output, str) and row.other_output else "(empty answer)")


# ---- page ----------------------------------------------------------------------------------------------------------

st.title("Results")
completed = [run for run in runs.list_runs() if run.state == "completed"]
evaluating = eval_jobs()
evals = store.list_evals()

if not evaluating:
    if completed:
        with st.expander("New evaluation", expanded=evals.empty, icon=":material/add:"):
            eval_form(completed)
    elif evals.empty:
        st.info(
            "No completed runs yet. Train one on the Runs page; then evaluate it here against its base model with "
            "the built-in judge (or `dpo-engine eval RUN_ID --n 32`)."
        )
        st.stop()

if evals.empty:
    st.info("No evaluations yet: start one above. It runs in the background and this page shows its progress.")
    st.stop()

labels = {
    row.eval_id: f"{row.name or row.eval_id} · {row.runs} · {row.created[:16].replace('T', ' ')}"
    for row in evals.itertuples()
}
eval_id = st.selectbox("Evaluation", list(labels), format_func=labels.get)
show_eval(eval_id)
