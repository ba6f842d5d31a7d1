"""The Runs page's sweeps: a form for a grid over hyperparameters and selections, and each sweep as one group.

The grid is expanded by the engine (`dpo_engine.runs.sweeps`); every point becomes a ``runs launch`` job whose
run is tagged ``sweep:<id>``. Runs wait queued for their device, so a sweep trains one run after another.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import streamlit as st

from dashboard.components import confirmed

from dashboard.launching import ALL_PAIRS, config_fields, start_launch_job, subset_file
from dashboard.sweep_figures import sweep_parcoords
from dpo_engine.errors import UserError
from dpo_engine.losses.catalog import LOSS_DEFAULTS, LOSS_NAMES
from dpo_engine.runs.annotations import SWEEP_TAG_PREFIX
from dpo_engine.runs.sweeps import expand_sweep, parse_values
from dpo_engine.selection.store import list_selections

FIXED_FIELDS = ("model", "max_steps", "batch_size", "max_length", "max_prompt_length", "device")
SWEPT_FIELDS = ("learning_rate", "num_epochs", "lora_r", "seed")
FINAL_METRICS = {"loss": "final loss", "reward margin": "final reward margin", "accuracy": "final accuracy"}


def sweep_form(source, loaded, dataset_fp: str) -> None:
    """Selections x comma-separated values per field; "Review sweep" lists the runs, "Launch sweep" starts them."""
    selections = {item.name: item for item in list_selections() if item.dataset_fingerprint == dataset_fp}
    picked = st.multiselect("Selections to sweep over", [*selections, ALL_PAIRS], default=list(selections)[:1],
                            format_func=lambda name: "all pairs" if name == ALL_PAIRS else name, key="sweep_selections")
    loss = st.selectbox("Loss", LOSS_NAMES, key="sweep_loss")
    spec = config_fields()
    with st.form("sweep", enter_to_submit=False):
        st.markdown("**Values to sweep** (comma-separated; empty = the default)")
        texts = {}
        swept = [*SWEPT_FIELDS, *(f"loss_params.{name}" for name in LOSS_DEFAULTS[loss])]
        for column, name in zip(st.columns(len(swept)), swept):
            texts[name] = column.text_input(name, placeholder=str(default_of(name, loss, spec)), key=f"sweep-{name}")
        st.markdown("**Fixed for every run**")
        fixed = {name: widget(column, name, spec) for column, name in zip(st.columns(len(FIXED_FIELDS)), FIXED_FIELDS)}
        if st.form_submit_button("Review sweep", type="primary"):
            try:
                grid = {name: parse_values(name, text, default_of(name, loss, spec)) for name, text in texts.items()}
                base = {**{name: default for name, (default, _) in spec.items()}, **fixed, "loss": loss,
                        "loss_params": dict(LOSS_DEFAULTS[loss])}
                st.session_state["pending_sweep"] = expand_sweep(base, grid, picked)
            except UserError as error:
                st.error(str(error))
    if st.session_state.get("pending_sweep"):
        review_sweep(st.session_state["pending_sweep"], selections, source, loaded, dataset_fp)


def default_of(name: str, loss: str, spec: dict):
    if name.startswith("loss_params."):
        return float(LOSS_DEFAULTS[loss][name.removeprefix("loss_params.")])
    return spec[name][0]


def widget(column, name: str, spec: dict):
    default, help_text = spec[name]
    if isinstance(default, int) and not isinstance(default, bool):
        return int(column.number_input(name, value=default, step=1, help=help_text, key=f"sweep-fixed-{name}"))
    return column.text_input(name, str(default), help=help_text, key=f"sweep-fixed-{name}")


def review_sweep(points: list, selections: dict, source, loaded, dataset_fp: str) -> None:
    """The runs the sweep would start, then Launch / Cancel."""
    def summary() -> None:
        st.markdown(f"**Will launch {len(points)} runs** ({points[0].config['loss']}, {points[0].config['model']}), "
                    "queued one after another on their device:")
        st.dataframe(pd.DataFrame({"run": [point.label for point in points]}), hide_index=True)

    options = {"points": [(point.selection, point.config) for point in points]}
    if not confirmed("pending_sweep", "Launch sweep", "sweep", options, summary):
        return
    sweep_id = f"sw{datetime.now():%m%d%H%M%S}"
    try:
        for number, point in enumerate(points, start=1):
            config = {**point.config, "subset": subset_file(point.selection, selections, source, loaded, dataset_fp)}
            selection = None if point.selection == ALL_PAIRS else point.selection
            start_launch_job(config, f"{sweep_id}-{number:02d}", selection, (f"{SWEEP_TAG_PREFIX}{sweep_id}",))
    except UserError as error:
        st.error(str(error))
        return
    st.rerun()


def sweep_groups(all_runs: list, frame: pd.DataFrame) -> None:
    """Each sweep as one group: its runs, the values that differ between them, and their final metrics."""
    for sweep_id, rows in frame[frame.sweep != ""].groupby("sweep", sort=False):
        members = [run for run in all_runs if run.run_id in set(rows.run)]
        completed = int((rows.state == "completed").sum())
        with st.expander(f"Sweep {sweep_id} · {len(rows)} runs · {completed} completed", icon=":material/grid_on:"):
            differences = config_differences(members).T
            table = rows.set_index("run")[["state", "subset", *FINAL_METRICS]].rename(columns=FINAL_METRICS)
            table = table.join(differences.drop(columns=["name"], errors="ignore"))
            settings = [column for column in ("subset", *differences.columns) if column in table.columns
                        and column not in ("name", "state") and table[column].nunique(dropna=False) > 1]
            if len(table) > 1:
                st.plotly_chart(sweep_parcoords(table, settings, list(FINAL_METRICS.values())),
                                key=f"sweep-parcoords-{sweep_id}")
                st.caption("One line per run: the settings that differ, then its final metrics; drag along an axis "
                           "to pick out the runs in a range. Colour: the final loss.")
            st.dataframe(table, key=f"sweep-{sweep_id}")


def config_differences(compared: list) -> pd.DataFrame:
    """The resolved-config fields (loss parameters flattened) on which the compared runs differ, one column per run."""
    flat = {}
    for run in compared:
        config = {key: value for key, value in run.config.items() if key not in ("loss_params", "subset")}
        config.update({f"loss_params.{key}": value for key, value in run.config.get("loss_params", {}).items()})
        flat[run.run_id] = {key: str(value) for key, value in config.items()}
    table = pd.DataFrame(flat)
    return table[table.nunique(axis=1, dropna=False) > 1]
