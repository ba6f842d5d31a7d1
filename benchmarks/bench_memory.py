"""Benchmark 5: peak memory (RSS) of scoring the 1,200 bundled UltraFeedback pairs with the default model.

Each contender runs in a fresh child process (so its peak RSS is its own), with the scoring defaults
(``max_length`` 1024, ``max_prompt_length`` 512, batch 8, fp32):

- **ours**: ``dpo_engine.scoring.score_logps``;
- **baseline**: the plain batched transformers way: chosen and rejected rows right-padded, full logits,
  ``log_softmax``, gather (what a user writes without response-only logits or prompt sharing).

``score_logps`` scores the longest pairs first. ``--quick`` scores the 8 longest pairs (the first, largest batch a
full run starts with): a lower bound on the full run's peak (1,586 vs 1,935 MB measured, docs/benchmarks.md §5).
The full mode scores all 1,200 pairs with ours (the baseline gets the 32 longest: its peak is set by the longest
batch, whose full logits dominate). Target: <= 3 GB.

The last line printed is the ratio line (baseline peak / ours peak).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGET_MB = 3 * 1024


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None, help="score the N longest pairs (quick 8 = the first, largest batch; full: all)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--child", choices=["ours", "baseline"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _common.setup_environment()
    if args.child:
        print(json.dumps(child(args)))
        return {}

    full_pairs = args.pairs or (8 if args.quick else None)
    baseline_pairs = args.pairs or (8 if args.quick else 32)
    common = ["--model", args.model, "--device", args.device, "--max-length", str(args.max_length),
              "--batch-size", str(args.batch_size), "--dtype", args.dtype]
    runs = {}
    for name, n in (("ours", full_pairs), ("baseline", baseline_pairs)):
        cmd = [sys.executable, __file__, "--child", name, *common] + (["--pairs", str(n)] if n else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} child failed:\n{done.stderr[-3000:]}")
        runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [[name, r["pairs"], r["peak_rss_mb"], r["idle_rss_mb"], r["seconds"]] for name, r in runs.items()]
    print(f"\n## memory, {args.model}, {args.dtype}, max_length {args.max_length}, batch {args.batch_size}")
    print(_common.table(["contender", "pairs scored (longest first)", "peak RSS MB", "RSS after model load MB", "s"], rows))
    ours, base = runs["ours"]["peak_rss_mb"], runs["baseline"]["peak_rss_mb"]
    verdict = "met" if ours <= TARGET_MB else "MISSED"
    result = {"runs": runs, "target_mb": TARGET_MB,
              "ratio": f"RATIO memory baseline/ours={base / ours:.2f}x ours_peak={ours:.0f}MB target<={TARGET_MB}MB {verdict}"}
    return _common.finish("memory", result, args.json_out)


def child(args) -> dict:
    """Load the model, score the pairs one way, report this process's peak RSS."""
    import tempfile

    import torch

    from dpo_engine.margins import scoring
    from dpo_engine.data.pairs import bundled_datasets, load_pairs
    from dpo_engine.models.loading import load_model
    from dpo_engine.models.tokenization import encode_pair

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    pairs = load_pairs(bundled_datasets()["ultrafeedback"]).pairs
    max_prompt_length = args.max_length // 2
    idle = _common.peak_rss_mb()
    started = time.perf_counter()
    if args.pairs:  # the N longest, as score_logps would order them
        encoded = {r.pair_id: encode_pair(tokenizer, list(r.prompt_messages), r.chosen, r.rejected, args.max_length,
                                          max_prompt_length) for r in pairs.itertuples()}
        from dpo_engine.models.logps import row_tokens

        longest = sorted(encoded, key=lambda i: row_tokens(model, encoded[i]), reverse=True)[: args.pairs]
        pairs = pairs.set_index("pair_id").loc[longest].reset_index()
    if args.child == "ours":
        cache = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        scoring.cache_dir = lambda: cache
        scoring.score_logps(pairs, model, tokenizer, cache_key="memory", batch_size=args.batch_size,
                            max_length=args.max_length, max_prompt_length=max_prompt_length)
    else:
        encoded = [encode_pair(tokenizer, list(r.prompt_messages), r.chosen, r.rejected, args.max_length,
                               max_prompt_length) for r in pairs.itertuples()]
        encoded.sort(key=lambda p: -(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))))
        device = next(model.parameters()).device
        for start in range(0, len(encoded), args.batch_size):
            group = encoded[start : start + args.batch_size]
            rows = [p.prompt_ids + p.chosen_ids for p in group] + [p.prompt_ids + p.rejected_ids for p in group]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), tokenizer.pad_token_id)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
                attention[i, : len(row)] = 1
            with torch.no_grad():
                logprobs = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, :-1].float()
                logprobs = logprobs.log_softmax(-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
            del logprobs
    return {"pairs": len(pairs), "peak_rss_mb": round(_common.peak_rss_mb()), "idle_rss_mb": round(idle),
            "seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    main()
