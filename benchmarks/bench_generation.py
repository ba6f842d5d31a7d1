"""Benchmark 3: generation for evaluation, batched (ours) vs one prompt at a time, in generated tokens per second.

Contenders, in this process, same model, prompts (bundled AlpacaEval instructions), dtype and settings (greedy,
``max_new_tokens``, stop at ``<|im_end|>``/EOS):

- **ours**: ``dpo_engine.evaluation.generation.generate_batch`` over length-sorted batches of ``--batch-size``
  (what ``generate()`` runs, without its on-disk cache);
- **one at a time**: the same ``model.generate`` call with one prompt per call (no padding).

Tokens counted are answer tokens up to the first stop token, the same for both (greedy answers are compared and
the share that match exactly is reported: batched left-padded greedy decoding can flip a near-tie). Target: >= 4x
tokens/s at batch 8. The last line printed is the ratio line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="number of prompts (quick 8, full 32)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="quick 32, full 128")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default=None, help="quick: fp32, full: both")
    args = parser.parse_args(argv)
    _common.setup_environment()
    n_prompts = args.prompts or (8 if args.quick else 32)
    max_new_tokens = args.max_new_tokens or (32 if args.quick else 128)
    repeats = args.repeats or (2 if args.quick else 3)
    dtypes = _common.dtypes(args.dtype, args.quick)

    from dpo_engine.evaluation.generation import GenerationSettings, _length_sorted_batches, generate_batch, load_eval_prompts
    from dpo_engine.models import load_model

    device = _common.resolve_device(args.device)
    prompts = load_eval_prompts(n=n_prompts, seed=0)
    instructions = list(prompts.instruction)
    results = {"settings": {"prompts": n_prompts, "max_new_tokens": max_new_tokens, "batch_size": args.batch_size,
                            "repeats": repeats, "model": args.model, "device": device}}
    ratio_parts = []
    for dtype in dtypes:
        model, tokenizer = load_model(args.model, dtype=dtype, device=device)
        batched = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=args.batch_size, dtype=dtype)
        single = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=1, dtype=dtype)
        batches = _length_sorted_batches(prompts, args.batch_size)

        def ours():
            answers = [None] * len(instructions)
            for batch in batches:
                outputs, counts = generate_batch(model, tokenizer, [instructions[i] for i in batch], batched)
                for i, output, count in zip(batch, outputs, counts):
                    answers[i] = (output, count)
            return answers

        def one_at_a_time():
            answers = []
            for instruction in instructions:
                outputs, counts = generate_batch(model, tokenizer, [instruction], single)
                answers.append((outputs[0], counts[0]))
            return answers

        timed = _common.interleaved({"ours (batch %d)" % args.batch_size: ours, "one at a time": one_at_a_time},
                                    repeats, warmup=not args.quick)
        (ours_name, ours_entry), (_, base_entry) = timed.items()
        same = sum(a[0] == b[0] for a, b in zip(ours_entry["result"], base_entry["result"])) / len(instructions)
        rows = []
        for name, entry in timed.items():
            tokens = sum(count for _, count in entry["result"])
            entry["tokens"] = tokens
            rows.append([name, entry["median"], tokens, tokens / entry["median"]])
        ours_rate = ours_entry["tokens"] / ours_entry["median"]
        base_rate = base_entry["tokens"] / base_entry["median"]
        print(f"\n## generation, {dtype}, {n_prompts} prompts, max_new_tokens {max_new_tokens}, greedy, {device}; "
              f"identical answers: {same:.0%}")
        print(_common.table(["contender", "median s", "answer tokens", "tokens/s"], rows))
        results[dtype] = {name: {"median_s": e["median"], "times_s": e["times"], "tokens": e["tokens"]}
                          for name, e in timed.items()}
        results[dtype]["identical_answers"] = same
        ratio_parts.append(f"{dtype}:ours/one-at-a-time={ours_rate / base_rate:.2f}x (tokens/s)")
        del model
    results["ratio"] = "RATIO generation " + " | ".join(ratio_parts)
    return _common.finish("generation", results, args.json_out)


if __name__ == "__main__":
    main()
