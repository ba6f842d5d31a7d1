"""The selection arena: N selectors at one budget plus random at several seeds, a LoRA run each, one evaluation,
one table (docs/arena.md). `ArenaConfig` and the store's views import no torch."""

from dpo_engine.arena.config import ArenaConfig
from dpo_engine.arena.store import arena_results, arena_status, contestant_steps, list_arenas

__all__ = ["ArenaConfig", "arena_results", "arena_status", "contestant_steps", "list_arenas"]
