"""Turning a config built on the Runs page into a ``runs launch`` job: the pairs file and the launch request."""

from __future__ import annotations

from dataclasses import fields

import streamlit as st

from dashboard.state import pairs_file
from dpo_engine import jobs, runs
from dpo_engine.paths import workspace_subdir
from dpo_engine.selection.store import export_selection, selection_path
from dpo_engine.training.config import TrainConfig

ALL_PAIRS = "__all__"


@st.cache_resource
def config_fields() -> dict[str, tuple[object, str]]:
    """``{field: (default, help)}`` of `TrainConfig`."""
    defaults = TrainConfig()
    return {f.name: (getattr(defaults, f.name), f.metadata.get("help", "")) for f in fields(TrainConfig)}


def subset_file(choice: str, selections: dict, source, loaded, dataset_fp: str) -> str:
    """The training pairs file for a choice: the whole dataset, or a saved selection exported from it."""
    if choice == ALL_PAIRS:
        return pairs_file(source, loaded, dataset_fp)
    selection = selections[choice]
    # The selection's own (sanitised) file stem, never the raw name: the subset stays inside the workspace.
    path = workspace_subdir("subsets") / f"{selection_path(choice).stem}-{dataset_fp}.jsonl"
    export_selection(selection, loaded.pairs, path)
    return str(path)


def start_launch_job(config: dict, name: str, selection: str | None, tags: tuple[str, ...] = ()) -> None:
    """Check the config's fields at once (types and bounds, no torch; ``UserError`` otherwise), write it, and hand
    it to a ``runs launch`` job: the model and the data are validated there, not in the UI process."""
    request = runs.LaunchRequest(config=str(runs.save_launch_config(TrainConfig.from_dict(config))),
                                 name=name or None, selection=selection, tags=",".join(tags))
    jobs.start("launch", request)
