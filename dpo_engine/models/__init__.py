"""Models and what runs them: resolve and load models and tokenizers, encode pairs, per-pair log-probs, reward heads."""

from dpo_engine.models.loading import (
    DEFAULT_MODEL,
    TINY_MODEL,
    adapter_base,
    detect_device,
    load_model,
    load_tokenizer,
    resolve_model,
)

__all__ = ["DEFAULT_MODEL", "TINY_MODEL", "adapter_base", "detect_device", "load_model", "load_tokenizer", "resolve_model"]
