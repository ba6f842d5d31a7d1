"""Margins & Select: external vs implicit margin per pair, and the subset to train on."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.components import escape_markdown, pair_browser
from dashboard.pair_view import why_this_pair
from dashboard import figures, margins_cache
from dashboard import selection_address as address
from dashboard.figures import VALIDATION_RINGS, WARMUP_RINGS, Rings, hover_texts, selection_marginals
from dashboard.scoring_form import score_job_panel
from dashboard.state import (
    computed_margins_path,
    current_source,
    dataset_fingerprint,
    load,
    keep_source_in_address,
    load_margins,
    margins_path,
)
from dpo_engine.errors import UserError
from dpo_engine.paths import NAME_RULE, check_name
from dpo_engine.selection.hypotheses import DEFAULT_COLUMNS, SELECTIVE_DPO_TAU
from dpo_engine.selection.naming import default_selection_name
from dpo_engine.selection.rules import (
    DEFAULT_RANDOM_SEED,
    column_stats,
    ids_mask,
    margin_correlations,
    selection_summary,
)
from dpo_engine.selection.store import Selection, export_selection, list_selections, save_selection, selection_path

CHART_KEY = "margin_scatter"
HOVER_TEXT_LIMIT = 10_000  # above this many pairs the hover shows id and margins only (~400 bytes of text per point)
TABLE_ROW_LIMIT = 2_000  # rows of the selected-pairs table sent to the browser
MIRROR_KEY = "scatter_selection"  # {"fingerprint": ..., "ids": [...]}: the box/lasso selection, kept by us
ANCHOR_KEY = "scatter_anchor"  # {"figure": (cache key, colour), "ids": [...]}: the selection drawn into the box/lasso chart
RULE_LABELS = {
    "threshold": "Thresholds",
    "top_k": "Top-k %",
    "manual": "Box / lasso",
    "random": "Random",
    "partition": "Partition",
    "hypothesis": "Hypotheses",
}
# The field's selectors (dpo_engine.selection.hypotheses), with the columns each needs in the margins table.
HYPOTHESIS_LABELS = {
    "smallest_gap": ("Smallest implicit gap (Qi et al.)", ("implicit_margin",)),
    "alignment_potential": ("Alignment potential (Huang et al.)", ("external_margin", "ref_chosen_logps")),
    "medium_band": ("Medium band of one score (Zhang et al.)", ()),
    "lossdiff_irm": ("LossDiff-IRM medium band (Zhang et al.)", ("loss_diff", "irm")),
    "bees_k": ("BeeS over K margin columns", ()),
    "chosen_quality": ("Chosen-only quality", ("chosen_score",)),
    "selective_dpo": ("Selective DPO: easy → hard, hardest τ dropped (Gao et al.)", ("learning_order",)),
}
SCORE_LABELS = {
    "dm_mul": "DM-MUL",
    "dm_add": "DM-ADD",
    "bees": "BeeS",
    "alignment_potential": "Alignment potential",
    "external_margin": "external margin",
    "implicit_margin": "implicit margin",
}
CHART_KINDS = ["points", "binned"]
COLOR_OPTIONS = {
    "Selection": None,
    "DM-MUL": "dm_mul",
    "DM-ADD": "dm_add",
    "BeeS": "bees",
    "Alignment potential": "alignment_potential",
    "Length gap (chosen − rejected tokens)": "length_gap",
    "Chosen length (tokens)": "chosen_tokens",
}
SUMMARY_LABELS = {
    "external_margin": "external margin",
    "implicit_margin": "implicit margin",
    "dm_add": "DM-ADD",
    "dm_mul": "DM-MUL",
    "bees": "BeeS",
    "chosen_tokens": "chosen tokens",
    "rejected_tokens": "rejected tokens",
    "chosen_chars": "chosen characters",
    "rejected_chars": "rejected characters",
}


# ---- the table the page works on -----------------------------------------------------------------------------------


# Cached as resources, not data: st.cache_data would pickle a copy of a 60,000-row table with its texts on every
# rerun. Nothing mutates these results.
@st.cache_resource(max_entries=4, show_spinner=False)
def joined_table(_table: pd.DataFrame, _pairs: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """Margins joined with the pairs' text, plus the derived colour columns. Cached per (margins file, dataset)."""
    text = _pairs[["pair_id", "row", "prompt", "prompt_messages", "chosen", "rejected", "score_chosen", "score_rejected", "warnings"]]
    table = _table.merge(text, on="pair_id", how="inner")
    tokens = table[["chosen_tokens", "rejected_tokens"]]
    if tokens.notna().all(axis=None):
        table["length_gap"] = table.chosen_tokens - table.rejected_tokens
    else:
        table["length_gap"] = table.chosen_chars - table.rejected_chars
    return table


