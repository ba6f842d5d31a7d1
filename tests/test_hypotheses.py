"""The field's selectors (dpo_engine.selection.hypotheses) against their papers' reference code, ported here.

Each ``reference_*`` function is the reference computation written out as it is in the paper's repository (read
at the commit named in its docstring), on numpy arrays; the engine's rule must pick the same pairs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dpo_engine.cli import main
from dpo_engine.errors import UserError
from dpo_engine.margins.formulas import bees
from dpo_engine.selection import hypotheses
from dpo_engine.selection.hypotheses import (
    fold_assignment,
    learning_order,
    select_easy_to_hard,
    select_joint_medium_band,
    select_medium_band,
)
from dpo_engine.selection.rules import select_pairs

N = 40


@pytest.fixture
def table() -> pd.DataFrame:
    """40 pairs with distinct values in every column (no ties, so an unstable reference sort agrees)."""
    rng = np.random.default_rng(7)
    return pd.DataFrame({
        "pair_id": [f"p{i:02d}" for i in range(N)],
        "external_margin": rng.normal(1.0, 2.0, N),
        "implicit_margin": rng.normal(0.0, 3.0, N),
        "rm2_margin": rng.normal(0.5, 1.0, N),
        "ref_chosen_logps": -rng.uniform(20, 200, N),
        "ref_rejected_logps": -rng.uniform(20, 200, N),
        "chosen_tokens": rng.integers(10, 100, N),
        "rejected_tokens": rng.integers(10, 100, N),
        "chosen_score": rng.normal(5.0, 1.0, N),
        "loss_diff": rng.normal(0.0, 1.0, N),
        "irm": rng.normal(0.0, 1.0, N),
    })


def ids(table: pd.DataFrame, indices) -> list[str]:
    return table.pair_id.to_numpy()[np.asarray(indices)].tolist()


# ---- smallest implicit gap --------------------------------------------------------------------------------------


def reference_difficulty_select(reward_gaps: np.ndarray, selection_ratio: float) -> np.ndarray:
    """``DPODifficultySelector.select_difficult_examples`` in ``src/data_select,py`` of
    Difficulty-Based-Preference-Data-Select @ 425109b: argsort ascending, keep the first int(n * ratio)."""
    sorted_indices = np.argsort(reward_gaps)
    num_selected = int(len(reward_gaps) * selection_ratio)
    return sorted_indices[:num_selected]


def test_smallest_gap_matches_the_reference_selection(table):
    beta = 0.1  # the reference's gap is beta * implicit margin; beta > 0 does not change the order
    expected = reference_difficulty_select(beta * table.implicit_margin.to_numpy(), 0.25)
    assert select_pairs(table, "smallest_gap", {"frac": 0.25}) == ids(table, expected)


def test_smallest_gap_keeps_negative_gaps_first_and_skips_nan(table):
    table.loc[3, "implicit_margin"] = np.nan
    chosen = select_pairs(table, "smallest_gap", {"k": 5})
    assert "p03" not in chosen
    assert table.set_index("pair_id").implicit_margin[chosen].is_monotonic_increasing


# ---- alignment potential ----------------------------------------------------------------------------------------


def reference_alignment_potential_topk(rm_margin, logp_margin_norm_abs, k, logp_weight=1.0) -> np.ndarray:
    """``get_top_score_idx`` of Hesse73/Alignment-Potential-Metric @ 123ece7 (``metric_selection.py``, rm-xlogp)."""
    rm_data_zscore = (rm_margin - rm_margin.mean()) / rm_margin.std()
    logp_data_zscore = (logp_margin_norm_abs - logp_margin_norm_abs.mean()) / logp_margin_norm_abs.std()
    score_data = rm_data_zscore - logp_weight * logp_data_zscore
    return np.argsort(score_data)[-k:]


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_alignment_potential_matches_the_reference_top_k(table, weight):
    logp_abs = np.abs(table.ref_chosen_logps / table.chosen_tokens - table.ref_rejected_logps / table.rejected_tokens)
    expected = reference_alignment_potential_topk(table.external_margin.to_numpy(), logp_abs.to_numpy(), 16, weight)
    params = {"frac": 0.4} if weight == 1.0 else {"frac": 0.4, "weight": weight}  # select_ratio 0.4: the code's default
    chosen = select_pairs(table, "alignment_potential", params)
    assert sorted(chosen) == sorted(ids(table, expected))
    assert chosen[0] == ids(table, expected)[-1]  # best first (the reference lists it last)


def test_alignment_potential_names_the_missing_column(table):
    with pytest.raises(UserError, match="ref_chosen_logps"):
        select_pairs(table.drop(columns="ref_chosen_logps"), "alignment_potential", {"k": 3})


# ---- medium band, LossDiff-IRM ----------------------------------------------------------------------------------


def test_medium_band_drops_equal_tails_by_hand():
    score = np.array([5.0, 1.0, np.nan, 3.0, 4.0, 2.0, 6.0])  # ascending order: 1, 5, 3, 4, 0, 6
    np.testing.assert_array_equal(select_medium_band(score, 2), [3, 4])  # drop 2 below, 2 above
    np.testing.assert_array_equal(select_medium_band(score, 3), [5, 3, 4])  # odd remainder: one more from the top
    np.testing.assert_array_equal(select_medium_band(score, 10), [1, 5, 3, 4, 0, 6])


def reference_joint_medium_band(loss_diff: np.ndarray, irm: np.ndarray, k: int) -> np.ndarray:
    """The combined LossDiff-IRM pick as a scan over central bands, from the paper (Zhang et al., arXiv 2510.13212,
    §"LossDiff-IRM"): keep pairs in the middle band of both scores. ``tmlr-group/TIF_LossDiff-IRM`` was not available
    here, so this follows the paper's description: widen the central percentile band [50 - w, 50 + w] of each score
    until k pairs lie inside both bands."""
    n = len(loss_diff)
    pct_a = (np.argsort(np.argsort(loss_diff)) + 0.5) / n
    pct_b = (np.argsort(np.argsort(irm)) + 0.5) / n
    for width in np.linspace(0, 0.5, 100001):
        inside = np.flatnonzero((np.abs(pct_a - 0.5) <= width) & (np.abs(pct_b - 0.5) <= width))
        if inside.size >= k:
            return inside
    return np.arange(n)


def test_lossdiff_irm_is_the_central_band_of_both_scores(table):
    expected = reference_joint_medium_band(table.loss_diff.to_numpy(), table.irm.to_numpy(), 8)
    chosen = select_pairs(table, "lossdiff_irm", {"k": 8})
    assert sorted(chosen) == sorted(ids(table, expected))


def test_joint_medium_band_with_one_column_is_the_medium_band():
    score = np.array([0.3, 0.1, 0.9, 0.5, 0.7])
    assert sorted(select_joint_medium_band([score], 3).tolist()) == sorted(select_medium_band(score, 3).tolist())


def test_lossdiff_irm_without_its_columns_says_which(table):
    with pytest.raises(UserError, match="'loss_diff'"):
        select_pairs(table.drop(columns="loss_diff"), "lossdiff_irm", {"k": 3})


# ---- BeeS over K columns ----------------------------------------------------------------------------------------


def reference_bees_mul(margins: list[np.ndarray]) -> np.ndarray:
    """The official ``m_sampler.py`` 'mul' fusion (methods §1.5) written out for K sources, each with the implicit
    margin's bound loop (divisor 2) and its division by the largest clipped value."""

    def upper_bound(m: np.ndarray) -> int:
        max_value = m.max()
        x = int(max_value / 2)
        while True:
            if len(m[(m > x) & (m <= max_value)]) < max_value - x or len(m[(m > x) & (m <= max_value)]) < 30 or x > max_value:
                break
            x += 1
        return x

    probs = []
    for m in margins:
        clipped = np.clip(m, -2, upper_bound(m)) + 2
        probs.append(clipped / clipped.max())
    product = np.prod(probs, axis=0)
    return product / (product + np.prod([1 - p for p in probs], axis=0))


