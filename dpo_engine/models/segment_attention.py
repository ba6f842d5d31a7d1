"""Padding-free attention: many sequences laid end to end in one row, each attending only within itself.

A batch of pairs with different lengths, padded to its longest row, spends the model's linear work (most of its
cost) on padding: 35 % of the tokens of 8 bundled UltraFeedback pairs at 192 tokens, more at 512. Laid end to end
in a single row, every position is a real token. Attention must then stay inside each sequence, which a 4-D mask
over the whole row could say but SDPA would compute as one square of the row's full length. Instead this module
registers an attention function with transformers' public ``AttentionInterface``: it runs SDPA on each segment
separately (causal, or under the segment's own mask), so attention costs what it would for the sequences alone.

Use::

    with segment_attention(model):
        model(input_ids=row, position_ids=positions, segments=segments, use_cache=False)

``segments`` is a list of ``(start, end, mask)``: the columns ``[start, end)`` of the row, and ``mask`` either
``None`` (plain causal attention) or a ``(1, 1, end - start, end - start)`` boolean mask (True = may attend).
Position ids restart in each segment. With a cache holding a shared prefix (``past_key_values``), every segment
also sees the prefix: several prompts after one system prompt are prefilled in a single padding-free forward.
transformers passes extra forward keyword arguments down to the attention function; without the ``segments``
keyword the function is transformers' own SDPA. With ``MARGIN_LAB_FUSED_ATTENTION`` set, a row without a cached
prefix goes through one fused call per layer instead (``dpo_engine.models.varlen_attention``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

from dpo_engine.models.varlen_attention import fused_attention, fused_backend

SEGMENT_ATTENTION = "margin_lab_segments"


def segment_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, segments=None, **kwargs):
    """SDPA per segment of a single row; plain SDPA when no ``segments`` are given.

    ``query`` is ``(1, heads, L, head_dim)``, ``key`` and ``value`` ``(1, kv_heads, past + L, head_dim)``, where
    ``past`` positions were cached before this row (a prefix every segment shares, such as a chat template's system
    prompt): each segment sees all of them, then its own tokens causally or under its own mask. Returns
    ``(1, L, heads, head_dim)`` as transformers' attention functions do.
    """
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    past = key.shape[2] - query.shape[2]
    backend = fused_backend(query, past, dropout)
    if backend is not None:  # opt-in: one fused call for the whole row (dpo_engine.models.varlen_attention)
        fused = fused_attention(backend, module, query, key, value, segments, scaling)
        if fused is not None:
            return fused, None
    outputs = []
    for start, end, mask in segments:
        keys, values = key[:, :, past + start : past + end], value[:, :, past + start : past + end]
        if past:
            keys = torch.cat([key[:, :, :past], keys], dim=2)
            values = torch.cat([value[:, :, :past], values], dim=2)
            own = mask if mask is not None else torch.ones(end - start, end - start, dtype=torch.bool, device=query.device).tril()
            mask = torch.cat([own.new_ones(*own.shape[:-1], past), own], dim=-1)
        outputs.append(sdpa_attention_forward(
            module, query[:, :, start:end], keys, values, mask, dropout=dropout, scaling=scaling, is_causal=mask is None,
        )[0])
    return torch.cat(outputs, dim=1), None


def _no_mask(*args, **kwargs):
    """Each segment brings its own mask (or is causal), so the model builds none for the whole row."""
    return None


AttentionInterface.register(SEGMENT_ATTENTION, segment_sdpa)
AttentionMaskInterface.register(SEGMENT_ATTENTION, _no_mask)


@contextmanager
def segment_attention(model):
    """Route ``model``'s attention through :func:`segment_sdpa` inside the block, then restore its own."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model: its transformer
    previous = base.config._attn_implementation
    base.set_attn_implementation(SEGMENT_ATTENTION)
    try:
        yield
    finally:
        base.set_attn_implementation(previous)
