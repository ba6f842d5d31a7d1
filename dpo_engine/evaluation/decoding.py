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
buffers written in place instead of concatenated (`_RoomyLayer`).

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
    that temperature and nucleus ``top_p``, prompt ``i`` drawing from its own generator seeded with ``seeds[i]``
    (so an answer does not depend on which prompts share its batch). Runs under ``torch.inference_mode``.
    """
    device = next(model.parameters()).device
    warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)] if temperature > 0 else []
    queue = iter(range(len(prompts)))
    busy: list[dict] = []  # per row: prompt index, answer so far, sampling generator
    cache, mask = None, None  # the shared cache and its (rows, length) validity mask; left padding is 0
    step = _DecodingStep(model)
    # The tokens every prompt starts with (a chat template's system prompt: 24 of SmolLM2's ~80-token AlpacaEval
    # prompts) are computed once; each prompt keeps at least one token of its own for its first logits.
    prefix = _common_prefix(prompts)[: min(map(len, prompts), default=1) - 1]
    if prefix:
        with torch.inference_mode():
            prefix_layers = _layers(model(input_ids=torch.tensor([prefix], device=device), use_cache=True,
                                          logits_to_keep=1).past_key_values)

    def choose(logits: torch.Tensor, rows: list[dict]) -> list[int]:
        """Next token per row from last-position logits ``(rows, vocab)``."""
        if not warpers:
            return logits.argmax(-1).tolist()
        tokens = []
        for row, scores in zip(rows, logits.float()):
            for warp in warpers:
                scores = warp(None, scores[None])[0]
            tokens.append(int(torch.multinomial(scores.softmax(-1), 1, generator=row["generator"])))
        return tokens

    def prefill(suffixes: list[list[int]]) -> tuple[torch.Tensor, list[tuple[list, torch.Tensor]]]:
        """First-token logits ``(prompts, vocab)`` and per prompt its cache layers and mask, after the prefix."""
        def prefix_cache() -> DynamicCache | None:  # a new one per forward: the forward appends to it
            return DynamicCache(ddp_cache_data=prefix_layers) if prefix else None

        if not supports_packing(model):  # one forward per prompt
            logits, added = [], []
            for suffix in suffixes:
                out = model(input_ids=torch.tensor([suffix], device=device), use_cache=True, logits_to_keep=1,
                            past_key_values=prefix_cache())
                logits.append(out.logits[0, -1])
                valid = torch.ones(1, len(prefix) + len(suffix), dtype=torch.long, device=device)
                added.append((_layers(out.past_key_values), valid))
            return torch.stack(logits), added
        bounds = list(itertools.accumulate(map(len, suffixes), initial=0))
        keep = torch.zeros(1, bounds[-1], dtype=torch.bool)
        keep[0, [end - 1 for end in bounds[1:]]] = True
        with segment_attention(model):
            out = model(
                input_ids=torch.tensor([[token for suffix in suffixes for token in suffix]], device=device),
                position_ids=torch.tensor([[len(prefix) + i for suffix in suffixes for i in range(len(suffix))]], device=device),
                past_key_values=prefix_cache(), use_cache=True, logits_to_keep=keep.to(device),
                segments=[(start, end, None) for start, end in zip(bounds, bounds[1:])],
            )
        p = len(prefix)
        added = [
            ([(torch.cat([keys[:, :, :p], keys[:, :, p + start : p + end]], dim=2),
               torch.cat([values[:, :, :p], values[:, :, p + start : p + end]], dim=2))
              for keys, values in _layers(out.past_key_values)],
             torch.ones(1, p + end - start, dtype=torch.long, device=device))
            for start, end in zip(bounds, bounds[1:])
        ]
        return out.logits.reshape(len(suffixes), -1), added

    with torch.inference_mode():
        while True:
            # Fill the free slots: prefill the next prompts together in one padding-free forward (each attends to
            # the prefix all prompts share and to itself: dpo_engine.segment_attention), and splice their keys and
            # values into the shared cache. On 2 CPU cores 8 prompts of 105-291 tokens took 3.7-4.1 s left-padded
            # together and 2.4 s one at a time; 32 prompts 4.7-4.9 s one at a time and 3.0-3.5 s padding-free
            # together (docs/benchmarks.md §3).
            admitted = list(itertools.islice(queue, slots - len(busy)))
            if admitted:
                rows = []
                for index in admitted:
                    row = {"index": index, "answer": [], "generator": None}
                    if warpers:
                        seed = seeds[index] if seeds is not None else index
                        row["generator"] = torch.Generator(device=device).manual_seed(int(seed))
                    rows.append(row)
                first_logits, added = prefill([prompts[index][len(prefix):] for index in admitted])
                for row, logits in zip(rows, first_logits):
                    row["answer"].append(choose(logits[None], [row])[0])
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
            for row, token in zip(busy, choose(logits, busy)):
                row["answer"].append(token)


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
    takes 18 ms for SmolLM2's 49,152 x 576 head applied to 8 rows as ``F.linear`` and 8.6 ms in this layout (the
    same as for one row; docs/benchmarks.md §3). Only where that is what the model computes: the head is a plain
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


class _RoomyLayer(DynamicLayer):
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
    """A cache of ``layers`` (`_RoomyLayer`s) and its ``mask``, without the leading positions that no row uses."""
    first = int(mask.any(dim=0).nonzero()[0])
    cache = DynamicCache()
    cache.layers = [_RoomyLayer(keys[:, :, first:], values[:, :, first:]) for keys, values in layers]
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
