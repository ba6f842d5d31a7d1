"""Selection: rules that choose which pairs to train on (`rules`, pure; the field's hypotheses in `hypotheses`) and
the saved Selection record (`store`)."""

from dpo_engine.selection.hypotheses import (
    HYPOTHESIS_RULES,
    fold_assignment,
    learning_order,
    select_easy_to_hard,
    select_highest,
    select_joint_medium_band,
    select_medium_band,
)
from dpo_engine.selection.rules import (
    DEFAULT_RANDOM_SEED,
    DEFAULT_SCORE,
    PARTS,
    RULE_PARAMS,
    RULES,
    column_stats,
    filter_by_ids,
    ids_mask,
    margin_correlations,
    select_bottom_k,
    select_pairs,
    select_partition,
    select_random,
    select_threshold,
    select_top_k,
    selection_summary,
)
from dpo_engine.selection.store import Selection, export_selection, list_selections, load_selection, save_selection

__all__ = [
    "DEFAULT_RANDOM_SEED", "DEFAULT_SCORE", "HYPOTHESIS_RULES", "fold_assignment", "learning_order",
    "select_easy_to_hard", "select_highest", "select_joint_medium_band", "select_medium_band", "PARTS", "RULE_PARAMS", "RULES", "Selection", "column_stats", "export_selection", "filter_by_ids",
    "ids_mask", "list_selections", "load_selection", "margin_correlations", "save_selection", "select_bottom_k",
    "select_pairs", "select_partition", "select_random", "select_threshold", "select_top_k", "selection_summary",
]
