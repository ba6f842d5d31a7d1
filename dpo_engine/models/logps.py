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
- **Bounded memory.** A batch whose logits would exceed ``MAX_LOGIT_ELEMENTS`` values is split into smaller
  forwards, and the log-softmax normaliser is taken in chunks, so the peak memory does not grow with ``max_length``
  times the batch size.

Models with another attention implementation (flash-attention kernels) use the plain concatenated forward
(``concatenated_logps``): chosen and rejected rows, left-padded, logits for the last response columns.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dpo_engine.models.segment_attention import SEGMENT_ATTENTION, segment_attention

# Logits (positions x vocabulary) one forward may produce: 2**27 fp32 values = 512 MB, i.e. 2,730 positions of
# SmolLM2's 49,152-word vocabulary. A larger batch is split into several forwards.
MAX_LOGIT_ELEMENTS = 2**27
# Rows of logits normalised at a time (logsumexp makes a temporary copy of what it reduces).
_LSE_CHUNK = 512
# Attention implementations the segment path stands in for (it computes the same attention with SDPA).
_SEGMENTABLE_ATTENTION = ("sdpa", "eager")


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


def policy_logps(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Summed response log-probs of a collated batch (``dpo_engine.tokenization.collate``).

    The batch is unpacked into its pairs and scored by :func:`pair_logps` (no padding, shared prompt, response-only
    logits); models with another attention implementation get :func:`concatenated_logps`. Both give the same numbers.

    Returns ``chosen_logps``, ``rejected_logps`` (float32 nats) and ``chosen_tokens``, ``rejected_tokens``
    (response lengths), each ``(B,)``. Gradients flow unless called under ``torch.no_grad``/``inference_mode``.
    """
    if not supports_packing(model):
        return concatenated_logps(model, batch)
    return pair_logps(model, unpack_batch(batch), _pad_id(batch))


def pair_logps(
    model,
    pairs: Sequence,
    pad_token_id: int,
    *,
    max_logit_elements: int = MAX_LOGIT_ELEMENTS,
) -> dict[str, torch.Tensor]:
    """Summed response log-probs of ``pairs`` (``EncodedPair``-like: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``).

    One padding-free forward per group of pairs (see the module docstring); a group is cut when its logits would
    exceed ``max_logit_elements`` values. ``pad_token_id`` is only used by the concatenated fallback. Same return
    value as :func:`policy_logps`.
    """
    if not supports_packing(model):
        from dpo_engine.models.tokenization import collate

        return concatenated_logps(model, collate(list(pairs), pad_token_id))
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for group in _groups(pairs, max(1, max_logit_elements // _vocab_size(model))):
        c, r = _segments_forward(model, group, device)
        chosen.append(c)
        rejected.append(r)
    tokens_c = torch.tensor([len(p.chosen_ids) for p in pairs], dtype=torch.long, device=device)
    tokens_r = torch.tensor([len(p.rejected_ids) for p in pairs], dtype=torch.long, device=device)
    return {
        "chosen_logps": torch.cat(chosen),
        "rejected_logps": torch.cat(rejected),
        "chosen_tokens": tokens_c,
        "rejected_tokens": tokens_r,
    }


def supports_packing(model) -> bool:
    """Whether the padding-free segment path can stand in for the model's attention (sdpa or eager).

    While activation checkpointing recomputes forwards during backward, only when the model's attention is the
    segment function throughout (``with segment_attention(model):`` around training): the recomputation runs after
    this call's own ``segment_attention`` block has closed.
    """
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
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    return (1 if p and (c or r) else 0) + max(c - 1, 0) + max(r - 1, 0)


def _groups(pairs: Sequence, max_logit_tokens: int):
    group, budget = [], 0
    for pair in pairs:
        need = _logit_positions(pair)
        if group and budget + need > max_logit_tokens:
            yield group
            group, budget = [], 0
        group.append(pair)
        budget += need
    if group:
        yield group


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


def _segments_forward(model, pairs: Sequence, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs of ``pairs`` from one forward over a single padding-free row.

    Each pair becomes one packed segment ``[prompt | chosen | rejected]`` or two plain ones (``prefer_packed``);
    the segments are laid end to end and attend only within themselves (``dpo_engine.segment_attention``).
    """
    n = len(pairs)
    specs = []  # (prompt, [(response, output slot)]): pair i's chosen goes to slot i, its rejected to n + i
    for i, p in enumerate(pairs):
        if prefer_packed(model, p):
            specs.append((p.prompt_ids, [(p.chosen_ids, i), (p.rejected_ids, n + i)]))
        else:
            specs += [(p.prompt_ids, [(p.chosen_ids, i)]), (p.prompt_ids, [(p.rejected_ids, n + i)])]
    input_ids, position_ids, segments = [], [], []
    # Each scored token: (column whose logits predict it, label, output slot)
    columns, labels, slots = [], [], []
    for prompt, responses in specs:
        start = len(input_ids)
        p = len(prompt)
        input_ids += prompt
        position_ids += range(p)
        segment_of = [0] * p  # 0 prompt, k = k-th response (for the packed segment's mask)
        for k, (response, slot) in enumerate(responses, start=1):
            offset = len(input_ids)
            for j, token in enumerate(response):
                if p == 0 and j == 0:  # no prompt: the first response token has no context to be predicted from
                    continue
                columns.append(start + p - 1 if j == 0 else offset + j - 1)
                labels.append(token)
                slots.append(slot)
            input_ids += response
            position_ids += range(p, p + len(response))
            segment_of += [k] * len(response)
        segments.append((start, len(input_ids), _segment_mask(segment_of, device) if len(responses) > 1 else None))

    out = torch.zeros(2 * n, dtype=torch.float32, device=device)
    if not columns:
        return out[:n], out[n:]
    keep = torch.zeros(1, len(input_ids), dtype=torch.bool)
    keep[0, columns] = True
    with segment_attention(model):
        outputs = model(
            input_ids=torch.tensor([input_ids], device=device),
            position_ids=torch.tensor([position_ids], device=device),
            logits_to_keep=keep.to(device),
            segments=segments,
            use_cache=False,
        )
    logits = outputs.logits  # (number of kept positions, V), in column order
    if logits.dim() == 3:  # a model that ignores boolean logits_to_keep: select the positions here
        logits = logits[keep.to(device)]
    index = (torch.cumsum(keep[0], 0) - 1)[torch.tensor(columns)].to(device)
    picked = logits[index, torch.tensor(labels, device=device)].float()
    normaliser = torch.cat([torch.logsumexp(chunk.float(), dim=-1) for chunk in logits.split(_LSE_CHUNK)])
    token_logps = picked - normaliser[index]
    out = out.index_add(0, torch.tensor(slots, device=device), token_logps)
    return out[:n], out[n:]


def _segment_mask(segment_of: list[int], device) -> torch.Tensor:
    """``(1, 1, L, L)`` mask of a packed segment: causal, and chosen/rejected tokens blind to each other."""
    segment = torch.tensor(segment_of, device=device)
    causal = torch.ones(len(segment_of), len(segment_of), dtype=torch.bool, device=device).tril()
    same_or_prompt = (segment[None, :] == 0) | (segment[None, :] == segment[:, None])
    return (causal & same_or_prompt)[None, None]
