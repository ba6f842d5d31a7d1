"""``dpo-engine score``: external and implicit margins for every pair, written as a margins table."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from tqdm import tqdm

from dpo_engine.cli.flags import add_config_arguments, config_from_args
from dpo_engine.cli.score_shards import SHARD_WORKER_ENV, score_in_processes, wait_for_every_process
from dpo_engine.errors import ConfigError
from dpo_engine.files import atomic_write_json
from dpo_engine.margins.config import ScoreConfig
from dpo_engine.models.shards import Shard, shard_device, shard_from_env

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
            "cached on disk, so an interrupted run resumes where it stopped. --num-processes N (or `accelerate launch "
            "-m dpo_engine.cli score ...`) splits the log-prob passes across N processes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(parser, ScoreConfig, positional=("pairs",))
    parser.set_defaults(func=run)


def run(args) -> int:
    config = config_from_args(ScoreConfig, args)
    config.validate()
    path, rows = score(config)
    if path is not None:
        print(f"wrote {rows} rows to {path}")
    return 0


def score(config: ScoreConfig) -> tuple[Path | None, int]:
    """Run a validated scoring job: the margins table and its sidecar at ``config.out``; (path, rows).

    In a process of a multi-process launch other than rank 0, only its share of the log-probs: (None, 0).
    """
    from dpo_engine.data.pairs import fingerprint, load_pairs
    from dpo_engine.margins.table import build_margins_table, save_margins_table

    shard = shard_from_env()
    share_worker = shard is not None and os.environ.get(SHARD_WORKER_ENV) == "1"
    # A share worker's progress file is its own (rank-named); other ranks of a launch share rank 0's and stay quiet.
    reporter = _Progress(config.progress_file if shard is None or shard.rank == 0 or share_worker else None)
    loaded = load_pairs(config.pairs, drop_invalid=config.drop_invalid)
    pairs = loaded.pairs
    if share_worker:
        _implicit_share(config, pairs, reporter, shard)
        return None, 0
    meta = {"pairs": str(config.pairs), "dataset_fingerprint": fingerprint(pairs), **loaded.report.dropped_provenance()}
    implicit, meta["implicit"] = _implicit(config, pairs, reporter, shard)
    if shard is not None and shard.rank != 0:
        return None, 0
    external, meta["external"] = _external(config, pairs, reporter)
    in_sample = None
    if meta["implicit"] and meta["implicit"]["source"] == "warmup":
        from dpo_engine.training.warmup import warmup_seed_ids  # the trainer and its imports only when needed

        in_sample = warmup_seed_ids(pairs, config.seed_size, config.seed)
    table = build_margins_table(pairs, external, implicit, warmup_ids=in_sample)
    path = save_margins_table(table, config.out, {k: v for k, v in meta.items() if v is not None})
    reporter.finish(str(path))
    return path, len(table)


def implicit_source(config: ScoreConfig, n_pairs: int, *, multi_process: bool = False) -> str:
    """What ``implicit: auto`` means for ``n_pairs`` pairs (other values are returned as they are).

    auto = ``policy`` when ``--policy`` is given; else ``crossfit`` when each of the K folds (``n_pairs // K``)
    can hold the seed subset, the same size a single warm-up would train on; else ``warmup``. Cross-fitting costs
    K warm-ups plus the one scoring pass over every pair a single warm-up also needs: with the default K = 2, one
    extra warm-up, which is capped at 2000 pairs x warmup_epochs whatever the dataset's size. Scoring in several
    processes (``num_processes`` > 1 or a multi-process launch) shards one policy's passes: auto is then ``warmup``.
    """
    if config.implicit != "auto":
        return config.implicit
    if config.policy:
        return "policy"
    seed_size = config.seed_size or max(2, min(2000, round(0.1 * n_pairs)))
    if multi_process or config.num_processes > 1:
        return "warmup"
    return "crossfit" if n_pairs // config.crossfit_folds >= seed_size else "warmup"


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


def _implicit(config: ScoreConfig, pairs, reporter, shard: Shard | None) -> tuple[object, dict | None]:
    """The implicit margins table and its metadata; (None, None) on a rank other than 0 of a multi-process launch."""
    source = implicit_source(config, len(pairs), multi_process=shard is not None)
    if source == "none":
        return None, None
    if source in ("crossfit", "selective", "lossdiff-irm") and (shard is not None or config.num_processes > 1):
        raise ConfigError("num_processes", f"shards the scoring of one policy, and implicit '{source}' trains and "
                          "scores its own fold proxies: use --num-processes 1, or --implicit warmup or --policy")
    scoring = {"dtype": config.dtype, "device": config.device, "batch_size": config.batch_size,
               "token_budget": config.token_budget, "max_length": config.max_length,
               "max_prompt_length": config.max_prompt_length}
    if source == "crossfit":
        implicit, meta = _crossfit(config, pairs, reporter, scoring)
    elif source == "selective":
        implicit, meta = _selective(config, pairs, reporter, scoring)
    elif source == "lossdiff-irm":
        implicit, meta = _lossdiff_irm(config, pairs, reporter, scoring)
    else:
        policy = _implicit_policy(config, pairs, reporter, source, train_missing=shard is None)
        implicit = _implicit_table(config, pairs, reporter, shard, policy)
        if implicit is None:
            return None, None
        meta = {"policy": policy, "reference": config.reference or "the policy's base model (LoRA adapters disabled)"}
        if source == "warmup":
            meta["seed_size"] = config.seed_size or "min(2000, 10%)"
        if config.num_processes > 1 or shard is not None:
            meta["num_processes"] = shard.world_size if shard else config.num_processes
    meta = {
        "source": source, **meta, "model": config.model, "dtype": implicit.attrs.get("dtype", config.dtype),
        "dtype_requested": config.dtype, "max_length": config.max_length, "max_prompt_length": config.max_prompt_length,
        "in_sample": source == "warmup",
        "description": "DM implicit margin: [log pi(y_w) - log pi(y_l)] - [log ref(y_w) - log ref(y_l)], "
        "summed response log-probs, no beta",
        **meta,  # a source's own description and in_sample (lossdiff-irm) win
    }
    return implicit, meta


def _implicit_table(config: ScoreConfig, pairs, reporter, shard: Shard | None, policy: str):
    """The implicit margins of ``policy``: in this process, in ``num_processes`` processes, or, under a
    multi-process launch, this process's share then the barrier and (rank 0 only, else None) the merge.

    Torch is imported only after any workers have been started, so their start-up overlaps this process's.
    """
    settings = dict(reference=config.reference, dtype=config.dtype, device=config.device,
                    max_length=config.max_length, max_prompt_length=config.max_prompt_length)
    if shard is None and config.num_processes > 1:
        if config.device != "cpu":
            _check_devices(config)
        reporter.stage(f"implicit margins (policy and reference log-probs, {config.num_processes} processes)")
        score_in_processes(config, policy, reporter.update,
                           lambda own, progress: _score_share(config, pairs, policy, own, progress))
        from dpo_engine.margins.scoring import merged_implicit_margins

        return merged_implicit_margins(pairs, policy, **settings)
    from dpo_engine.margins.scoring import implicit_margins, merged_implicit_margins
    from dpo_engine.models.loading import resolve_device

    reporter.stage("implicit margins (policy and reference log-probs)")
    implicit = implicit_margins(pairs, policy, batch_size=config.batch_size, token_budget=config.token_budget,
                                progress=reporter.update, shard=shard, **settings)
    if shard is None:
        return implicit
    wait_for_every_process(shard, shard_device(resolve_device(config.device), shard))
    return merged_implicit_margins(pairs, policy, **settings) if shard.rank == 0 else None


def _implicit_policy(config: ScoreConfig, pairs, reporter, source: str, *, train_missing: bool) -> str:
    """The policy whose implicit margins are scored: ``config.policy``, or the warm-up proxy (trained if needed and
    ``train_missing``)."""
    if source != "warmup":
        return str(config.policy)
    from dpo_engine.training.warmup import warmup_proxy

    reporter.stage("warm-up proxy training")
    return str(warmup_proxy(pairs, config.model, _proxy_dir(config, "warmup"), seed_size=config.seed_size,
                            seed=config.seed, progress=reporter.update, num_epochs=config.warmup_epochs,
                            train_missing=train_missing, **_proxy_training(config)))


def _implicit_share(config: ScoreConfig, pairs, reporter, shard: Shard) -> None:
    """A worker of ``score_in_processes``: this process's share of the policy and reference passes, into the cache."""
    reporter.stage(f"implicit margins, share {shard.rank} of {shard.world_size}")
    _score_share(config, pairs, str(config.policy), shard, reporter.update)


def _score_share(config: ScoreConfig, pairs, policy: str, shard: Shard, progress) -> None:
    from dpo_engine.margins.scoring import implicit_margins

    implicit_margins(pairs, policy, reference=config.reference, dtype=config.dtype, device=config.device,
                     batch_size=config.batch_size, token_budget=config.token_budget, max_length=config.max_length,
                     max_prompt_length=config.max_prompt_length, progress=progress, shard=shard)


def _check_devices(config: ScoreConfig) -> None:
    """On CUDA, one GPU per process: refuse more processes than visible GPUs, naming the field."""
    from dpo_engine.models.loading import resolve_device

    if resolve_device(config.device).startswith("cuda"):
        import torch

        if config.num_processes > torch.cuda.device_count():
            raise ConfigError("num_processes", f"is {config.num_processes}, but only {torch.cuda.device_count()} "
                              "GPUs are visible (one process per GPU)")


def _proxy_training(config: ScoreConfig) -> dict:
    """`TrainConfig` fields shared by every proxy this job trains (warm-up, crossfit, selective)."""
    fields = {"learning_rate": config.warmup_lr, "precision": config.dtype, "device": config.device,
              "max_length": config.max_length, "max_prompt_length": config.max_prompt_length}
    if config.proxy_max_steps:
        fields["max_steps"] = config.proxy_max_steps
    return fields


def _proxy_dir(config: ScoreConfig, method: str) -> Path:
    return Path(config.warmup_dir or Path(config.out).with_suffix("").as_posix() + f"-{method}")


def _crossfit(config: ScoreConfig, pairs, reporter, scoring: dict) -> tuple[object, dict]:
    from dpo_engine.training.crossfit import crossfit_implicit_margins

    reporter.stage(f"cross-fitted implicit margins ({config.crossfit_folds} fold proxies)")
    directory = _proxy_dir(config, "crossfit")
    implicit = crossfit_implicit_margins(
        pairs, config.model, directory, n_folds=config.crossfit_folds, seed_size=config.seed_size, seed=config.seed,
        scoring=scoring, progress=reporter.update, num_epochs=config.warmup_epochs, **_proxy_training(config))
    return implicit, {
        "folds": config.crossfit_folds, "seed_size": config.seed_size or "min(2000, 10%)", "proxies": str(directory),
        "reference": "each proxy's base model (LoRA adapters disabled)",
        "method": "cross-fitted: proxy j trains on a seed subset of fold j and scores fold j+1 (mod K); "
                  "crossfit_fold and scored_by_fold record both, so no pair is scored in-sample",
    }


def _selective(config: ScoreConfig, pairs, reporter, scoring: dict) -> tuple[object, dict]:
    from dpo_engine.runs.fold_proxies import train_fold_proxies
    from dpo_engine.training import selective_dpo

    proxies = selective_dpo.fold_proxies(len(pairs), config.crossfit_folds, config.selective_seeds)
    training = selective_dpo.proxy_overrides(config.selective_beta, model=config.model, **_proxy_training(config))
    directory = _proxy_dir(config, "selective")
    reporter.stage(f"Selective DPO fold proxies ({len(proxies)} runs through the runs queue)")
    adapters = train_fold_proxies(pairs, proxies, training, directory, progress=reporter.update)
    reporter.stage("validation losses (fold proxies on their held-out pairs)")
    margins = selective_dpo.held_out_margins(pairs, proxies, adapters, scoring=scoring, progress=reporter.update)
    order = selective_dpo.learning_order_table(pairs.pair_id.to_numpy(), margins, config.selective_beta)
    implicit = selective_dpo.first_seed_margins(margins).merge(order, on="pair_id")
    implicit.attrs["dtype"] = margins.attrs["dtype"]
    return implicit, {
        "folds": config.crossfit_folds, "seeds": list(config.selective_seeds), "beta": config.selective_beta,
        "proxies": str(directory), "proxy_runs": [str(Path(adapter).parent.name) for adapter in adapters],
        "reference": "each proxy's base model (LoRA adapters disabled)",
        "method": "Selective DPO (Gao et al.): per seed, proxy j trains on every fold but j and scores fold j; "
                  "implicit_margin is the first seed's, learning_order the mean of -log sigmoid(beta h) over seeds",
    }


def _lossdiff_irm(config: ScoreConfig, pairs, reporter, scoring: dict) -> tuple[object, dict]:
    """Zhang et al.'s LossDiff and IRM: a warm-up model on every pair but a seeded validation split and a model on
    that split, both runs through the runs queue, then both scoring every pair (`dpo_engine.training.lossdiff_irm`)."""
    from dpo_engine.runs.fold_proxies import train_fold_proxies
    from dpo_engine.training import lossdiff_irm

    proxies = lossdiff_irm.lossdiff_irm_proxies(len(pairs), config.lossdiff_validation_size, config.seed)
    training = lossdiff_irm.proxy_overrides(config.lossdiff_beta, config.lossdiff_epochs, model=config.model,
                                            **_proxy_training(config))
    directory = _proxy_dir(config, "lossdiff-irm")
    reporter.stage(f"LossDiff-IRM: warm-up model on {len(proxies[0].training_rows)} pairs and validation model on "
                   f"{len(proxies[1].training_rows)} (runs through the runs queue)")
    adapters = train_fold_proxies(pairs, proxies, training, directory, progress=reporter.update, tag="lossdiff-irm",
                                  run_prefix="ldirm")
    reporter.stage("LossDiff and IRM (warm-up, validation and reference log-probs)")
    implicit = lossdiff_irm.lossdiff_irm_table(pairs, proxies, adapters, beta=config.lossdiff_beta, scoring=scoring,
                                               progress=reporter.update)
    return implicit, {
        "validation_size": len(proxies[1].training_rows), "validation_seed": config.seed, "beta": config.lossdiff_beta,
        "epochs": config.lossdiff_epochs, "proxies": str(directory),
        "proxy_runs": {proxy.label: Path(adapter).parent.name for proxy, adapter in zip(proxies, adapters)},
        "reference": "the base model (LoRA adapters disabled), for both models", "in_sample": True,
        "method": "LossDiff-IRM (Zhang et al., ICLR 2026, arXiv 2510.13212): a LoRA DPO warm-up model theta on "
                  "every pair but a seeded validation split (in_validation) and a model theta_val on that split; "
                  "validation pairs get NaN loss_diff and irm and no rule selects them; every other pair is "
                  "in-sample for theta by design. Read from paper notes, partly assumed: see "
                  "dpo_engine/training/lossdiff_irm.py",
        "description": "irm = beta h, loss_diff = log(1 + exp(-beta h)) - log(1 + exp(-beta h_val)): h and h_val the "
                       "DM implicit margins (summed log-probs) of theta and theta_val against the base; "
                       "implicit_margin = h, val_implicit_margin = h_val",
    }


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
