"""Continuous batching: decode many prompts through a fixed number of slots, a finished answer's slot taking the next
prompt at once.

A padded batch (one ``model.generate`` call per batch) decodes until its longest answer is done, so the batch makes
fewer tokens per step as its answers finish; on a CPU a decoding step costs about the same for 2 to 16 rows
(docs/benchmarks.md §3), so every step with an idle row is throughput lost. Here the prompts that take free slots
are prefilled together in one padding-free forward (each sees the prefix all prompts share, such as a chat
template's system prompt, computed once, and itself: ``dpo_engine.segment_attention``), their keys and values are
spliced into the shared cache (left-padded to a common length), and every step decodes one token for every busy
slot. Greedy answers equal one-prompt-at-a-time ``generate`` up to floating point (tests/test_generation.py). Two
things make a CPU step cheaper: the language-model head as ``weight @ hidden.T`` (`_DecodingStep`) and cache
buffers written in place instead of concatenated (`_InPlaceCacheLayer`).

Only models whose every layer caches keys and values for the whole sequence (``DynamicLayer``: Llama, Qwen2,
SmolLM and the like) can be spliced this way; `supports_continuous_batching` says whether a model can.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache, TemperatureLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

from dpo_engine.models.logps import supports_packing
from dpo_engine.models.segment_attention import segment_attention


def supports_continuous_batching(model) -> bool:
    """True when every layer of ``model``'s cache is a plain full-sequence ``DynamicLayer`` (no sliding window,
    no recurrent state), which `stream_answers` can splice."""
    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def stream_answers(
    model,
    prompts: Sequence[list[int]],
    *,
    slots: int,
    max_new_tokens: int,
    stop_ids: set[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    seeds: Sequence[int] | None = None,
) -> Iterator[tuple[int, list[int]]]:
    """Yield ``(index into prompts, answer token ids)`` as each answer finishes, decoding at most ``slots`` at once.

    ``prompts``: token ids per prompt, taken in order. An answer ends at its first ``stop_ids`` token (included in
    the ids yielded) or after ``max_new_tokens`` tokens. ``temperature`` 0 decodes greedily; above 0 samples with
    that temperature and nucleus ``top_p``, every row at once (`Sampler`): prompt ``i``'s draws depend only on
    ``seeds[i]`` (default ``i``) and its answer so far, so an answer does not depend on which prompts share its
    batch. Runs under ``torch.inference_mode``.
    """
    device = next(model.parameters()).device
    sampler = Sampler(temperature, top_p)
    queue = iter(range(len(prompts)))
    busy: list[dict] = []  # per row: prompt index, answer so far, sampling seed
    cache, mask = None, None  # the shared cache and its (rows, length) validity mask; left padding is 0
    step = _DecodingStep(model)
    with torch.inference_mode():
        prefill = _Prefill(model, prompts, device)
        while True:
            # Fill the free slots: the next prompts are prefilled together and spliced into the shared cache.
            admitted = list(itertools.islice(queue, slots - len(busy)))
            if admitted:
                rows = [{"index": index, "answer": [], "seed": seeds[index] if seeds is not None else index}
                        for index in admitted]
                first_logits, added = prefill(admitted)
                for row, token in zip(rows, sampler(first_logits, rows)):
                    row["answer"].append(token)
                cache, mask = _splice(cache, mask, added)
                busy.extend(rows)
            # Hand back finished answers; drop their rows from the cache.
            finished = [i for i, row in enumerate(busy) if row["answer"][-1] in stop_ids
                        or len(row["answer"]) >= max_new_tokens]
            if finished:
                for i in finished:
                    yield busy[i]["index"], busy[i]["answer"]
                keep = [i for i in range(len(busy)) if i not in finished]
                busy = [busy[i] for i in keep]
                cache, mask = _keep_rows(cache, mask, keep) if busy else (None, None)
                continue  # refill the freed slots before the next step
            if not busy:
                return
            step_mask = torch.cat([mask, mask.new_ones(len(busy), 1)], dim=1)
            logits, cache = step(
                input_ids=torch.tensor([[row["answer"][-1]] for row in busy], device=device),
                attention_mask=step_mask,
                position_ids=mask.sum(dim=1, keepdim=True),  # each row's own count of real tokens so far
                past_key_values=cache,
                use_cache=True,
            )
            mask = step_mask
            for row, token in zip(busy, sampler(logits, busy)):
                row["answer"].append(token)


class Sampler:
    """Next tokens for all rows at once from last-position logits ``(rows, vocab)``: greedy at temperature 0,
    else temperature and nucleus ``top_p`` (transformers' warpers, batched) and one inverse-CDF draw per row.

    The draw's uniform number comes from a hash of the row's seed and its answer length (`uniforms`), not from a
    per-row generator: one batched computation and one device-to-host copy per step for every row, where a
    generator per row costs a ``multinomial`` call and a synchronisation per row.
    """

    def __init__(self, temperature: float, top_p: float):
        self.warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)] if temperature > 0 else []

    def __call__(self, logits: torch.Tensor, rows: list[dict]) -> list[int]:
        if not self.warpers:
            return logits.argmax(-1).tolist()
        scores = logits.float()
        for warp in self.warpers:
            scores = warp(None, scores)
        cdf = scores.softmax(-1).cumsum(-1)
        seeds = torch.tensor([int(row["seed"]) for row in rows], dtype=torch.long, device=logits.device)
        steps = torch.tensor([len(row["answer"]) for row in rows], dtype=torch.long, device=logits.device)
        draws = uniforms(seeds, steps)[:, None] * cdf[:, -1:]
        return (cdf < draws).sum(-1).clamp(max=cdf.shape[-1] - 1).tolist()


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``x * constant mod 2**32`` for ``x`` in [0, 2**32), in int64 without overflow (16-bit halves)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + (((high * constant) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: every input bit flips about half the output bits."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniforms(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One number in [0, 1) per row, a fixed function of ``(seed, step)`` (int64 tensors ``(rows,)``), float32."""
    # Nested, not a XOR of two hashes (symmetric in seed and step); the offset keeps seed 0 away from the fixed point 0.
    mixed = _mix32((_mix32((seeds + 0x9E3779B9) & _MASK32) + steps) & _MASK32)
    return (mixed >> 8).float() / float(2**24)


class _Prefill:
    """First-token logits and cache rows of prompts joining the batch, after the prefix every prompt shares.

    The tokens every prompt starts with (a chat template's system prompt: 24 of SmolLM2's ~80-token AlpacaEval
    prompts) are computed once; each prompt keeps at least one token of its own for its first logits. The joining
    prompts are prefilled together in one padding-free forward (each attends to the prefix and to itself:
    ``dpo_engine.segment_attention``): on a CPU, prompts of mixed lengths are slower left-padded together than one
    at a time, and faster padding-free together (docs/benchmarks.md §3, items 8 and 9).
    """

    def __init__(self, model, prompts: Sequence[list[int]], device):
        self.model, self.prompts, self.device = model, prompts, device
        self.prefix = _common_prefix(prompts)[: min(map(len, prompts), default=1) - 1]
        self.prefix_layers = None
        if self.prefix:
            out = model(input_ids=torch.tensor([self.prefix], device=device), use_cache=True, logits_to_keep=1)
            self.prefix_layers = _layers(out.past_key_values)

    def _prefix_cache(self) -> DynamicCache | None:
        """A new cache holding the prefix per forward: the forward appends to it."""
        return DynamicCache(ddp_cache_data=self.prefix_layers) if self.prefix else None

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, list[tuple[list, torch.Tensor]]]:
        """``(first-token logits (prompts, vocab), per prompt its cache layers and mask)``."""
        suffixes = [self.prompts[index][len(self.prefix):] for index in indices]
        if not supports_packing(self.model):
            return self._one_by_one(suffixes)
        p = len(self.prefix)
        bounds = list(itertools.accumulate(map(len, suffixes), initial=0))
        keep = torch.zeros(1, bounds[-1], dtype=torch.bool)
        keep[0, [end - 1 for end in bounds[1:]]] = True
        with segment_attention(self.model):
            out = self.model(
                input_ids=torch.tensor([[token for suffix in suffixes for token in suffix]], device=self.device),
                position_ids=torch.tensor([[p + i for suffix in suffixes for i in range(len(suffix))]],
                                          device=self.device),
                past_key_values=self._prefix_cache(), use_cache=True, logits_to_keep=keep.to(self.device),
                segments=[(start, end, None) for start, end in zip(bounds, bounds[1:])],
            )
        added = [
            ([(torch.cat([keys[:, :, :p], keys[:, :, p + start : p + end]], dim=2),
               torch.cat([values[:, :, :p], values[:, :, p + start : p + end]], dim=2))
              for keys, values in _layers(out.past_key_values)],
             torch.ones(1, p + end - start, dtype=torch.long, device=self.device))
            for start, end in zip(bounds, bounds[1:])
        ]
        return out.logits.reshape(len(suffixes), -1), added

    def _one_by_one(self, suffixes: list[list[int]]) -> tuple[torch.Tensor, list[tuple[list, torch.Tensor]]]:
        """One forward per prompt, for models the padding-free path cannot run."""
        logits, added = [], []
        for suffix in suffixes:
            out = self.model(input_ids=torch.tensor([suffix], device=self.device), use_cache=True, logits_to_keep=1,
                             past_key_values=self._prefix_cache())
            logits.append(out.logits[0, -1])
            valid = torch.ones(1, len(self.prefix) + len(suffix), dtype=torch.long, device=self.device)
            added.append((_layers(out.past_key_values), valid))
        return torch.stack(logits), added


