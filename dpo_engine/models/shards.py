"""Splitting a per-pair pass across processes: which process this is, and which pairs are its share.

A process learns its place from the environment every launcher sets (``accelerate launch``, ``torchrun``, and
``dpo-engine score --num-processes N`` for the workers it starts): ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.
Scoring needs no collective: each process scores its share into the shared log-prob cache under parts named by
its rank, and one process reads the whole table once every share is there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Process ``rank`` of ``world_size`` (``local_rank``: its index on this machine, which picks its GPU)."""

    rank: int
    world_size: int
    local_rank: int = 0

    @property
    def part_prefix(self) -> str:
        """What this process's cache parts are named with, so parts written at once never collide."""
        return f"r{self.rank:03d}-"


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` describe; None outside a multi-process launch."""
    environ = os.environ if environ is None else environ
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return None
    if world_size <= 1:
        return None
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    return Shard(rank, world_size, local_rank)


def shard_positions(lengths: Sequence[int], shard: Shard) -> list[int]:
    """Positions (into ``lengths``) of the pairs that are ``shard``'s share, longest first.

    ``lengths`` are the tokens each pair's forward takes (``models.logps.row_tokens``). Pairs are sorted longest
    first (ties by position) and dealt in snake order, 0..N-1 then N-1..0, so every share gets pairs of every
    length and the shares' token totals differ by at most about one pair's length per round. Every position
    belongs to exactly one shard; the split depends only on ``lengths``, so a resumed job gets the same shares.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = shard.world_size
    return [i for k, i in enumerate(order)
            if (k % size if (k // size) % 2 == 0 else size - 1 - k % size) == shard.rank]


def shard_device(device: str, shard: Shard | None) -> str:
    """The device a shard runs on: ``cuda`` becomes ``cuda:<local_rank>`` (one GPU per process); others unchanged."""
    if shard is None or device != "cuda":
        return device
    return f"cuda:{shard.local_rank}"