def test_bees_k_matches_the_official_fusion_with_three_sources():
    """Same values and the same ranking for the pairs the official fusion puts strictly inside (0, 1). Where one
    source is at probability 1, the official code returns exactly 1.0 (a tie, or 0/0 with another source at 0);
    the engine clips each source to [eps, 1 - eps] on purpose (`bayes_aggregate`), so those pairs are left out."""
    rng = np.random.default_rng(11)
    columns = ["external_margin", "rm2_margin", "implicit_margin"]
    table = pd.DataFrame({"pair_id": [f"b{i:03d}" for i in range(200)],
                          **{column: rng.uniform(-2.5, 8.0, 200) for column in columns}})
    with np.errstate(invalid="ignore"):  # the official 0/0 (one source at 0, another at 1)
        fused = reference_bees_mul([table[c].to_numpy() for c in columns])
    inside = np.flatnonzero((fused > 0) & (fused < 1))
    at_one = set(ids(table, np.flatnonzero(fused == 1)))
    assert len(inside) > 100 and at_one
    np.testing.assert_allclose(bees([table[c].to_numpy() for c in columns])[inside], fused[inside], rtol=1e-4)

    ranking = select_pairs(table, "bees_k", {"scores": columns, "frac": 1.0})
    inside_ids = set(ids(table, inside))
    assert [pair for pair in ranking if pair in inside_ids] == ids(table, inside[np.argsort(-fused[inside])])


