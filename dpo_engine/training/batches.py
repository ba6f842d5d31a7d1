"""Training examples and batches: encoded pairs as a dataset, their order, and the collator.

The order is length-grouped with the heaviest batch first (``length_grouped_order``): a run that would run out of
memory on its longest batch does so in its first step, not hours in, and batches of similar lengths waste little on
padding. The Trainer then reads the examples sequentially.
"""

from __future__ import annotations

import numpy as np
import torch

from dpo_engine.models.tokenization import EncodedPair, collate

# Batches per group sorted by length (transformers' LengthGroupedSampler uses the same 50): large enough for
# batches of similar lengths, small enough that the order stays well mixed.
BATCHES_PER_GROUP = 50


def pair_tokens(pair: EncodedPair) -> int:
    """Tokens one pair puts through the model: prompt + chosen + rejected (the padding-free row's width)."""
    return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)


def length_grouped_order(lengths: list[int], batch_size: int, seed: int) -> list[int]:
    """Example indices in training order: length-grouped batches, shuffled, the heaviest batch first.

    ``lengths``: tokens per example. The examples are shuffled (seeded), cut into groups of ``BATCHES_PER_GROUP``
    batches, sorted by length inside each group and cut into batches of ``batch_size``; the batches are shuffled,
    then the one with the most tokens is moved to the front. Returns a permutation of ``range(len(lengths))``.
    """
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(lengths))
    group = BATCHES_PER_GROUP * batch_size
    batches = []
    for start in range(0, len(shuffled), group):
        members = sorted(shuffled[start : start + group].tolist(), key=lambda i: -lengths[i])
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    if batches:
        heaviest = max(range(len(batches)), key=lambda b: sum(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(heaviest))
    return [index for batch in batches for index in batch]


def pair_dataset(encoded: list[EncodedPair], reference=None, order: list[int] | None = None,
                 per_pair: dict | None = None):
    """Encoded pairs as a ``datasets.Dataset`` of Trainer examples, in ``order`` (default: as given), with the
    precomputed reference log-probs (a table with ``chosen_logps``, ``rejected_logps`` in ``encoded`` order) if any,
    and the per-pair arrays of ``per_pair`` (``pair_weight``, ``use_sft``; ``(n_pairs,)`` in ``encoded`` order).
    """
    from datasets import Dataset

    order = list(range(len(encoded))) if order is None else order
    columns = {
        "prompt_ids": [encoded[i].prompt_ids for i in order],
        "chosen_ids": [encoded[i].chosen_ids for i in order],
        "rejected_ids": [encoded[i].rejected_ids for i in order],
    }
    if reference is not None:
        columns["ref_chosen_logps"] = reference.chosen_logps.to_numpy(float)[order]
        columns["ref_rejected_logps"] = reference.rejected_logps.to_numpy(float)[order]
    for key, values in (per_pair or {}).items():
        if values is not None:
            columns[key] = np.asarray(values)[order]
    return Dataset.from_dict(columns)


class PairCollator:
    """Examples of ``pair_dataset`` to one batch: ``collate()`` plus the precomputed reference log-probs, if any."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        pairs = [EncodedPair(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples]
        batch = collate(pairs, self.pad_token_id)
        batch["pairs"] = pairs  # policy_logps scores these directly, without unpacking the padded rows
        if "ref_chosen_logps" in examples[0]:
            for key in ("ref_chosen_logps", "ref_rejected_logps"):
                batch[key] = torch.tensor([example[key] for example in examples], dtype=torch.float32)
        if "pair_weight" in examples[0]:
            batch["pair_weight"] = torch.tensor([example["pair_weight"] for example in examples], dtype=torch.float32)
        if "use_sft" in examples[0]:
            batch["use_sft"] = torch.tensor([example["use_sft"] for example in examples], dtype=torch.bool)
        return batch
