"""Cross-fitted implicit margins and the warm-up bias they remove (issue #20, deliverable 0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dpo_engine.data.pairs import load_pairs
from dpo_engine.margins.scoring import implicit_margins
from dpo_engine.margins.table import build_margins_table, mark_warmup
from dpo_engine.models.loading import TINY_MODEL
from dpo_engine.paths import ASSETS_DIR
from dpo_engine.selection.rules import select_pairs
from dpo_engine.training.crossfit import crossfit_implicit_margins
from dpo_engine.training.warmup import warmup_seed_ids

SCORING = {"device": "cpu", "max_length": 128, "max_prompt_length": 64, "batch_size": 4}
TRAINING = {"max_steps": 1, "max_length": 128, "max_prompt_length": 64, "device": "cpu", "learning_rate": 5e-2,
            "batch_size": 2, "lr_scheduler": "constant", "warmup_ratio": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_pairs(tmp_path: Path, n: int = 10) -> pd.DataFrame:
    records = [{"prompt": f"Question {i}: what is {i} + {i}?", "chosen": f"It is {2 * i}.",
                "rejected": f"No idea, maybe {i}{'!' * i}."} for i in range(n)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return load_pairs(path).pairs


def seed_ids(fold_dir: Path) -> set[str]:
    return set(load_pairs(fold_dir / "seed_subset.jsonl").pairs.pair_id.astype(str))


def test_no_pair_is_scored_by_a_proxy_that_trained_on_it(tmp_path):
    pairs = small_pairs(tmp_path)
    table = crossfit_implicit_margins(pairs, TINY_MODEL, tmp_path / "crossfit", n_folds=2, seed_size=2,
                                      scoring=SCORING, **TRAINING)
    assert table.pair_id.tolist() == pairs.pair_id.tolist()
    assert (table.crossfit_fold != table.scored_by_fold).all()
    for fold in (0, 1):
        trained_on = seed_ids(tmp_path / "crossfit" / f"fold-{fold}")
        assert len(trained_on) == 2
        rows = table[table.pair_id.isin(trained_on)]
        assert (rows.crossfit_fold == fold).all() and (rows.scored_by_fold != fold).all()

    # A pair proxy 0 trained on carries proxy 1's margin, not its in-sample margin under proxy 0.
    pair = pairs[pairs.pair_id.isin(seed_ids(tmp_path / "crossfit" / "fold-0"))].iloc[:1]
    in_sample = implicit_margins(pair, str(tmp_path / "crossfit" / "fold-0" / "adapter"), **SCORING)
    out_of_fold = implicit_margins(pair, str(tmp_path / "crossfit" / "fold-1" / "adapter"), **SCORING)
    value = table.set_index("pair_id").implicit_margin[pair.pair_id.iloc[0]]
    assert value == pytest.approx(out_of_fold.implicit_margin.iloc[0], rel=1e-5)
    assert value != pytest.approx(in_sample.implicit_margin.iloc[0], rel=1e-3)


def test_the_margins_table_marks_the_warmup_pairs(tmp_path):
    pairs = small_pairs(tmp_path, n=30)
    implicit = pd.DataFrame({"pair_id": pairs.pair_id, "implicit_margin": np.arange(30.0),
                             **{c: 0.0 for c in ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                                                  "ref_rejected_logps")}, "chosen_tokens": 5, "rejected_tokens": 5})
    ids = warmup_seed_ids(pairs)  # 10 % of 30, seed 42, as warmup_proxy draws them
    table = build_margins_table(pairs, None, implicit, warmup_ids=ids)
    assert len(ids) == 3 and table.in_warmup.sum() == 3
    assert set(table.pair_id[table.in_warmup]) == set(ids)
    assert not build_margins_table(pairs, None, implicit).in_warmup.any()


def shipped_margins() -> tuple[pd.DataFrame, list[str]]:
    pairs = load_pairs(ASSETS_DIR / "data" / "ultrafeedback_binarized_scored_1200.jsonl").pairs
    table = pd.read_parquet(ASSETS_DIR / "margins" / "ultrafeedback.parquet")
    return table, warmup_seed_ids(pairs)


def test_the_shipped_margins_show_the_in_sample_bias_the_issue_reports():
    table, ids = shipped_margins()
    table = mark_warmup(table, ids)
    assert table.in_warmup.sum() == 120
    means = table.groupby("in_warmup").implicit_margin.mean()
    assert means[True] == pytest.approx(2.11, abs=0.01) and means[False] == pytest.approx(0.12, abs=0.01)
    im_top = select_pairs(table, "partition", {"score": "implicit_margin", "part": "top", "frac": 0.1})
    dm_mul = select_pairs(table, "top_k", {"score": "dm_mul", "frac": 0.1})
    assert len(set(im_top) & set(ids)) == 99 and len(set(dm_mul) & set(ids)) == 44
    assert "in_warmup" in pd.read_parquet(ASSETS_DIR / "margins" / "ultrafeedback.parquet").columns


def test_random_at_its_default_seed_no_longer_draws_the_warmup_subset():
    table, ids = shipped_margins()
    drawn = select_pairs(table, "random", {"frac": 0.1})
    overlap = len(set(drawn) & set(ids))
    assert 3 <= overlap <= 25  # chance: 120 * 120 / 1200 = 12; the hypergeometric 99.9 % range is about 3-23
    assert len(set(select_pairs(table, "random", {"frac": 0.1, "seed": 42})) & set(ids)) == 120  # the old default


def test_selective_dpo_validation_losses_come_from_proxies_that_never_saw_the_pair(tmp_path):
    from dpo_engine.selection.hypotheses import fold_assignment
    from dpo_engine.training.selective_dpo import selective_dpo_order, validation_losses

    pairs = small_pairs(tmp_path, n=8)
    table = selective_dpo_order(pairs, TINY_MODEL, tmp_path / "sdpo", n_folds=2, seeds=(41, 42), beta=0.1,
                                scoring=SCORING, **TRAINING)
    assert table.pair_id.tolist() == pairs.pair_id.tolist()
    assert list(table.columns) == ["pair_id", "val_loss_seed41", "val_loss_seed42", "learning_order"]
    np.testing.assert_allclose(table.learning_order, (table.val_loss_seed41 + table.val_loss_seed42) / 2)

    folds = fold_assignment(8, 2, 41)
    row = int(np.flatnonzero(folds == 0)[0])  # held out by proxy (41, 0), which trained on fold 1 only
    trained_on = seed_ids(tmp_path / "sdpo" / "seed-41" / "fold-0")
    assert pairs.pair_id.iloc[row] not in trained_on and len(trained_on) == 4
    margin = implicit_margins(pairs.iloc[[row]], str(tmp_path / "sdpo" / "seed-41" / "fold-0" / "adapter"), **SCORING)
    expected = -np.log(1 / (1 + np.exp(-0.1 * margin.implicit_margin.iloc[0])))  # -log sigmoid(beta * h)
    assert table.val_loss_seed41.iloc[row] == pytest.approx(expected, rel=1e-6)
    assert validation_losses([0.0], 0.1)[0] == pytest.approx(np.log(2))

    subset = select_pairs(table, "selective_dpo", {"tau": 0.5})
    assert len(subset) == 4 and table.set_index("pair_id").learning_order[subset].is_monotonic_increasing