@st.cache_data(max_entries=4, show_spinner=False)
def table_statistics(_table: pd.DataFrame, key: tuple) -> dict:
    """Numbers over the whole table, which no selection changes; cached per (margins file, dataset).

    ``{"columns": column_stats(table), "pearson": r, "spearman": rho}`` (`margin_correlations`).
    """
    return {"columns": column_stats(_table), **margin_correlations(_table)}


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_hover(_table: pd.DataFrame, key: tuple) -> list[str] | None:
    """Hover labels with the pair's text, or None above HOVER_TEXT_LIMIT pairs (lean labels: id and margins)."""
    return hover_texts(_table) if len(_table) <= HOVER_TEXT_LIMIT else None


def provenance(meta: dict, path: Path) -> str:
    """How the margins were computed, from the table's .meta.json."""
    lines = [f"File: `{path}`" + (f", created {meta['created']}" if meta.get("created") else "")]
    for name in ("external", "implicit"):
        part = meta.get(name)
        if isinstance(part, dict):
            details = ", ".join(f"{key}: {value}" for key, value in part.items() if key not in ("description", "source"))
            lines.append(
                f"**{name.capitalize()} margin**: {part.get('source', '?')}. {part.get('description', '')}"
                + (f" ({details})" if details else "")
            )
        else:
            lines.append(f"**{name.capitalize()} margin**: not computed.")
    if meta.get("dropped_count"):
        lines.append(f"**Rows left out**: {meta['dropped_count']:,} ({meta.get('dropped_reason', '')}).")
    return "\n\n".join(lines)


# ---- selection -----------------------------------------------------------------------------------------------------


def mirror_chart_selection(dataset_fp: str) -> None:
    """on_select callback: copy the box/lasso pair ids into our own session key.

    The chart's own state is read-only and resets whenever the figure changes (Streamlit's plotly widget
    identity follows the figure), so the page reads the selection from this mirror, never from the chart.
    """
    points = st.session_state[CHART_KEY].selection.points
    ids = [point["customdata"] for point in points if point.get("curve_number", 0) == 0]
    st.session_state[MIRROR_KEY] = {"fingerprint": dataset_fp, "ids": ids}


def mirrored_ids(dataset_fp: str) -> list[str]:
    mirror = st.session_state.get(MIRROR_KEY)
    return list(mirror["ids"]) if mirror and mirror["fingerprint"] == dataset_fp else []


def anchored_ids(figure_key: tuple, dataset_fp: str) -> list[str]:
    """The pair ids the box/lasso chart's figure marks as selected: fixed while that chart stays on screen.

    Plotly shows a box/lasso selection by itself. Drawing each new one into the figure would change the figure's
    spec, and Streamlit then mounts a new chart: a full plotly.js draw, seconds at 60,000 points. So the figure
    keeps the selection it was first drawn with while the chart is on screen and ``figure_key`` (the figure's
    other inputs) is unchanged. Otherwise (the rule just switched to box/lasso, the page was reopened: Streamlit
    drops a widget's state after a run that did not show it; or the colour or data changed, which redraws the
    chart anyway) it takes the mirrored selection, so the new chart shows what the page counts.
    """
    anchor = st.session_state.get(ANCHOR_KEY)
    if CHART_KEY not in st.session_state or anchor is None or anchor["figure"] != figure_key:
        anchor = {"figure": figure_key, "ids": mirrored_ids(dataset_fp)}
        st.session_state[ANCHOR_KEY] = anchor
    return anchor["ids"]


