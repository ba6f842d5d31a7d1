"""Runs: launch LoRA DPO runs on a saved selection, follow them live, stop, resume, delete.

Runs are engine processes with their own directories (`dpo_engine.runs`): they keep going when the browser
closes and are listed again after a restart. This page only reads their files and sends commands.
"""

from dataclasses import fields
from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.components import escape_markdown
from dashboard.figures import training_curves
from dashboard.state import current_source, dataset_fingerprint, load, pairs_file
from dpo_engine import jobs
from dpo_engine import runs
from dpo_engine.errors import UserError
from dpo_engine.losses.catalog import LOSS_DEFAULTS, LOSS_DOCS, LOSS_NAMES
from dpo_engine.paths import workspace_subdir
from dpo_engine.selection.store import export_selection, list_selections, selection_path
from dpo_engine.training.config import TrainConfig

ALL_PAIRS = "__all__"
FORM_GROUPS = {
    "Optimisation": ("learning_rate", "num_epochs", "max_steps", "batch_size", "gradient_accumulation_steps"),
    "LoRA": ("full_finetune", "lora_r", "lora_alpha", "lora_dropout"),
    "Lengths": ("max_length", "max_prompt_length"),
    "Hardware": ("precision", "device", "gradient_checkpointing", "seed"),
}
CHOICES = {"precision": ["auto", "fp32", "bf16"], "device": ["auto", "cpu", "cuda", "mps"]}


@st.cache_resource
def config_fields() -> dict[str, tuple[object, str]]:
    """``{field: (default, help)}`` of `TrainConfig`."""
    defaults = TrainConfig()
    return {f.name: (getattr(defaults, f.name), f.metadata.get("help", "")) for f in fields(TrainConfig)}


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


def subset_file(choice: str, selections: dict, source, loaded, dataset_fp: str) -> str:
    """The training pairs file for a choice: the whole dataset, or a saved selection exported from it."""
    if choice == ALL_PAIRS:
        return pairs_file(source, loaded, dataset_fp)
    selection = selections[choice]
    # The selection's own (sanitised) file stem, never the raw name: the subset stays inside the workspace.
    path = workspace_subdir("subsets") / f"{selection_path(choice).stem}-{dataset_fp}.jsonl"
    export_selection(selection, loaded.pairs, path)
    return str(path)


def launch_form(source, loaded, dataset_fp: str) -> None:
    """Pick the pairs, the loss and its hyperparameters, LoRA and optimisation settings; start a run."""
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
    with st.form("launch"):
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
        if not st.form_submit_button("Launch run", type="primary"):
            return
    try:
        values["subset"] = subset_file(subset, selections, source, loaded, dataset_fp)
    except UserError as error:
        st.error(str(error))
        return
    try:
        # Field types and bounds are checked here at once (torch-free); the engine's full validation (the model,
        # the data) runs in the launch job, not in the UI process.
        config = TrainConfig.from_dict({**values, "loss": loss, "loss_params": loss_params})
        if not memory_check(config):
            return
        request = runs.LaunchRequest(config=str(runs.save_launch_config(config)), name=name.strip() or None,
                                     selection=subset if subset != ALL_PAIRS else None)
    except UserError as error:
        st.error(str(error))
        return
    jobs.start("launch", request)
    st.rerun()


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
    rows = []
    for run in all_runs:
        last = run.last_metrics or {}
        rows.append({
            "run": run.run_id,
            "state": run.state,
            "progress": run.step / run.total_steps if run.total_steps else 0.0,
            "step": f"{run.step}/{run.total_steps or '?'}",
            "subset": run.subset_name,
            "loss fn": run.loss,
            "loss": last.get("loss"),
            "reward margin": last.get("rewards/margins"),
            "accuracy": last.get("rewards/accuracies"),
            "created": local_time(run.created),
        })
    return pd.DataFrame(rows)


