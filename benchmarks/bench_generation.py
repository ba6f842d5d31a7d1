"""Benchmark 3: generation for evaluation, batched (ours) vs one prompt at a time, in generated tokens per second.

Contenders, in this process, same model, prompts (bundled AlpacaEval instructions), dtype and settings (greedy,
``max_new_tokens``, stop at ``<|im_end|>``/EOS):

- **ours**: ``dpo_engine.evaluation.generation.generate_batch`` over all prompts, longest first, ``--batch-size``
  decoded at a time by continuous batching (what ``generate()`` runs, without its on-disk cache);
- **padded batches**: one left-padded ``model.generate`` call per ``--batch-size`` prompts (the engine's fallback for
  models whose cache cannot be spliced, and what a user batching with transformers writes);
- **one at a time**: plain ``model.generate`` with one prompt per call (no padding);
- **transformers generate_batch**: transformers' own continuous batching (``model.generate_batch``, paged attention,
  at most ``--batch-size`` requests per step), where the installed transformers has it.

Tokens counted are answer tokens up to the first stop token (greedy answers are compared and the share that match
one-at-a-time exactly is reported: batched greedy decoding can flip a near-tie). Target: >= 4x tokens/s at batch 8.
The last line printed is the ratio line.
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

    import torch

    from dpo_engine.evaluation.generation import (
        GenerationSettings,
        _length_sorted_batches,
        _pad_token_id,
        _padded_batches,
        generate_batch,
        load_eval_prompts,
        stop_token_ids,
    )
    from dpo_engine.models.loading import load_model
    from dpo_engine.models.tokenization import prompt_ids

    device = _common.resolve_device(args.device)
    prompts = load_eval_prompts(n=n_prompts, seed=0)
    instructions = list(prompts.instruction)
    results = {"settings": {"prompts": n_prompts, "max_new_tokens": max_new_tokens, "batch_size": args.batch_size,
                            "repeats": repeats, "model": args.model, "device": device}}
    ratio_parts = []
    for dtype in dtypes:
        model, tokenizer = load_model(args.model, dtype=dtype, device=device)
        batched = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=args.batch_size, dtype=dtype)
        stop, pad_id = stop_token_ids(tokenizer), _pad_token_id(tokenizer)
        batches = _length_sorted_batches(prompts, args.batch_size)
        ordered = [i for batch in batches for i in batch]

        def ours():
            outputs, counts = generate_batch(model, tokenizer, [instructions[i] for i in ordered], batched)
            answers = [None] * len(instructions)
            for i, output, count in zip(ordered, outputs, counts):
                answers[i] = (output, count)
            return answers

        def padded_batches():
            answers = [None] * len(instructions)
            encoded = [prompt_ids(tokenizer, [{"role": "user", "content": instructions[i]}]) for i in ordered]
            for position, new_tokens in _padded_batches(model, tokenizer, encoded, batched, stop, [0] * len(encoded)):
                answers[ordered[position]] = answer_of(new_tokens)
            return answers

        def transformers_continuous():
            from transformers import ContinuousBatchingConfig, GenerationConfig

            encoded = [prompt_ids(tokenizer, [{"role": "user", "content": instructions[i]}]) for i in ordered]
            config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(stop),
                                      pad_token_id=pad_id)
            # A paged cache sized for these requests: left unset, transformers sizes it by the machine's free memory
            # (about 14 GB on a 24 GiB CPU box) and the timing is mostly that allocation.
            page_size = ContinuousBatchingConfig().page_size
            pages = -(-(max(map(len, encoded)) + max_new_tokens) // page_size)
            cache = ContinuousBatchingConfig(max_requests_per_batch=args.batch_size, page_size=page_size,
                                             num_blocks=args.batch_size * pages)
            outputs = model.generate_batch(inputs=encoded, generation_config=config, warmup=False,
                                           continuous_batching_config=cache)
            answers = [None] * len(instructions)
            for position, i in enumerate(ordered):  # request ids follow the inputs' order
                answers[i] = answer_of(list(outputs[f"req_{position}"].generated_tokens))
            return answers

        def one_at_a_time():
            answers = []
            for instruction in instructions:
                ids = torch.tensor([prompt_ids(tokenizer, [{"role": "user", "content": instruction}])])
                with torch.inference_mode():
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                         do_sample=False, temperature=None, top_p=None, top_k=None,
                                         eos_token_id=sorted(stop), pad_token_id=pad_id)
                answers.append(answer_of(out[0, ids.shape[1]:].tolist()))
            return answers

        def answer_of(new_tokens):
            length = next((i for i, token in enumerate(new_tokens) if token in stop), len(new_tokens))
            return tokenizer.decode(new_tokens[:length], skip_special_tokens=True).strip(), length

        contenders = {f"ours (batch {args.batch_size})": ours, f"padded batches of {args.batch_size}": padded_batches,
                      "one at a time": one_at_a_time}
        if hasattr(model, "generate_batch"):
            contenders[f"transformers generate_batch ({args.batch_size} requests)"] = transformers_continuous
        timed = _common.interleaved(contenders, repeats, warmup=not args.quick)
        ours_entry, _, base_entry = list(timed.values())[:3]
        same = sum(a[0] == b[0] for a, b in zip(ours_entry["result"], base_entry["result"])) / len(instructions)
        hf_same = [sum(a[0] == b[0] for a, b in zip(entry["result"], base_entry["result"])) / len(instructions)
                   for name, entry in timed.items() if name.startswith("transformers")]
        rows = []
        for name, entry in timed.items():
            tokens = sum(count for _, count in entry["result"])
            entry["tokens"] = tokens
            rows.append([name, entry["median"], tokens, tokens / entry["median"]])
        rate = {name: entry["tokens"] / entry["median"] for name, entry in timed.items()}
        ours_rate, padded_rate, base_rate = list(rate.values())[:3]
        print(f"\n## generation, {dtype}, {n_prompts} prompts, max_new_tokens {max_new_tokens}, greedy, {device}; "
              f"identical answers to one at a time: ours {same:.0%}"
              + (f", transformers generate_batch {hf_same[0]:.0%}" if hf_same else ""))
        print(_common.table(["contender", "median s", "answer tokens", "tokens/s"], rows))
        results[dtype] = {name: {"median_s": e["median"], "times_s": e["times"], "tokens": e["tokens"]}
                          for name, e in timed.items()}
        results[dtype]["identical_answers"] = same
        hf_rates = [value for name, value in rate.items() if name.startswith("transformers")]
        ratio_parts.append(f"{dtype}:ours/one-at-a-time={ours_rate / base_rate:.2f}x "
                           f"padded/one-at-a-time={padded_rate / base_rate:.2f}x"
                           + (f" ours/transformers-generate_batch={ours_rate / hf_rates[0]:.2f}x" if hf_rates else "")
                           + " (tokens/s)")
        del model
    results["ratio"] = "RATIO generation " + " | ".join(ratio_parts)
    return _common.finish("generation", results, args.json_out)


if __name__ == "__main__":
    main()
