"""DPO data maps (dpo_engine.margins.data_map, training.data_map) and "why this pair" (selection.explain)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from dpo_engine.margins.data_map import assign_regions, interval_for, region_cutoffs, step_records, summarize
from dpo_engine.selection.explain import pair_explanation, selector_rank


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def hand_records() -> pd.DataFrame:
    """Three pairs over steps 1 and 2 at beta 0.5, and a pair without a reference (NaN margins)."""
    margins = {"a": [2.0, 4.0], "b": [-2.0, 2.0], "c": [0.0, -4.0], "d": [np.nan, np.nan]}
    return pd.concat([step_records(step, list(margins), [values[i] for values in margins.values()], 0.5)
                      for i, step in enumerate((1, 2))])


def test_confidence_variability_correctness_match_a_hand_computation():
    summary = summarize(hand_records()).set_index("pair_id")
    p = {"a": [sigmoid(1), sigmoid(2)], "b": [sigmoid(-1), sigmoid(1)], "c": [0.5, sigmoid(-2)]}
    for pair, (first, second) in p.items():
        assert summary.confidence[pair] == pytest.approx((first + second) / 2)
        assert summary.variability[pair] == pytest.approx(abs(second - first) / 2)  # population std of two values
    assert summary.correctness.to_dict() == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0, "d": np.nan}, nan_ok=True)
    assert summary.final_margin.to_dict() == pytest.approx({"a": 4.0, "b": 2.0, "c": -4.0, "d": np.nan}, nan_ok=True)
    assert summary.n_steps.to_dict() == {"a": 2, "b": 2, "c": 2, "d": 0}
    # Variabilities 0.0749 (a), 0.2311 (b), 0.1904 (c): the 2/3 quantile is 0.1904 + (0.2311 - 0.1904) / 3 = 0.2040,
    # so b alone is ambiguous; a and c split at their median confidence (0.806 + 0.310) / 2 = 0.558.
    variability_cut, confidence_cut = region_cutoffs(summary.confidence, summary.variability)
    va, vb, vc = (abs(sigmoid(2) - sigmoid(1)) / 2, abs(sigmoid(1) - sigmoid(-1)) / 2, abs(sigmoid(-2) - 0.5) / 2)
    assert variability_cut == pytest.approx(vc + (vb - vc) / 3)
    assert confidence_cut == pytest.approx(((sigmoid(1) + sigmoid(2)) / 2 + (0.5 + sigmoid(-2)) / 2) / 2)
    assert va < variability_cut < vb
    assert summary.region.to_dict() == {"a": "easy", "b": "ambiguous", "c": "hard", "d": ""}


def test_one_recorded_step_has_no_ambiguous_pairs_and_interval_is_a_share_of_the_steps():
    summary = summarize(step_records(5, ["x", "y"], [1.0, -1.0], 0.1))
    assert summary.variability.tolist() == [0.0, 0.0]
    assert summary.region.tolist() == ["easy", "hard"]
    assert assign_regions([np.nan], [np.nan]).tolist() == [""]
    assert (interval_for(100, 8), interval_for(5, 8), interval_for(100, 0)) == (12, 1, 0)


# ---- why this pair ------------------------------------------------------------------------------------------------


def explain_tables():
    pairs = pd.DataFrame({
        "pair_id": ["p0", "p1", "p2", "p3"], "row": [0, 1, 2, 3],
        "prompt_messages": [[{"role": "user", "content": f"q{i}"}] for i in range(4)],
        "chosen": ["same", "a long chosen answer", "x", ""], "rejected": ["same", "no", "y", "z"],
        "score_chosen": [1.0, 5.0, 2.0, 3.0], "score_rejected": [0.0, 1.0, 1.0, 1.0],
        "warnings": ["identical_responses", "", "", "empty_response"],
    })
    table = pd.DataFrame({
        "pair_id": ["p0", "p1", "p2", "p3"], "external_margin": [1.0, 4.0, 1.0, 2.0],
        "implicit_margin": [0.5, -1.0, 3.0, np.nan], "dm_mul": [0.1, 0.9, 0.4, np.nan],
        "chosen_tokens": [2, 120, 1, 0], "rejected_tokens": [2, 1, 1, 1], "in_warmup": [False, True, False, False],
        "loss_diff": [0.1, 0.2, 0.3, 0.4], "irm": [0.4, 0.3, 0.2, 0.1], "my_score": [3.0, 2.0, 1.0, 0.0],
    })
    return pairs, table


def test_selector_ranks_follow_each_selectors_order():
    values = [1.0, 4.0, 1.0, 2.0]
    assert selector_rank(values, 0, "desc") == (3.0, 4)  # ties share the lowest rank: 4, 2, then 1 and 1 at rank 3
    assert selector_rank(values, 0, "asc") == (1.0, 4)
    # Percentiles (mid-ranks): 1.0 -> 0.25 (twice), 2.0 -> 0.625, 4.0 -> 0.875; |p - 0.5|: 0.25, 0.375, 0.25, 0.125.
    assert selector_rank(values, 3, "median") == (1.0, 4) and selector_rank(values, 1, "median") == (4.0, 4)
    assert selector_rank([np.nan, 1.0], 0, "desc")[0] != selector_rank([np.nan, 1.0], 0, "desc")[0]  # NaN rank


def test_pair_explanation_lists_ranks_lengths_warnings_and_data_map_position():
    pairs, table = explain_tables()
    data_map = summarize(hand_records().replace({"a": "p1"}))
    record = pair_explanation("p1", pairs, table, data_map, max_length=128, max_prompt_length=16)
    ranks = {row["selector"]: row for row in record["ranks"]}
    assert ranks["top-k external margin"]["rank"] == 1 and ranks["top-k external margin"]["top_percent"] == 25.0
    assert ranks["top-k implicit margin"]["rank"] == 3 and ranks["top-k implicit margin"]["of"] == 3
    assert ranks["smallest implicit gap (Qi et al.)"]["rank"] == 1
    assert ranks["top-k DM-MUL"]["rank"] == 1
    # LossDiff and IRM percentiles of p1: 0.375 and 0.625, distance 0.125, tied with p2 for the most central.
    assert ranks["LossDiff-IRM medium band (Zhang et al.)"]["rank"] == 1
    assert ranks["top-k my_score"]["rank"] == 2
    assert "top-k chosen_tokens" not in ranks and "top-k in_warmup" not in ranks
    assert record["lengths"] == {"chosen_chars": 20, "rejected_chars": 2, "chosen_tokens": 120, "rejected_tokens": 1}
    assert record["warnings"] == ["truncated_at_max_length", "in_warmup"]  # 120 >= 128 - 16 tokens
    assert record["data_map"]["region"] == "easy" and record["data_map"]["confidence"] > 0.8
    json.dumps(record, default=str)  # plain values the page can show

    assert pair_explanation("p0", pairs, table)["warnings"] == ["identical_responses"]
    assert pair_explanation("p3", pairs, table)["warnings"] == ["empty_response"]
    assert pair_explanation("p0", pairs, table)["data_map"] is None
    with pytest.raises(KeyError):
        pair_explanation("nope", pairs, table)


# ---- the recorder in a tiny-model run -----------------------------------------------------------------------------


def test_a_run_writes_its_data_map_and_a_resume_keeps_one_row_per_step_and_pair(tmp_path):
    import torch

    from dpo_engine.training.data_map import DATA_MAP_FILE, read_data_map
    from dpo_engine.training.trainer import train
    from tests.test_training import tiny_config

    torch.set_num_threads(1)
    config = tiny_config(tmp_path, n_pairs=4, batch_size=2, max_steps=3, data_map_every=2, save_steps=1)
    run_dir = tmp_path / "run"
    seen = []
    stopped = train(config, run_dir, should_stop=lambda: len(seen) >= 2, on_progress=lambda s, t: seen.append(s))
    assert stopped["stopped"] and sorted(set(read_data_map(run_dir / DATA_MAP_FILE).step)) == [2]
    with open(run_dir / DATA_MAP_FILE, "a") as handle:  # a record after the checkpoint must not survive the resume
        handle.write(json.dumps({"step": 3, "pair_id": "ghost", "implicit_margin": 9.0, "beta": 0.1}) + "\n")

    train(config, run_dir, resume=True)
    records = read_data_map(run_dir / DATA_MAP_FILE)
    assert len(records) == 8 and not records.duplicated(["step", "pair_id"]).any()
    assert records.groupby("step").pair_id.nunique().to_dict() == {2: 4, 3: 4}  # every K steps and the last one
    assert set(records.beta) == {0.1} and "ghost" not in set(records.pair_id)
    final = pd.read_parquet(run_dir / "pair_rewards.parquet").set_index("pair_id").implicit_margin
    last = records[records.step == 3].set_index("pair_id").implicit_margin
    assert last.to_dict() == pytest.approx(final.reindex(last.index).to_dict(), abs=1e-4)  # the same scoring pass
    assert records[records.step == 2].implicit_margin.abs().sum() > 0  # the policy moved from the reference
    summary = summarize(records)
    assert len(summary) == 4 and set(summary.region) <= {"easy", "ambiguous", "hard"}

    fresh = train(config, run_dir)  # starting over removes the old data map first
    assert fresh["steps"] == 3 and len(read_data_map(run_dir / DATA_MAP_FILE)) == 8


# ---- the Data map page and why-this-pair (AppTest) -----------------------------------------------------------------


def test_data_map_page_maps_a_run_saves_a_region_and_explains_a_pair(workspace, tmp_path):
    from dpo_engine import runs
    from dpo_engine.data.pairs import bundled_datasets, load_pairs
    from dpo_engine.selection.store import list_selections
    from dpo_engine.training.data_map import DATA_MAP_FILE
    from tests.test_dashboard_pages import app

    demo = load_pairs(bundled_datasets()["ultrafeedback"]).pairs.iloc[:30]
    subset = tmp_path / "pairs.jsonl"
    subset.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    run_id = runs.create_run({"model": "tiny-random", "subset": str(subset), "max_steps": 2})
    rng = np.random.default_rng(0)
    records = pd.concat([step_records(step, demo.pair_id, rng.normal(step, 3.0, len(demo)), 0.1) for step in (1, 2, 3)])
    (runs.get_run(run_id).run_dir / DATA_MAP_FILE).write_text(records.to_json(orient="records", lines=True))
    expected = summarize(records)

    at = app("views/data_map.py")
    assert at.get("plotly_chart"), "the data map scatter is drawn"
    caption = " ".join(item.value for item in at.caption)
    assert "30 pairs over 3 recorded steps" in caption
    at.segmented_control(key="data_map_region").set_value("hard").run()
    assert not at.exception, [error.message for error in at.exception]
    hard = expected.pair_id[expected.region == "hard"].tolist()
    assert next(item.value for item in at.metric if item.label == "Picked pairs") == f"{len(hard):,}"
    drawn = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]  # the taken region stands out on the map
    assert sorted(drawn["selectedpoints"]) == np.flatnonzero(expected.dropna(subset=["confidence"]).region == "hard").tolist()
    next(button for button in at.button if button.label == "Save selection").click().run()
    saved = list_selections()
    assert len(saved) == 1 and sorted(saved[0].pair_ids) == sorted(hard)
    at.selectbox(key="data_map_pair").set_value(hard[-1]).run()  # opening another pair keeps the confirmation
    assert [item.value for item in at.success] == [f"Saved {len(hard)} pairs as **{saved[0].name}** (`{saved[0].name}.json`)."]
    texts = " ".join(item.value for item in at.markdown)
    assert "Why this pair" in texts and "Data map: **hard**" in texts
    ranks = at.dataframe[0].value
    assert "top-k external margin" in set(ranks.selector)
    at.segmented_control(key="data_map_region").set_value("easy").run()  # other pairs picked: not saved yet
    assert not at.success
