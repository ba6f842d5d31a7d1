"""Runs: launch LoRA DPO runs and sweeps on saved selections, follow them live, tag, filter, stop, resume, delete.

Runs are engine processes with their own directories (`dpo_engine.runs`): they keep going when the browser
closes and are listed again after a restart. This page only reads their files and sends commands.
"""

import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.components import confirmed, escape_markdown
from dashboard.figures import training_curves
from dashboard.launching import ALL_PAIRS, config_fields, start_launch_job, subset_file
from dashboard.state import current_source, dataset_fingerprint, load
from dashboard.sweeps import config_differences, sweep_form, sweep_groups
from dpo_engine import jobs, progress
from dpo_engine.errors import UserError
from dpo_engine.losses.catalog import LOSS_DEFAULTS, LOSS_DOCS, LOSS_NAMES
from dpo_engine import runs
from dpo_engine.runs.annotations import Annotations, parse_tags, read_annotations, write_annotations
from dpo_engine.selection.store import list_selections, load_selection
from dpo_engine.training.config import TrainConfig

FORM_GROUPS = {
    "Optimisation": ("learning_rate", "num_epochs", "max_steps", "batch_size", "gradient_accumulation_steps"),
    "LoRA": ("full_finetune", "lora_r", "lora_alpha", "lora_dropout"),
    "Lengths": ("max_length", "max_prompt_length"),
    "Hardware": ("precision", "device", "num_processes", "gradient_checkpointing", "seed"),
}
CHOICES = {"precision": ["auto", "fp32", "bf16"], "device": ["auto", "cpu", "cuda", "mps"]}


