"""Margin Lab dashboard: Streamlit pages over the engine. Run with `streamlit run dashboard/app.py`."""
