"""dpo_engine.reward_head: embeddings, the Bradley–Terry fit, cross-fitting, save/load and the shipped judge.

The fitting and cross-fitting tests use synthetic feature differences (pure numpy, fast); the tests that need
real embeddings use 40 bundled HH-RLHF pairs (short texts), embedded once per module.
"""

from __future__ import annotations

import numpy as np
import pytest

from dpo_engine.data.pairs import bundled_datasets, load_pairs
from dpo_engine.errors import UserError
from dpo_engine.paths import ASSETS_DIR
from dpo_engine.models.reward_head import (
    FEATURE_DIM,
    EmbeddingRewardModel,
    assign_folds,
    cross_fit_differences,
    cross_fitted_margins,
    embed_pairs,
    embed_texts,
    fit_bradley_terry,
    train_judge_head,
)

SHIPPED_JUDGE = ASSETS_DIR / "judge" / "embedding_judge_uf.npz"


@pytest.fixture(scope="module")
def real_pairs() -> tuple[list[str], list[str], list[str]]:
    """The first 40 bundled HH-RLHF pairs as (prompts, chosen, rejected)."""
    pairs = load_pairs(bundled_datasets()["hh_rlhf"]).pairs.head(40)
    return list(pairs.prompt), list(pairs.chosen), list(pairs.rejected)


@pytest.fixture(scope="module")
def real_embeddings(real_pairs):
    return embed_pairs(*real_pairs)


def test_embeddings_are_unit_vectors_and_a_paraphrase_is_closer_than_an_unrelated_sentence():
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market crashed today."]
    embeddings = embed_texts(sentences)
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    cosine = embeddings @ embeddings.T
    # sentence-transformers' all-MiniLM-L6-v2 gives these two cosines for the same sentences.
    assert cosine[0, 1] == pytest.approx(0.755, abs=0.01)
    assert cosine[0, 2] == pytest.approx(0.009, abs=0.01)
    assert embed_texts([]).shape == (0, 384)


def test_length_sorted_batches_return_rows_in_input_order():
    texts = ["a much longer sentence about cooking a steak in the oven for dinner", "short", "medium length text"]
    one_at_a_time = np.stack([embed_texts([text])[0] for text in texts])
    np.testing.assert_allclose(embed_texts(texts, batch_size=2), one_at_a_time, atol=1e-5)


def test_fit_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    planted = rng.normal(size=20)
    planted *= 3.0 / np.linalg.norm(planted)
    features = rng.normal(size=(3000, 20))
    first_preferred = rng.random(3000) < 1.0 / (1.0 + np.exp(-features @ planted))
    differences = np.where(first_preferred[:, None], features, -features)  # preferred minus dispreferred

    weights = fit_bradley_terry(differences, l2=0.01)

    assert weights @ planted / (np.linalg.norm(weights) * np.linalg.norm(planted)) > 0.99
    assert np.linalg.norm(weights) == pytest.approx(3.0, rel=0.15)


def test_each_fold_is_scored_by_a_head_fit_on_the_other_folds_only():
    rng = np.random.default_rng(1)
    differences = rng.normal(size=(53, 6)) + 0.3

    result = cross_fit_differences(differences, n_folds=5, seed=3, l2=1.0)

    assert sorted(np.bincount(result.fold)) == [10, 10, 11, 11, 11]
    for k in range(5):
        held_out = result.fold == k
        weights_without_fold = fit_bradley_terry(differences[~held_out], l2=1.0)
        np.testing.assert_allclose(result.margins[held_out], differences[held_out] @ weights_without_fold)
        assert result.fold_accuracy[k] == pytest.approx(np.mean(result.margins[held_out] > 0))
    assert result.heldout_accuracy == pytest.approx(np.mean(result.margins > 0))


def test_cross_fitting_does_not_credit_memorisation():
    """Random directions in 400 dimensions: 200 pairs are separable in-sample, but nothing generalises."""
    differences = np.random.default_rng(2).normal(size=(200, 400))

    in_sample_weights = fit_bradley_terry(differences, l2=0.01)
    result = cross_fit_differences(differences, n_folds=5, seed=0, l2=0.01)

    assert np.mean(differences @ in_sample_weights > 0) == 1.0
    assert 0.35 < result.heldout_accuracy < 0.65


def test_cross_fitting_needs_at_least_one_pair_per_fold():
    with pytest.raises(UserError, match="at least 5 pairs"):
        assign_folds(3, 5)


def test_cross_fitted_margins_on_real_pairs(real_pairs):
    prompts, chosen, rejected = (texts[:10] for texts in real_pairs)
    calls = []
    result = cross_fitted_margins(
        prompts, chosen, rejected, n_folds=2, progress=lambda done, total: calls.append((done, total))
    )

    assert result.margins.shape == (10,) and np.isfinite(result.margins).all()
    assert len(result.fold_accuracy) == 2 and 0.0 <= result.heldout_accuracy <= 1.0
    assert calls and calls[-1][0] == calls[-1][1]


def test_save_load_round_trip_gives_identical_scores(real_pairs, real_embeddings, tmp_path):
    prompts, chosen, _ = real_pairs
    model = EmbeddingRewardModel().fit_embedded(real_embeddings, l2=1.0)

    path = model.save(tmp_path / "head.npz")
    loaded = EmbeddingRewardModel.load(path)

    assert path.stat().st_size < 100_000
    assert loaded.metadata == model.metadata and "stand-in" in loaded.metadata["note"]
    np.testing.assert_array_equal(
        loaded.score_embedded(real_embeddings.prompt, real_embeddings.chosen),
        model.score_embedded(real_embeddings.prompt, real_embeddings.chosen),
    )
    np.testing.assert_array_equal(loaded.score(prompts[:2], chosen[:2]), model.score(prompts[:2], chosen[:2]))


def test_train_judge_head_leaves_out_ties_and_records_heldout_accuracy(real_pairs, real_embeddings):
    score_margins = np.ones(40)
    score_margins[:5] = 0.0  # five ties

    judge = train_judge_head(*real_pairs, score_margins=score_margins, embeddings=real_embeddings, training_data="test")

    assert judge.metadata["n_pairs"] == 35 and judge.metadata["n_ties_excluded"] == 5
    assert judge.metadata["heldout_pairs"] == 7 and 0.0 <= judge.metadata["heldout_accuracy"] <= 1.0
    assert judge.weights.shape == (FEATURE_DIM,)
    assert "Stand-in" in judge.description


def test_the_shipped_judge_loads_and_scores():
    assert SHIPPED_JUDGE.stat().st_size < 100_000
    judge = EmbeddingRewardModel.load(SHIPPED_JUDGE)

    assert "stand-in" in judge.metadata["note"] and judge.weights.shape == (FEATURE_DIM,)
    assert 0.5 < judge.metadata["heldout_accuracy"] < 1.0
    rewards = judge.score(["How do I boil an egg?"] * 2, ["Put it in boiling water for 8 minutes.", "No."])
    assert rewards.shape == (2,) and np.isfinite(rewards).all()
