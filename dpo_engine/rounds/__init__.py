"""Iterative DPO with dual-margin selection: rounds of generate -> score -> select -> train, each a directory.

The config (`config`, torch-free), the pure pair builder (`pairs`), the scorers (`scorers`), the engine calls
(`engine`), the resumable loop (`loop`) and read-only views of a loop's files (`store`).
"""

from dpo_engine.rounds.config import RoundsConfig
from dpo_engine.rounds.store import list_loops, loop_dir, loop_status, round_margins, round_summary

__all__ = ["RoundsConfig", "list_loops", "loop_dir", "loop_status", "round_margins", "round_summary"]
