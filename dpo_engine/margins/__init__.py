"""Margins: the formulas (external, implicit, DM-ADD, DM-MUL, BeeS, ...), the margins table, and scoring jobs.

``dpo_engine.margins.<formula>`` is the documented API of the pure formulas (`dpo_engine.margins.formulas`); the
table is `dpo_engine.margins.table` (no torch) and the scoring jobs `dpo_engine.margins.scoring` (torch).
"""

from dpo_engine.margins.formulas import (
    alignment_potential,
    bayes_aggregate,
    bees,
    difficulty_gap,
    dm_add,
    dm_mul,
    dynamic_upper_bound,
    external_margin,
    fused_scores,
    implicit_margin,
    margin_to_prob,
)

__all__ = [
    "alignment_potential", "bayes_aggregate", "bees", "difficulty_gap", "dm_add", "dm_mul", "dynamic_upper_bound",
    "external_margin", "fused_scores", "implicit_margin", "margin_to_prob",
]
