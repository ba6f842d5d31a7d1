"""Baseline for bench_dashboard.py: the plain Streamlit + Plotly Express app a user would write for a margins table.

Reads the pairs (``BENCH_PAIRS``, jsonl) and the margins table (``BENCH_MARGINS``, parquet), draws external vs
implicit margin with ``px.scatter`` (the prompt in the hover; Plotly Express switches to WebGL above 1,000 points)
coloured by whether a pair passes an external-margin threshold slider, and shows the selected count.
"""

import os

import pandas as pd
import plotly.express as px
import streamlit as st

st.set_page_config(layout="wide")


@st.cache_data
def load() -> pd.DataFrame:
    pairs = pd.read_json(os.environ["BENCH_PAIRS"], lines=True)
    margins = pd.read_parquet(os.environ["BENCH_MARGINS"])
    pairs["pair_id"] = pairs["id"].astype(str)
    return margins.merge(pairs[["pair_id", "prompt", "chosen", "rejected"]], on="pair_id")


table = load()
low, high = float(table.external_margin.min()), float(table.external_margin.max())
threshold = st.slider("External margin at least", low, high, low, step=(high - low) / 200)
table["selected"] = table.external_margin >= threshold
st.metric("Selected pairs", f"{int(table.selected.sum()):,}")
figure = px.scatter(table, x="external_margin", y="implicit_margin", color="selected", hover_data=["pair_id", "prompt"],
                    category_orders={"selected": [True, False]})
st.plotly_chart(figure)
