"""``dpo-engine score``: external and implicit margins for every pair, written as a margins table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from dpo_engine.files import atomic_write_json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="compute external and implicit margins per pair and write a margins table",
        description=(
            "Score every pair of PAIRS and write a margins table (parquet or csv, by --out's suffix) with a "
            ".meta.json sidecar: pair_id, external_margin, implicit_margin, the four log-probs, token and "
            "character lengths, and the fused scores dm_add, dm_mul and bees. The implicit margin is DM's: a proxy "
            "DPO-trained on a random seed subset against its reference, summed log-probs, no beta. Log-probs are "
            "cached per batch, so an interrupted run resumes where it stopped."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("pairs", help="preference data file or directory (anything `dpo-engine validate` accepts)")
    parser.add_argument("--out", required=True, help="margins table to write (.parquet or .csv)")
    parser.add_argument(
        "--external",
        choices=["auto", "dataset", "builtin", "reward-model", "none"],
        default="auto",
        help="external margin source; auto = the data's scores if it has them, else the built-in stand-in head",
    )
    parser.add_argument("--reward-model", help="local AutoModelForSequenceClassification dir (--external reward-model)")
    parser.add_argument(
        "--implicit",
        choices=["auto", "warmup", "policy", "none"],
        default="auto",
        help="implicit margin source; auto = --policy if given, else train a warm-up proxy (DM step 1)",
    )
    parser.add_argument("--policy", help="LoRA adapter dir (reference = its base) or full model dir (needs --reference)")
    parser.add_argument("--reference", help="reference model for a full-model --policy")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="base model for the warm-up proxy")
    parser.add_argument("--seed-size", type=int, help="warm-up seed subset size (default min(2000, 10%% of pairs))")
    parser.add_argument("--warmup-dir", help="where the warm-up proxy is trained (default: next to --out)")
    parser.add_argument("--warmup-epochs", type=int, default=2, help="warm-up proxy epochs")
    parser.add_argument("--warmup-lr", type=float, default=5e-5, help="warm-up proxy learning rate (LoRA)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the warm-up subset and training")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="precision for log-probs")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per scoring batch")
    parser.add_argument("--max-length", type=int, default=512, help="max tokens of prompt + response")
    parser.add_argument("--max-prompt-length", type=int, default=256, help="max prompt tokens (keeps the end)")
    parser.add_argument("--progress-file", help="JSON file updated with {stage, done, total} (for the dashboard)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dpo_engine.data.pairs import fingerprint, load_pairs
    from dpo_engine.margins.table import build_margins_table, save_margins_table
    from dpo_engine.margins.scoring import external_margins, implicit_margins
    from dpo_engine.training.warmup import warmup_proxy, warmup_seed_ids

    reporter = _Progress(args.progress_file)
    pairs = load_pairs(args.pairs).pairs
    meta = {"pairs": str(args.pairs), "dataset_fingerprint": fingerprint(pairs)}

    external_source = args.external
    if external_source == "auto":
        external_source = "dataset" if pairs.score_chosen.notna().any() else "builtin"
    external = None
    if external_source != "none":
        reporter.stage(f"external margins ({external_source})")
        external, meta["external"] = external_margins(
            pairs, external_source, reward_model=args.reward_model, device=args.device, progress=reporter.update
        )

    implicit_source = args.implicit
    if implicit_source == "auto":
        implicit_source = "policy" if args.policy else "warmup"
    implicit = None
    if implicit_source != "none":
        policy = args.policy
        if implicit_source == "warmup":
            warmup_dir = Path(args.warmup_dir or Path(args.out).with_suffix("").as_posix() + "-warmup")
            reporter.stage("warm-up proxy training")
            policy = warmup_proxy(
                pairs, args.model, warmup_dir, seed_size=args.seed_size, seed=args.seed, progress=reporter.update,
                num_epochs=args.warmup_epochs, learning_rate=args.warmup_lr, precision=args.dtype, device=args.device,
                max_length=args.max_length, max_prompt_length=args.max_prompt_length,
            )
        reporter.stage("implicit margins (policy and reference log-probs)")
        implicit = implicit_margins(
            pairs, str(policy), reference=args.reference, dtype=args.dtype, device=args.device,
            batch_size=args.batch_size, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
            progress=reporter.update,
        )
        meta["implicit"] = {
            "source": implicit_source,
            "policy": str(policy),
            "reference": args.reference or "the policy's base model (LoRA adapters disabled)",
            "model": args.model,
            "dtype": args.dtype,
            "max_length": args.max_length,
            "max_prompt_length": args.max_prompt_length,
            "description": "DM implicit margin: [log pi(y_w) - log pi(y_l)] - [log ref(y_w) - log ref(y_l)], "
            "summed response log-probs, no beta",
        }
        if implicit_source == "warmup":
            meta["implicit"]["seed_size"] = args.seed_size or "min(2000, 10%)"
    in_sample = warmup_seed_ids(pairs, args.seed_size, args.seed) if implicit_source == "warmup" else None
    table = build_margins_table(pairs, external, implicit, warmup_ids=in_sample)
    path = save_margins_table(table, args.out, meta)
    reporter.finish(str(path))
    print(f"wrote {len(table)} rows to {path}")
    return 0


class _Progress:
    """A tqdm bar on the terminal and, optionally, a JSON progress file the dashboard polls."""

    def __init__(self, progress_file: str | None):
        self.file = progress_file
        self.bar = None
        self.name = ""
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
        self._write(done, total, "running")

    def finish(self, out: str) -> None:
        if self.bar is not None:
            self.bar.close()
        self._write(1, 1, "completed", out=out)

    def _write(self, done: int, total: int, state: str, **extra) -> None:
        if self.file:
            atomic_write_json(self.file, {"stage": self.name, "done": done, "total": total, "state": state,
                                           "stage_started": self.stage_started, **extra})
