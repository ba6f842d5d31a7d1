"""Score preference pairs: response log-probs, implicit margins, external margins, and the margins table.

Batch jobs, not per-click work. Log-probs are computed in length-sorted batches under ``torch.inference_mode``,
each pair's prompt once for both responses and logits only at response positions (``dpo_engine.logps.pair_logps``),
and cached on disk one part file
per batch, keyed by dataset fingerprint + model + adapter + max lengths + dtype. A killed job keeps the batches
it finished; running it again scores only what is missing.

The implicit margin is DM's (methods §1.4): a proxy policy DPO-trained on a random seed subset, against its
reference, with log-probs summed over response tokens and no beta.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from dpo_engine.margins import formulas as margin_math
from dpo_engine.data.pairs import fingerprint
from dpo_engine.files import read_parts, weights_identity, write_part
from dpo_engine.models.logps import pair_logps
from dpo_engine.models.loading import adapter_base, load_model, resolve_model
from dpo_engine.paths import cache_dir
from dpo_engine.models.tokenization import encode_pair

Progress = Callable[[int, int], None]
LOGP_COLUMNS = ["pair_id", "chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens"]


def score_logps(
    pairs: pd.DataFrame,
    model,
    tokenizer,
    *,
    cache_key: str,
    batch_size: int = 8,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Summed response log-probs of every pair under ``model``; one row per pair, in ``pairs`` order.

    ``cache_key`` names the on-disk cache (see :func:`logps_cache_key`); finished batches are reused.
    Returns ``pair_id, chosen_logps, rejected_logps`` (nats) and ``chosen_tokens, rejected_tokens``.
    """
    parts_dir = cache_dir() / "logps" / cache_key
    parts_dir.mkdir(parents=True, exist_ok=True)
    encoded = {
        row.pair_id: encode_pair(tokenizer, list(row.prompt_messages), row.chosen, row.rejected, max_length, max_prompt_length)
        for row in pairs.itertuples()
    }
    done = read_parts(parts_dir, LOGP_COLUMNS)
    todo = [pair_id for pair_id in _length_sorted(encoded) if pair_id not in set(done.pair_id)]
    total, finished = len(encoded), len(encoded) - len(todo)
    if progress:
        progress(finished, total)
    model.eval()
    for start in range(0, len(todo), batch_size):
        batch_ids = todo[start : start + batch_size]
        with torch.inference_mode():
            out = pair_logps(model, [encoded[i] for i in batch_ids], tokenizer.pad_token_id)
        part = pd.DataFrame({"pair_id": batch_ids, **{k: v.float().cpu().numpy() for k, v in out.items()}})
        write_part(parts_dir, finished, part)  # named by the pairs done before it: unique within this cache
        finished += len(batch_ids)
        if progress:
            progress(finished, total)
    scored = read_parts(parts_dir, LOGP_COLUMNS).drop_duplicates("pair_id").set_index("pair_id")
    return scored.loc[list(encoded)].reset_index()[LOGP_COLUMNS]