def test_bees_k_scores_are_computed_before_the_where_filter(table):
    columns = ["external_margin", "rm2_margin"]
    fused = pd.Series(bees([table[c].to_numpy() for c in columns]), index=table.pair_id)
    where = {"external_margin": [0.0, None]}
    chosen = select_pairs(table, "bees_k", {"scores": columns, "k": 5, "where": where})
    kept = fused[table.external_margin.to_numpy() >= 0]
    assert chosen == kept.sort_values(ascending=False, kind="stable").index[:5].tolist()


# ---- chosen-only quality ----------------------------------------------------------------------------------------


def test_chosen_quality_ranks_the_chosen_reward_alone(table):
    """arXiv 2508.18312 ships no code; the rule as the paper states it: the chosen response's reward, largest first."""
    expected = np.argsort(-table.chosen_score.to_numpy())[:6]
    table["score_rejected"] = -table.chosen_score  # the rejected side must not matter
    assert select_pairs(table, "chosen_quality", {"k": 6}) == ids(table, expected)


def test_chosen_quality_without_chosen_scores_says_so(table):
    with pytest.raises(UserError, match="chosen_score"):
        select_pairs(table.drop(columns="chosen_score"), "chosen_quality", {"k": 3})


# ---- Selective DPO ----------------------------------------------------------------------------------------------


