"""Home: what Margin Lab is for, the shipped demo study's result, and where to start."""

import pandas as pd
import streamlit as st

from dashboard.figures import win_rate_chart
from dpo_engine.demo import DEMO_DIR

DEMO_RESULTS = DEMO_DIR / "summary" / "results.csv"

st.title("Margin Lab")
st.markdown(
    "Margin Lab helps you choose **which preference pairs to train DPO on**. It scores every pair of a dataset "
    "with an external margin (how much better the chosen answer is, by a judge or the data's own scores) and an "
    "implicit margin (how much the model already prefers it), and selects the pairs where both agree, as in "
    "*Less is More* (Deng et al., 2025). You then train LoRA DPO runs on the selections, in the background, and "
    "compare their win rates against the base model."
)

st.subheader("Start here")
data, select, train = st.columns(3)
with data.container(border=True):
    st.markdown("**1 · Data**: load preference pairs (or use a bundled demo set); every problem is listed.")
    st.page_link("views/data.py", label="Open Data", icon=":material/table_view:")
with select.container(border=True):
    st.markdown("**2 · Margins & Select**: score the pairs, pick a rule (DM-MUL, top-k, lasso...), save a selection.")
    st.page_link("views/margins.py", label="Open Margins & Select", icon=":material/scatter_plot:")
with train.container(border=True):
    st.markdown("**3 · Runs → Results**: train on selections (or a sweep of them), then evaluate and compare.")
    st.page_link("views/runs.py", label="Open Runs", icon=":material/model_training:")
    st.page_link("views/results.py", label="Open Results", icon=":material/leaderboard:")

if DEMO_RESULTS.exists():
    st.subheader("The demo study")
    results = pd.read_csv(DEMO_RESULTS)
    results = results.assign(variant=results.label)
    st.caption(
        f"{len(results)} variants of SmolLM2-135M-Instruct, each trained on 120 selected UltraFeedback pairs, judged "
        f"on {int(results.n.iloc[0])} AlpacaEval prompts against the base model by the offline judge. At this scale "
        "the intervals overlap: a demonstration of the workflow, not a replication of the paper."
    )
    st.plotly_chart(win_rate_chart(results), key="demo_win_rates",
                    config={"toImageButtonOptions": {"filename": "demo-win-rates", "format": "png", "scale": 3}})