def logps_cache_key(
    pairs: pd.DataFrame, model_path: Path, adapter: Path | None, max_length: int, max_prompt_length: int, dtype: str
) -> str:
    """A cache key that changes when the data, the weights, the truncation or the precision change."""
    identity = {
        "data": fingerprint(pairs),
        "model": weights_identity(model_path),
        "adapter": weights_identity(adapter) if adapter else None,
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "dtype": dtype,
    }
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def implicit_margins(
    pairs: pd.DataFrame,
    policy: str,
    *,
    reference: str | None = None,
    dtype: str = "fp32",
    device: str = "auto",
    batch_size: int = 8,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """DM's implicit margin of every pair: ``[log pi(y_w) - log pi(y_l)] - [log ref(y_w) - log ref(y_l)]``.

    ``policy`` is a LoRA adapter directory (its base model, adapters disabled, is the reference) or a full model
    directory (then ``reference`` names the reference model). ``progress(done, total)`` counts pairs over both
    passes. Returns ``pair_id, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_tokens, rejected_tokens, implicit_margin``.
    """
    policy_path = resolve_model(policy)
    base = adapter_base(policy_path)
    n = len(pairs)
    settings = dict(batch_size=batch_size, max_length=max_length, max_prompt_length=max_prompt_length)

    def stage(offset: int) -> Progress | None:
        return (lambda done, total: progress(offset + done, 2 * n)) if progress else None

    if base is not None:
        model, tokenizer = load_model(str(policy_path), dtype=dtype, device=device)
        base_path = resolve_model(base)
        key = logps_cache_key(pairs, base_path, policy_path, max_length, max_prompt_length, dtype)
        policy_scores = score_logps(pairs, model, tokenizer, cache_key=key, progress=stage(0), **settings)
        with model.disable_adapter():
            key = logps_cache_key(pairs, base_path, None, max_length, max_prompt_length, dtype)
            ref_scores = score_logps(pairs, model, tokenizer, cache_key=key, progress=stage(n), **settings)
    else:
        if reference is None:
            raise ValueError(f"{policy} is a full model: give the reference model it was trained from")
        for offset, name in ((0, policy), (n, reference)):
            model, tokenizer = load_model(name, dtype=dtype, device=device)
            key = logps_cache_key(pairs, resolve_model(name), None, max_length, max_prompt_length, dtype)
            scores = score_logps(pairs, model, tokenizer, cache_key=key, progress=stage(offset), **settings)
            if offset == 0:
                policy_scores = scores
            else:
                ref_scores = scores
            del model
    table = pd.DataFrame(
        {
            "pair_id": policy_scores.pair_id,
            "policy_chosen_logps": policy_scores.chosen_logps,
            "policy_rejected_logps": policy_scores.rejected_logps,
            "ref_chosen_logps": ref_scores.chosen_logps.to_numpy(),
            "ref_rejected_logps": ref_scores.rejected_logps.to_numpy(),
            "chosen_tokens": policy_scores.chosen_tokens.astype(int),
            "rejected_tokens": policy_scores.rejected_tokens.astype(int),
        }
    )
    table["implicit_margin"] = margin_math.implicit_margin(
        table.policy_chosen_logps.to_numpy(),
        table.policy_rejected_logps.to_numpy(),
        table.ref_chosen_logps.to_numpy(),
        table.ref_rejected_logps.to_numpy(),
    )
    return table


def external_margins(
    pairs: pd.DataFrame,
    source: str = "dataset",
    *,
    reward_model: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, dict]:
    """External margin of every pair and a description of how it was computed.

    ``source``:
      - ``"dataset"``: the data's own scores, ``score_chosen - score_rejected``;
      - ``"reward-model"``: ``reward_model`` is a local ``AutoModelForSequenceClassification`` directory; the
        margin is the raw logit difference with the chat template applied (methods §1.3);
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
        chosen = _reward_scores(pairs, "chosen", reward_model, batch_size, device, progress)
        rejected = _reward_scores(pairs, "rejected", reward_model, batch_size, device, progress)
        margin = margin_math.external_margin(chosen, rejected)
        meta = {"source": "reward-model", "reward_model": str(reward_model), "description": "RM logit difference"}
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


def clear_logps_cache() -> None:
    """Delete every cached log-prob batch."""
    shutil.rmtree(cache_dir() / "logps", ignore_errors=True)


def _reward_scores(pairs, column, reward_model, batch_size, device, progress) -> np.ndarray:
    """Raw reward-model logits of ``prompt_messages + [assistant: column]``, batched."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dpo_engine.models.loading import detect_device

    device = detect_device() if device == "auto" else device
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(reward_model).to(device).eval()
    texts = [
        tokenizer.apply_chat_template(list(messages) + [{"role": "assistant", "content": response}], tokenize=False)
        if tokenizer.chat_template
        else "\n\n".join(m["content"] for m in messages) + "\n\n" + response
        for messages, response in zip(pairs.prompt_messages, pairs[column])
    ]
    scores = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            scores.append(model(**batch.to(device)).logits[:, 0].float().cpu().numpy())
        if progress:
            progress(min(start + batch_size, len(texts)), len(texts))
    return np.concatenate(scores) if scores else np.zeros(0)


def _length_sorted(encoded: dict) -> list[str]:
    """Pair ids, longest first: batches of similar length waste little padding, and memory errors show up early.

    The length is that of the packed row ``pair_logps`` scores (prompt + chosen + rejected).
    """
    def length(pair_id):
        pair = encoded[pair_id]
        return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)

    return sorted(encoded, key=length, reverse=True)