def range_slider(label: str, values: pd.Series, key: str, saved: str | None = None) -> tuple[float, float, bool]:
    """A range slider over a margin, starting at ``saved`` (``"low,high"`` from the address) when that lies in its
    range; returns (low, high, narrowed)."""
    finite = values[np.isfinite(values)]
    low, high = float(np.floor(finite.min() * 10) / 10), float(np.ceil(finite.max() * 10) / 10)
    high = max(high, low + 0.1)  # one value throughout (e.g. equal scores): a slider needs two distinct ends
    step = max(round((high - low) / 200, 3), 0.001)
    start = address.as_range(saved, low, high) or (low, high)
    chosen = st.slider(label, min_value=low, max_value=high, value=start, step=step, key=key)
    return chosen[0], chosen[1], chosen != (low, high)


def option_index(options: list, saved: str | None, default: int = 0) -> int:
    """The position of ``saved`` (from the address) in ``options``, else ``default``."""
    return options.index(saved) if saved in options else default


def rule_controls(rule: str, table: pd.DataFrame, dataset_fp: str, saved: dict | None = None) -> tuple[dict, dict]:
    """The parameters of a rule: (params for select_pairs, threshold lines to draw). ``saved``: the address's raw
    values for this rule (`selection_address.address_values`), used as the widgets' defaults when they parse."""
    saved = saved or {}
    scores = [name for name in SCORE_LABELS if table[name].notna().any()]
    left, middle, right = st.columns(3)
    if rule == "threshold":
        with left:
            ex_low, ex_high, ex_narrowed = range_slider("External margin between", table.external_margin,
                                                        f"ex-{dataset_fp}", saved.get("ex"))
        with middle:
            im_low, im_high, im_narrowed = range_slider("Implicit margin between", table.implicit_margin,
                                                        f"im-{dataset_fp}", saved.get("im"))
        where = {"external_margin": [ex_low if ex_narrowed else None, ex_high if ex_narrowed else None],
                 "implicit_margin": [im_low if im_narrowed else None, im_high if im_narrowed else None]}
        lines = {column: tuple(bounds) for column, bounds in where.items() if bounds != [None, None]}
        with right:
            st.caption("Pairs whose margins both lie in the ranges. Pairs without a margin are never selected.")
        return {"where": where}, lines
    if rule == "manual":
        left.caption("Drag a box or a lasso on the chart; double-click clears it.")
        return {"pair_ids": mirrored_ids(dataset_fp)}, {}
    percent = right.slider("Share of all pairs (%)", 1, 100, address.as_int(saved.get("pct"), 1, 100) or 10,
                           key=f"pct-{rule}-{dataset_fp}")
    params = {"frac": percent / 100}
    if rule == "top_k":
        params["score"] = left.selectbox("Score", scores, index=option_index(scores, saved.get("score")),
                                         format_func=SCORE_LABELS.get, key=f"score-{dataset_fp}")
        if middle.checkbox("Only pairs with both margins ≥ 0 (BeeS filter)", value=saved.get("pos") == "1",
                           key=f"pos-{dataset_fp}"):
            params["where"] = {"external_margin": [0.0, None], "implicit_margin": [0.0, None]}
    elif rule == "random":
        seed = address.as_int(saved.get("seed"), 0, address.SEED_MAX)
        params["seed"] = int(left.number_input("Seed", value=DEFAULT_RANDOM_SEED if seed is None else seed, step=1,
                                               key=f"seed-{dataset_fp}",
                                               help="Not 42 by default: the warm-up proxy's seed subset is drawn "
                                                    "with 42, and random at 42 would be exactly those pairs."))
    elif rule == "hypothesis":
        params.update(hypothesis_controls(table, dataset_fp, (left, middle), saved))
        if params["rule"] == "selective_dpo":  # its size is tau, the hardest share dropped, not a share kept
            params.pop("frac")
    else:
        params["score"] = left.selectbox("Margin", scores, index=option_index(scores, saved.get("score")),
                                         format_func=SCORE_LABELS.get, key=f"pscore-{dataset_fp}")
        parts = ["top", "mid", "bot"]
        params["part"] = middle.radio("Part", parts, index=option_index(parts, saved.get("part")), horizontal=True,
                                      key=f"part-{dataset_fp}", help="mid: a random sample from the band −τ ≤ margin ≤ τ")
        if params["part"] == "mid":
            tau = address.as_number(saved.get("tau"), 0.0, 1e9)
            params["tau"] = float(middle.number_input("τ", value=1.0 if tau is None else tau, min_value=0.0, step=0.1,
                                                      key=f"tau-{dataset_fp}"))
    return params, {}


