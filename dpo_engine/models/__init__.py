"""Models and what runs them: resolve and load models and tokenizers, encode pairs, per-pair log-probs, reward heads.

The re-exports below load on first use (PEP 562), so torch-free modules (configs) can import
``dpo_engine.models.tokenization``'s defaults without importing torch through this package.
"""

__all__ = ["DEFAULT_MODEL", "TINY_MODEL", "adapter_base", "detect_device", "load_model", "load_tokenizer", "resolve_model"]


def __getattr__(name: str):
    if name in __all__:
        from dpo_engine.models import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'dpo_engine.models' has no attribute {name!r}")