def local_time(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else ""


# ---- launching -------------------------------------------------------------------------------------------------


def config_input(name: str, default, help_text: str):
    """One TrainConfig field as a widget of its type, starting at the engine's default."""
    if name in CHOICES:
        return st.selectbox(name, CHOICES[name], index=CHOICES[name].index(default), help=help_text)
    if isinstance(default, bool):
        return st.checkbox(name, value=default, help=help_text)
    if isinstance(default, int):
        return int(st.number_input(name, value=default, step=1, help=help_text))
    if isinstance(default, float):
        return st.number_input(name, value=default, format="%g", help=help_text)
    return st.text_input(name, value=str(default), help=help_text)


def launch_form(source, loaded, dataset_fp: str) -> None:
    """Pick the pairs, the loss and its hyperparameters, LoRA and optimisation settings; review, then start a run.

    Enter in a field does not submit (``enter_to_submit=False``); "Review launch" shows what would start, and
    only "Launch" starts it.
    """
    selections = {item.name: item for item in list_selections() if item.dataset_fingerprint == dataset_fp}
    choices = [*selections, ALL_PAIRS]
    subset = st.selectbox(
        "Training pairs",
        choices,
        format_func=lambda name: f"all {len(loaded.pairs):,} pairs of {source.label}" if name == ALL_PAIRS
        else f"selection {name} ({len(selections[name].pair_ids):,} pairs, rule {selections[name].rule})",
        help="Saved selections of the current dataset (Margins & Select page), or the whole dataset as a baseline.",
    )
    if not selections:
        st.caption("No saved selection for this dataset yet: save one on the Margins & Select page.")
    loss = st.selectbox("Loss", LOSS_NAMES, help="Each loss takes its own hyperparameters; defaults are the papers'.")
    st.caption(LOSS_DOCS[loss])
    spec = config_fields()
    with st.form("launch", enter_to_submit=False):
        st.markdown(f"**{loss} hyperparameters**")
        loss_params = {}
        columns = st.columns(4)
        for column, (name, default) in zip(columns, LOSS_DEFAULTS[loss].items()):
            loss_params[name] = column.number_input(name, value=float(default), format="%g", help=f"paper default: {default:g}")
        values = {"model": config_input("model", *spec["model"])}
        for column, (group, names) in zip(st.columns(len(FORM_GROUPS)), FORM_GROUPS.items()):
            with column:
                st.markdown(f"**{group}**")
                values.update({name: config_input(name, *spec[name]) for name in names})
        if "launch_memory" in st.session_state:
            st.caption(st.session_state["launch_memory"])
        name = st.text_input("Run name (optional)", placeholder=f"{loss}-{subset if subset != ALL_PAIRS else 'all'}")
        if st.form_submit_button("Review launch", type="primary") and checked_launch(values, loss, loss_params):
            n_pairs = len(loaded.pairs) if subset == ALL_PAIRS else len(selections[subset].pair_ids)
            st.session_state["pending_launch"] = {
                "config": {**values, "loss": loss, "loss_params": loss_params}, "subset": subset,
                "name": name.strip(), "n_pairs": n_pairs,
            }
    pending = st.session_state.get("pending_launch")
    if pending:
        review_launch(pending, selections, source, loaded, dataset_fp)


def launch_summary(pending: dict) -> str:
    """One line: what "Launch" would start, with its time when a finished run of the same shape measured it."""
    config = pending["config"]
    steps = progress.planned_steps(pending["n_pairs"], config["batch_size"], config["gradient_accumulation_steps"],
                                   config["num_epochs"], config["max_steps"])
    pairs = "all pairs" if pending["subset"] == ALL_PAIRS else f"selection {pending['subset']}"
    params = ", ".join(f"{key} {value:g}" for key, value in config["loss_params"].items())
    return (f"{config['model']} · {pairs} ({pending['n_pairs']:,} pairs) · {config['loss']} ({params}) · {steps} steps · "
            f"lr {config['learning_rate']:g} · batch {config['batch_size']} × {config['gradient_accumulation_steps']}"
            f" · {config['device']} {config['precision']} · {expected_time(config, steps)}")


def expected_time(config: dict, steps: int) -> str:
    """"time ≈ …" from the newest completed run with the same model, batch and lengths, else when it is known."""
    shape = ("model", "batch_size", "gradient_accumulation_steps", "max_length", "device", "precision")
    for run in runs.list_runs():
        rate = progress.measured_seconds_per_step(run.status) if run.state == "completed" else None
        if rate is not None and all(run.config.get(key) == config[key] for key in shape):
            return f"time ≈ {progress.format_duration(rate * steps)} (at {rate:.2g} s/step, as {run.run_id} took)"
    return "time: an ETA appears once its first steps are measured"


def review_launch(pending: dict, selections: dict, source, loaded, dataset_fp: str) -> None:
    """The summary with Launch / Cancel; an identical launch in the last seconds is not started twice."""
    subset = pending["subset"]
    options = {**pending["config"], "subset": subset, "name": pending["name"]}
    if not confirmed("pending_launch", "Launch", "run", options, f"**Will launch:** {launch_summary(pending)}"):
        return
    try:
        config = {**pending["config"], "subset": subset_file(subset, selections, source, loaded, dataset_fp)}
    except UserError as error:
        st.error(str(error))
        return
    try:
        start_launch_job(config, pending["name"], None if subset == ALL_PAIRS else subset)
    except UserError as error:
        st.error(str(error))
        return
    st.rerun()


def checked_launch(values: dict, loss: str, loss_params: dict) -> bool:
    """The form's fields checked at once (types and bounds, torch-free) and its memory estimate; False with the
    reason shown when the launch would be refused."""
    try:
        config = TrainConfig.from_dict({**values, "loss": loss, "loss_params": loss_params})
    except UserError as error:
        st.error(str(error))
        return False
    return memory_check(config)


def memory_check(config: TrainConfig) -> bool:
    """Show the launch's memory estimate; False (and the reason) when it will not fit the device."""
    from dpo_engine.training.memory import GIB, check_fits, launch_estimate

    try:
        report = launch_estimate(config)
        if report is None:
            st.session_state["launch_memory"] = "Memory estimate: after the model is first loaded."
            return True
        estimate, device, available = report
        check_fits(estimate, available)
    except UserError as error:
        st.error(f"Not launched: {error}")
        return False
    st.session_state["launch_memory"] = (f"Memory estimate, at most (pairs cut to max_length): {estimate.describe()}; "
                                         f"{device} has {available / GIB:.1f} GiB.")
    return True


def pending_launches() -> None:
    """Launch jobs still validating, and the error of any that failed (the run was not created)."""
    for job_dir in jobs.list_jobs("launch")[:5]:
        info = jobs.status(job_dir)
        config = Path(str((info.get("options") or {}).get("config", "?"))).name
        if info["state"] == "running":
            st.info(f"Validating and creating the run for {escape_markdown(config)}…", icon=":material/hourglass_top:")
        elif info["state"] == "failed" and not (job_dir / "dismissed").exists():
            with st.container(border=True):
                st.error(f"Launching {escape_markdown(config)} failed: {escape_markdown(info['message'], keep_lines=True)}")
                if st.button("Dismiss", key=f"dismiss-{job_dir.name}"):
                    (job_dir / "dismissed").touch()
                    st.rerun()


# ---- following runs ----------------------------------------------------------------------------------------------


def runs_frame(all_runs: list) -> pd.DataFrame:
    """One row per run: state, progress with its ETA, tags, sweep and the last logged metrics."""
    rows, now = [], time.time()
    for run in all_runs:
        last = run.last_metrics or {}
        notes = read_annotations(run.run_dir)
        estimate = progress.from_run_status(run.status, now)
        rows.append({
            "run": run.run_id,
            "state": run.state,
            "progress": estimate.fraction,
            "step": progress.describe(estimate, "step") if run.is_active else f"{run.step}/{run.total_steps or '?'}",
            "subset": run.subset_name,
            "loss fn": run.loss,
            "tags": ", ".join(tag for tag in notes.tags if tag != f"sweep:{notes.sweep}"),
            "sweep": notes.sweep or "",
            "loss": last.get("loss"),
            "reward margin": last.get("rewards/margins"),
            "accuracy": last.get("rewards/accuracies"),
            "created": local_time(run.created),
        })
    return pd.DataFrame(rows)


def filtered(frame: pd.DataFrame, filters: dict) -> pd.DataFrame:
    """The runs matching the search text (in id, subset, tags or sweep) and every non-empty filter."""
    keep = pd.Series(True, index=frame.index)
    if filters["search"]:
        text = frame[["run", "subset", "tags", "sweep"]].agg(" ".join, axis=1).str.lower()
        keep &= text.str.contains(filters["search"].lower(), regex=False)
    for column, chosen in (("state", filters["states"]), ("loss fn", filters["losses"]), ("subset", filters["subsets"])):
        if chosen:
            keep &= frame[column].isin(chosen)
    if filters["tags"]:
        keep &= frame.tags.str.split(", ").apply(lambda tags: bool(set(tags) & set(filters["tags"])))
    return frame[keep]


def signature(all_runs: list) -> tuple:
    """What changes the page's layout: the set of runs, which are active, and launches still being validated."""
    launching = any(jobs.status(job_dir)["state"] == "running" for job_dir in jobs.list_jobs("launch")[:5])
    return tuple((run.run_id, run.is_active) for run in all_runs), launching


def live(compare: list[str], chosen: str | None, seen: tuple, filters: dict, curves: dict) -> None:
    """Launch notices, the runs table, sweeps, overlaid curves and one run's details; ticks while anything is active."""
    all_runs = runs.list_runs()
    if signature(all_runs) != seen:
        st.rerun(scope="app")  # a run appeared, finished or was deleted: rebuild the pickers and the tick rate
    pending_launches()
    if not all_runs:
        return
    frame = runs_frame(all_runs)
    st.dataframe(
        filtered(frame, filters),
        hide_index=True,
        column_config={
            "run": st.column_config.TextColumn(width="medium"),
            "state": st.column_config.TextColumn(width="small"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "step": st.column_config.TextColumn("step · rate · ETA", width="medium"),
            "loss": st.column_config.NumberColumn(format="%.4f"),
            "reward margin": st.column_config.NumberColumn(format="%.4f"),
            "accuracy": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    sweep_groups(all_runs, frame)
    metrics = {run_id: frame for run_id in compare if not (frame := runs.read_metrics(run_id)).empty}
    if metrics:
        st.plotly_chart(training_curves(metrics, curves["smoothing"], curves["log_loss"]), key="curves")
    elif compare:
        st.caption("No metrics logged yet for the chosen runs: the first record comes after the first step.")
    st.subheader("Run details")
    run_details(next(run for run in all_runs if run.run_id == chosen))


@st.dialog("Delete runs?")
def confirm_delete(run_ids: list[str]) -> None:
    what = f"**{run_ids[0]}**" if len(run_ids) == 1 else f"**{len(run_ids)} runs** ({', '.join(run_ids)})"
    st.write(f"This deletes {what}: directories, checkpoints and trained adapters. It cannot be undone.")
    left, right = st.columns(2)
    if left.button("Delete", type="primary"):
        for run_id in run_ids:
            try:
                runs.delete(run_id)
            except UserError as error:
                st.error(str(error))
                return
        st.rerun()
    if right.button("Cancel"):
        st.rerun()


def dropped_rows_note(selection_name: str | None) -> str | None:
    """What the run's selection records about dataset rows left out when it was made (its provenance), if any."""
    if not selection_name:
        return None
    try:
        provenance = load_selection(selection_name).provenance
    except (UserError, OSError, ValueError):  # the selection was deleted or is unreadable: nothing to add
        return None
    if not provenance.get("dropped_count"):
        return None
    return (f"Selection **{escape_markdown(selection_name)}** was made with {provenance['dropped_count']:,} rows of its "
            f"dataset left out: {escape_markdown(provenance.get('dropped_reason', ''))}.")


def run_details(run) -> None:
    """One run: status with rate and ETA, actions, tags and notes, metrics CSV, log tail and config."""
    st.markdown(f"**{run.run_id}** · {run.state} · step {run.step}/{run.total_steps or '?'} · subset {escape_markdown(run.subset_name)}")
    if run.is_active:
        st.caption(progress.describe(progress.from_run_status(run.status, time.time()), "step"))
    dropped = dropped_rows_note(run.selection_name)
    if dropped:
        st.caption(dropped)
    resolved = (run.status.get("summary") or {}).get("precision")
    if resolved and run.config.get("precision") != resolved:
        st.caption(f"precision {run.config.get('precision')} resolved to **{resolved}** on this device")
    if run.message:
        (st.error if run.state in ("failed", "corrupt") else st.caption)(escape_markdown(run.message, keep_lines=True))
    actions = st.container(horizontal=True)
    if run.is_active and actions.button("Stop", icon=":material/stop:"):
        # `runs stop` waits for the checkpoint: a job, so this page does not block.
        jobs.start("stop", runs.StopRequest(run_id=run.run_id))
        st.toast("Stopping: the run finishes its step and writes a checkpoint.")
    if run.state in ("stopped", "failed") and actions.button("Resume", icon=":material/play_arrow:"):
        try:
            runs.resume(run.run_id)
        except UserError as error:
            st.error(str(error))
        st.rerun()
    if not run.is_active and actions.button("Delete", icon=":material/delete:"):
        confirm_delete([run.run_id])
    metrics = runs.read_metrics(run.run_id)
    if not metrics.empty:
        actions.download_button("Metrics (.csv)", metrics.to_csv(index=False), file_name=f"{run.run_id}-metrics.csv",
                                mime="text/csv", icon=":material/download:")
    st.code(runs.tail_log(run.run_id, 30) or "(no output yet)", language=None)
    with st.expander("Resolved config"):
        st.json(run.config, expanded=True)


def annotation_form(run) -> None:
    """Tags and notes of one run, saved to its directory on the button (Enter does not save)."""
    current = read_annotations(run.run_dir)
    with st.form(f"annotations-{run.run_id}", enter_to_submit=False, border=False):
        tags = st.text_input("Tags", ", ".join(current.tags), help="Comma-separated, e.g. baseline, lr-sweep")
        notes = st.text_area("Notes", current.notes, height=80)
        if not st.form_submit_button("Save tags and notes"):
            return
    try:
        write_annotations(run.run_dir, Annotations(tags=parse_tags(tags), notes=notes))
    except UserError as error:
        st.error(str(error))
        return
    st.toast(f"Saved tags and notes of {run.run_id}.")


@st.dialog("Stop runs?")
def confirm_stop(run_ids: list[str]) -> None:
    st.write(f"Stop **{len(run_ids)}** runs? Each finishes its step and writes a checkpoint; resume them later.")
    st.caption(", ".join(run_ids))
    left, right = st.columns(2)
    if left.button("Stop them", type="primary"):
        for run_id in run_ids:
            jobs.start("stop", ["runs", "stop", run_id], progress_file=False)
        st.rerun()
    if right.button("Cancel"):
        st.rerun()


def bulk_actions(all_runs: list) -> None:
    """Stop or delete several runs at once, each after a confirmation."""
    ids = st.multiselect("Runs for a bulk action", [run.run_id for run in all_runs], key="bulk_runs")
    active = [run.run_id for run in all_runs if run.run_id in ids and run.is_active]
    finished = [run.run_id for run in all_runs if run.run_id in ids and not run.is_active]
    stop, delete = st.columns([1, 5])
    if stop.button(f"Stop {len(active)}", disabled=not active, icon=":material/stop:"):
        confirm_stop(active)
    if delete.button(f"Delete {len(finished)}", disabled=not finished, icon=":material/delete:"):
        confirm_delete(finished)


# ---- page ----------------------------------------------------------------------------------------------------------

st.title("Runs")
source = current_source()
loaded, _ = load(source)

with st.expander("New run", expanded=not runs.list_runs(), icon=":material/add:"):
    if loaded is None:
        st.error("The current dataset cannot be loaded. Fix it on the Data page.")
    else:
        launch_form(source, loaded, dataset_fingerprint(source))
with st.expander("New sweep", icon=":material/grid_on:"):
    # Built only on request: its fields share names with the New-run form's, and most visits need neither.
    if loaded is not None and st.toggle("Plan a sweep", key="plan_sweep"):
        sweep_form(source, loaded, dataset_fingerprint(source))
all_runs = runs.list_runs()
seen = signature(all_runs)
if not all_runs and not seen[1]:
    pending_launches()
    st.info(
        "No runs yet. Save a selection on the Margins & Select page, then launch a run with the form above "
        "(or `dpo-engine runs launch CONFIG.yaml`). Runs keep going when the browser closes."
    )
    st.stop()

ids = [run.run_id for run in all_runs]
search, states, losses, subsets, tags = st.columns([2, 1, 1, 1, 1])
filters = {
    "search": search.text_input("Search runs", placeholder="run id, subset, tag or sweep"),
    "states": states.multiselect("State", sorted({run.state for run in all_runs})),
    "losses": losses.multiselect("Loss", sorted({run.loss for run in all_runs})),
    "subsets": subsets.multiselect("Selection", sorted({run.subset_name for run in all_runs})),
    "tags": tags.multiselect("Tag", sorted({tag for run in all_runs for tag in read_annotations(run.run_dir).tags})),
}
left, middle, right = st.columns([3, 1, 2])
compare = left.multiselect("Runs to plot", ids, default=ids[:3], help="Curves of several runs are overlaid.")
curves = {
    "smoothing": middle.slider("Smoothing (EMA)", 0.0, 0.99, 0.0, 0.01, help="Share of the past in each point, as in W&B."),
    "log_loss": middle.checkbox("Log loss axis", help="For losses on different scales (IPO ~25 next to DPO's 0.69)."),
}
chosen = right.selectbox("Run details for", ids) if ids else None
ticking = seen[1] or any(active for _, active in seen[0])
st.fragment(live, run_every=2 if ticking else None)(compare, chosen, seen, filters, curves)
with st.expander("Tags and notes of " + str(chosen), icon=":material/sell:"):
    annotation_form(next(run for run in all_runs if run.run_id == chosen))
with st.expander("Bulk stop / delete", icon=":material/checklist:"):
    bulk_actions(all_runs)
if len(compare) > 1:
    with st.expander("Config differences between the plotted runs"):
        differences = config_differences([run for run in all_runs if run.run_id in compare])
        if differences.empty:
            st.caption("The plotted runs share every setting.")
        else:
            st.dataframe(differences)
