"""Training across processes (``accelerate launch``): who this process is, its device, and the few collectives
the run needs outside the Trainer (a barrier, one stop flag for all ranks, objects gathered to every rank).

A process started by ``accelerate launch`` (torchrun underneath) finds ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``
in its environment; a plain process has none and is rank 0 of a world of one, where every collective here is a
no-op. The Trainer then wraps the model in DDP (or FSDP / DeepSpeed from an accelerate config) by itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from dpo_engine.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: ``rank`` of ``size``, ``local_rank`` on its machine."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory (status, metrics, outputs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE_PROCESS = World()  # a plain process: rank 0 of one


def current_world() -> World:
    """The world of this process, from the variables torchrun sets (a world of one without them)."""
    def number(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default

    return World(rank=number("RANK", 0), local_rank=number("LOCAL_RANK", 0), size=max(1, number("WORLD_SIZE", 1)))


def rank_device(device: str, world: World) -> str:
    """The device this rank trains on: ``cuda`` becomes ``cuda:<local_rank>`` across processes; others unchanged."""
    if device == "cuda" and world.distributed:
        return f"cuda:{world.local_rank}"
    return device


def backend_for(device: str) -> str:
    """The collective backend for a device: NCCL between CUDA GPUs, gloo otherwise (CPU)."""
    return "nccl" if device.startswith("cuda") else "gloo"


def start_process_group(device: str, world: World) -> None:
    """Join the training processes (once; the Trainer's accelerate state then finds the group already there)."""
    if not world.distributed:
        return
    import torch

    if device.startswith("cuda"):
        torch.cuda.set_device(rank_device(device, world))
    from accelerate import PartialState

    PartialState(backend=backend_for(device), cpu=not device.startswith("cuda"))


def end_process_group() -> None:
    """Leave the process group, if one was joined: a rank that exits still in a gloo group can abort at
    interpreter shutdown ("terminate called without an active exception"), failing the launch after its training
    completed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_device_batch(batch_size: int, world: World) -> int:
    """Pairs per forward on each rank: ``batch_size`` is the global batch, split evenly (``ConfigError`` if not)."""
    if batch_size % world.size:
        raise ConfigError("batch_size", f"must be a multiple of the number of processes ({world.size}) so that "
                                        f"each gets the same share of a batch, got {batch_size}")
    return batch_size // world.size


def refuse_data_parallel(n_gpu: int, world: World) -> None:
    """``ConfigError`` when one process would drive several GPUs: the Trainer would wrap the model in
    ``nn.DataParallel``, multiplying the batch by the GPU count and hiding the model's config."""
    if n_gpu > 1 and not world.distributed:
        raise ConfigError("num_processes", f"this process sees {n_gpu} CUDA GPUs: set num_processes: {n_gpu} (one "
                                           "process per GPU, through accelerate launch), or choose one GPU with "
                                           "CUDA_VISIBLE_DEVICES=0")


def barrier(world: World) -> None:
    """Wait until every rank gets here."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when ``flag`` is True on any rank (a stop asked of one rank stops them all together)."""
    if not world.distributed:
        return flag
    return any(all_objects(bool(flag), world))


def all_objects(value: Any, world: World) -> list:
    """``value`` of every rank, in rank order, on every rank (picklable objects; small ones: this pickles)."""
    if not world.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def from_main(value: Any, world: World) -> Any:
    """Rank 0's ``value`` on every rank."""
    return all_objects(value, world)[0]


def shard(lengths: Sequence[int], world: World) -> list[int]:
    """The indices of ``lengths`` this rank works on: sorted longest first and dealt out in turn, so every rank
    gets about the same number of tokens (a rank with the long pairs would keep the others waiting)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return order[world.rank :: world.size]