def _common_prefix(prompts: Sequence[list[int]]) -> list[int]:
    """The longest list of token ids that every prompt starts with (empty for no prompts)."""
    if not prompts:
        return []
    shortest = min(prompts, key=len)
    length = next((i for i, token in enumerate(shortest) if any(p[i] != token for p in prompts)), len(shortest))
    return list(shortest[:length])


class _DecodingStep:
    """One decoding step: ``step(**model inputs) -> (next-token logits (rows, vocab), cache)``.

    The language-model head is computed as ``weight @ hidden.T`` on the decoder's last hidden state: on a CPU, MKL
    computes SmolLM2's 49,152 x 576 head for a few rows faster in this layout than as ``F.linear``, and as fast as
    for one row (docs/benchmarks.md §3, item 8). Only where that is what the model computes: the head is a plain
    ``nn.Linear`` without bias, and the first step, run through the whole model, gives the same logits (a model
    that scales or caps its logits, or an adapter on the head, keeps the model's own forward).
    """

    def __init__(self, model):
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        plain = type(head) is torch.nn.Linear and head.bias is None and hasattr(model, "get_decoder")
        self.model, self.weight, self.checked = model, head.weight if plain else None, False

    def __call__(self, **inputs) -> tuple[torch.Tensor, DynamicCache]:
        if self.weight is not None and self.checked:
            out = self.model.get_decoder()(**inputs)
            return self._head(out.last_hidden_state[:, -1]), out.past_key_values
        out = self.model(**inputs, output_hidden_states=self.weight is not None)
        logits = out.logits[:, -1]
        if self.weight is not None:
            self.checked = True
            if not torch.allclose(self._head(out.hidden_states[-1][:, -1]).float(), logits.float(), rtol=1e-2, atol=1e-2):
                self.weight = None
        return logits, out.past_key_values

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``(rows, vocab)`` of last hidden states ``(rows, hidden)``."""
        return (self.weight @ hidden.T).T


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values per layer, each ``(rows, kv heads, positions, head dim)``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


class _InPlaceCacheLayer(DynamicLayer):
    """A full-sequence cache layer whose keys and values sit at the start of buffers with room for ``ROOM`` more
    positions: a decoding step writes its new position in place, where ``DynamicLayer`` copies the whole cache with
    ``torch.cat`` (60 copies per step for a 30-layer model; docs/benchmarks.md §3). The buffers grow by ``ROOM``
    positions when full; `_rebuilt` makes new ones whenever rows join or leave."""

    ROOM = 64

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self._buffers = [self._roomy(tensor, tensor.shape[-2], 0) for tensor in (keys, values)]
        self.keys, self.values = (buffer[:, :, : keys.shape[-2]] for buffer in self._buffers)

    def _roomy(self, tensor: torch.Tensor, length: int, needed: int) -> torch.Tensor:
        """A buffer holding ``tensor``'s first ``length`` positions, with room for ``needed`` + ``ROOM`` more."""
        rows, heads, _, dim = tensor.shape
        buffer = tensor.new_empty(rows, heads, length + needed + self.ROOM, dim)
        buffer[:, :, :length] = tensor[:, :, :length]
        return buffer

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        length, added = self.keys.shape[-2], key_states.shape[-2]
        # Full, or keys replaced by an inherited method (crop, reorder): new buffers from the current keys and values.
        if length + added > self._buffers[0].shape[-2] or self.keys.data_ptr() != self._buffers[0].data_ptr():
            self._buffers = [self._roomy(tensor, length, added) for tensor in (self.keys, self.values)]
        for buffer, states in zip(self._buffers, (key_states, value_states)):
            buffer[:, :, length : length + added] = states
        self.keys, self.values = (buffer[:, :, : length + added] for buffer in self._buffers)
        return self.keys, self.values


