"""LossDiff and IRM (Zhang et al., ICLR 2026; issue #20, "the selection arena"): the formulas against a hand
computation, the validation split, and ``dpo-engine score --implicit lossdiff-irm`` end to end on the tiny model,
its proxy a run through the runs queue, down to ``select_pairs(table, "lossdiff_irm", ...)``.

Which parts of the definitions are assumed (the paper's method section could not be read here) is written in
`dpo_engine.training.lossdiff_irm`'s docstring.
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
from dpo_engine.training.lossdiff_irm import lossdiff_irm_scores, validation_proxy, validation_size
from tests.test_fold_proxy_scoring import TINY, bundled_pairs_file, ids_in
from tests.test_runs import kill_leftover_workers  # noqa: F401  (autouse: no proxy-run worker outlives a test)

pytestmark = pytest.mark.usefixtures("one_thread")
LN3 = math.log(3.0)


def fixture_logps() -> dict[str, np.ndarray]:
    """Four pairs, reference log-probs -10 (chosen) and -20 (rejected), the proxy's moved by d_w and d_l:

    1. d_w = 2 ln 3 over 2 tokens, d_l = 0 over 4: per-token margin ln 3.
    2. d_w = 0 over 2 tokens, d_l = 4 ln 3 over 4: per-token margin -ln 3.
    3. d_w = 3 over 3 tokens, d_l = 2 over 2: per-token margin 0, summed margin 1.
    4. a reference log-prob missing (NaN).
    """
    d_w = np.array([2 * LN3, 0.0, 3.0, 1.0])
    d_l = np.array([0.0, 4 * LN3, 2.0, 0.0])
    return {
        "policy_chosen_logps": -10.0 + d_w, "policy_rejected_logps": -20.0 + d_l,
        "ref_chosen_logps": np.array([-10.0, -10.0, -10.0, np.nan]), "ref_rejected_logps": np.full(4, -20.0),
        "chosen_tokens": np.array([2, 2, 3, 5]), "rejected_tokens": np.array([4, 4, 2, 5]),
    }


def test_lossdiff_and_irm_by_hand():
    # beta = 1. IRM = d_w - d_l: 2 ln 3, -4 ln 3, 1. LossDiff = log 2 - log(1 + exp(-m)), m per token:
    #   m = ln 3:  log 2 - log(1 + 1/3) = log 2 - log 4/3 = log 3/2
    #   m = -ln 3: log 2 - log(1 + 3)   = log 2 - log 4   = -log 2
    #   m = 0:     log 2 - log 2        = 0  (IRM is 1: the chosen response is longer, its per-token gain the same)
    loss_diff, irm = lossdiff_irm_scores(**fixture_logps(), beta=1.0)
    np.testing.assert_allclose(irm[:3], [2 * LN3, -4 * LN3, 1.0], rtol=1e-12)
    np.testing.assert_allclose(loss_diff[:3], [math.log(1.5), -math.log(2.0), 0.0], atol=1e-12)
    assert np.isnan(irm[3]) and np.isnan(loss_diff[3])

    # beta = 0.1 scales IRM and the margin inside the loss: pair 1's LossDiff is log 2 - log(1 + 3^-0.1).
    loss_diff, irm = lossdiff_irm_scores(**fixture_logps(), beta=0.1)
    np.testing.assert_allclose(irm[:3], [0.2 * LN3, -0.4 * LN3, 0.1], rtol=1e-12)
    assert loss_diff[0] == pytest.approx(math.log(2.0) - math.log(1.0 + 3.0 ** -0.1), abs=1e-12)

    # Summed log-ratios: pair 3's margin is 1, log 2 - log(1 + 1/e); and LossDiff is then log 2 - softplus(-IRM),
    # a monotone function of IRM (the reason the per-token form is the default).
    loss_diff, irm = lossdiff_irm_scores(**fixture_logps(), beta=1.0, per_token=False)
    assert loss_diff[2] == pytest.approx(math.log(2.0) - math.log(1.0 + math.exp(-1.0)), abs=1e-12)
    np.testing.assert_allclose(loss_diff[:3], math.log(2.0) - np.logaddexp(0.0, -irm[:3]), atol=1e-12)


def test_the_validation_split_is_seeded_disjoint_and_capped():
    assert validation_size(24) == 2 and validation_size(200) == 20 and validation_size(50_000) == 1000
    assert validation_size(200, 7) == 7
    proxy = validation_proxy(200, seed=3)
    assert len(proxy.training_rows) == 20 and len(proxy.held_out_rows) == 180
    assert not set(proxy.training_rows) & set(proxy.held_out_rows)
    np.testing.assert_array_equal(validation_proxy(200, seed=3).training_rows, proxy.training_rows)
    assert not np.array_equal(validation_proxy(200, seed=4).training_rows, proxy.training_rows)
    with pytest.raises(UserError, match="lossdiff_validation_size"):
        validation_proxy(10, 10)

    for field, value in (("lossdiff_validation_size", 1), ("lossdiff_beta", 0.0)):
        with pytest.raises(ConfigError, match=field):
            ScoreConfig(pairs=__file__, out="m.parquet", implicit="lossdiff-irm", **{field: value}).validate()


def reference_joint_band(loss_diff: np.ndarray, irm: np.ndarray, k: int) -> list[int]:
    """The k rows whose larger distance of the two mid-rank percentiles from 0.5 is smallest (index order on ties)."""
    n = len(loss_diff)
    distance = np.maximum(np.abs((pd.Series(loss_diff).rank() - 0.5) / n - 0.5),
                          np.abs((pd.Series(irm).rank() - 0.5) / n - 0.5)).to_numpy()
    return sorted(range(n), key=lambda i: (distance[i], i))[:k]


def test_score_lossdiff_irm_end_to_end_then_select(tmp_path):
    pairs_file = bundled_pairs_file(tmp_path, 24)
    out = tmp_path / "margins.parquet"
    args = ["score", str(pairs_file), "--out", str(out), "--implicit", "lossdiff-irm", "--lossdiff-validation-size",
            "6", "--proxy-max-steps", "2", "--external", "none", *TINY]
    assert main(args) == 0

    # One proxy, a completed run of the runs queue, trained on the 6 validation pairs the table marks.
    [run] = runs.list_runs()
    assert run.state == "completed" and "lossdiff-irm" in read_annotations(run.run_dir).tags
    table, meta = load_margins_table(out)
    implicit = meta["implicit"]
    assert implicit["source"] == "lossdiff-irm" and implicit["validation_size"] == 6 and implicit["beta"] == 0.1
    assert implicit["proxy_runs"] == [run.run_id] and implicit["in_sample"] is False
    assert "validation_ids" not in implicit and "assumed" in implicit["method"]
    validation = set(table.pair_id[table.in_validation])
    assert len(validation) == 6 and validation == ids_in(tmp_path / "margins-lossdiff-irm" / "seed-42" / "fold-0" /
                                                          "train.jsonl")
    assert (table.in_warmup == table.in_validation).all()

    # Validation pairs: no scores; every other pair: both, from the proxy's own log-probs.
    held_out = ~table.in_validation.to_numpy(bool)
    assert table.loss_diff[~held_out].isna().all() and table.irm[~held_out].isna().all()
    assert table.loss_diff[held_out].notna().all() and table.implicit_margin.notna().all()
    np.testing.assert_allclose(table.irm[held_out], 0.1 * table.implicit_margin[held_out], rtol=1e-9)
    loss_diff, _ = lossdiff_irm_scores(*(table[c] for c in (
        "policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "chosen_tokens",
        "rejected_tokens")), beta=0.1)
    np.testing.assert_allclose(table.loss_diff[held_out], loss_diff[held_out], rtol=1e-9)
    assert np.abs(table.implicit_margin).max() > 0  # the proxy moved away from its reference
    assert table.alignment_potential.isna().all()  # no external margin here; with one, computed for every pair

    # select --rule lossdiff_irm picks the joint medium band of the 18 scored pairs, never a validation pair.
    chosen = select_pairs(table, "lossdiff_irm", {"k": 5})
    scored = table[held_out].reset_index(drop=True)
    expected = reference_joint_band(scored.loss_diff.to_numpy(), scored.irm.to_numpy(), 5)
    assert sorted(chosen) == sorted(scored.pair_id[expected]) and not set(chosen) & validation
    assert not set(select_pairs(table, "random", {"k": 24})) & validation  # no rule selects them
    assert len(select_pairs(table, "random", {"k": 24})) == 18


def test_the_scoring_form_offers_the_source_and_names_it():
    from typing import get_args, get_type_hints

    from dashboard.scoring_form import IMPLICIT_LABELS, score_summary

    assert set(IMPLICIT_LABELS) <= set(get_args(get_type_hints(ScoreConfig)["implicit"]))
    assert "lossdiff-irm" in IMPLICIT_LABELS
    config = ScoreConfig(pairs="p.jsonl", out="m.parquet", implicit="lossdiff-irm")
    assert "LossDiff and IRM" in score_summary(config, 1200)
