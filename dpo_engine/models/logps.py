"""Per-sequence log-probabilities of responses: the one computation behind margins, losses and the scatter.

The same function scores pairs for the implicit margin and feeds every training loss, so the numbers the
dashboard shows are the numbers the trainer optimises.

How a batch of pairs is scored (``pair_logps``; ``policy_logps`` is the same on a collated batch):

- **No padding.** All pairs of a batch are laid end to end in a single row, each in its own segment(s), and
  attention stays inside a segment (``dpo_engine.segment_attention``: SDPA per segment). The linear layers, most of
  the cost, see only real tokens; a padded batch of pairs of different lengths spends a third or more of them on
  padding.
- **Shared prompt.** A pair's prompt, chosen and rejected responses can share one segment
  ``[prompt | chosen | rejected]``: a mask lets the rejected tokens see the prompt but not the chosen ones, and the
  rejected positions restart where the prompt ends, so each token sees exactly what it would see in
  ``prompt + response`` alone, and the prompt is computed once instead of twice. That segment's attention is a
  whole square (masked) instead of a causal half, so each pair takes the cheaper layout (``prefer_packed``):
  packed when its prompt is long next to its responses, two plain ``prompt + response`` segments otherwise.
- **Response-only logits.** The vocabulary projection (the largest single cost of a small model) runs only at the
  positions that predict a response token: the last prompt token (it predicts both first response tokens) and
  each response token but the last. Prompt positions get no logits.
- **Bounded memory, one forward.** The decoder runs once over the row; the vocabulary projection and log-softmax
  then run over the kept hidden states in chunks of ``MAX_LOGIT_ELEMENTS`` logits (``chunked_token_logps``), so
  peak logits memory does not grow with the batch, whatever the vocabulary. Under autograd a chunk's logits are
  recomputed in the backward pass instead of kept, but only when there is more than one chunk.
- **Vectorised rows.** The row, its positions and the (column, label, slot) of every scored token are built with
  numpy from each pair's lengths, not token by token in Python.

Models with another attention implementation (flash-attention kernels) use the plain concatenated forward
(``concatenated_logps``): chosen and rejected rows, left-padded, logits for the last response columns.

Under DDP, FSDP or DeepSpeed the model comes wrapped: its config, head and decoder are read from the module inside
(``unwrap_parallel``), while the forward goes through the wrapper, once per step, so the wrapper synchronises the
gradients. A wrapper that shards the parameters keeps the head inside that forward (``shards_parameters``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from dpo_engine.models.segment_attention import SEGMENT_ATTENTION, segment_attention

# Logits (positions x vocabulary) computed at a time: 2**27 fp32 values = 512 MB, i.e. 2,730 positions of
# SmolLM2's 49,152-word vocabulary or 1,048 of Llama-3's 128,256.
MAX_LOGIT_ELEMENTS = 2**27
# Attention implementations the segment path stands in for (it computes the same attention with SDPA).
_SEGMENTABLE_ATTENTION = ("sdpa", "eager")
# Config fields of models whose forward changes the head's logits (Gemma's soft-capping, Cohere's and Granite's
# scaling): those keep their own forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
# Modules of the classes that wrap a model for training across processes; each keeps it as ``.module``.
_PARALLEL_WRAPPERS = ("torch.nn.parallel", "torch.distributed", "deepspeed")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean) of ``log p(label_t | tokens < t)`` over the masked tokens of each sequence.

    Args:
        logits: ``(B, T, V)``; ``logits[:, t]`` predicts ``labels[:, t + 1]`` (the usual causal shift is done here).
        labels: ``(B, T)`` token ids of the same positions.
        mask: ``(B, T)``, 1 where ``labels`` is a response token to score.
        average: divide by the number of masked tokens (per-token mean) instead of summing.

    Returns:
        ``(B,)`` float32 log-probabilities in nats.
    """
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    mask = mask[:, 1:].to(logits.dtype)
    # logit[label] - logsumexp(logits) avoids materialising a second (B, T, V) log_softmax tensor.
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    summed = (token_logps * mask).sum(dim=-1)
    if average:
        return summed / mask.sum(dim=-1).clamp(min=1)
    return summed


