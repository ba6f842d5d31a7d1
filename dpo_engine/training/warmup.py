"""DM's warm-up proxy (methods §1.4): a LoRA DPO run on a random seed subset, whose implicit margins score the rest.

Training for a purpose: it lives with training, and `dpo_engine.margins.scoring` only reads the adapter it leaves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dpo_engine.data.pairs import fingerprint, save_pairs
from dpo_engine.errors import ConfigError
from dpo_engine.files import atomic_write_json, read_json
from dpo_engine.margins.scoring import Progress
from dpo_engine.selection.rules import select_random
from dpo_engine.training.config import TrainConfig
from dpo_engine.training.trainer import train

WARMUP_STAMP = "warmup.json"  # settings and seed pairs of a finished warm-up proxy, for reuse


def warmup_seed_rows(n_pairs: int, seed_size: int | None = None, seed: int = 42):
    """Row positions of the warm-up proxy's seed subset, int64: ``min(2000, 10 %)`` pairs (at least 2) by default,
    drawn with ``seed``. The proxy trains on these rows, so their implicit margins are in-sample."""
    n_seed = seed_size or max(2, min(2000, round(0.1 * n_pairs)))
    return select_random(n_pairs, n_seed, seed)


def warmup_seed_ids(pairs: pd.DataFrame, seed_size: int | None = None, seed: int = 42) -> list[str]:
    """Pair ids of the warm-up seed subset (`warmup_seed_rows`), for the margins table's ``in_warmup`` column."""
    return pairs.pair_id.astype(str).to_numpy()[warmup_seed_rows(len(pairs), seed_size, seed)].tolist()


def warmup_proxy(
    pairs: pd.DataFrame,
    base_model: str,
    out_dir: str | Path,
    *,
    seed_size: int | None = None,
    seed: int = 42,
    progress: Progress | None = None,
    train_missing: bool = True,
    **train_overrides,
) -> Path:
    """DM's step 1 (methods §1.4): DPO-train a LoRA proxy on a random seed subset; return its adapter directory.

    The seed subset defaults to ``min(2000, 10 %)`` of the pairs, drawn with ``seed``. Training settings are the
    trainer's defaults with 2 epochs (DM trains its proxy for 2), overridable through ``train_overrides``.
    ``progress(step, total_steps)`` reports training steps. ``train_missing=False`` only reuses a finished proxy
    and raises ``ConfigError`` when there is none (a sharded scoring process must not train its own).
    """
    out_dir = Path(out_dir)
    seed_pairs = pairs.iloc[warmup_seed_rows(len(pairs), seed_size, seed)]
    subset_path = save_pairs(seed_pairs, out_dir / "seed_subset.jsonl")
    config = TrainConfig.from_dict(
        {"model": base_model, "subset": str(subset_path), "loss": "dpo", "num_epochs": 2, "seed": seed, **train_overrides}
    )
    config.validate()
    # A finished proxy is reused when it was trained on the same seed pairs with the same settings: the warm-up is
    # the slowest step of scoring on a CPU, and re-scoring (another external margin, a longer max length) is common.
    stamp = json.loads(json.dumps({"config": config.to_dict(), "seed_subset": fingerprint(seed_pairs)}))
    stamp_path = out_dir / WARMUP_STAMP
    adapter = out_dir / "adapter"
    if read_json(stamp_path) == stamp and (adapter / "adapter_config.json").is_file():
        return adapter
    if not train_missing:
        raise ConfigError("implicit", f"no finished warm-up proxy in {out_dir} for these settings: a process of a "
                          "distributed launch does not train one; run `dpo-engine score --num-processes N` (it trains "
                          "the proxy once, then shards), or pass --policy")
    stamp_path.unlink(missing_ok=True)
    train(config, out_dir, on_progress=progress)
    atomic_write_json(stamp_path, stamp)
    return adapter