def hypothesis_controls(table: pd.DataFrame, dataset_fp: str, columns, saved: dict | None = None) -> dict:
    """A field selector and its own parameters; ``rule`` is the `select_pairs` rule to run. ``saved``: the
    address's raw values (defaults when they parse)."""
    saved = saved or {}
    left, middle = columns
    numeric = [name for name in table.columns if pd.api.types.is_numeric_dtype(table[name]) and table[name].notna().any()
               and name not in ("in_warmup", "in_validation")]
    offered = [rule for rule, (_, needs) in HYPOTHESIS_LABELS.items() if all(column in numeric for column in needs)]
    rule = left.selectbox("Hypothesis", offered, index=option_index(offered, saved.get("hyp")),
                          format_func=lambda name: HYPOTHESIS_LABELS[name][0], key=f"hyp-{dataset_fp}")
    params: dict = {"rule": rule}
    if rule in ("smallest_gap", "medium_band"):
        implicit = numeric.index("implicit_margin") if "implicit_margin" in numeric else 0
        params["score"] = middle.selectbox("Score", numeric, index=option_index(numeric, saved.get("score"), implicit),
                                           key=f"hscore-{dataset_fp}")
    elif rule == "alignment_potential":
        weight = address.as_number(saved.get("w"), 0.0, 1e9)
        params["weight"] = float(middle.number_input("Weight of the implicit term", value=1.0 if weight is None else weight,
                                                     min_value=0.0, step=0.1, key=f"apw-{dataset_fp}"))
    elif rule == "bees_k":
        margins = [name for name in numeric if "margin" in name]
        defaults = address.as_choices(saved.get("cols"), margins) or [
            name for name in DEFAULT_COLUMNS["bees_k"] if name in margins]
        params["scores"] = middle.multiselect("Margin columns (K sources)", margins, default=defaults,
                                              key=f"bees-{dataset_fp}")
    elif rule == "selective_dpo":
        tau = address.as_number(saved.get("tau"), 0.0, 0.9)
        params["tau"] = float(middle.slider("Hardest share dropped (τ)", 0.0, 0.9,
                                            SELECTIVE_DPO_TAU if tau is None else round(round(tau / 0.05) * 0.05, 2),
                                            0.05, key=f"tau-sdpo-{dataset_fp}"))
    return params