def unwrap_parallel(model):
    """The model inside a DDP, DataParallel, FSDP or DeepSpeed wrapper (the model itself when not wrapped)."""
    while hasattr(model, "module") and type(model).__module__.startswith(_PARALLEL_WRAPPERS):
        model = model.module
    return model


def shards_parameters(model) -> bool:
    """Whether ``model`` is wrapped by an engine whose parameters exist in full only inside its forward (FSDP,
    DeepSpeed ZeRO): the output layer cannot then be applied outside that forward."""
    return model is not unwrap_parallel(model) and not isinstance(
        model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel))


def policy_logps(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Summed response log-probs of a collated batch (``dpo_engine.tokenization.collate``).

    The batch is unpacked into its pairs and scored by :func:`pair_logps` (no padding, shared prompt, response-only
    logits); models with another attention implementation get :func:`concatenated_logps`. Both give the same numbers.

    Returns ``chosen_logps``, ``rejected_logps`` (float32 nats) and ``chosen_tokens``, ``rejected_tokens``
    (response lengths), each ``(B,)``. Gradients flow unless called under ``torch.no_grad``/``inference_mode``.
    """
    if not supports_packing(model):
        return concatenated_logps(model, batch)
    pairs = batch["pairs"] if "pairs" in batch else unpack_batch(batch)  # a collator may carry its pairs along
    return pair_logps(model, pairs, _pad_id(batch))


def pair_logps(
    model,
    pairs: Sequence,
    pad_token_id: int,
    *,
    max_logit_elements: int = MAX_LOGIT_ELEMENTS,
) -> dict[str, torch.Tensor]:
    """Summed response log-probs of ``pairs`` (``EncodedPair``-like: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``).

    One padding-free forward over all ``pairs`` (see the module docstring); logits are computed
    ``max_logit_elements`` at a time. ``pad_token_id`` is only used by the concatenated fallback. Same return value
    as :func:`policy_logps`; the tensors stay on the model's device.
    """
    if not supports_packing(model):
        from dpo_engine.models.tokenization import collate

        return concatenated_logps(model, collate(list(pairs), pad_token_id))
    device = next(model.parameters()).device
    chosen, rejected = _segments_forward(model, pairs, device, max_logit_elements)
    lengths = torch.tensor([(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs], dtype=torch.long)
    lengths = lengths.reshape(-1, 2).to(device, non_blocking=True)
    return {
        "chosen_logps": chosen,
        "rejected_logps": rejected,
        "chosen_tokens": lengths[:, 0],
        "rejected_tokens": lengths[:, 1],
    }


def chunked_token_logps(hidden: torch.Tensor, head, labels: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """``log p(labels[k] | hidden[k])`` under the output layer ``head``, ``chunk_rows`` positions at a time.

    Args:
        hidden: ``(K, H)`` final hidden states of the positions that predict a scored token.
        head: maps ``(k, H)`` hidden states to ``(k, V)`` logits (the model's output layer).
        labels: ``(K,)`` token ids those positions predict.
        chunk_rows: positions per chunk; at most ``chunk_rows x V`` logits exist at once (fp32 copy included).

    Returns:
        ``(K,)`` float32 log-probs in nats. With gradients and more than one chunk, each chunk's logits are
        recomputed in the backward pass (``torch.utils.checkpoint``) instead of being kept: memory stays bounded
        in training too, for one more pass of the output layer.
    """
    if hidden.shape[0] <= chunk_rows:
        return _token_logps(head, hidden, labels)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    pieces = []
    for rows, targets in zip(hidden.split(chunk_rows), labels.split(chunk_rows)):
        if recompute:
            pieces.append(checkpoint(_token_logps, head, rows, targets, use_reentrant=False))
        else:
            pieces.append(_token_logps(head, rows, targets))
    return torch.cat(pieces)


def _token_logps(head, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    # logit[label] - logsumexp(logits) avoids materialising a second (k, V) log_softmax tensor.
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def row_tokens(model, pair) -> int:
    """Tokens ``pair`` takes in a padding-free row: one packed segment, or the prompt twice (``prefer_packed``)."""
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    return p + c + r if prefer_packed(model, pair) else 2 * p + c + r


def token_budget_batches(lengths: Sequence[int], token_budget: int, max_pairs: int | None = None) -> list[list[int]]:
    """Consecutive index groups of ``lengths`` (tokens per pair), each within ``token_budget`` tokens and
    ``max_pairs`` pairs; a pair longer than the budget gets a group of its own. Give lengths longest first, so the
    first forward is the largest (a memory error shows at once) and groups waste nothing on padding."""
    groups, group, used = [], [], 0
    for index, length in enumerate(lengths):
        if group and (used + length > token_budget or (max_pairs is not None and len(group) >= max_pairs)):
            groups.append(group)
            group, used = [], 0
        group.append(index)
        used += length
    if group:
        groups.append(group)
    return groups


def supports_packing(model) -> bool:
    """Whether the padding-free segment path can stand in for the model's attention (sdpa or eager).

    While activation checkpointing recomputes forwards during backward, only when the model's attention is the
    segment function throughout (``with segment_attention(model):`` around training): the recomputation runs after
    this call's own ``segment_attention`` block has closed.
    """
    model = unwrap_parallel(model)
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if torch.is_grad_enabled() and getattr(model, "is_activation_checkpointing", False):
        return attention == SEGMENT_ATTENTION
    return attention in _SEGMENTABLE_ATTENTION + (SEGMENT_ATTENTION,)


def concatenated_logps(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain layout: ``2B`` left-padded rows (chosen rows, then rejected rows) in one forward.

    Only the last ``max response length + 1`` positions get logits (every response ends in the last column).
    """
    device = next(model.parameters()).device
    response_mask = batch["response_mask"].to(device)
    keep = int(response_mask.sum(dim=-1).max()) + 1
    outputs = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        position_ids=batch["position_ids"].to(device),
        logits_to_keep=keep,
        use_cache=False,
    )
    logps = sequence_logps(outputs.logits, batch["input_ids"][:, -keep:].to(device), response_mask[:, -keep:])
    tokens = response_mask.sum(dim=-1)
    n_pairs = logps.shape[0] // 2
    return {
        "chosen_logps": logps[:n_pairs],
        "rejected_logps": logps[n_pairs:],
        "chosen_tokens": tokens[:n_pairs],
        "rejected_tokens": tokens[n_pairs:],
    }


class _Pair:
    __slots__ = ("prompt_ids", "chosen_ids", "rejected_ids")

    def __init__(self, prompt_ids, chosen_ids, rejected_ids):
        self.prompt_ids, self.chosen_ids, self.rejected_ids = prompt_ids, chosen_ids, rejected_ids


def unpack_batch(batch: dict[str, torch.Tensor]) -> list[_Pair]:
    """The pairs of a collated batch: row ``i`` is prompt + chosen, row ``B + i`` prompt + rejected."""
    ids = batch["input_ids"].tolist()
    attention = batch["attention_mask"].sum(dim=-1).tolist()
    response = batch["response_mask"].sum(dim=-1).tolist()
    n = len(ids) // 2
    pairs = []
    for i in range(n):
        chosen_row, rejected_row = ids[i][len(ids[i]) - attention[i] :], ids[n + i][len(ids[n + i]) - attention[n + i] :]
        prompt_length = attention[i] - response[i]
        pairs.append(
            _Pair(chosen_row[:prompt_length], chosen_row[prompt_length:], rejected_row[attention[n + i] - response[n + i] :])
        )
    return pairs


def _vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def _pad_id(batch: dict[str, torch.Tensor]) -> int:
    padded = batch["input_ids"][batch["attention_mask"] == 0]
    return int(padded[0]) if padded.numel() else 0


def _logit_positions(pair) -> int:
    """Distinct row positions whose hidden states predict a scored token of ``pair`` (the benchmark's work count)."""
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    return (1 if p and (c or r) else 0) + max(c - 1, 0) + max(r - 1, 0)


def layer_multiply_adds(model) -> tuple[int, int]:
    """Multiply-adds of one decoder layer, from the model's config: ``(linear work per token, attention work per
    (query, key) position)``. The linear work is the q/k/v/o projections and a gated MLP (Llama-style)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = getattr(config, "hidden_size", 1024)
    heads = getattr(config, "num_attention_heads", 16)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    linear = hidden * (2 * heads * head_dim + 2 * kv_heads * head_dim) + 3 * hidden * intermediate
    return linear, 2 * heads * head_dim


def prefer_packed(model, pair) -> bool:
    """Whether one ``[prompt | chosen | rejected]`` segment is cheaper than ``[prompt | chosen]``, ``[prompt | rejected]``.

    Packing saves the prompt's second pass, but its segment needs a mask (the rejected tokens must not see the
    chosen ones), so SDPA computes its whole square of query-key positions, while the two plain segments are causal
    and cost half their squares. Short prompts with long responses are therefore cheaper unpacked. The estimate
    counts the model's linear work per token and attention work per (query, key) position, from its config.
    """
    linear, attention = layer_multiply_adds(model)
    attention /= linear  # one (query, key) position, in units of one token's linear work
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    packed = (p + c + r) * (1 + attention * (p + c + r))
    split = (p + c) * (1 + attention * (p + c) / 2) + (p + r) * (1 + attention * (p + r) / 2)
    return packed <= split


def _segments_forward(model, pairs: Sequence, device, max_logit_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs ``(n,)``, ``(n,)`` of ``pairs`` from one forward over a single padding-free row.

    Each pair becomes one packed segment ``[prompt | chosen | rejected]`` or two plain ones (``prefer_packed``);
    the segments are laid end to end and attend only within themselves (``dpo_engine.segment_attention``).
    """
    n = len(pairs)
    inner = unwrap_parallel(model)  # the config and layers; the forward goes through the wrapper
    row = _Row()
    for i, p in enumerate(pairs):
        if prefer_packed(inner, p):
            row.add(p.prompt_ids, [(p.chosen_ids, i), (p.rejected_ids, n + i)])
        else:
            row.add(p.prompt_ids, [(p.chosen_ids, i)])
            row.add(p.prompt_ids, [(p.rejected_ids, n + i)])
    out = torch.zeros(2 * n, dtype=torch.float32, device=device)
    columns, labels, slots = (torch.from_numpy(a).to(device, non_blocking=True) for a in row.scored())
    if not len(columns):
        return out[:n], out[n:]
    input_ids, position_ids = (torch.from_numpy(a)[None].to(device, non_blocking=True) for a in row.tokens())
    segments = [(start, end, None if groups is None else _segment_mask(groups, device)) for start, end, groups in row.segments]
    with segment_attention(inner):
        token_logps = _kept_token_logps(model, input_ids, position_ids, segments, columns, labels, max_logit_elements)
    out = out.index_add(0, slots, token_logps)
    return out[:n], out[n:]


