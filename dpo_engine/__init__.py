"""Margin Lab engine: preference data, margins, dual-margin selection, LoRA DPO runs and win rates.

No Streamlit here: the dashboard (``dashboard/``) and the CLI (``dpo-engine``) both call these modules.
"""

__version__ = "0.1.0"
