"""dpo_engine.selection and the `dpo-engine select` command, on small hand-checked tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_engine.cli import main
from dpo_engine.errors import UserError
from dpo_engine.margins.formulas import fused_scores
from dpo_engine.selection.rules import column_stats, margin_correlations, filter_by_ids, ids_mask, select_bottom_k, select_pairs, select_partition, select_random, select_threshold, select_top_k, selection_summary
from dpo_engine.selection.rules import DEFAULT_RANDOM_SEED
from dpo_engine.selection.store import Selection, export_selection, list_selections, load_selection, save_selection

nan = float("nan")


@pytest.fixture
def table() -> pd.DataFrame:
    """Six pairs with both margins; pair 'c' has no implicit margin."""
    return pd.DataFrame({
        "pair_id": ["a", "b", "c", "d", "e", "f"],
        "external_margin": [1.0, -1.0, 0.5, 3.0, 0.0, 2.0],
        "implicit_margin": [0.5, 2.0, nan, -1.0, 0.8, 4.0],
        "chosen_tokens": [10, 20, 30, 40, 50, 60],
        "rejected_tokens": [5, 5, 5, 5, 5, 35],
    })


# ---- index rules ------------------------------------------------------------------------------------------------


def test_top_k_is_a_stable_descending_sort_that_never_selects_nan():
    score = np.array([1.0, nan, 3.0, 3.0, 2.0])
    np.testing.assert_array_equal(select_top_k(score, k=3), [2, 3, 4])  # the tie keeps index order
    np.testing.assert_array_equal(select_top_k(score, k=10), [2, 3, 4, 0])  # fewer than k: NaN left out
    assert select_top_k(score, k=0).size == 0
    assert select_top_k(score, k=3).dtype == np.int64


def test_top_k_with_frac_rounds_down_over_the_whole_length():
    score = np.array([1.0, nan, 3.0, 3.0, 2.0])
    np.testing.assert_array_equal(select_top_k(score, frac=0.5), [2, 3])  # floor(0.5 * 5) = 2
    np.testing.assert_array_equal(select_top_k(score, frac=1.0), [2, 3, 4, 0])


@pytest.mark.parametrize("kwargs", [{}, {"k": 2, "frac": 0.5}, {"k": -1}, {"k": 1.5}, {"frac": 0.0}, {"frac": 1.5}])
def test_top_k_size_errors(kwargs):
    with pytest.raises(UserError):
        select_top_k(np.array([1.0, 2.0]), **kwargs)


def test_bottom_k_is_a_stable_ascending_sort_that_never_selects_nan():
    score = np.array([1.0, nan, 3.0, 3.0, 2.0, 1.0])
    np.testing.assert_array_equal(select_bottom_k(score, k=3), [0, 5, 4])
    np.testing.assert_array_equal(select_bottom_k(score, k=6), [0, 5, 4, 2, 3])


def test_top_k_reads_a_tensor_and_returns_numpy_indices():
    result = select_top_k(torch.tensor([0.1, float("nan"), 0.9]), k=2)
    assert isinstance(result, np.ndarray) and result.dtype == np.int64
    assert result.tolist() == [2, 0]


def test_random_is_the_hf_shuffle_draw():
    # HF datasets' shuffle(seed) is np.random.default_rng(seed).permutation(n): the official random baseline.
    result = select_random(100, 10)
    np.testing.assert_array_equal(result, np.random.default_rng(42).permutation(100)[:10])
    assert len(set(result.tolist())) == 10
    assert sorted(select_random(5, 50, seed=1).tolist()) == [0, 1, 2, 3, 4]
    assert select_random(100, 10, seed=1).tolist() != result.tolist()


def test_partition_top_and_bot_rank_the_margin():
    margin = np.array([-3.0, -0.5, 0.2, 1.0, 1.5, nan, -1.0])
    np.testing.assert_array_equal(select_partition(margin, "top", 2), [4, 3])
    np.testing.assert_array_equal(select_partition(margin, "bot", 2), [0, 6])


def test_partition_mid_draws_from_the_closed_band_and_returns_fewer_when_it_is_small():
    margin = np.array([-3.0, -0.5, 0.2, 1.0, 1.5, nan, -1.0])
    band = [1, 2, 3, 6]  # -1 <= margin <= 1, bounds included, NaN out
    np.testing.assert_array_equal(select_partition(margin, "mid", 10, tau=1.0), band)
    drawn = select_partition(margin, "mid", 2, tau=1.0, seed=7)
    assert len(drawn) == 2 and set(drawn.tolist()) <= set(band) and list(drawn) == sorted(drawn)
    np.testing.assert_array_equal(drawn, select_partition(margin, "mid", 2, tau=1.0, seed=7))
    np.testing.assert_array_equal(select_partition(margin, "mid", 10, tau=0.5), [1, 2])


def test_partition_errors():
    with pytest.raises(UserError, match="top, mid, bot"):
        select_partition(np.zeros(3), "middle", 1)
    with pytest.raises(UserError, match="tau"):
        select_partition(np.zeros(3), "mid", 1, tau=-1.0)


def test_threshold_mask_with_open_and_inclusive_bounds(table):
    np.testing.assert_array_equal(
        select_threshold(table, {"external_margin": (0.5, None)}), [True, False, True, True, False, True]
    )
    np.testing.assert_array_equal(
        select_threshold(table, {"external_margin": (0.0, None), "implicit_margin": (0.0, None)}),
        [True, False, False, False, True, True],
    )
    # An open rule still drops NaN: "has an implicit margin".
    np.testing.assert_array_equal(
        select_threshold(table, {"implicit_margin": (None, None)}), [True, True, False, True, True, True]
    )
    assert select_threshold(table, {}).all()


@pytest.mark.parametrize(
    ("rules", "message"),
    [({"nope": (0, 1)}, "no such column"), ({"external_margin": (2, 1)}, "above high"),
     ({"pair_id": (0, 1)}, "not numeric"), ({"external_margin": (0,)}, "expected")],
)
def test_threshold_errors(table, rules, message):
    with pytest.raises(UserError, match=message):
        select_threshold(table, rules)


# ---- select_pairs -----------------------------------------------------------------------------------------------


def test_select_pairs_top_and_bottom_k_on_a_score_column(table):
    assert select_pairs(table, "top_k", {"score": "external_margin", "k": 3}) == ["d", "f", "a"]
    assert select_pairs(table, "bottom_k", {"score": "implicit_margin", "frac": 0.5}) == ["d", "a", "e"]


def test_select_pairs_computes_a_missing_fused_score(table):
    expected = fused_scores(table)["dm_mul"].to_numpy()
    ids = select_pairs(table, "top_k", {"k": 2})  # score defaults to dm_mul
    assert ids == table["pair_id"].to_numpy()[select_top_k(expected, k=2)].tolist()
    assert "c" not in select_pairs(table, "top_k", {"k": 6})  # no implicit margin -> no DM-MUL score


def test_select_pairs_where_filters_first_and_frac_counts_the_whole_table(table):
    where = {"external_margin": [0.0, None], "implicit_margin": [0.0, None]}  # a, e, f pass
    ids = select_pairs(table, "top_k", {"score": "external_margin", "frac": 0.5, "where": where})
    assert ids == ["f", "a", "e"]  # 50 % of 6 pairs = 3, the three that pass
    assert select_pairs(table, "threshold", {"where": where}) == ["a", "e", "f"]


def test_select_pairs_random_partition_and_manual(table):
    assert select_pairs(table, "random", {"k": 3}) == table["pair_id"].to_numpy()[select_random(6, 3, DEFAULT_RANDOM_SEED)].tolist()
    mid = select_pairs(table, "partition", {"score": "external_margin", "part": "mid", "k": 6, "tau": 1.0})
    assert mid == ["a", "b", "c", "e"]
    assert select_pairs(table, "manual", {"pair_ids": ["f", "a", "f"]}) == ["f", "a"]


@pytest.mark.parametrize(
    ("rule", "params", "message"),
    [
        ("best", {"k": 1}, "unknown selection rule"),
        ("top_k", {"k": 1, "tau": 1.0}, "does not take tau"),
        ("top_k", {"score": "nope", "k": 1}, "not in the margins table"),
        ("top_k", {"score": "external_margin"}, "exactly one of k"),
        ("threshold", {}, "needs where"),
        ("manual", {"pair_ids": ["a", "zz"]}, "not in the margins table"),
    ],
)
def test_select_pairs_errors(table, rule, params, message):
    with pytest.raises(UserError, match=message):
        select_pairs(table, rule, params)


def test_select_pairs_refuses_a_score_with_no_values(table):
    table["external_margin"] = nan
    with pytest.raises(UserError, match="has no values"):
        select_pairs(table, "top_k", {"score": "external_margin", "k": 2})
    with pytest.raises(UserError, match="has no values"):
        select_pairs(table, "top_k", {"score": "dm_mul", "k": 2})


# ---- filtering and summaries ------------------------------------------------------------------------------------


def test_filter_by_ids_keeps_the_table_order(table):
    filtered = filter_by_ids(table, ["f", "b", "zz"])
    assert filtered["pair_id"].tolist() == ["b", "f"]
    assert filtered.index.tolist() == [1, 5]


def test_selection_summary_compares_the_selection_with_the_whole_set(table):
    summary = selection_summary(table, ["d", "f", "zz"])
    assert (summary["size"], summary["n_total"], summary["missing"]) == (2, 6, 1)
    assert summary["share"] == pytest.approx(2 / 6)
    external = summary["columns"]["external_margin"]
    assert external == {"selected_mean": 2.5, "selected_median": 2.5, "all_mean": 5.5 / 6, "all_median": 0.75}
    assert summary["columns"]["implicit_margin"]["all_mean"] == pytest.approx(6.3 / 5)  # NaN skipped
    assert summary["columns"]["rejected_tokens"]["selected_mean"] == 20.0
    assert "dm_mul" not in summary["columns"]
    assert selection_summary(table, [])["columns"]["external_margin"]["selected_mean"] is None


def test_ids_mask_compares_ids_as_strings(table):
    assert ids_mask(table, ["f", "b", "zz"]).tolist() == [False, True, False, False, False, True]
    assert ids_mask(pd.DataFrame({"pair_id": [1, 2, 3]}), ["2", 3]).tolist() == [False, True, True]
    assert ids_mask(table, []).dtype == bool


def test_selection_summary_from_a_mask_and_whole_table_stats_computed_once(table):
    overall = column_stats(table)
    assert list(overall) == ["external_margin", "implicit_margin", "chosen_tokens", "rejected_tokens"]
    assert overall["chosen_tokens"] == {"mean": 35.0, "median": 35.0}  # 210 / 6; (30 + 40) / 2
    assert overall["rejected_tokens"] == {"mean": 10.0, "median": 5.0}  # 60 / 6
    assert overall["implicit_margin"]["median"] == 0.8  # NaN skipped: -1, 0.5, 0.8, 2, 4

    ids = ["d", "f", "zz"]
    summary = selection_summary(table, ids, selected=ids_mask(table, ids), overall=overall)
    assert summary == selection_summary(table, ids)
    assert (summary["size"], summary["missing"]) == (2, 1)
    assert summary["columns"]["implicit_margin"] == {
        "selected_mean": 1.5, "selected_median": 1.5, "all_mean": pytest.approx(1.26), "all_median": 0.8,
    }  # d and f: -1 and 4
    # The whole-table statistics are used as given, not recomputed: a stand-in shows through.
    stand_in = {"chosen_tokens": {"mean": -1.0, "median": -2.0}}
    partial = selection_summary(table, ids, selected=ids_mask(table, ids), overall=stand_in)
    assert partial["columns"] == {
        "chosen_tokens": {"selected_mean": 50.0, "selected_median": 50.0, "all_mean": -1.0, "all_median": -2.0},
    }  # d and f: 40 and 60 tokens


# ---- the Selection record ---------------------------------------------------------------------------------------


def test_save_and_load_round_trip(workspace):
    selection = Selection(name="dm mul/2k", rule="top_k", params={"k": 2}, dataset_fingerprint="abc", pair_ids=["d", "f"])
    path = save_selection(selection)
    assert path == workspace / "selections" / "dm_mul_2k.json"
    assert load_selection("dm mul/2k") == selection
    assert load_selection(path) == selection
    assert json.loads(path.read_text())["pair_ids"] == ["d", "f"]


def test_save_to_a_directory_or_an_exact_path(tmp_path):
    selection = Selection(name="x", rule="manual", params={}, dataset_fingerprint=None, pair_ids=["a"])
    assert save_selection(selection, tmp_path / "dir") == tmp_path / "dir" / "x.json"
    assert load_selection(save_selection(selection, path=tmp_path / "elsewhere.json")) == selection


def test_list_selections_newest_first_skipping_bad_files(workspace):
    for name, created in [("old", "2025-01-01T00:00:00+00:00"), ("new", "2025-06-01T00:00:00+00:00")]:
        save_selection(Selection(name=name, rule="manual", params={}, dataset_fingerprint=None, pair_ids=[], created=created))
    (workspace / "selections" / "broken.json").write_text("{not json")
    assert [selection.name for selection in list_selections()] == ["new", "old"]


def test_load_selection_errors(workspace, tmp_path):
    with pytest.raises(UserError, match="no selection file"):
        load_selection("missing")
    (tmp_path / "other.json").write_text('{"name": "x"}')
    with pytest.raises(UserError, match="does not hold a selection"):
        load_selection(tmp_path / "other.json")
    with pytest.raises(UserError, match="no usable characters"):
        save_selection(Selection(name="//", rule="manual", params={}, dataset_fingerprint=None, pair_ids=[]))


def test_export_selection_writes_pairs_that_load_back(tmp_path):
    from dpo_engine.data.pairs import load_pairs

    source = tmp_path / "pairs.jsonl"
    rows = [{"id": name, "prompt": f"q {name}", "chosen": f"good {name}", "rejected": f"bad {name}"} for name in "abcd"]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pairs = load_pairs(source).pairs
    selection = Selection(name="two", rule="manual", params={}, dataset_fingerprint=None, pair_ids=["c", "a"])

    exported = export_selection(selection, pairs, tmp_path / "subset.jsonl")
    assert load_pairs(exported).pairs["pair_id"].tolist() == ["a", "c"]  # dataset order
    with pytest.raises(UserError, match="another dataset"):
        export_selection(Selection(name="x", rule="manual", params={}, dataset_fingerprint=None, pair_ids=["zz"]),
                         pairs, tmp_path / "bad.jsonl")


# ---- the CLI ----------------------------------------------------------------------------------------------------


def test_cli_select_writes_a_selection(table, tmp_path, workspace, capsys):
    path = tmp_path / "margins.parquet"
    table.to_parquet(path, index=False)
    (tmp_path / "margins.parquet.meta.json").write_text(json.dumps({"dataset_fingerprint": "fp123"}))

    code = main(["select", str(path), "--rule", "top_k", "--score", "external_margin", "--k", "2", "--name", "ex top"])
    assert code == 0
    saved = workspace / "selections" / "ex_top.json"
    assert str(saved) in capsys.readouterr().out
    selection = load_selection(saved)
    assert selection.pair_ids == ["d", "f"]
    assert selection.params == {"score": "external_margin", "k": 2}
    assert selection.dataset_fingerprint == "fp123"


def test_cli_select_where_threshold_and_out_file(table, tmp_path, capsys):
    path = tmp_path / "margins.csv"
    table.assign(pair_id=["001", "002", "003", "004", "005", "006"]).to_csv(path, index=False)
    out = tmp_path / "picked.json"
    code = main(["select", str(path), "--rule", "threshold", "--where", "external_margin:0:inf",
                 "--where", "implicit_margin::1", "--name", "pos", "--out", str(out)])
    assert code == 0
    assert "selected 3 of 6 pairs" in capsys.readouterr().out
    selection = load_selection(out)
    assert selection.pair_ids == ["001", "004", "005"]  # csv ids stay strings
    assert selection.params == {"where": {"external_margin": [0.0, None], "implicit_margin": [None, 1.0]}}
    assert selection.dataset_fingerprint is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--rule", "top_k", "--score", "nope", "--k", "1"], "not in the margins table"),
     (["--rule", "threshold", "--where", "external_margin:zero:1"], "not a number"),
     (["--rule", "top_k"], "exactly one of k")],
)
def test_cli_select_user_errors_exit_2(table, tmp_path, capsys, extra, message):
    path = tmp_path / "margins.parquet"
    table.to_parquet(path, index=False)
    assert main(["select", str(path), *extra, "--name", "x"]) == 2
    assert message in capsys.readouterr().err


def test_margin_correlations_pearson_and_spearman_with_ties():
    import scipy.stats

    # Ranks with ties averaged: external (1, 2.5, 2.5, 4), implicit (1, 2, 4, 3); the NaN row is left out.
    table = pd.DataFrame({"external_margin": [0.0, 1.0, 1.0, 3.0, np.nan], "implicit_margin": [-2.0, 0.5, 4.0, 1.0, 9.0]})
    got = margin_correlations(table)
    rank_x, rank_y = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 4, 3])
    assert got["spearman"] == pytest.approx(np.corrcoef(rank_x, rank_y)[0, 1])
    assert got["spearman"] == pytest.approx(scipy.stats.spearmanr(table.external_margin[:4], table.implicit_margin[:4])[0])
    assert got["pearson"] == pytest.approx(np.corrcoef([0, 1, 1, 3], [-2, 0.5, 4, 1])[0, 1])
    assert margin_correlations(table.iloc[:1]) == {"pearson": None, "spearman": None}


def test_default_selection_names_follow_the_rule():
    from dpo_engine.selection.naming import default_selection_name

    assert default_selection_name("top_k", {"score": "dm_mul", "frac": 0.1}, 120) == "top-k-dm_mul-10pct"
    both_positive = {"score": "bees", "frac": 0.25, "where": {"external_margin": [0.0, None]}}
    assert default_selection_name("top_k", both_positive, 300) == "top-k-bees-25pct-pos"
    assert default_selection_name("random", {"frac": 0.1, "seed": 7}, 120) == "random-10pct-s7"
    assert default_selection_name("partition", {"score": "implicit_margin", "part": "mid", "frac": 0.05}, 60) == \
        "mid-implicit_margin-5pct"
    where = {"external_margin": [0.5, None], "implicit_margin": [None, None]}
    assert default_selection_name("threshold", {"where": where}, 412) == "threshold-external_margin-412"
    assert default_selection_name("manual", {"pair_ids": ["a"] * 34}, 34) == "box-34"
    assert default_selection_name("smallest_gap", {"score": "implicit_margin", "frac": 0.1}, 120) == "smallest-gap-10pct"
