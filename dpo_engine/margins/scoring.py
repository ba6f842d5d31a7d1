"""Score preference pairs: response log-probs, implicit margins, external margins, and the margins table.

Batch jobs, not per-click work. Pairs are encoded once per job (``dpo_engine.models.tokenization.encode_pairs``)
and the same encodings serve the policy and the reference pass. Log-probs come from the on-disk cache service
``dpo_engine.models.logp_cache`` (token-budget forwards, longest first; parts written by time or size), keyed by
dataset fingerprint + model + adapter + max lengths + resolved dtype. A killed job keeps what it wrote; running it
again scores only what is missing. Several processes can share a pass (``shard``, ``dpo_engine.models.shards``):
each scores its share into the same caches, and ``merged_implicit_margins`` reads the table once all are done.

The implicit margin is DM's (methods §1.4): a proxy policy DPO-trained on a random seed subset, against its
reference, with log-probs summed over response tokens and no beta. ``implicit_margin_table`` is the one builder of
that table (training's ``pair_rewards.parquet`` uses it too).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from dpo_engine.margins import formulas as margin_math
from dpo_engine.models.logp_cache import LOGP_COLUMNS, cached_logps, logps_cache_key, read_cached_logps
from dpo_engine.models.loading import adapter_base, device_precision, load_model, resolve_device, resolve_model
from dpo_engine.models.shards import Shard, shard_device
from dpo_engine.models.tokenization import MAX_LENGTH, MAX_PROMPT_LENGTH, encode_pairs
from dpo_engine.paths import cache_dir

Progress = Callable[[int, int], None]
__all__ = ["LOGP_COLUMNS", "logps_cache_key", "score_logps", "implicit_margins", "merged_implicit_margins",
           "implicit_margin_table", "external_margins", "encode_frame"]


def encode_frame(pairs: pd.DataFrame, tokenizer, max_length: int = MAX_LENGTH,
                 max_prompt_length: int = MAX_PROMPT_LENGTH) -> list:
    """The ``EncodedPair`` of every row of a pairs table, in order (one batched tokenizer pass)."""
    return encode_pairs(tokenizer, [list(m) for m in pairs.prompt_messages], list(pairs.chosen),
                        list(pairs.rejected), max_length, max_prompt_length)


def score_logps(
    pairs: pd.DataFrame,
    model,
    tokenizer,
    *,
    cache_key: str,
    batch_size: int | None = None,
    token_budget: int | None = None,
    max_length: int = MAX_LENGTH,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    encoded: Sequence | None = None,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> pd.DataFrame:
    """Summed response log-probs of every pair under ``model``; one row per pair, in ``pairs`` order.

    ``cache_key`` names the on-disk cache (see :func:`logps_cache_key`); pairs scored before are reused.
    ``encoded``: the pairs' encodings when the caller has them (else the pairs not cached yet are encoded here
    with the max lengths).
    ``batch_size`` caps pairs per forward, ``token_budget`` tokens per forward (default by device).
    Returns ``pair_id, chosen_logps, rejected_logps`` (nats) and ``chosen_tokens, rejected_tokens``; with
    ``shard``, only that shard's pairs are scored and returned (see ``cached_logps``).
    """
    if encoded is None:
        def encoded(indices: list[int]) -> list:
            return encode_frame(pairs.iloc[indices], tokenizer, max_length, max_prompt_length)
    return cached_logps(
        model, encoded, pairs.pair_id.tolist(), cache_dir() / "logps" / cache_key, pad_token_id=tokenizer.pad_token_id,
        batch_size=batch_size, token_budget=token_budget, progress=progress, shard=shard,
    )


def implicit_margins(
    pairs: pd.DataFrame,
    policy: str,
    *,
    reference: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    batch_size: int | None = None,
    token_budget: int | None = None,
    max_length: int = MAX_LENGTH,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> pd.DataFrame | None:
    """DM's implicit margin of every pair: ``[log pi(y_w) - log pi(y_l)] - [log ref(y_w) - log ref(y_l)]``.

    ``policy`` is a LoRA adapter directory (its base model, adapters disabled, is the reference) or a full model
    directory (then ``reference`` names the reference model). ``dtype`` ``"auto"`` is resolved by device
    (``dpo_engine.models.loading.resolve_precision``); the resolved name is ``table.attrs["dtype"]``.
    ``progress(done, total)`` counts pairs over both passes. Returns :func:`implicit_margin_table`'s columns.
    With ``shard``, this process scores only its share of both passes (on ``cuda:<local_rank>`` for ``cuda``) and
    returns None: :func:`merged_implicit_margins` reads the table when every shard has finished.
    """
    policy_path = resolve_model(policy)
    base = adapter_base(policy_path)
    device = shard_device(resolve_device(device), shard)
    dtype = device_precision(dtype, device)
    settings = dict(batch_size=batch_size, token_budget=token_budget, max_length=max_length,
                    max_prompt_length=max_prompt_length, shard=shard)
    policy_key, ref_key = implicit_cache_keys(pairs, policy_path, base, reference, max_length, max_prompt_length, dtype)

    def stage(index: int) -> Progress | None:
        return (lambda done, total: progress(index * total + done, 2 * total)) if progress else None

    if base is None and reference is None:
        raise ValueError(f"{policy} is a full model: give the reference model it was trained from")
    model, tokenizer = load_model(str(policy_path), dtype=dtype, device=device)
    encoded = _SharedEncodings(pairs, tokenizer, max_length, max_prompt_length)
    policy_scores = score_logps(pairs, model, tokenizer, cache_key=policy_key, encoded=encoded, progress=stage(0),
                                **settings)
    if base is not None:
        with model.disable_adapter():
            ref_scores = score_logps(pairs, model, tokenizer, cache_key=ref_key, encoded=encoded, progress=stage(1),
                                     **settings)
    else:
        del model
        model, ref_tokenizer = load_model(reference, dtype=dtype, device=device)
        if not _same_tokenizer(tokenizer, ref_tokenizer):
            encoded = _SharedEncodings(pairs, ref_tokenizer, max_length, max_prompt_length)
        ref_scores = score_logps(pairs, model, ref_tokenizer, cache_key=ref_key, encoded=encoded, progress=stage(1),
                                 **settings)
    if shard is not None:
        return None
    table = implicit_margin_table(pairs.pair_id.to_numpy(), policy_scores, ref_scores)
    table.attrs["dtype"] = dtype
    return table


def implicit_cache_keys(pairs: pd.DataFrame, policy_path, base: str | None, reference: str | None,
                        max_length: int, max_prompt_length: int, dtype: str) -> tuple[str, str]:
    """The log-prob cache keys of an implicit-margin job's policy pass and reference pass (``dtype`` resolved)."""
    if base is not None:
        base_path = resolve_model(base)
        return (logps_cache_key(pairs, base_path, policy_path, max_length, max_prompt_length, dtype),
                logps_cache_key(pairs, base_path, None, max_length, max_prompt_length, dtype))
    reference_path = resolve_model(reference) if reference else None
    return (logps_cache_key(pairs, policy_path, None, max_length, max_prompt_length, dtype),
            logps_cache_key(pairs, reference_path, None, max_length, max_prompt_length, dtype) if reference_path
            else "")