def chart_rings(table: pd.DataFrame) -> Rings | None:
    """The pairs to ring on the chart (None without any): LossDiff-IRM's validation pairs, else the warm-up proxy's
    own; with a caption on why they matter."""
    if "crossfit_fold" in table.columns and table["crossfit_fold"].notna().all():
        st.caption("Cross-fitted: no pair scored in-sample (each implicit margin comes from a proxy on another fold).")
        return None
    if "in_validation" in table.columns and table["in_validation"].any():
        validation = table["in_validation"].to_numpy(bool)
        st.caption(f"Ringed: the {validation.sum():,} validation pairs LossDiff-IRM's validation model trained on "
                   "(the warm-up model trained on every other pair). They have no loss_diff or irm, and no "
                   "selection rule picks them.")
        return Rings(validation, VALIDATION_RINGS)
    if "in_warmup" not in table.columns or not table["in_warmup"].any():
        return None
    warmup = table["in_warmup"].to_numpy(bool)
    st.caption(f"Ringed: the {warmup.sum():,} pairs the warm-up proxy trained on. Their implicit margins are "
               f"in-sample (mean {table.implicit_margin[warmup].mean():.2f} against "
               f"{table.implicit_margin[~warmup].mean():.2f} for the rest), so rules on the implicit margin "
               "over-pick them; cross-fitted margins (dpo_engine.training.crossfit) avoid this.")
    return Rings(warmup, WARMUP_RINGS)


def summary_frame(summary: dict) -> pd.DataFrame:
    rows = {
        SUMMARY_LABELS.get(column, column): [stats["selected_mean"], stats["all_mean"], stats["selected_median"], stats["all_median"]]
        for column, stats in summary["columns"].items()
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=["selected mean", "all mean", "selected median", "all median"])


def export_bytes(selection: Selection, pairs: pd.DataFrame, suffix: str):
    """A download callable: the selected pairs as .jsonl or .parquet, written by the engine."""

    def build() -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_selection(selection, pairs, Path(tmp) / f"selection{suffix}")
            return path.read_bytes()

    return build


