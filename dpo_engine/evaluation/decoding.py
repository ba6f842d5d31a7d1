"""Continuous batching: decode many prompts through a fixed number of slots, a finished answer's slot taking the next
prompt at once.

A padded batch (one ``model.generate`` call per batch) decodes until its longest answer is done, so the batch makes
fewer tokens per step as its answers finish; on a CPU a decoding step costs about the same for 2 to 16 rows
(docs/benchmarks.md §3), so every step with an idle row is throughput lost. Here the prompts that take free slots
are prefilled together, their keys and values are spliced into the shared cache (left-padded to a common length),
and every step decodes one token for every busy slot. Greedy answers equal one-prompt-at-a-time ``generate`` up
to floating point (tests/test_generation.py).

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

    with torch.inference_mode():
        while True:
            # Fill the free slots: prefill the next prompts together (left-padded) and splice their cache in.
            admitted = list(itertools.islice(queue, slots - len(busy)))
            if admitted:
                width = max(len(prompts[index]) for index in admitted)
                ids = torch.zeros(len(admitted), width, dtype=torch.long, device=device)
                new_mask = torch.zeros(len(admitted), width, dtype=torch.long, device=device)
                for row, index in enumerate(admitted):
                    ids[row, width - len(prompts[index]):] = torch.tensor(prompts[index], device=device)
                    new_mask[row, width - len(prompts[index]):] = 1
                positions = (new_mask.cumsum(1) - 1).clamp(min=0)
                prefill = model(input_ids=ids, attention_mask=new_mask, position_ids=positions, use_cache=True,
                                logits_to_keep=1)
                rows = [{"index": index, "answer": [], "generator": None} for index in admitted]
                for row in rows if warpers else []:
                    seed = seeds[row["index"]] if seeds is not None else row["index"]
                    row["generator"] = torch.Generator(device=device).manual_seed(int(seed))
                for row, token in zip(rows, choose(prefill.logits[:, -1], rows)):
                    row["answer"].append(token)
                cache, mask = _splice(cache, mask, prefill.past_key_values, new_mask)
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
            out = model(
                input_ids=torch.tensor([[row["answer"][-1]] for row in busy], device=device),
                attention_mask=step_mask,
                position_ids=mask.sum(dim=1, keepdim=True),  # each row's own count of real tokens so far
                past_key_values=cache,
                use_cache=True,
            )
            cache, mask = out.past_key_values, step_mask
            for row, token in zip(busy, choose(out.logits[:, -1], busy)):
                row["answer"].append(token)


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values per layer, each ``(rows, kv heads, positions, head dim)``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _rebuilt(layers: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    """A cache of ``layers`` and its ``mask``, without the leading positions that no row uses."""
    first = int(mask.any(dim=0).nonzero()[0])
    layers = [(keys[:, :, first:], values[:, :, first:]) for keys, values in layers]
    return DynamicCache(ddp_cache_data=layers), mask[:, first:]


def _splice(cache: DynamicCache | None, mask: torch.Tensor | None, added_cache: DynamicCache,
            added_mask: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    """The shared cache with ``added_cache``'s rows (new prompts, left-padded as ``added_mask`` says) appended; the
    shorter side is left-padded with zeros that the mask marks 0 (attention never reads them)."""
    added = _layers(added_cache)
    if cache is None:
        return _rebuilt(added, added_mask)
    width = max(mask.shape[1], added_mask.shape[1])

    def left_pad(tensor: torch.Tensor, dim_from_end: int) -> torch.Tensor:
        missing = width - tensor.shape[-dim_from_end]
        return F.pad(tensor, (0, 0) * (dim_from_end - 1) + (missing, 0)) if missing else tensor

    layers = [
        (torch.cat([left_pad(keys, 2), left_pad(new_keys, 2)]), torch.cat([left_pad(values, 2), left_pad(new_values, 2)]))
        for (keys, values), (new_keys, new_values) in zip(_layers(cache), added)
    ]
    return _rebuilt(layers, torch.cat([left_pad(mask, 1), left_pad(added_mask, 1)]))


def _keep_rows(cache: DynamicCache, mask: torch.Tensor, keep: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """The shared cache with only the rows ``keep``, in that order."""
    rows = torch.tensor(keep, device=mask.device)
    return _rebuilt([(keys[rows], values[rows]) for keys, values in _layers(cache)], mask[rows])