def merged_implicit_margins(
    pairs: pd.DataFrame,
    policy: str,
    *,
    reference: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    max_length: int = MAX_LENGTH,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
) -> pd.DataFrame:
    """:func:`implicit_margins`'s table from the caches the shards of a sharded job filled, without a model.

    The arguments are the job's (they make the cache keys). Raises ``MissingLogps`` if a shard did not finish.
    """
    policy_path = resolve_model(policy)
    base = adapter_base(policy_path)
    if base is None and reference is None:
        raise ValueError(f"{policy} is a full model: give the reference model it was trained from")
    dtype = device_precision(dtype, resolve_device(device))
    policy_key, ref_key = implicit_cache_keys(pairs, policy_path, base, reference, max_length, max_prompt_length, dtype)
    pair_ids = pairs.pair_id.tolist()
    logps = cache_dir() / "logps"
    table = implicit_margin_table(pairs.pair_id.to_numpy(), read_cached_logps(logps / policy_key, pair_ids),
                                  read_cached_logps(logps / ref_key, pair_ids))
    table.attrs["dtype"] = dtype
    return table


def implicit_margin_table(pair_ids: Sequence[str], policy: Mapping, reference: Mapping | None) -> pd.DataFrame:
    """Per pair: policy and reference log-probs, response lengths and the implicit margin (nats, no beta).

    ``policy`` and ``reference`` map ``chosen_logps`` and ``rejected_logps`` (and, for ``policy``, ``chosen_tokens``
    and ``rejected_tokens``) to ``(n_pairs,)`` arrays, in ``pair_ids`` order (a ``score_logps`` table, or a dict
    of arrays). ``reference`` None gives NaN reference columns and margins. Returns ``pair_id,
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_tokens,
    rejected_tokens, implicit_margin``.
    """
    n = len(pair_ids)
    ref_chosen, ref_rejected = (
        (np.full(n, np.nan), np.full(n, np.nan)) if reference is None
        else (np.asarray(reference["chosen_logps"], float), np.asarray(reference["rejected_logps"], float))
    )
    table = pd.DataFrame({
        "pair_id": np.asarray(pair_ids),
        "policy_chosen_logps": np.asarray(policy["chosen_logps"], float),
        "policy_rejected_logps": np.asarray(policy["rejected_logps"], float),
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
        "chosen_tokens": np.asarray(policy["chosen_tokens"]).astype(int),
        "rejected_tokens": np.asarray(policy["rejected_tokens"]).astype(int),
    })
    table["implicit_margin"] = margin_math.implicit_margin(
        table.policy_chosen_logps.to_numpy(), table.policy_rejected_logps.to_numpy(), ref_chosen, ref_rejected,
    )
    return table


