"""Activation checkpointing that keeps padding-free rows.

Checkpointing recomputes each layer's forward during backward. The padding-free path (``dpo_engine.models.logps``)
routes attention through ``segment_attention`` only for the duration of its own forward, so a recomputation would
run the model's plain attention over the whole row. Two things keep the rows: checkpointing is non-reentrant (the
recomputed forward gets the first one's keyword arguments, ``segments`` included), and the model's attention stays
the segment function for the whole of training (``attention_for_training``), so the recomputation reads the same
segments. Imports torch and transformers only (``benchmarks/gpu_check.py`` uses it on machines without pandas).
"""

from __future__ import annotations

import contextlib

import torch

from dpo_engine.models.logps import supports_packing
from dpo_engine.models.segment_attention import segment_attention


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing on every decoder layer of ``model`` (before any LoRA wrapping).

    transformers 5.2x names it ``activation_checkpointing_enable``, earlier 5.x ``gradient_checkpointing_enable``.
    """
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def attention_for_training(model, checkpointing: bool):
    """A context holding segment attention for the whole of training when ``checkpointing`` (and the model's own
    attention can be segmented); a no-op otherwise."""
    with torch.no_grad():  # whether the model's own attention can be segmented, checkpointing aside
        segmentable = supports_packing(model)
    return segment_attention(model) if checkpointing and segmentable else contextlib.nullcontext()
