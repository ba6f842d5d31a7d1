"""Per-pair response log-probs, cached on disk: the one service scoring and training's reference pass both call.

A cache is a directory of parquet parts (``pair_id`` + the four numbers of ``LOGP_COLUMNS``), keyed by dataset
fingerprint + weights + adapter + max lengths + dtype (:func:`logps_cache_key`). A job scores only the pairs no
part holds yet, so a killed job resumes, and a second job over the same data and model reads everything.

Costs are linear in the number of pairs: the finished ids are read once into a set; results stay on the device
and go to disk as one part every ``flush_seconds`` or ``flush_pairs`` pairs (and when the job ends or is
interrupted), not one file per forward. A process killed outright (SIGKILL, out of memory) loses at most the
pairs since the last part. Forwards are sized in tokens (``token_budget``), longest pairs first.

Several processes can fill one cache at once, each its share (``shard``, ``dpo_engine.models.shards``): a process
scores only its share's missing pairs and names its parts by its rank, so a killed process's share is the only
one redone; :func:`read_cached_logps` then reads the whole table without a model.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from dpo_engine.data.pairs import fingerprint
from dpo_engine.errors import UserError
from dpo_engine.files import read_parts, weights_identity, write_part
from dpo_engine.models.logps import pair_logps, row_tokens, token_budget_batches
from dpo_engine.models.shards import Shard, shard_positions
from dpo_engine.paths import cache_dir

Progress = Callable[[int, int], None]
LOGP_COLUMNS = ["pair_id", "chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens"]
# Tokens per forward when none is given: a CPU's throughput is flat beyond a few thousand tokens, while a GPU
# needs tens of thousands to keep its matmul units busy (about 2 GB of activations per layer for an 8B model).
TOKEN_BUDGETS = {"cuda": 32768, "mps": 8192, "cpu": 8192}
FLUSH_SECONDS = 30.0
FLUSH_PAIRS = 4096


def default_token_budget(device: str) -> int:
    """Tokens per scoring forward for a device name (``"cuda:0"`` counts as ``"cuda"``)."""
    return TOKEN_BUDGETS.get(device.split(":")[0], TOKEN_BUDGETS["cpu"])


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


def logps_dir(cache_key: str) -> Path:
    """The parts directory of one cache key, under ``dpo_engine.paths.cache_dir()``."""
    return cache_dir() / "logps" / cache_key


def cached_logps(
    model,
    encoded: Sequence | Callable[[list[int]], list],
    pair_ids: Sequence[str],
    parts_dir: Path,
    *,
    pad_token_id: int,
    batch_size: int | None = None,
    token_budget: int | None = None,
    progress: Progress | None = None,
    flush_seconds: float = FLUSH_SECONDS,
    flush_pairs: int = FLUSH_PAIRS,
    shard: Shard | None = None,
) -> pd.DataFrame:
    """``LOGP_COLUMNS`` of every pair under ``model``, one row per ``pair_ids`` entry, in that order.

    ``encoded[i]`` is the ``EncodedPair`` of ``pair_ids[i]``; or ``encoded`` is a function of a list of indices
    returning their encodings, called only for the pairs not yet cached (a fully cached job encodes nothing).
    Pairs already in ``parts_dir`` are not scored again.
    A forward holds at most ``token_budget`` row tokens (default: :func:`default_token_budget` of the model's
    device) and ``batch_size`` pairs (default: no limit). ``progress(done, total)`` runs after each forward.
    Log-probs are float32 nats summed over response tokens; token counts are response lengths.
    With ``shard``, only that shard's pairs (``shard_positions`` of every pair's row tokens) are scored, into
    parts named by its rank, and the rows returned are the shard's, in ``pair_ids`` order.
    """
    pair_ids, parts_dir = list(pair_ids), Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    done = read_parts(parts_dir, LOGP_COLUMNS)
    finished_ids = set(done.pair_id)
    todo = [i for i in range(len(pair_ids)) if pair_ids[i] not in finished_ids]
    mine = list(range(len(pair_ids)))
    if shard is not None:
        mine = _shard_share(model, encoded, len(pair_ids), finished_ids, shard, pair_ids)
        todo = [i for i in mine if pair_ids[i] not in finished_ids]
    pending = dict(zip(todo, encoded(todo) if callable(encoded) else [encoded[i] for i in todo]))
    lengths = {i: row_tokens(model, pair) for i, pair in pending.items()}
    todo.sort(key=lengths.__getitem__, reverse=True)
    writer = _PartWriter(parts_dir, len(done), flush_seconds, flush_pairs, shard.part_prefix if shard else "")
    total, finished = len(mine), len(mine) - len(todo)
    if progress:
        progress(finished, total)
    if todo:
        model.eval()
        budget = token_budget or default_token_budget(next(model.parameters()).device.type)
        try:
            for group in token_budget_batches([lengths[i] for i in todo], budget, batch_size):
                batch = [todo[k] for k in group]
                with torch.inference_mode():
                    out = pair_logps(model, [pending[i] for i in batch], pad_token_id)
                writer.add([pair_ids[i] for i in batch], out)
                finished += len(batch)
                if progress:
                    progress(finished, total)
        finally:
            writer.flush()  # also on an exception or Ctrl-C: what was scored is kept
    return _rows(done, writer.written, [pair_ids[i] for i in sorted(mine)])


def _shard_share(model, encoded, n_pairs: int, finished_ids: set, shard: Shard, pair_ids: list[str]) -> list[int]:
    """Positions of ``shard``'s pairs; every pair's encoding is needed for the split, unless all are cached."""
    if all(pair_id in finished_ids for pair_id in pair_ids):
        return shard_positions([0] * n_pairs, shard)  # nothing to score: any split reads the same rows
    everything = list(range(n_pairs))
    pairs = encoded(everything) if callable(encoded) else list(encoded)
    return shard_positions([row_tokens(model, pair) for pair in pairs], shard)


def _rows(done: pd.DataFrame, written: list[pd.DataFrame], pair_ids: list[str]) -> pd.DataFrame:
    """The rows of ``pair_ids``, in that order, from what was cached before and what this job wrote."""
    frames = [frame for frame in (done, *written) if len(frame)]  # an empty frame's columns are objects
    scored = pd.concat(frames, ignore_index=True) if frames else done
    scored = scored.drop_duplicates("pair_id").set_index("pair_id")
    return scored.loc[pair_ids].reset_index()[LOGP_COLUMNS]


def read_cached_logps(parts_dir: Path, pair_ids: Sequence[str]) -> pd.DataFrame:
    """``LOGP_COLUMNS`` of every pair from the cache alone (no model): the merge after a sharded pass.

    Raises ``MissingLogps`` naming the directory and how many pairs no part holds (a shard that did not finish).
    """
    pair_ids = list(pair_ids)
    done = read_parts(parts_dir, LOGP_COLUMNS)
    missing = set(pair_ids) - set(done.pair_id)
    if missing:
        raise MissingLogps(f"{len(missing)} of {len(pair_ids)} pairs have no log-probs in {parts_dir}: a process "
                           "of the sharded pass did not finish; running the job again scores only those")
    return _rows(done, [], pair_ids)


class MissingLogps(UserError):
    """A sharded pass left pairs unscored."""


class _PartWriter:
    """Collects scored batches on the device and writes them as one part per time or size interval.

    Parts are named by ``prefix`` (a shard's rank, or nothing) and the number of pairs finished before them
    (``first_index`` onwards): unique in a cache, also while other shards write theirs.
    """

    def __init__(self, parts_dir: Path, first_index: int, flush_seconds: float, flush_pairs: int, prefix: str = ""):
        self.parts_dir, self.index, self.prefix = parts_dir, first_index, prefix
        self.flush_seconds, self.flush_pairs = flush_seconds, flush_pairs
        self.ids: list[str] = []
        self.values: dict[str, list[torch.Tensor]] = {}
        self.last_flush = time.monotonic()
        self.written: list[pd.DataFrame] = []

    def add(self, pair_ids: list[str], out: dict[str, torch.Tensor]) -> None:
        self.ids += pair_ids
        for key, value in out.items():
            self.values.setdefault(key, []).append(value.detach())
        if len(self.ids) >= self.flush_pairs or time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """One part with everything collected since the last one (one device-to-host copy per column)."""
        self.last_flush = time.monotonic()
        if not self.ids:
            return
        columns = {key: _to_host(torch.cat(values)) for key, values in self.values.items()}
        if any(tensor.is_pinned() for tensor in columns.values()):
            torch.cuda.synchronize()  # the non-blocking copies have landed
        part = pd.DataFrame({"pair_id": self.ids, **{key: tensor.numpy() for key, tensor in columns.items()}})
        part = part.astype({"chosen_logps": "float32", "rejected_logps": "float32"})
        write_part(self.parts_dir, self.index, part[LOGP_COLUMNS], prefix=self.prefix)
        self.written.append(part[LOGP_COLUMNS])
        self.index += len(self.ids)
        self.ids, self.values = [], {}


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``tensor``: into pinned memory without blocking when it is on a CUDA device."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)
