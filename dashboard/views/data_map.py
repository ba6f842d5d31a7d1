"""Data map: a run's pairs by confidence and variability of their implicit margins over training (cartography).

The engine records the margins (`dpo_engine.training.data_map`) and computes the statistics and regions
(`dpo_engine.margins.data_map.summarize`); this page draws them, lets a box or lasso pick pairs and saves them as a
selection, and opens "why this pair" for a picked pair.
"""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboard.components import escape_markdown
from dashboard.figures import points_trace
from dashboard.pair_view import why_this_pair
from dashboard.state import current_source, dataset_fingerprint, load, load_margins, margins_path
from dpo_engine import runs
from dpo_engine.errors import UserError
from dpo_engine.margins.data_map import region_cutoffs, summarize
from dpo_engine.paths import NAME_RULE, check_name
from dpo_engine.selection.store import Selection, save_selection, selection_path
from dpo_engine.training.data_map import DATA_MAP_FILE, read_data_map

CHART_KEY = "data_map_chart"
SAVED_KEY = "data_map_saved"  # (pair ids, message) of the last save
REGION_KEY = "data_map_region"


def data_map_figure(summary, variability_cut: float, confidence_cut: float, region: str | None = None) -> go.Figure:
    """Confidence (y) against variability (x), coloured by correctness, with the region cut-offs drawn; the other
    regions' points dimmed when ``region`` is taken."""
    highlight = {} if region is None else {"selectedpoints": np.flatnonzero(summary.region.to_numpy() == region).tolist(),
                                           "unselected": {"marker": {"opacity": 0.15}}}
    figure = go.Figure(points_trace(len(summary))(
        x=summary.variability, y=summary.confidence, mode="markers", customdata=summary.pair_id,
        marker={"color": summary.correctness, "colorscale": "RdYlGn", "cmin": 0, "cmax": 1, "size": 7,
                "colorbar": {"title": "correctness"}},
        text=summary.region, hovertemplate="%{customdata}<br>%{text}<br>variability %{x:.3f}<br>"
                                          "confidence %{y:.3f}<extra></extra>",
        **highlight,
    ))
    figure.add_vline(x=variability_cut, line_dash="dash", line_color="grey")
    figure.add_shape(type="line", x0=0, x1=variability_cut, y0=confidence_cut, y1=confidence_cut,
                     line={"dash": "dash", "color": "grey"})
    top, bottom = float(summary.confidence.max()), float(summary.confidence.min())
    for text, x, y in (("easy", variability_cut / 2, top), ("hard", variability_cut / 2, bottom),
                       ("ambiguous", float(summary.variability.max()), (top + bottom) / 2)):
        figure.add_annotation(x=x, y=y, text=f"<b>{text}</b>", showarrow=False, font={"size": 14})
    figure.update_layout(xaxis_title="variability (std of σ(β·margin))", yaxis_title="confidence (mean σ(β·margin))",
                         height=520, margin={"t": 30}, dragmode="lasso")
    return figure


def save_form(ids: list[str], run_id: str, dataset_fp: str) -> None:
    """Name and save the picked pairs as a selection of the current dataset; the confirmation stays while the
    same pairs are picked (opening another pair below reruns the page)."""
    name_column, save_column = st.columns([4, 1], vertical_alignment="bottom")
    name = name_column.text_input("Selection name", value=f"datamap-{run_id}-{len(ids)}", help=NAME_RULE)
    if save_column.button("Save selection", type="primary"):
        selection = Selection(name=name, rule="manual", params={"data_map_run": run_id}, dataset_fingerprint=dataset_fp,
                              pair_ids=ids)
        try:
            path = save_selection(selection, path=selection_path(check_name(name, "selection name")))
        except UserError as error:
            st.error(str(error))
        else:
            st.session_state[SAVED_KEY] = (ids, f"Saved {len(ids):,} pairs as **{escape_markdown(name)}** (`{path.name}`).")
    saved_ids, message = st.session_state.get(SAVED_KEY, (None, None))
    if saved_ids == ids:
        st.success(message)


st.title("Data map")
mapped = [run for run in runs.list_runs() if (run.run_dir / DATA_MAP_FILE).is_file()]
if not mapped:
    st.info("No run has a data map yet. Launch a run with data_map_every > 0 (Runs page): every that many steps it "
            "scores each training pair's implicit margin, and this page maps them.")
    st.stop()
run = next(item for item in mapped if item.run_id == st.selectbox("Run", [item.run_id for item in mapped]))
records = read_data_map(run.run_dir / DATA_MAP_FILE)
summary = summarize(records).dropna(subset=["confidence"])
if summary.empty:
    st.warning("This run's data map has no margins (it had no reference to score against).")
    st.stop()
variability_cut, confidence_cut = region_cutoffs(summary.confidence, summary.variability)
counts = summary.region.value_counts()
st.caption(f"{len(summary):,} pairs over {records.step.nunique()} recorded steps "
           f"({', '.join(map(str, sorted(records.step.unique())[:12]))}); "
           f"easy {counts.get('easy', 0)}, ambiguous {counts.get('ambiguous', 0)}, hard {counts.get('hard', 0)}. "
           f"Ambiguous: the most variable third (variability > {variability_cut:.3f}); the rest split at their median "
           f"confidence {confidence_cut:.3f} into easy and hard.")
# The region control sits under the chart but shapes it (its state is set before the rerun): the other regions dim.
# A box or lasso pick (read first) still wins over a region.
region = st.session_state.get(REGION_KEY)
event = st.plotly_chart(data_map_figure(summary, variability_cut, confidence_cut, region), key=CHART_KEY,
                        on_select="rerun", selection_mode=("points", "box", "lasso"))
ids = [point["customdata"] for point in event.selection.points if point.get("curve_number", 0) == 0]
region = st.segmented_control("Or take a region", ["easy", "ambiguous", "hard"], key=REGION_KEY)
if region and not ids:
    ids = summary.pair_id[summary.region == region].tolist()
source = current_source()
loaded, _ = load(source)
dataset_fp = dataset_fingerprint(source)
if not ids:
    st.caption("Drag a box or a lasso (or click a point) to pick pairs; double-click clears it.")
    st.stop()
st.metric("Picked pairs", f"{len(ids):,}")
save_form(ids, run.run_id, dataset_fp)
if loaded is None:
    st.stop()
path = margins_path(source, dataset_fp)
table, meta = load_margins(path) if path is not None else (loaded.pairs[["pair_id"]], {})
opened = st.selectbox("Why this pair", ids, key="data_map_pair")
why_this_pair(opened, loaded.pairs, table, summary, meta)
