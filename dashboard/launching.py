"""Turning a config built on the Runs page into a ``runs launch`` job: the pairs file, the YAML, the argv."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime

import streamlit as st
import yaml

from dashboard.state import pairs_file
from dpo_engine import jobs
from dpo_engine.paths import workspace_subdir
from dpo_engine.selection.store import export_selection

ALL_PAIRS = "__all__"


@st.cache_resource
def config_fields() -> dict[str, tuple[object, str]]:
    """``{field: (default, help)}`` of `TrainConfig`."""
    from dpo_engine.training.config import TrainConfig

    defaults = TrainConfig()
    return {f.name: (getattr(defaults, f.name), f.metadata.get("help", "")) for f in fields(TrainConfig)}


def subset_file(choice: str, selections: dict, source, loaded, dataset_fp: str) -> str:
    """The training pairs file for a choice: the whole dataset, or a saved selection exported from it."""
    if choice == ALL_PAIRS:
        return pairs_file(source, loaded, dataset_fp)
    selection = selections[choice]
    path = workspace_subdir("subsets") / f"{choice}-{dataset_fp}.jsonl"
    export_selection(selection, loaded.pairs, path)
    return str(path)


def start_launch_job(config: dict, name: str, selection: str | None, tags: tuple[str, ...] = ()) -> None:
    """Write the config and hand it to a ``runs launch`` job (validation and model conversion happen there)."""
    config_path = workspace_subdir("launches") / f"{datetime.now():%Y%m%d-%H%M%S-%f}-{config['loss']}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    argv = ["runs", "launch", str(config_path)]
    argv += ["--name", name] if name else []
    argv += ["--selection", selection] if selection else []
    argv += ["--tags", ",".join(tags)] if tags else []
    jobs.start("launch", argv, progress_file=False)
