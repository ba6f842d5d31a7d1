"""LossDiff and IRM (Zhang et al., ICLR 2026; issue #20, "the selection arena"): the formulas against a hand
computation, the validation split, and ``dpo-engine score --implicit lossdiff-irm`` end to end on the tiny model,
its warm-up and validation models runs through the runs queue, down to ``select_pairs(table, "lossdiff_irm", ...)``.

Where the definitions come from and which parts are assumed is written in `dpo_engine.training.lossdiff_irm`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dpo_engine import runs
from dpo_engine.cli import main
from dpo_engine.errors import ConfigError, UserError
from dpo_engine.margins.config import ScoreConfig
from dpo_engine.margins.table import load_margins_table
from dpo_engine.runs.annotations import read_annotations
from dpo_engine.selection import select_pairs
from dpo_engine.training.lossdiff_irm import lossdiff_irm_proxies, lossdiff_irm_scores, validation_size
from tests.test_fold_proxy_scoring import TINY, bundled_pairs_file, ids_in
from tests.test_runs import kill_leftover_workers  # noqa: F401  (autouse: no proxy-run worker outlives a test)

pytestmark = pytest.mark.usefixtures("one_thread")
LN3 = math.log(3.0)


def fixture_logps() -> dict[str, np.ndarray]:
    """Four pairs, reference log-probs -10 (chosen) and -20 (rejected); each model moves them by (a, b), its
    implicit margin h = a - b:

    1. current (ln 3, 0): h = ln 3;   validation (0, ln 3): h_val = -ln 3.
    2. current (0, ln 3): h = -ln 3;  validation (2 ln 3, ln 3): h_val = ln 3.
    3. current (1, 1): h = 0;         validation (ln 3, 0): h_val = ln 3.
    4. a validation log-prob missing (NaN).
    """
    current = np.array([[LN3, 0.0], [0.0, LN3], [1.0, 1.0], [0.5, 0.0]])
    validation = np.array([[0.0, LN3], [2 * LN3, LN3], [LN3, 0.0], [np.nan, 0.0]])
    return {
        "current_chosen_logps": -10.0 + current[:, 0], "current_rejected_logps": -20.0 + current[:, 1],
        "val_chosen_logps": -10.0 + validation[:, 0], "val_rejected_logps": -20.0 + validation[:, 1],
        "ref_chosen_logps": np.full(4, -10.0), "ref_rejected_logps": np.full(4, -20.0),
    }


def test_lossdiff_and_irm_by_hand():
    # beta = 1. IRM = h: ln 3, -ln 3, 0. LossDiff = l(h) - l(h_val), l(m) = log(1 + e^-m):
    #   l(ln 3) = log 4/3, l(-ln 3) = log 4, l(0) = log 2, so
    #   pair 1: log 4/3 - log 4   = -log 3  (the validation model likes the pair less than the current one)
    #   pair 2: log 4 - log 4/3   = log 3
    #   pair 3: log 2 - log 4/3   = log 3/2 (IRM 0, yet the validation model lowered its loss)
    loss_diff, irm = lossdiff_irm_scores(**fixture_logps(), beta=1.0)
    np.testing.assert_allclose(irm[:3], [LN3, -LN3, 0.0], atol=1e-12)
    np.testing.assert_allclose(loss_diff[:3], [-LN3, LN3, math.log(1.5)], atol=1e-12)
    assert np.isnan(irm[3]) and np.isnan(loss_diff[3])

    # beta = 0.1 scales both margins: IRM 0.1 ln 3 for pair 1, and since l(m) - l(-m) = -m, its LossDiff is
    # -0.1 ln 3; pair 3's is log 2 - log(1 + 3^-0.1).
    loss_diff, irm = lossdiff_irm_scores(**fixture_logps(), beta=0.1)
    np.testing.assert_allclose(irm[:3], [0.1 * LN3, -0.1 * LN3, 0.0], atol=1e-12)
    assert loss_diff[0] == pytest.approx(-0.1 * LN3, abs=1e-12)
    assert loss_diff[2] == pytest.approx(math.log(2.0) - math.log(1.0 + 3.0 ** -0.1), abs=1e-12)


def test_the_validation_split_is_seeded_disjoint_and_capped():
    assert validation_size(24) == 2 and validation_size(200) == 20 and validation_size(50_000) == 1000
    assert validation_size(200, 7) == 7
    current, validation = lossdiff_irm_proxies(200, seed=3)
    assert len(validation.training_rows) == 20 and len(current.training_rows) == 180
    assert not set(validation.training_rows) & set(current.training_rows)
    np.testing.assert_array_equal(current.held_out_rows, current.training_rows)  # theta scores what it trained on
    np.testing.assert_array_equal(validation.held_out_rows, current.training_rows)
    assert (current.name, validation.name) == ("current", "validation")
    np.testing.assert_array_equal(lossdiff_irm_proxies(200, seed=3)[1].training_rows, validation.training_rows)
    assert not np.array_equal(lossdiff_irm_proxies(200, seed=4)[1].training_rows, validation.training_rows)
    with pytest.raises(UserError, match="lossdiff_validation_size"):
        lossdiff_irm_proxies(10, 10)

    for field, value in (("lossdiff_validation_size", 1), ("lossdiff_beta", 0.0), ("lossdiff_epochs", 0)):
        with pytest.raises(ConfigError, match=field):
            ScoreConfig(pairs=__file__, out="m.parquet", implicit="lossdiff-irm", **{field: value}).validate()


def reference_joint_band(loss_diff: np.ndarray, irm: np.ndarray, k: int) -> list[int]:
    """The k rows whose larger distance of the two mid-rank percentiles from 0.5 is smallest (index order on ties)."""
    n = len(loss_diff)
    distance = np.maximum(np.abs((pd.Series(loss_diff).rank() - 0.5) / n - 0.5),
                          np.abs((pd.Series(irm).rank() - 0.5) / n - 0.5)).to_numpy()
    return sorted(range(n), key=lambda i: (distance[i], i))[:k]


def test_score_lossdiff_irm_end_to_end_then_select(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.RUNS_PER_DEVICE_ENV, "2")  # both models train at once, as on two GPUs
    pairs_file = bundled_pairs_file(tmp_path, 24)
    out = tmp_path / "margins.parquet"
    args = ["score", str(pairs_file), "--out", str(out), "--implicit", "lossdiff-irm", "--lossdiff-validation-size",
            "6", "--proxy-max-steps", "2", "--external", "none", *TINY]
    assert main(args) == 0

    # Two completed runs of the runs queue: the warm-up model on 18 pairs, the validation model on the other 6.
    proxy_runs = runs.list_runs()
    assert len(proxy_runs) == 2 and all(run.state == "completed" for run in proxy_runs)
    assert all("lossdiff-irm" in read_annotations(run.run_dir).tags for run in proxy_runs)
    table, meta = load_margins_table(out)
    implicit = meta["implicit"]
    assert implicit["source"] == "lossdiff-irm" and implicit["validation_size"] == 6 and implicit["beta"] == 0.1
    assert sorted(implicit["proxy_runs"].values()) == sorted(run.run_id for run in proxy_runs)
    assert "assumed" in implicit["method"] and not table.in_warmup.any()
    validation = set(table.pair_id[table.in_validation])
    assert len(validation) == 6 and validation == ids_in(tmp_path / "margins-lossdiff-irm" / "validation" /
                                                          "train.jsonl")
    assert ids_in(tmp_path / "margins-lossdiff-irm" / "current" / "train.jsonl") == set(table.pair_id) - validation

    # Validation pairs: no scores; every other pair: both, from the two models' margins against the base.
    held_out = ~table.in_validation.to_numpy(bool)
    assert table.loss_diff[~held_out].isna().all() and table.irm[~held_out].isna().all()
    assert table.loss_diff[held_out].notna().all() and table.implicit_margin.notna().all()
    np.testing.assert_allclose(table.irm[held_out], 0.1 * table.implicit_margin[held_out], rtol=1e-9)
    expected_loss_diff = (np.logaddexp(0.0, -0.1 * table.implicit_margin)
                          - np.logaddexp(0.0, -0.1 * table.val_implicit_margin))
    np.testing.assert_allclose(table.loss_diff[held_out], expected_loss_diff[held_out], rtol=1e-9, atol=1e-12)
    assert np.abs(table.implicit_margin).max() > 0 and np.abs(table.val_implicit_margin).max() > 0
    assert not np.allclose(table.implicit_margin, table.val_implicit_margin)  # two different models

    # select --rule lossdiff_irm picks the joint medium band of the 18 scored pairs, never a validation pair.
    chosen = select_pairs(table, "lossdiff_irm", {"k": 5})
    scored = table[held_out].reset_index(drop=True)
    expected = reference_joint_band(scored.loss_diff.to_numpy(), scored.irm.to_numpy(), 5)
    assert sorted(chosen) == sorted(scored.pair_id[expected]) and not set(chosen) & validation
    everything = select_pairs(table, "random", {"k": 24})  # no rule selects a validation pair
    assert len(everything) == 18 and not set(everything) & validation


@pytest.mark.slow
def test_the_default_model_scores_lossdiff_irm(tmp_path, monkeypatch):
    """The real SmolLM2-135M: both models train as runs (two optimizer steps each: the first is the warm-up's, at a
    learning rate of 0) and every scored pair gets both columns, consistent with the two models' margins; a
    lossdiff_irm selection comes out of the table."""
    from dpo_engine.models.loading import DEFAULT_MODEL

    monkeypatch.setenv(runs.RUNS_PER_DEVICE_ENV, "2")
    out = tmp_path / "margins.parquet"
    assert main(["score", str(bundled_pairs_file(tmp_path, 8)), "--out", str(out), "--implicit", "lossdiff-irm",
                 "--lossdiff-validation-size", "2", "--proxy-max-steps", "2", "--external", "none", "--model",
                 DEFAULT_MODEL, "--max-length", "128", "--max-prompt-length", "64", "--device", "cpu",
                 "--dtype", "fp32", "--warmup-lr", "0.001"]) == 0
    assert [run.state for run in runs.list_runs()] == ["completed", "completed"]
    table, _ = load_margins_table(out)
    scored = table[~table.in_validation.to_numpy(bool)]
    assert len(scored) == 6 and scored.loss_diff.notna().all() and scored.irm.notna().all()
    np.testing.assert_allclose(scored.irm, 0.1 * scored.implicit_margin, rtol=1e-9)
    assert np.abs(scored.implicit_margin).max() > 0 and not np.allclose(scored.implicit_margin,
                                                                        scored.val_implicit_margin)
    assert len(select_pairs(table, "lossdiff_irm", {"k": 3})) == 3


def test_the_scoring_form_offers_the_source_and_names_it():
    from typing import get_args, get_type_hints

    from dashboard.scoring_form import IMPLICIT_LABELS, score_summary

    assert set(IMPLICIT_LABELS) <= set(get_args(get_type_hints(ScoreConfig)["implicit"]))
    assert "lossdiff-irm" in IMPLICIT_LABELS
    config = ScoreConfig(pairs="p.jsonl", out="m.parquet", implicit="lossdiff-irm")
    assert "LossDiff and IRM" in score_summary(config, 1200)


def test_the_margins_page_selects_lossdiff_irm_and_rings_the_validation_pairs(workspace):
    """A LossDiff-IRM table for the UltraFeedback demo (random scores, the real columns): the Margins page offers
    the rule, its pick leaves the validation pairs out, and the chart's caption says why they are ringed."""
    from streamlit.testing.v1 import AppTest

    from dpo_engine.data.pairs import bundled_datasets, fingerprint, load_pairs
    from dpo_engine.margins.scoring import external_margins
    from dpo_engine.margins.table import build_margins_table, save_margins_table
    from test_dashboard_pages import APP, TIMEOUT, metric, scatter_spec

    pairs = load_pairs(bundled_datasets()["ultrafeedback"]).pairs
    dataset_fp, n, rng = fingerprint(pairs), len(pairs), np.random.default_rng(0)
    implicit = pd.DataFrame({"pair_id": pairs.pair_id, "implicit_margin": rng.normal(0.0, 2.0, n),
                             "val_implicit_margin": rng.normal(0.0, 2.0, n)})
    for column in ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"):
        implicit[column] = rng.normal(-300.0, 50.0, n)
    implicit["chosen_tokens"], implicit["rejected_tokens"] = rng.integers(20, 500, n), rng.integers(20, 500, n)
    implicit["in_validation"] = np.arange(n) < 120
    implicit["irm"] = np.where(implicit.in_validation, np.nan, 0.1 * implicit.implicit_margin)
    implicit["loss_diff"] = np.where(implicit.in_validation, np.nan, rng.normal(0.0, 0.1, n))
    table = build_margins_table(pairs, external_margins(pairs, "dataset")[0], implicit)
    save_margins_table(table, workspace / "margins" / f"{dataset_fp}.parquet",
                       {"dataset_fingerprint": dataset_fp, "implicit": {"source": "lossdiff-irm"}})

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in {"dataset": "ultrafeedback", "rule": "hypothesis", "hyp": "lossdiff_irm", "pct": "50"}.items():
        at.query_params[key] = value
    at.switch_page("views/margins.py")
    at.run()
    assert not at.exception, [error.message for error in at.exception]
    assert at.selectbox(key=f"hyp-{dataset_fp}").value == "lossdiff_irm"
    assert metric(at, "Selected pairs") == "600"
    assert any("120 validation pairs" in caption.value for caption in at.caption)
    ringed = [trace["name"] for trace in scatter_spec(at)["data"] if "pairs (" in trace.get("name", "")]
    assert ringed == ["validation pairs (120): never selected"]  # not the warm-up proxy's in-sample caveat
    assert len(select_pairs(table, "lossdiff_irm", {"frac": 0.5})) == 600
    assert not set(select_pairs(table, "top_k", {"score": "dm_mul", "k": 1200})) & set(pairs.pair_id[:120])