def reference_half_split(num_samples: int, seed: int, curr_split: str) -> tuple[np.ndarray, np.ndarray]:
    """``run_half.py`` of glorgao/SelectiveDPO (curriculum-lens): a seeded permutation cut in two halves."""
    np.random.seed(seed)  # what transformers' set_seed(seed) does to numpy before the split
    indices = np.random.permutation(num_samples)
    if curr_split == "first":
        return indices[:num_samples // 2], indices[num_samples // 2:]  # eval, train
    return indices[num_samples // 2:], indices[:num_samples // 2]


@pytest.mark.parametrize("n", [10, 11])
def test_two_folds_are_the_reference_halves(n):
    folds = fold_assignment(n, 2, seed=41)
    eval_first, train_first = reference_half_split(n, 41, "first")
    assert sorted(np.flatnonzero(folds == 0)) == sorted(eval_first)
    assert sorted(np.flatnonzero(folds == 1)) == sorted(train_first)


def test_k_folds_are_disjoint_and_cover_every_pair():
    folds = fold_assignment(23, 4, seed=0)
    counts = np.bincount(folds)
    assert counts.sum() == 23 and counts.min() >= 5 and counts.max() <= 6


def reference_learning_order(records: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``make_curricula.py`` of glorgao/SelectiveDPO: merge each (seed, step) record and average the losses."""
    merged = None
    for name, record in records.items():
        df = record.rename(columns={"loss": f"loss_{name}"})
        merged = df if merged is None else pd.merge(merged, df, on="prompt_id", how="left")
    merged["learning_order"] = merged.filter(like="loss").mean(axis=1)
    return merged


def reference_selective_subset(train: pd.DataFrame, keep: float = 0.5) -> pd.DataFrame:
    """``run_selective_dpo.py``: sort by learning_order, keep the first int(len * 0.5)."""
    ordered = train.sort_values("learning_order", kind="stable")
    return ordered.iloc[: int(len(ordered) * keep)]


def test_selective_dpo_order_and_cut_match_the_reference():
    rng = np.random.default_rng(3)
    n = 13
    prompt_ids = [f"q{i}" for i in range(n)]
    losses = rng.uniform(0.2, 1.2, size=(n, 6))
    losses[4, 2] = np.nan  # a pair missing from one record
    records = {f"s{j}": pd.DataFrame({"prompt_id": prompt_ids, "loss": losses[:, j]}) for j in range(6)}
    merged = reference_learning_order(records)
    np.testing.assert_allclose(learning_order(losses), merged.learning_order.to_numpy())

    expected = reference_selective_subset(merged).prompt_id.tolist()
    order = learning_order(losses)
    assert [prompt_ids[i] for i in select_easy_to_hard(order, 0.5)] == expected
    table = pd.DataFrame({"pair_id": prompt_ids, "learning_order": order})
    assert select_pairs(table, "selective_dpo", {"tau": 0.5}) == expected  # easy to hard, hardest half dropped


def test_selective_dpo_tau_must_leave_pairs():
    with pytest.raises(UserError, match="tau"):
        select_easy_to_hard(np.arange(4.0), 1.0)
    assert len(select_easy_to_hard(np.arange(10.0), 0.3)) == math.floor(10 * 0.7)


# ---- the CLI ----------------------------------------------------------------------------------------------------


def test_cli_selects_with_a_hypothesis_rule(table, tmp_path, capsys):
    path = tmp_path / "margins.parquet"
    table.to_parquet(path)
    out = tmp_path / "bees3.json"
    code = main(["select", str(path), "--rule", "bees_k", "--scores", "external_margin,rm2_margin,implicit_margin",
                 "--k", "10", "--name", "bees3", "--out", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["params"] == {"scores": ["external_margin", "rm2_margin", "implicit_margin"], "k": 10}
    assert saved["pair_ids"] == select_pairs(table, "bees_k", saved["params"])
    assert "selected 10 of 40" in capsys.readouterr().out


def test_cli_reports_a_missing_column_as_a_user_error(table, tmp_path, capsys):
    path = tmp_path / "margins.parquet"
    table.drop(columns="chosen_score").to_parquet(path)
    code = main(["select", str(path), "--rule", "chosen_quality", "--k", "3", "--name", "x", "--out", str(tmp_path / "x.json")])
    assert code == 2
    assert "chosen_score" in capsys.readouterr().err


def test_every_hypothesis_rule_is_a_select_rule():
    from dpo_engine.selection.rules import RULE_PARAMS, RULES

    assert set(hypotheses.HYPOTHESIS_RULES) <= set(RULES) and set(hypotheses.HYPOTHESIS_RULES) <= set(RULE_PARAMS)


def test_cli_random_stores_the_new_default_seed_and_selective_dpo_its_tau(tmp_path):
    from dpo_engine.selection.rules import DEFAULT_RANDOM_SEED

    table = pd.DataFrame({"pair_id": [f"p{i}" for i in range(10)], "learning_order": np.arange(10.0)[::-1]})
    path = tmp_path / "margins.csv"
    table.to_csv(path, index=False)
    assert main(["select", str(path), "--rule", "random", "--k", "3", "--name", "r", "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["params"] == {"k": 3, "seed": DEFAULT_RANDOM_SEED}
    assert main(["select", str(path), "--rule", "selective_dpo", "--name", "s", "--out", str(tmp_path / "s.json")]) == 0
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["params"] == {"score": "learning_order", "tau": 0.5}
    assert saved["pair_ids"] == ["p9", "p8", "p7", "p6", "p5"]  # easy (low order) to hard, hardest half dropped
