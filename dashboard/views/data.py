"""Data: choose the preference pairs, map their columns, check them, read them."""

import hashlib
from dataclasses import replace
from pathlib import Path

import streamlit as st

from dashboard.components import escape_markdown, pair_browser, validation_report
from dashboard.figures import response_length_chart
from dashboard.state import DataSource, bundled_source, current_source, load, set_source
from dpo_engine.data.pairs import FIELDS, bundled_datasets, source_columns
from dpo_engine.data.schema import PAIRWISE_FIELDS, SIGNED
from dpo_engine.errors import DataError
from dpo_engine.data.lengths import length_histograms, length_summary, response_lengths
from dpo_engine.files import atomic_write_bytes
from dpo_engine.paths import workspace_subdir

BUNDLED_NOTES = {
    "ultrafeedback": "1,200 UltraFeedback pairs with GPT-4 scores (H4 ultrafeedback_binarized), MIT.",
    "hh_rlhf": "1,000 Anthropic HH-RLHF helpful-base test pairs, no scores, MIT. May contain offensive text.",
}

st.title("Data")
st.caption("Preference pairs: a prompt, a chosen response and a rejected one. Every other page works on the dataset chosen here.")

source = current_source()
uploads = workspace_subdir("uploads")
kinds = ["Bundled demo", "Upload a file", "Path or Hub dataset"]
if source.bundled:
    current_kind = 0
elif Path(source.source).parent == uploads:
    current_kind = 1
else:
    current_kind = 2
kind = st.radio("Source", kinds, index=current_kind, horizontal=True)

if kind == "Bundled demo":
    names = list(bundled_datasets())
    name = st.selectbox(
        "Demo dataset",
        names,
        index=names.index(source.bundled) if source.bundled in names else 0,
        format_func=lambda name: f"{name}: {BUNDLED_NOTES.get(name, '')}",
    )
    candidate = bundled_source(name)
elif kind == "Upload a file":
    upload = st.file_uploader("Preference data (.jsonl, .json, .csv or .parquet)", type=["jsonl", "json", "csv", "parquet"])
    if upload is not None:
        # Named by content: two uploads of one file name never overwrite each other, and an unchanged file keeps
        # its path (rewriting it would defeat the load cache).
        data = upload.getvalue()
        name = Path(upload.name)
        path = uploads / f"{name.stem[:60]}-{hashlib.sha256(data).hexdigest()[:10]}{name.suffix.lower()}"
        if not path.exists():
            atomic_write_bytes(path, data)
        candidate = DataSource(source=str(path), label=upload.name)
    elif current_kind == 1:
        candidate = source
    else:
        st.stop()
else:
    text = st.text_input(
        "Path or Hub dataset name",
        value=source.source if current_kind == 2 else "",
        placeholder="/data/prefs.jsonl, a save_to_disk directory, or org/dataset",
    )
    if not text.strip():
        st.stop()
    candidate = DataSource(source=text.strip(), label=Path(text.strip()).name or text.strip())

# Keep the mapping the user gave for this same source.
if candidate.source == source.source:
    candidate = source
loaded, report = load(candidate)

SHAPES = ("Chosen and rejected columns", "Two responses and a label")
PAIRWISE_HELP = (
    "For data with two responses and a label saying which is preferred (PKU-SafeRLHF, SHP, HelpSteer3 are "
    "detected by their column names). **first_preferred** is the label value meaning response_a is preferred "
    f"(any other value means response_b), or `{SIGNED}` for a signed strength such as HelpSteer3's: negative "
    "prefers response_a, |value| becomes the external margin, 0 is a tie (kept and flagged)."
)


def column_choices(loaded, candidate) -> list[str]:
    """The source's columns, for the drop-downs; empty when they cannot be read (then the fields are typed)."""
    if loaded is not None:
        return loaded.found
    try:
        return source_columns(candidate.source) if Path(candidate.source).exists() else []
    except DataError:
        return []


def column_field(container, field: str, value: str, choices: list[str]) -> str:
    """A drop-down of ``choices`` for one field ("" = detect by name), or a text box when there are none."""
    if not choices:
        return container.text_input(field, value=value)
    options = ["", *choices] + ([value] if value and value not in choices else [])
    return container.selectbox(field, options, index=options.index(value), format_func=lambda name: name or "(detect)")


