"""Benchmark 2: LoRA DPO training throughput, ours (``dpo_engine.training.train``) vs TRL's ``DPOTrainer``.

Same base model, pairs, LoRA config (r 8, alpha 16, dropout 0, all linear layers), sigmoid DPO loss (beta 0.1),
AdamW at a constant learning rate, batch size, sequence lengths, precision, seed, and gradient checkpointing off.
Both take their reference log-probs from a pass before training (ours: ``precompute_reference``, TRL:
``precompute_ref_log_probs=True``), so the timed loop is the same work: one policy forward + backward per batch.

The pairs are chosen so that nobody truncates (prompt <= max_prompt_length, prompt + longer response <=
max_length): TRL and ours truncate differently, and identical sequences make the loss curves comparable step by step.
Both are ``transformers.Trainer`` subclasses with the same seed and sampler, so they see the batches in the same order.

Each contender runs in its own child process (clean peak RSS), alternating ours / TRL for ``--repeats`` rounds.
Reported per contender: the training loop's pairs/s (from the Trainer's train start to the last step's log, median
over repeats), peak RSS of the whole child, and the loss per step; the loss curves are compared step by step.
The last line printed is the ratio line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
BETA = 0.1
LEARNING_RATE = 5e-4
SEED = 42


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None, help="training pairs (quick 6, full 32)")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step (quick 2, full 4)")
    parser.add_argument("--max-length", type=int, default=None, help="quick 192, full 512")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default=None, help="quick: fp32, full: both")
    parser.add_argument("--child", choices=["ours", "trl"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _common.setup_environment()
    n_pairs = args.pairs or (6 if args.quick else 32)
    batch_size = args.batch_size or (2 if args.quick else 4)
    max_length = args.max_length or (192 if args.quick else 512)
    max_prompt_length = max_length // 2
    if args.child:
        print(json.dumps(child(args, batch_size, max_length, max_prompt_length, args.dtype)))
        return {}
    repeats = args.repeats or (1 if args.quick else 2)
    dtypes = _common.dtypes(args.dtype, args.quick)

    workdir = Path(tempfile.mkdtemp(prefix="bench-training-"))
    data = write_pairs(args.model, n_pairs, max_length, max_prompt_length, workdir / "pairs.jsonl")
    results = {"settings": {"pairs": n_pairs, "batch_size": batch_size, "max_length": max_length,
                            "steps": n_pairs // batch_size, "lora": LORA, "beta": BETA, "learning_rate": LEARNING_RATE,
                            "repeats": repeats, "model": args.model}}
    ratio_parts = []
    for dtype in dtypes:
        runs = {"ours": [], "TRL DPOTrainer": []}
        for round_index in range(repeats):
            order = [("ours", "ours"), ("TRL DPOTrainer", "trl")]
            for name, kind in order if round_index % 2 == 0 else order[::-1]:
                cmd = [sys.executable, __file__, "--child", kind, "--data", str(data), "--workdir", str(workdir),
                       "--model", args.model, "--device", args.device, "--batch-size", str(batch_size),
                       "--max-length", str(max_length), "--dtype", dtype, "--pairs", str(n_pairs)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{name} child failed:\n{done.stderr[-4000:]}")
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
        summary = {}
        for name, entries in runs.items():
            loop = statistics.median(e["loop_seconds"] for e in entries)
            summary[name] = {"loop_seconds": loop, "pairs_per_s": entries[0]["pairs"] / loop,
                             "peak_rss_mb": max(e["peak_rss_mb"] for e in entries), "losses": entries[0]["losses"],
                             "loop_seconds_all": [e["loop_seconds"] for e in entries]}
        ours, trl = summary["ours"], summary["TRL DPOTrainer"]
        steps = min(len(ours["losses"]), len(trl["losses"]))
        loss_gap = max(abs(a - b) for a, b in zip(ours["losses"][:steps], trl["losses"][:steps]))
        rows = [[name, s["loop_seconds"], s["pairs_per_s"], s["pairs_per_s"] / trl["pairs_per_s"], s["peak_rss_mb"],
                 " ".join(f"{x:.4f}" for x in s["losses"])] for name, s in summary.items()]
        print(f"\n## training, {dtype}, {n_pairs} pairs, batch {batch_size}, max_length {max_length}, "
              f"LoRA r{LORA['r']} all-linear, {steps} steps; max |loss ours - loss TRL| over steps: {loss_gap:.2e}")
        print(_common.table(["contender", "loop s", "pairs/s", "x TRL", "peak RSS MB", "loss per step"], rows))
        results[dtype] = {**summary, "max_loss_gap": loss_gap}
        ratio_parts.append(f"{dtype}:ours/TRL={ours['pairs_per_s'] / trl['pairs_per_s']:.2f}x (pairs/s) "
                           f"loss_gap={loss_gap:.1e}")
    results["ratio"] = "RATIO training " + " | ".join(ratio_parts)
    return _common.finish("training", results, args.json_out)


def write_pairs(model: str, n: int, max_length: int, max_prompt_length: int, path: Path) -> Path:
    """``n`` bundled UltraFeedback pairs (seeded sample) that neither trainer truncates, as conversational jsonl."""
    from dpo_engine.data.pairs import bundled_datasets, load_pairs
    from dpo_engine.models.loading import load_tokenizer
    from dpo_engine.models.tokenization import encode_pair

    tokenizer = load_tokenizer(model)
    pairs = load_pairs(bundled_datasets()["ultrafeedback"]).pairs
    pairs = pairs[pairs.warnings == ""].sample(frac=1.0, random_state=0)
    keep = []
    for row in pairs.itertuples():
        full = encode_pair(tokenizer, list(row.prompt_messages), row.chosen, row.rejected, 10**6, 10**6 - 1)
        if len(full.prompt_ids) <= max_prompt_length and len(full.prompt_ids) + max(len(full.chosen_ids), len(full.rejected_ids)) <= max_length:
            keep.append(row)
        if len(keep) == n:
            break
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} pairs fit in max_length {max_length}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for row in keep:
            handle.write(json.dumps({"id": row.pair_id, "prompt": list(row.prompt_messages),
                                     "chosen": [{"role": "assistant", "content": row.chosen}],
                                     "rejected": [{"role": "assistant", "content": row.rejected}]}) + "\n")
    return path


def child(args, batch_size: int, max_length: int, max_prompt_length: int, dtype: str) -> dict:
    steps = args.pairs // batch_size
    device = _common.resolve_device(args.device)
    run_dir = Path(tempfile.mkdtemp(dir=args.workdir, prefix=f"{args.child}-"))
    if args.child == "ours":
        from dpo_engine.files import read_jsonl
        from dpo_engine.training.config import TrainConfig
        from dpo_engine.training.trainer import train

        config = TrainConfig(
            model=args.model, subset=args.data, max_length=max_length, max_prompt_length=max_prompt_length,
            loss="dpo", loss_params={"beta": BETA}, lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
            lora_dropout=LORA["lora_dropout"], lora_target_modules=LORA["target_modules"], learning_rate=LEARNING_RATE,
            max_steps=steps, batch_size=batch_size, optim="adamw_torch", lr_scheduler="constant", warmup_ratio=0.0,
            group_by_length=False, precompute_reference=True, precision=dtype, device=device, seed=SEED,
            logging_steps=1, save_steps=10**6, save_total_limit=1,
        )
        train(config, run_dir)
        records = list(read_jsonl(run_dir / "metrics.jsonl"))
        losses = [r["loss"] for r in records]
        loop_seconds = records[-1]["elapsed_seconds"]
    else:
        import torch
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import DPOConfig, DPOTrainer

        from dpo_engine.files import read_jsonl
        from dpo_engine.models.loading import resolve_model

        class Clock(TrainerCallback):
            def on_train_begin(self, *a, **k):
                self.start = time.perf_counter()

            def on_log(self, *a, logs=None, **k):
                if logs and "loss" in logs:
                    self.last = time.perf_counter()

        path = resolve_model(args.model)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
        config = DPOConfig(
            output_dir=str(run_dir), per_device_train_batch_size=batch_size, max_steps=steps,
            learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
            beta=BETA, loss_type=["sigmoid"], max_length=max_length, precompute_ref_log_probs=True,
            gradient_checkpointing=False, bf16=dtype == "bf16", use_cpu=device == "cpu", seed=SEED,
            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        )
        clock = Clock()
        trainer = DPOTrainer(
            model=model, args=config, train_dataset=Dataset.from_list(list(read_jsonl(args.data))),
            processing_class=AutoTokenizer.from_pretrained(path), callbacks=[clock],
            peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
        )
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        loop_seconds = clock.last - clock.start
    return {"pairs": steps * batch_size, "loop_seconds": loop_seconds, "losses": losses,
            "peak_rss_mb": round(_common.peak_rss_mb())}


if __name__ == "__main__":
    main()