def _kept_token_logps(model, input_ids, position_ids, segments, columns, labels, max_logit_elements) -> torch.Tensor:
    """Log-probs ``(K,)`` of ``labels`` predicted at row ``columns``: one forward, the head in chunks.

    Where the output layer is a plain bias-free ``nn.Linear`` that the model applies as is, the forward keeps no
    logits and the decoder's final hidden states are taken from it (a forward hook) for
    :func:`chunked_token_logps`. A model that scales or caps its logits, or an adapter on the head, keeps the
    model's own logits at the kept columns, normalised in chunks.
    """
    inner = unwrap_parallel(model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    plain = (type(head) is torch.nn.Linear and head.bias is None and hasattr(base, "get_decoder")
             and not any(getattr(config, name, None) for name in _LOGIT_TRANSFORMS) and not shards_parameters(model))
    chunk_rows = max(1, max_logit_elements // _vocab_size(inner))
    keep = torch.zeros(1, input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
    if plain:
        captured = []
        hook = base.get_decoder().register_forward_hook(lambda module, args, output: captured.append(output[0]))
        try:
            model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=keep, segments=segments,
                  use_cache=False)
        finally:
            hook.remove()
        return chunked_token_logps(captured[-1][0, columns], head, labels, chunk_rows)
    keep[0, columns] = True
    logits = model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=keep, segments=segments,
                   use_cache=False).logits
    if logits.dim() == 3:  # a model that ignores boolean logits_to_keep: select the positions here
        logits = logits[keep]
    index = torch.cumsum(keep[0], 0)[columns] - 1  # logits rows are the kept columns, in row order
    normaliser = torch.cat([torch.logsumexp(rows.float(), dim=-1) for rows in logits.split(chunk_rows)])
    return logits[index, labels].float() - normaliser[index]


class _Row:
    """One padding-free row under construction: segments of ``prompt`` followed by one or two responses."""

    def __init__(self):
        self.ids, self.positions, self.segments = [], [], []  # segments: (start, end, per-token group ids or None)
        self.columns, self.labels, self.slots = [], [], []
        self.length = 0

    def add(self, prompt: Sequence[int], responses: list[tuple[Sequence[int], int]]) -> None:
        """Append a segment; each response's tokens are predicted from the column before them (the last prompt
        token for a first token; a segment without a prompt cannot predict its first token) and summed into ``slot``."""
        start, p = self.length, len(prompt)
        self.ids.append(np.asarray(prompt, dtype=np.int64))
        self.positions.append(np.arange(p))
        offset = start + p
        for response, slot in responses:
            m = len(response)
            self.ids.append(np.asarray(response, dtype=np.int64))
            self.positions.append(np.arange(p, p + m))
            first = 0 if p else 1
            if m > first:
                predictors = np.arange(offset + first - 1, offset + m - 1)
                if p:
                    predictors[0] = start + p - 1  # the first response token is predicted by the prompt's end
                self.columns.append(predictors)
                self.labels.append(self.ids[-1][first:])
                self.slots.append(np.full(m - first, slot))
            offset += m
        groups = None
        if len(responses) > 1:  # 0 = prompt, k = k-th response: the packed segment's mask keeps responses apart
            groups = np.repeat(np.arange(len(responses) + 1), [p] + [len(r) for r, _ in responses])
        self.segments.append((start, offset, groups))
        self.length = offset

    def tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``position_ids`` of the row, each ``(L,)`` int64."""
        return _cat(self.ids), _cat(self.positions)

    def scored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per scored token: the column whose hidden state predicts it, its id, and its output slot; ``(K,)`` each."""
        return _cat(self.columns), _cat(self.labels), _cat(self.slots)


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.int64, copy=False) if arrays else np.zeros(0, dtype=np.int64)


def _segment_mask(segment_of, device) -> torch.Tensor:
    """``(1, 1, L, L)`` mask of a packed segment: causal, and chosen/rejected tokens blind to each other."""
    segment = torch.as_tensor(np.asarray(segment_of)).to(device)
    causal = torch.ones(len(segment_of), len(segment_of), dtype=torch.bool, device=device).tril()
    same_or_prompt = (segment[None, :] == 0) | (segment[None, :] == segment[:, None])
    return (causal & same_or_prompt)[None, None]
