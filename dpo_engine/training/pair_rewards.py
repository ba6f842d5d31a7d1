"""Scoring passes of a run outside the Trainer: the reference before training, per-pair rewards after it.

Across processes both passes are split between the ranks (``distributed.shard``, by length). The reference pass
goes through the log-prob cache: each rank writes its share as parts of its own ``rank-<r>`` directory inside the
cache entry, and after a barrier rank 0 merges them into the entry as ordinary parts, which every rank then reads.
The per-pair rewards are gathered to every rank; rank 0 writes them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpo_engine.files import read_parts, write_part
from dpo_engine.margins.scoring import implicit_margin_table
from dpo_engine.models.loading import resolve_model
from dpo_engine.models.logp_cache import LOGP_COLUMNS, cached_logps, logps_cache_key, logps_dir
from dpo_engine.models.logps import pair_logps, shards_parameters
from dpo_engine.models.tokenization import EncodedPair
from dpo_engine.training.batches import pair_tokens
from dpo_engine.training.config import TrainConfig
from dpo_engine.training.distributed import SINGLE_PROCESS, World, all_objects, barrier, shard

RANK_PARTS_PREFIX = "rank-"  # rank r's reference parts: <cache entry>/rank-<r>/, merged by rank 0


def training_autocast(config: TrainConfig, device: str):
    """The Trainer's bf16 autocast, for passes outside the Trainer (reference, final scoring)."""
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=config.precision == "bf16")


def reference_table(model, tokenizer, pairs: pd.DataFrame, encoded: list[EncodedPair], config: TrainConfig,
                    device: str, world: World = SINGLE_PROCESS) -> pd.DataFrame:
    """Reference log-probs of every pair (the model before training), in ``pairs`` order; cached on disk by the
    log-prob cache service, on the trainer's own encodings. Across processes each rank scores its share."""
    # bf16 runs score under the training step's autocast, which differs from scoring's plain bf16: separate keys.
    dtype_key = "fp32" if config.precision == "fp32" else f"bf16-autocast-{'full' if config.full_finetune else 'lora'}"
    key = logps_cache_key(pairs, resolve_model(config.model), None, config.max_length, config.max_prompt_length,
                          dtype_key)
    parts_dir = logps_dir(key)
    with training_autocast(config, device):
        if world.distributed:
            _score_rank_share(model, tokenizer.pad_token_id, pairs.pair_id.tolist(), encoded, parts_dir, world)
        return cached_logps(model, encoded, pairs.pair_id.tolist(), parts_dir, pad_token_id=tokenizer.pad_token_id)


def _score_rank_share(model, pad_token_id: int, pair_ids: list[str], encoded: list[EncodedPair], parts_dir: Path,
                      world: World) -> None:
    """This rank's share of the pairs the cache entry lacks, scored into its rank directory; then merged by rank 0.

    Leftover rank directories (a run killed mid-pass, maybe with another number of processes) are merged first,
    so what they hold is not scored again.
    """
    if world.is_main:
        merge_rank_parts(parts_dir)
    barrier(world)
    finished = set(read_parts(parts_dir, LOGP_COLUMNS).pair_id)
    todo = [i for i, pair_id in enumerate(pair_ids) if pair_id not in finished]
    mine = [todo[k] for k in shard([pair_tokens(encoded[i]) for i in todo], world)]
    if mine:
        cached_logps(model, [encoded[i] for i in mine], [pair_ids[i] for i in mine],
                     parts_dir / f"{RANK_PARTS_PREFIX}{world.rank}", pad_token_id=pad_token_id)
    barrier(world)
    if world.is_main:
        merge_rank_parts(parts_dir)
    barrier(world)


def merge_rank_parts(parts_dir: Path) -> int:
    """Move the parts of every ``rank-<r>`` directory of a cache entry into the entry, one part per rank; return
    the pairs moved. A part is named by the pairs finished before it, as the cache names its own."""
    moved = 0
    for rank_dir in sorted(parts_dir.glob(f"{RANK_PARTS_PREFIX}*")):
        scored = read_parts(rank_dir, LOGP_COLUMNS)
        if len(scored):
            write_part(parts_dir, len(read_parts(parts_dir, LOGP_COLUMNS)), scored)
            moved += len(scored)
        shutil.rmtree(rank_dir)
    return moved


def _batched_logps(model, encoded: list[EncodedPair], pad_token_id: int, batch_size: int) -> dict[str, np.ndarray]:
    """``pair_logps`` over all pairs in inference mode, concatenated in order."""
    parts: dict[str, list] = {}
    model.eval()
    for start in range(0, len(encoded), batch_size):
        with torch.inference_mode():
            out = pair_logps(model, encoded[start : start + batch_size], pad_token_id)
        for key, value in out.items():
            parts.setdefault(key, []).append(value.float().cpu().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def pair_rewards_table(model, ref_model, reference, tokenizer, pairs, encoded, config, device,
                       world: World = SINGLE_PROCESS) -> pd.DataFrame:
    """Per pair: policy log-probs after training, reference log-probs and the implicit margin (nats, no beta).

    The reference is the precomputed table, else the adapter-disabled model (LoRA), else the frozen copy; with
    full fine-tuning of a reference-free loss and no precompute there is none, and those columns are NaN.
    Across processes each rank scores its share and every rank gets the whole table; a model whose parameters
    are sharded (FSDP, ZeRO-3) needs every rank in each forward, so there every rank scores every pair.
    """
    everyone_scores_all = not world.distributed or shards_parameters(model)
    mine = list(range(len(encoded))) if everyone_scores_all else shard([pair_tokens(p) for p in encoded], world)
    scores = _policy_and_reference_logps(model, ref_model, reference is None, tokenizer, [encoded[i] for i in mine],
                                         config, device)
    policy, ref = _in_pair_order(all_objects((mine, scores), world)[:1 if everyone_scores_all else None], len(encoded))
    if reference is not None:
        ref = {"chosen_logps": reference.chosen_logps.to_numpy(), "rejected_logps": reference.rejected_logps.to_numpy()}
    return implicit_margin_table(pairs.pair_id.to_numpy(), policy, ref)


def _policy_and_reference_logps(model, ref_model, score_reference: bool, tokenizer, encoded, config,
                                device) -> tuple[dict, dict | None]:
    """``(policy log-probs, reference log-probs or None)`` of ``encoded``; the reference only if asked and one
    exists (the frozen copy, or the LoRA model with its adapter disabled)."""
    batch_size = 2 * config.batch_size
    with training_autocast(config, device):
        policy = _batched_logps(model, encoded, tokenizer.pad_token_id, batch_size)
        ref = None
        if score_reference and ref_model is not None:
            ref = _batched_logps(ref_model, encoded, tokenizer.pad_token_id, batch_size)
        elif score_reference and not config.full_finetune:
            with model.disable_adapter():
                ref = _batched_logps(model, encoded, tokenizer.pad_token_id, batch_size)
    return policy, None if ref is None else {key: ref[key] for key in ("chosen_logps", "rejected_logps")}


def _in_pair_order(shares: list, n_pairs: int) -> tuple[dict, dict | None]:
    """The ranks' ``(indices, (policy, reference))`` shares put back into one ``(n_pairs,)`` array per key."""
    def merged(part: int) -> dict | None:
        if shares[0][1][part] is None:
            return None
        out = {key: np.empty(n_pairs, dtype=values.dtype) for key, values in shares[0][1][part].items()}
        for indices, scores in shares:
            for key, values in scores[part].items():
                out[key][np.asarray(indices, dtype=np.int64)] = values
        return out

    return merged(0), merged(1)