def signature(all_runs: list) -> tuple:
    """What changes the page's layout: the set of runs, which are active, and launches still being validated."""
    launching = any(jobs.status(job_dir)["state"] == "running" for job_dir in jobs.list_jobs("launch")[:5])
    return tuple((run.run_id, run.is_active) for run in all_runs), launching


def live(compare: list[str], chosen: str | None, seen: tuple) -> None:
    """Launch notices, the runs table, overlaid curves and one run's details; ticks while anything is active."""
    all_runs = runs.list_runs()
    if signature(all_runs) != seen:
        st.rerun(scope="app")  # a run appeared, finished or was deleted: rebuild the pickers and the tick rate
    pending_launches()
    if not all_runs:
        return
    st.dataframe(
        runs_frame(all_runs),
        hide_index=True,
        column_config={
            "run": st.column_config.TextColumn(width="medium"),
            "state": st.column_config.TextColumn(width="small"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "loss": st.column_config.NumberColumn(format="%.4f"),
            "reward margin": st.column_config.NumberColumn(format="%.4f"),
            "accuracy": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    metrics = {run_id: frame for run_id in compare if not (frame := runs.read_metrics(run_id)).empty}
    if metrics:
        st.plotly_chart(training_curves(metrics), key="curves")
    elif compare:
        st.caption("No metrics logged yet for the chosen runs: the first record comes after the first step.")
    st.subheader("Run details")
    run_details(next(run for run in all_runs if run.run_id == chosen))


@st.dialog("Delete run?")
def confirm_delete(run_id: str) -> None:
    st.write(f"This deletes **{run_id}**: its directory, checkpoints and trained adapter. It cannot be undone.")
    left, right = st.columns(2)
    if left.button("Delete", type="primary"):
        try:
            runs.delete(run_id)
        except UserError as error:
            st.error(str(error))
            return
        st.rerun()
    if right.button("Cancel"):
        st.rerun()


def run_details(run) -> None:
    """One run: status, actions, log tail and config."""
    st.markdown(f"**{run.run_id}** · {run.state} · step {run.step}/{run.total_steps or '?'} · subset {escape_markdown(run.subset_name)}")
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
        confirm_delete(run.run_id)
    st.code(runs.tail_log(run.run_id, 30) or "(no output yet)", language=None)
    with st.expander("Resolved config"):
        st.json(run.config, expanded=True)


def config_differences(compared: list) -> pd.DataFrame:
    """The resolved-config fields (loss parameters flattened) on which the compared runs differ, one column per run."""
    flat = {}
    for run in compared:
        config = {key: value for key, value in run.config.items() if key not in ("loss_params", "subset")}
        config.update({f"loss_params.{key}": value for key, value in run.config.get("loss_params", {}).items()})
        flat[run.run_id] = {key: str(value) for key, value in config.items()}
    table = pd.DataFrame(flat)
    return table[table.nunique(axis=1, dropna=False) > 1]


# ---- page ----------------------------------------------------------------------------------------------------------

st.title("Runs")
source = current_source()
loaded, _ = load(source)

with st.expander("New run", expanded=not runs.list_runs(), icon=":material/add:"):
    if loaded is None:
        st.error("The current dataset cannot be loaded. Fix it on the Data page.")
    else:
        launch_form(source, loaded, dataset_fingerprint(source))
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
left, right = st.columns([2, 1])
compare = left.multiselect("Runs to plot", ids, default=ids[:3], help="Curves of several runs are overlaid.")
chosen = right.selectbox("Run details for", ids) if ids else None
ticking = seen[1] or any(active for _, active in seen[0])
st.fragment(live, run_every=2 if ticking else None)(compare, chosen, seen)
if len(compare) > 1:
    with st.expander("Config differences between the plotted runs"):
        differences = config_differences([run for run in all_runs if run.run_id in compare])
        if differences.empty:
            st.caption("The plotted runs share every setting.")
        else:
            st.dataframe(differences)