def external_margins(
    pairs: pd.DataFrame,
    source: str = "dataset",
    *,
    reward_model: str | None = None,
    batch_size: int = 8,
    dtype: str = "auto",
    device: str = "auto",
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, dict]:
    """External margin of every pair and a description of how it was computed.

    ``source``:
      - ``"dataset"``: the data's own scores, ``score_chosen - score_rejected``;
      - ``"reward-model"``: ``reward_model`` is a local ``AutoModelForSequenceClassification`` directory; the
        margin is the raw logit difference with the chat template applied (methods §1.3), scored by
        ``dpo_engine.models.reward_model.RewardModelScorer`` in ``dtype`` (``"auto"``: bf16 on CUDA);
      - ``"builtin"``: the stand-in embedding reward head, cross-fitted (``dpo_engine.reward_head``).

    Returns (``pair_id, external_margin`` table, metadata dict).
    """
    if source == "dataset":
        if pairs.score_chosen.isna().all():
            raise ValueError("the data has no score columns: use the built-in reward head or a reward model")
        margin = margin_math.external_margin(pairs.score_chosen.to_numpy(float), pairs.score_rejected.to_numpy(float))
        meta = {"source": "dataset", "description": "score_chosen - score_rejected from the data (NaN -> 0)"}
    elif source == "reward-model":
        if not reward_model:
            raise ValueError("source 'reward-model' needs reward_model= a local sequence-classification model")
        from dpo_engine.models.reward_model import RewardModelScorer

        scorer = RewardModelScorer(reward_model, dtype=dtype, device=device, batch_size=batch_size)
        chosen, rejected = _reward_scores(pairs, scorer, progress)
        margin = margin_math.external_margin(chosen, rejected)
        meta = {"source": "reward-model", "reward_model": str(reward_model), "dtype": scorer.dtype,
                "description": "RM logit difference"}
    elif source == "builtin":
        from dpo_engine.models.reward_head import STAND_IN_NOTE, cross_fitted_margins

        result = cross_fitted_margins(list(pairs.prompt), list(pairs.chosen), list(pairs.rejected), progress=progress)
        margin = result.margins
        meta = {
            "source": "builtin",
            "description": STAND_IN_NOTE + "; 5-fold cross-fitted: no pair is scored by a head that saw it",
            "heldout_accuracy": result.heldout_accuracy,
        }
    else:
        raise ValueError(f"unknown external margin source '{source}': dataset, reward-model or builtin")
    return pd.DataFrame({"pair_id": pairs.pair_id.to_numpy(), "external_margin": np.asarray(margin, float)}), meta


def _reward_scores(pairs: pd.DataFrame, scorer, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    """Reward-model logits of ``prompt_messages + [assistant: chosen]`` and ``... rejected``, ``(n,)`` each."""
    n = len(pairs)
    conversations = [list(m) + [{"role": "assistant", "content": c}] for m, c in zip(pairs.prompt_messages, pairs.chosen)]
    conversations += [list(m) + [{"role": "assistant", "content": r}]
                      for m, r in zip(pairs.prompt_messages, pairs.rejected)]
    scores = scorer.score(conversations, progress=progress)
    return scores[:n], scores[n:]


class _SharedEncodings:
    """Encodings of a pairs table made on first request, then kept: the policy and reference passes of one job
    share them, and a pass that finds everything cached asks for none."""

    def __init__(self, pairs: pd.DataFrame, tokenizer, max_length: int, max_prompt_length: int):
        self.pairs, self.tokenizer, self.lengths = pairs, tokenizer, (max_length, max_prompt_length)
        self.encoded: dict[int, object] = {}

    def __call__(self, indices: list[int]) -> list:
        missing = [i for i in indices if i not in self.encoded]
        if missing:
            self.encoded.update(zip(missing, encode_frame(self.pairs.iloc[missing], self.tokenizer, *self.lengths)))
        return [self.encoded[i] for i in indices]


def _same_tokenizer(a, b) -> bool:
    """Whether two tokenizers encode pairs alike (same vocabulary, chat template and EOS)."""
    return a is b or (a.get_vocab() == b.get_vocab() and a.chat_template == b.chat_template
                      and a.eos_token == b.eos_token)