def mapping_form(candidate, detected: dict[str, str], choices: list[str]) -> dict[str, str] | None:
    """The column-mapping form; the mapping when it is submitted, else None."""
    current = {**detected, **candidate.column_map}
    pairwise = any(name in current for name in PAIRWISE_FIELDS)
    shape = st.radio("Shape of the data", SHAPES, index=int(pairwise), horizontal=True, key="mapping_shape")
    if shape == SHAPES[1]:
        st.caption(PAIRWISE_HELP)
        names = ["prompt", "system", "response_a", "response_b", "label", "id"]
    else:
        names = list(FIELDS)
    with st.form("columns"):
        boxes = st.columns(len(names) + (shape == SHAPES[1]))
        mapping = {name: column_field(box, name, current.get(name, ""), choices) for name, box in zip(names, boxes)}
        if shape == SHAPES[1]:
            mapping["first_preferred"] = boxes[-1].text_input("first_preferred", value=current.get("first_preferred", ""))
        if st.form_submit_button("Apply mapping"):
            return {name: value.strip() for name, value in mapping.items() if value and value.strip()}
    return None


with st.expander("Map columns", expanded=bool(report.errors)):
    st.caption(
        "Which source column holds each field. Left on (detect), a field is detected by name "
        "(prompt/instruction/question, system, chosen, rejected, score_chosen/chosen-rating/chosen_rating/"
        "rating_chosen, id). Only chosen and rejected are required; without a prompt column they must be "
        "conversations that include it."
    )
    detected = loaded.columns if loaded is not None else {}
    submitted = mapping_form(candidate, detected, column_choices(loaded, candidate))
    if submitted is not None:
        changed = {field for field, name in submitted.items() if name != detected.get(field)}
        if changed & set(PAIRWISE_FIELDS):  # a pairwise mapping is given whole or not at all
            changed |= set(PAIRWISE_FIELDS) & set(submitted)
        explicit = tuple((field, name) for field, name in submitted.items() if field in changed)
        candidate = DataSource(source=candidate.source, label=candidate.label, columns=explicit,
                               bundled=candidate.bundled if not explicit else None, drop_invalid=candidate.drop_invalid)
        loaded, report = load(candidate)

st.subheader("Validation")
drop_choice = st.container()  # drawn above the report, decided before it: the report shows the chosen load
if report.droppable or candidate.drop_invalid:  # the engine leaves the rows out; here the user only chooses it
    drop = drop_choice.checkbox(
        f"Drop the {len(report.invalid_rows):,} invalid rows and continue", value=candidate.drop_invalid,
        key=f"drop-invalid-{candidate.source}",
        help="Load only the rows that can be used. The rows left out, and why, are recorded with every selection "
        "saved from these pairs.",
    )
    if drop != candidate.drop_invalid:
        candidate = replace(candidate, drop_invalid=drop)
        loaded, report = load(candidate)
if not validation_report(report):
    st.stop()

if candidate != source:
    set_source(candidate)
    st.rerun()  # the sidebar and other pages follow the new dataset
st.caption(f"Current dataset: **{escape_markdown(candidate.label)}** · {escape_markdown(candidate.source)}")

pairs = loaded.pairs
if len(pairs):
    st.subheader("Reply lengths")
    chosen_chars, rejected_chars = response_lengths(pairs)
    lengths = length_summary(chosen_chars, rejected_chars)
    st.caption(
        f"The chosen reply is the longer one in **{lengths.chosen_longer:.0%}** of pairs, the rejected one in "
        f"{lengths.rejected_longer:.0%}; median {lengths.median_chosen:,.0f} vs {lengths.median_rejected:,.0f} "
        "characters. Reward models and judges favour longer answers, so a set whose chosen replies are mostly the "
        "longer ones also teaches length; the Results page's length-controlled (LC) win rate shows how much of a "
        "gain is length."
    )
    st.plotly_chart(response_length_chart(*length_histograms(chosen_chars, rejected_chars)), key="reply_lengths")

st.subheader("Browse pairs")
search, flagged = st.columns([3, 1], vertical_alignment="bottom")
query = search.text_input("Search prompt and responses", placeholder="a word or phrase")
only_flagged = flagged.toggle("Only rows with warnings")
shown = pairs
if query:
    needle = query.lower()
    hit = shown.prompt.str.lower().str.contains(needle, regex=False) | shown.chosen.str.lower().str.contains(
        needle, regex=False
    ) | shown.rejected.str.lower().str.contains(needle, regex=False)
    shown = shown[hit]
if only_flagged:
    shown = shown[shown.warnings != ""]
st.caption(f"{len(shown):,} of {len(pairs):,} pairs")
columns = ["pair_id", "prompt"] + (["score_chosen", "score_rejected"] if pairs.score_chosen.notna().any() else []) + ["warnings"]
pair_browser(shown, columns, key="data_pairs")