@st.fragment
def select_section(table: pd.DataFrame, pairs: pd.DataFrame, dataset_fp: str, cache_key: tuple) -> None:
    """Rule, chart, summary, selected pairs, save and export. A fragment: interactions rerun only this part."""
    rule_column, draw_column, color_column = st.columns([3, 1, 1], vertical_alignment="bottom")
    rule = rule_column.segmented_control(
        "Selection rule", list(RULE_LABELS), format_func=RULE_LABELS.get,
        default=address.address_rule(RULE_LABELS) or "threshold", required=True,
        key=f"rule-{dataset_fp}", persist_state="session",
    )
    colors = [label for label, column in COLOR_OPTIONS.items() if column is None or table[column].notna().any()]
    color_names = {label: COLOR_OPTIONS[label] or "selection" for label in colors}
    color_default = address.address_view("color", color_names.values())
    color_label = color_column.selectbox(
        "Colour by", colors,
        index=list(color_names.values()).index(color_default) if color_default else 1,
        key="color_by",
        persist_state="session",
    )
    address.write_key("color", color_names[color_label])
    params, lines = rule_controls(rule, table, dataset_fp, address.address_values(rule))
    address.write_address(address.encode(rule, params))  # a reload or a shared link opens this selection
    rule = params.pop("rule", rule)  # "hypothesis" names the field selector it runs
    whole = table_statistics(table, cache_key)
    try:
        ids, selected, summary = margins_cache.picked(table, cache_key, rule, params, whole["columns"])
    except UserError as error:
        st.error(str(error))
        ids = []
        selected = ids_mask(table, ids)
        summary = selection_summary(table, ids, selected=selected, overall=whole["columns"])

    color_column = COLOR_OPTIONS[color_label]
    color_title = color_label.split(" (")[0]
    chart = rule != "manual" and draw_column.segmented_control(
        "Chart", CHART_KINDS, format_func=str.capitalize, required=True,
        default=address.address_view("chart", CHART_KINDS)
        or ("binned" if len(table) > figures.DENSITY_ABOVE else "points"),
        key=f"draw-{dataset_fp}", persist_state="session",
        help=f"Binned counts the pairs in cells: a new selection draws in under a second at any size (the default "
             f"above {figures.DENSITY_ABOVE:,} pairs). Points draws every pair with its own hover: several seconds "
             "per change at 60,000 pairs. Box / lasso always draws points.",
    )
    if chart:
        address.write_key("chart", chart)
    density = chart == "binned"
    hover = cached_hover(table, cache_key)
    if density:
        st.caption(f"{len(table):,} pairs, binned: grey cells hold pairs, coloured cells selected pairs "
                   f"({'their count' if color_column is None else 'the mean ' + color_title}); hover a cell for its counts.")
    elif len(table) > HOVER_TEXT_LIMIT:
        st.caption(f"With more than {HOVER_TEXT_LIMIT:,} pairs the hover shows the pair id and margins; "
                   "read a pair in full in the table of selected pairs below.")
    figure_inputs = dict(color_column=color_column, color_label=color_title, hover=hover)
    if density:
        st.plotly_chart(margins_cache.chart_figure("binned", table, cache_key, selected=selected, thresholds=lines,
                                                   **figure_inputs))
    elif rule == "manual":  # the same figure, byte for byte, whatever the box/lasso selects: see anchored_ids
        drawn = ids_mask(table, anchored_ids((cache_key, color_label), dataset_fp))
        figure = margins_cache.chart_figure("box", table, cache_key, selected=drawn if drawn.any() else None,
                                            **figure_inputs)
        st.plotly_chart(
            figure, key=CHART_KEY, on_select=lambda: mirror_chart_selection(dataset_fp), selection_mode=("box", "lasso")
        )
    else:
        rings = chart_rings(table)
        clicked = st.plotly_chart(margins_cache.chart_figure("points", table, cache_key, selected=selected, thresholds=lines,
                                                             rings=rings, **figure_inputs),
                                  key="rule_chart", on_select="rerun", selection_mode="points")
        points = [point for point in clicked.selection.points if point.get("curve_number", 0) == 0]
        if points:  # a click on a point opens that pair
            opened = table[table.pair_id.astype(str) == str(points[0]["customdata"])]
            if not opened.empty:
                why_this_pair(opened.iloc[0]["pair_id"], pairs, table, meta=meta)
        else:
            st.caption("Click a point to open its pair.")

    size, share, pearson, spearman = st.columns(4)
    size.metric("Selected pairs", f"{summary['size']:,}")
    share.metric("Share of dataset", f"{summary['share']:.1%}")
    pearson.metric("Pearson r (external, implicit)", "–" if whole["pearson"] is None else f"{whole['pearson']:.3f}")
    spearman.metric("Spearman ρ", "–" if whole["spearman"] is None else f"{whole['spearman']:.3f}")

    if not ids:
        st.info("Nothing selected yet." if rule == "manual" else "No pair passes this rule.")
        return
    save_and_export(rule, params, ids, dataset_fp, pairs)
    if rule == "manual":
        st.plotly_chart(selection_marginals(table, selected))
    st.dataframe(summary_frame(summary).style.format("{:.3g}", na_rep="–"))

    st.subheader("Selected pairs")
    chosen = table[selected]
    if len(chosen) > TABLE_ROW_LIMIT:  # the browser gets every row it shows: keep the table light at any scale
        st.caption(f"Showing the first {TABLE_ROW_LIMIT:,} of {len(chosen):,} selected pairs; "
                   "save or export the selection for all of them.")
        chosen = chosen.iloc[:TABLE_ROW_LIMIT]
    pair_browser(chosen, ["pair_id", "prompt", "external_margin", "implicit_margin", "dm_mul"], key="selected_pairs",
                 ranked_in=table, ranked_key=cache_key)


