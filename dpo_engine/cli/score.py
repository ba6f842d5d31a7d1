"""``dpo-engine score``: external and implicit margins for every pair, written as a margins table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


from tqdm import tqdm

from dpo_engine.cli.flags import add_config_arguments, config_from_args
from dpo_engine.errors import ConfigError
from dpo_engine.files import atomic_write_json
from dpo_engine.margins.config import ScoreConfig

# Seconds between progress-file writes within a stage (the dashboard polls it; a write per batch is wasted I/O).
PROGRESS_INTERVAL = 1.0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="compute external and implicit margins per pair and write a margins table",
        description=(
            "Score every pair of PAIRS and write a margins table (parquet or csv, by --out's suffix) with a "
            ".meta.json sidecar: pair_id, external_margin, implicit_margin, the four log-probs, token and "
            "character lengths, and the fused scores dm_add, dm_mul and bees. The implicit margin is DM's: a proxy "
            "DPO-trained on a random seed subset against its reference, summed log-probs, no beta. Log-probs are "
            "cached on disk, so an interrupted run resumes where it stopped."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(parser, ScoreConfig, positional=("pairs",))
    parser.set_defaults(func=run)


def run(args) -> int:
    config = config_from_args(ScoreConfig, args)
    config.validate()
    path, rows = score(config)
    print(f"wrote {rows} rows to {path}")
    return 0


def score(config: ScoreConfig) -> tuple[Path, int]:
    """Run a validated scoring job: the margins table and its sidecar at ``config.out``; (path, rows)."""
    from dpo_engine.data.pairs import fingerprint, load_pairs
    from dpo_engine.margins.table import build_margins_table, save_margins_table
    from dpo_engine.training.warmup import warmup_seed_ids

    reporter = _Progress(config.progress_file)
    loaded = load_pairs(config.pairs, drop_invalid=config.drop_invalid)
    pairs = loaded.pairs
    meta = {"pairs": str(config.pairs), "dataset_fingerprint": fingerprint(pairs), **loaded.report.dropped_provenance()}
    external, meta["external"] = _external(config, pairs, reporter)
    implicit, meta["implicit"] = _implicit(config, pairs, reporter)
    in_sample = warmup_seed_ids(pairs, config.seed_size, config.seed) if meta["implicit"] and \
        meta["implicit"]["source"] == "warmup" else None
    table = build_margins_table(pairs, external, implicit, warmup_ids=in_sample)
    path = save_margins_table(table, config.out, {k: v for k, v in meta.items() if v is not None})
    reporter.finish(str(path))
    return path, len(table)


def _external(config: ScoreConfig, pairs, reporter) -> tuple[object, dict | None]:
    from dpo_engine.margins.scoring import external_margins

    source = config.external
    if source == "auto":
        source = "dataset" if pairs.score_chosen.notna().any() else "builtin"
    if source == "none":
        return None, None
    if source == "dataset" and not pairs.score_chosen.notna().any():
        raise ConfigError("--external", f"'dataset' needs score columns, and {config.pairs} has none (map them with "
                          "score_chosen/score_rejected, or use --external builtin or reward-model)")
    if source == "reward-model" and not config.reward_model:
        raise ConfigError("--reward-model", "--external reward-model needs a local sequence-classification model")
    reporter.stage(f"external margins ({source})")
    return external_margins(pairs, source, reward_model=config.reward_model, batch_size=config.batch_size or 8,
                            dtype=config.dtype, device=config.device, progress=reporter.update)


def _implicit(config: ScoreConfig, pairs, reporter) -> tuple[object, dict | None]:
    from dpo_engine.margins.scoring import implicit_margins
    from dpo_engine.training.warmup import warmup_proxy

    source = config.implicit
    if source == "auto":
        source = "policy" if config.policy else "warmup"
    if source == "none":
        return None, None
    policy = config.policy
    if source == "warmup":
        warmup_dir = Path(config.warmup_dir or Path(config.out).with_suffix("").as_posix() + "-warmup")
        reporter.stage("warm-up proxy training")
        policy = warmup_proxy(
            pairs, config.model, warmup_dir, seed_size=config.seed_size, seed=config.seed, progress=reporter.update,
            num_epochs=config.warmup_epochs, learning_rate=config.warmup_lr, precision=config.dtype,
            device=config.device, max_length=config.max_length, max_prompt_length=config.max_prompt_length,
        )
    reporter.stage("implicit margins (policy and reference log-probs)")
    implicit = implicit_margins(
        pairs, str(policy), reference=config.reference, dtype=config.dtype, device=config.device,
        batch_size=config.batch_size, token_budget=config.token_budget, max_length=config.max_length,
        max_prompt_length=config.max_prompt_length, progress=reporter.update,
    )
    meta = {
        "source": source,
        "policy": str(policy),
        "reference": config.reference or "the policy's base model (LoRA adapters disabled)",
        "model": config.model,
        "dtype": implicit.attrs["dtype"],
        "dtype_requested": config.dtype,
        "max_length": config.max_length,
        "max_prompt_length": config.max_prompt_length,
        "description": "DM implicit margin: [log pi(y_w) - log pi(y_l)] - [log ref(y_w) - log ref(y_l)], "
        "summed response log-probs, no beta",
    }
    if source == "warmup":
        meta["seed_size"] = config.seed_size or "min(2000, 10%)"
    return implicit, meta


class _Progress:
    """A tqdm bar on the terminal and, optionally, a JSON progress file the dashboard polls (at most one write per
    ``PROGRESS_INTERVAL`` within a stage, plus each stage's start and the end)."""

    def __init__(self, progress_file: str | None):
        self.file = progress_file
        self.bar = None
        self.name = ""
        self.last_write = 0.0
        self.stage_started = None

    def stage(self, name: str) -> None:
        if self.bar is not None:
            self.bar.close()
        self.name, self.bar = name, tqdm(desc=name, unit="item")
        self.stage_started = time.time()  # the dashboard's seconds per item and ETA are measured from here
        self._write(0, 0, "running")

    def update(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()
        if done >= total or time.monotonic() - self.last_write >= PROGRESS_INTERVAL:
            self._write(done, total, "running")

    def finish(self, out: str) -> None:
        if self.bar is not None:
            self.bar.close()
        self._write(1, 1, "completed", out=out)

    def _write(self, done: int, total: int, state: str, **extra) -> None:
        self.last_write = time.monotonic()
        if self.file:
            atomic_write_json(self.file, {"stage": self.name, "done": done, "total": total, "state": state,
                                           "stage_started": self.stage_started, **extra})