def _rebuilt(layers: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    """A cache of ``layers`` (`_InPlaceCacheLayer`s) and its ``mask``, without the leading positions that no row uses."""
    first = int(mask.any(dim=0).nonzero()[0])
    cache = DynamicCache()
    cache.layers = [_InPlaceCacheLayer(keys[:, :, first:], values[:, :, first:]) for keys, values in layers]
    return cache, mask[:, first:]


def _splice(cache: DynamicCache | None, mask: torch.Tensor | None,
            added: list[tuple[list, torch.Tensor]]) -> tuple[DynamicCache, torch.Tensor]:
    """The shared cache with the rows of each ``(layers, mask)`` in ``added`` (new prompts) appended, in order; every
    part is left-padded to the longest with zeros that the mask marks 0 (attention never reads them)."""
    parts = ([(_layers(cache), mask)] if cache is not None else []) + list(added)
    width = max(part_mask.shape[1] for _, part_mask in parts)

    def left_pad(tensor: torch.Tensor, dim_from_end: int) -> torch.Tensor:
        missing = width - tensor.shape[-dim_from_end]
        return F.pad(tensor, (0, 0) * (dim_from_end - 1) + (missing, 0)) if missing else tensor

    layers = [
        (torch.cat([left_pad(layers[i][0], 2) for layers, _ in parts]),
         torch.cat([left_pad(layers[i][1], 2) for layers, _ in parts]))
        for i in range(len(parts[0][0]))
    ]
    return _rebuilt(layers, torch.cat([left_pad(part_mask, 1) for _, part_mask in parts]))


def _keep_rows(cache: DynamicCache, mask: torch.Tensor, keep: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """The shared cache with only the rows ``keep``, in that order."""
    rows = torch.tensor(keep, device=mask.device)
    return _rebuilt([(keys[rows], values[rows]) for keys, values in _layers(cache)], mask[rows])