def save_and_export(rule: str, params: dict, ids: list[str], dataset_fp: str, pairs: pd.DataFrame) -> None:
    """Name, save and download the selection, right below its count. The default name follows the rule and
    its parameters, and is renewed when they change (a name the user typed stays until then)."""
    loaded, _ = load(current_source())  # cached: how these pairs were loaded goes with the selection
    selection = Selection(name="", rule=rule, params=params, dataset_fingerprint=dataset_fp, pair_ids=ids,
                          provenance=loaded.report.dropped_provenance())
    default = default_selection_name(rule, params, len(ids))
    if st.session_state.get("selection_name_default") != default:
        st.session_state["selection_name_default"] = st.session_state["selection_name"] = default
    name_column, overwrite_column, save_column, jsonl, parquet = st.columns([3, 1, 1, 1, 1], vertical_alignment="bottom")
    name = name_column.text_input("Selection name", key="selection_name", help=NAME_RULE)
    overwrite = overwrite_column.checkbox("Overwrite", help="replace a saved selection of the same name")
    if save_column.button("Save selection", type="primary"):
        selection.name = name
        try:
            path = save_selection(selection, path=selection_path(check_name(name, "selection name")),
                                  overwrite=overwrite)
        except UserError as error:
            st.error(str(error))
        else:
            dropped = selection.provenance.get("dropped_count")
            st.success(f"Saved {len(ids):,} pairs as **{escape_markdown(name)}** (`{path.name}`). "
                       + (f"It records the {dropped:,} invalid source rows left out when loading. " if dropped else "")
                       + "Train on it from the Runs page.")
    selection.name = name or "selection"
    jsonl.download_button("Download .jsonl", export_bytes(selection, pairs, ".jsonl"), file_name=f"{selection.name}.jsonl",
                          mime="application/jsonl", icon=":material/download:")
    parquet.download_button("Download .parquet", export_bytes(selection, pairs, ".parquet"), file_name=f"{selection.name}.parquet",
                            mime="application/octet-stream", icon=":material/download:")
    saved = list_selections()
    if saved:
        st.caption("Saved selections: " + ", ".join(f"**{escape_markdown(item.name)}** ({len(item.pair_ids):,}"
                                                    + dropped_note(item) + ")" for item in saved[:12]))


def dropped_note(selection: Selection) -> str:
    """The selection's provenance in a few words: the invalid source rows left out when its pairs were loaded."""
    dropped = selection.provenance.get("dropped_count")
    if not dropped:
        return ""
    rows = ", ".join(map(str, selection.provenance.get("dropped_rows", [])[:5]))
    more = ", …" if dropped > 5 else ""
    return f"; {dropped:,} invalid rows left out: {rows}{more}"

# ---- page ----------------------------------------------------------------------------------------------------------

st.title("Margins & Select")
source = current_source()
loaded, report = load(source)
if loaded is None:
    st.error("The current dataset cannot be loaded. Fix it on the Data page.")
    st.page_link("views/data.py", label="Go to Data", icon=":material/table_view:")
    st.stop()
pairs = loaded.pairs
dataset_fp = dataset_fingerprint(source)
out_path = computed_margins_path(dataset_fp)
path = margins_path(source, dataset_fp)
has_scores = bool(pairs.score_chosen.notna().any())

if path is None:
    st.info(
        f"No margins yet for **{source.label}** ({len(pairs):,} pairs). Compute them below: the job runs in the "
        "background (closing the browser does not stop it) and this page shows its progress. From a terminal:\n\n"
        f"`dpo-engine score {source.source} --out {out_path}`"
    )
    score_job_panel(source, loaded, dataset_fp, has_scores)
    st.stop()

table, meta = load_margins(path)
keep_source_in_address(source)  # with the rule's keys (select_section), the address opens this selection
st.caption(f"**{escape_markdown(source.label)}**: {len(table):,} pairs with margins")
with st.expander("How these margins were computed"):
    st.markdown(provenance(meta, path))
    if meta.get("dataset_fingerprint") not in (None, dataset_fp):
        st.warning("These margins were computed on a different version of the data; pairs missing from it are left out.")
    st.markdown("**Recompute** (writes a new table for this dataset in the workspace):")
    score_job_panel(source, loaded, dataset_fp, has_scores)

if table[["external_margin", "implicit_margin"]].isna().all().any():
    st.warning("This table lacks the external or the implicit margin. Recompute with both sources to plot and select.")
    st.stop()

cache_key = (str(path), path.stat().st_mtime, dataset_fp)
select_section(joined_table(table, pairs, cache_key), pairs, dataset_fp, cache_key)
