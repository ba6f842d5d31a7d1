""""Why this pair": renders `dpo_engine.selection.explain.pair_explanation` (the engine computes the record)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.components import escape_markdown
from dpo_engine.selection.explain import pair_explanation

WARNING_TEXT = {
    "identical_responses": "chosen and rejected are identical",
    "empty_response": "a response is empty",
    "truncated_at_max_length": "a response reaches the token budget (max_length − max_prompt_length): probably cut",
    "in_warmup": "the warm-up proxy trained on it: its implicit margin is in-sample",
    "in_validation": "in LossDiff-IRM's validation split: it has no LossDiff or IRM and no rule selects it",
}


def why_this_pair(pair_id: str, pairs: pd.DataFrame, margins_table: pd.DataFrame,
                  data_map: pd.DataFrame | None = None, meta: dict | None = None) -> None:
    """Both responses side by side, every score with its rank under each selector, data-map position, lengths and
    warnings of one pair. ``meta``: the margins sidecar, for the token limits of the truncation warning."""
    implicit = (meta or {}).get("implicit") or {}
    try:
        record = pair_explanation(pair_id, pairs, margins_table, data_map, max_length=implicit.get("max_length"),
                                  max_prompt_length=implicit.get("max_prompt_length"))
    except KeyError:
        st.info(f"Pair {escape_markdown(pair_id)} is not in this dataset.")
        return
    with st.container(border=True, key=f"why-{pair_id}"):
        st.markdown(f"**Why this pair: {escape_markdown(record['pair_id'])}** · source row {record['row']}")
        for code in record["warnings"]:
            st.warning(WARNING_TEXT.get(code, code.replace("_", " ")), icon=":material/warning:")
        lengths, position = st.columns(2)
        sizes = record["lengths"]
        tokens = (f" · tokens {sizes['chosen_tokens']:,} / {sizes['rejected_tokens']:,}"
                  if sizes["chosen_tokens"] is not None else "")
        lengths.markdown(f"Lengths (chosen / rejected): characters {sizes['chosen_chars']:,} / "
                         f"{sizes['rejected_chars']:,}{tokens}")
        spot = record["data_map"]
        position.markdown("Data map: " + (
            f"**{spot['region'] or '–'}** · confidence {spot['confidence']:.3f} · variability "
            f"{spot['variability']:.3f} · correctness {spot['correctness']:.2f} ({spot['n_steps']} steps)"
            if spot else "no run with a data map trained on it"))
        if record["ranks"]:
            ranks = pd.DataFrame(record["ranks"])[["selector", "column", "value", "rank", "of", "top_percent"]]
            st.dataframe(ranks, hide_index=True, column_config={
                "value": st.column_config.NumberColumn(format="%.4g"),
                "rank": st.column_config.NumberColumn(format="%d", help="1 = the selector picks it first"),
                "top_percent": st.column_config.NumberColumn("top %", format="%.1f"),
            })
        for message in record["prompt_messages"]:
            st.markdown(f"**{escape_markdown(str(message['role']).capitalize())}**")
            st.text(message["content"])
        for column, name in zip(st.columns(2), ("chosen", "rejected")):
            score = record[f"score_{name}"]
            column.markdown(f"**{name.capitalize()}**" + (f" · score {score:g}" if pd.notna(score) else ""))
            column.text(record[name] or "(empty response)")
