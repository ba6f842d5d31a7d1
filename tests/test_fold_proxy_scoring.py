"""`dpo-engine score --implicit crossfit | selective` end to end on the tiny model, and what ``auto`` picks.

Cross-fitting (issue #20, deliverable 0): every pair's implicit margin comes from a proxy that never trained on it,
checked from the folds the table records and the seed subsets the proxies wrote. Selective DPO: the fold proxies
are real LoRA runs launched through the runs queue, and the table's ``learning_order`` is what ``select --rule
selective_dpo`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dpo_engine import runs
from dpo_engine.cli import main
from dpo_engine.data.pairs import load_pairs, save_pairs
from dpo_engine.errors import ConfigError
from dpo_engine.margins.config import ScoreConfig
from dpo_engine.margins.table import load_margins_table
from dpo_engine.paths import ASSETS_DIR
from dpo_engine.runs.annotations import read_annotations
from tests.test_runs import kill_leftover_workers  # noqa: F401  (autouse: no proxy-run worker outlives a test)

TINY = ["--model", "tiny-random", "--max-length", "128", "--max-prompt-length", "64", "--device", "cpu",
        "--warmup-lr", "0.05", "--dtype", "fp32"]


def bundled_pairs_file(tmp_path: Path, n: int) -> Path:
    """The first ``n`` bundled UltraFeedback pairs (prompt, chosen, rejected, scores), truncated to keep forwards
    short, written as jsonl: the shape of the file the dashboard scores."""
    pairs = load_pairs(ASSETS_DIR / "data" / "ultrafeedback_binarized_scored_1200.jsonl").pairs.iloc[:n].copy()
    for column in ("prompt", "chosen", "rejected"):
        pairs[column] = pairs[column].str.slice(0, 120)
    return save_pairs(pairs, tmp_path / "pairs.jsonl")


def ids_in(path: Path) -> set[str]:
    return set(load_pairs(path).pairs.pair_id.astype(str))


def test_score_crossfit_scores_every_pair_with_a_proxy_that_never_trained_on_it(tmp_path):
    pairs_file = bundled_pairs_file(tmp_path, 16)
    out = tmp_path / "margins.parquet"
    code = main(["score", str(pairs_file), "--out", str(out), "--implicit", "crossfit", "--seed-size", "3",
                 "--proxy-max-steps", "1", *TINY])
    assert code == 0

    table, meta = load_margins_table(out)
    assert meta["implicit"]["source"] == "crossfit" and meta["implicit"]["folds"] == 2
    assert meta["implicit"]["in_sample"] is False and not table.in_warmup.any()
    assert table.implicit_margin.notna().all() and table.external_margin.notna().all()
    assert sorted(table.crossfit_fold.unique()) == [0, 1] and (table.crossfit_fold != table.scored_by_fold).all()
    for fold in (0, 1):
        trained_on = ids_in(tmp_path / "margins-crossfit" / f"fold-{fold}" / "seed_subset.jsonl")
        assert len(trained_on) == 3
        assert set(table.pair_id[table.crossfit_fold == fold]) >= trained_on  # drawn inside its own fold
        assert not trained_on & set(table.pair_id[table.scored_by_fold == fold])  # and never scored by it


def test_auto_is_crossfit_unless_a_fold_cannot_hold_the_seed_subset(tmp_path):
    from dpo_engine.cli.score import implicit_source

    config = ScoreConfig(pairs="p.jsonl", out="m.parquet")
    assert config.implicit == "auto" and config.crossfit_folds == 2
    assert implicit_source(config, 1200) == "crossfit"  # the bundled size: 120 seed pairs, folds of 600
    assert implicit_source(config, 12) == "crossfit"  # 2 seed pairs (the minimum), folds of 6
    assert implicit_source(ScoreConfig(pairs="p", out="m", seed_size=8), 12) == "warmup"  # folds of 6 < 8
    assert implicit_source(ScoreConfig(pairs="p", out="m", seed_size=8, crossfit_folds=3), 24) == "crossfit"
    assert implicit_source(ScoreConfig(pairs="p", out="m", seed_size=9, crossfit_folds=3), 24) == "warmup"
    assert implicit_source(ScoreConfig(pairs="p", out="m", policy="/adapter"), 1200) == "policy"
    assert implicit_source(ScoreConfig(pairs="p", out="m", implicit="warmup"), 1200) == "warmup"

    (tmp_path / "p.jsonl").write_text("")
    for field, value in (("crossfit_folds", 1), ("selective_seeds", (41, 41)), ("selective_beta", 0.0),
                         ("proxy_max_steps", 0)):
        with pytest.raises(ConfigError, match=field):
            ScoreConfig(pairs=str(tmp_path / "p.jsonl"), out="m.parquet", **{field: value}).validate()


def test_score_selective_trains_fold_proxies_through_the_runs_queue(tmp_path, capsys, monkeypatch):
    from dpo_engine.selection.hypotheses import fold_assignment

    monkeypatch.setenv(runs.RUNS_PER_DEVICE_ENV, "2")  # both proxies train at once, as on two GPUs

    pairs_file = bundled_pairs_file(tmp_path, 32)
    out = tmp_path / "margins.parquet"
    args = ["score", str(pairs_file), "--out", str(out), "--implicit", "selective", "--selective-seeds", "41",
            "--proxy-max-steps", "1", "--external", "none", *TINY]
    assert main(args) == 0

    proxy_runs = runs.list_runs()
    assert len(proxy_runs) == 2 and all(run.state == "completed" for run in proxy_runs)
    assert all("selective-dpo" in read_annotations(run.run_dir).tags for run in proxy_runs)
    table, meta = load_margins_table(out)
    assert meta["implicit"]["source"] == "selective" and meta["implicit"]["seeds"] == [41]
    assert sorted(meta["implicit"]["proxy_runs"]) == sorted(run.run_id for run in proxy_runs)
    assert not table.in_warmup.any() and table.learning_order.notna().all()

    # Each pair's loss is -log sigmoid(beta h) of the margin a proxy that held it out gave it.
    pair_ids = table.pair_id.to_numpy()
    folds = fold_assignment(32, 2, 41)
    np.testing.assert_array_equal(table.crossfit_fold.to_numpy(), folds)
    np.testing.assert_allclose(table.val_loss_seed41, np.log1p(np.exp(-0.1 * table.implicit_margin)), rtol=1e-9)
    np.testing.assert_allclose(table.learning_order, table.val_loss_seed41)
    for fold in (0, 1):
        trained_on = ids_in(tmp_path / "margins-selective" / "seed-41" / f"fold-{fold}" / "train.jsonl")
        assert trained_on == set(pair_ids[folds != fold])
        record = json.loads((tmp_path / "margins-selective" / "seed-41" / f"fold-{fold}" / "proxy_run.json").read_text())
        assert ids_in(runs.get_run(record["run_id"]).subset_path) == trained_on

    # select --rule selective_dpo reads the column: the easiest half, easy to hard.
    capsys.readouterr()
    assert main(["select", str(out), "--rule", "selective_dpo", "--tau", "0.5", "--name", "sdpo-half",
                 "--out", str(tmp_path / "s.json")]) == 0
    chosen = json.loads((tmp_path / "s.json").read_text())["pair_ids"]
    order = table.set_index("pair_id").learning_order
    assert len(chosen) == 16 and order[chosen].is_monotonic_increasing and order[chosen].max() <= order.median() + 1e-12

    # Scoring again waits on nothing and launches nothing: the completed proxy runs are reused.
    assert main(args + ["--out", str(tmp_path / "again.parquet"), "--warmup-dir", str(tmp_path / "margins-selective")]) == 0
    assert len(runs.list_runs()) == 2
    again = load_margins_table(tmp_path / "again.parquet")[0]
    np.testing.assert_allclose(again.learning_order, table.learning_order)
