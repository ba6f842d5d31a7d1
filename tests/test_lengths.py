"""Reply lengths (dpo_engine.lengths), the Data page's length chart and `dpo-engine validate`'s lengths line."""

import numpy as np
import pandas as pd
import pytest

from dashboard.figures import response_length_chart
from dpo_engine.cli import main
from dpo_engine.data.pairs import bundled_datasets, load_pairs
from dpo_engine.data.lengths import length_histograms, length_summary, response_lengths


def test_response_lengths_are_characters_of_each_reply():
    pairs = pd.DataFrame({"chosen": ["abcd", "", "héllo wörld"], "rejected": ["ab", "xyz", "hello"]})
    chosen, rejected = response_lengths(pairs)
    assert chosen.tolist() == [4, 0, 11] and rejected.tolist() == [2, 3, 5]
    assert chosen.dtype == np.int64


def test_length_summary_by_hand():
    # pairs: 10 vs 5 (chosen longer), 3 vs 3 (tie), 2 vs 8 (rejected longer), 7 vs 0 (chosen longer, no ratio)
    summary = length_summary(np.array([10, 3, 2, 7]), np.array([5, 3, 8, 0]))
    assert summary.pairs == 4
    assert summary.chosen_longer == 0.5 and summary.rejected_longer == 0.25  # the tie counts for neither
    assert summary.median_chosen == 5.0  # median of 2, 3, 7, 10
    assert summary.median_rejected == 4.0  # median of 0, 3, 5, 8
    assert summary.median_ratio == 1.0  # median of 2, 1, 0.25 (the empty rejected is left out)


def test_length_summary_of_no_pairs():
    summary = length_summary(np.array([]), np.array([]))
    assert summary.pairs == 0 and summary.chosen_longer == 0.0 and np.isnan(summary.median_chosen)


def test_length_histograms_log_bins_count_every_reply():
    chosen, rejected = np.array([10, 100, 1000, 0]), np.array([10, 10, 100, 1000])
    edges, chosen_counts, rejected_counts = length_histograms(chosen, rejected, bins=2)
    np.testing.assert_allclose(edges, [10, 100, 1000])  # shortest non-empty to longest, equal in log10
    # bins [10, 100) and [100, 1000]; the empty reply goes to the first bin
    assert chosen_counts.tolist() == [2, 2] and rejected_counts.tolist() == [2, 2]
    assert chosen_counts.sum() == rejected_counts.sum() == 4


@pytest.mark.parametrize("chosen, rejected", [([5, 5], [5, 5]), ([0, 0], [0, 0])])
def test_length_histograms_when_every_reply_has_one_length(chosen, rejected):
    edges, chosen_counts, rejected_counts = length_histograms(np.array(chosen), np.array(rejected), bins=4)
    assert np.all(np.diff(edges) > 0) and chosen_counts.sum() == rejected_counts.sum() == 2


def test_length_histograms_of_no_pairs():
    edges, chosen_counts, rejected_counts = length_histograms(np.array([]), np.array([]))
    assert edges.size == chosen_counts.size == rejected_counts.size == 0


def test_length_chart_draws_both_outlines_on_a_log_axis():
    pairs = load_pairs(bundled_datasets()["ultrafeedback"]).pairs
    edges, chosen_counts, rejected_counts = length_histograms(*response_lengths(pairs))
    fig = response_length_chart(edges, chosen_counts, rejected_counts)
    assert [trace.name for trace in fig.data] == ["chosen", "rejected"]
    assert fig.layout.xaxis.type == "log"
    for trace, counts in zip(fig.data, (chosen_counts, rejected_counts)):
        assert len(trace.x) == len(trace.y) == len(edges)  # a step per bin, closed at the last edge
        assert sum(trace.y[:-1]) == len(pairs) == counts.sum()


def test_cli_validate_prints_the_lengths_line(capsys):
    # assets/data: UltraFeedback's chosen reply is the longer one in 643 of 1,200 pairs, the rejected in 546
    assert main(["validate", str(bundled_datasets()["ultrafeedback"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "lengths: chosen reply longer in 54% of pairs, rejected in 46% (median 877 vs 808 characters)"
