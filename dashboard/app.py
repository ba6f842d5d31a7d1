"""Margin Lab: `streamlit run dashboard/app.py` (or `make demo`)."""

import sys
from pathlib import Path

# `streamlit run` puts dashboard/ on sys.path; the pages import the `dashboard` package from the repository root.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import streamlit as st  # noqa: E402

from dashboard.access import require_login  # noqa: E402
from dashboard.components import escape_markdown  # noqa: E402
from dashboard.state import current_source  # noqa: E402

st.set_page_config(page_title="Margin Lab", page_icon=":material/scatter_plot:", layout="wide")
require_login()  # before any page renders

pages = [
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/data.py", title="Data", icon=":material/table_view:"),
    st.Page("views/margins.py", title="Margins & Select", icon=":material/scatter_plot:"),
    st.Page("views/runs.py", title="Runs", icon=":material/model_training:"),
    st.Page("views/data_map.py", title="Data map", icon=":material/bubble_chart:"),
    st.Page("views/results.py", title="Results", icon=":material/leaderboard:"),
    st.Page("views/rounds.py", title="Rounds", icon=":material/autorenew:"),
    st.Page("views/arena.py", title="Arena", icon=":material/stadium:"),
]
# The page scripts live in views/, not pages/: with a pages/ folder next to the main script, Streamlit's first
# run after a start treats the app as an old-style (v1) multipage app and runs a deep-linked page without app.py.
page = st.navigation(pages)
with st.sidebar:
    st.caption(f"Dataset: **{escape_markdown(current_source().label)}**")
page.run()
