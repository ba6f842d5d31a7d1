"""Benchmark 1: implicit-margin scoring (policy and reference log-probs of N pairs).

Contenders, all in this process, on the same models, pairs, token ids, max length, batch size and dtype:

- **ours**: ``dpo_engine.scoring.score_logps`` for the policy, then for the reference (what ``implicit_margins``
  does for a full-model policy), with a fresh cache each repeat: length-sorted batches, shared prompt, logits only
  at response positions, ``inference_mode``, one parquet part per batch.
- **naive**: a plain transformers loop, one sequence at a time: ``model(prompt + response).logits``,
  ``log_softmax``, gather, sum over the response; four forwards per pair (policy/reference x chosen/rejected).
- **TRL**: TRL's reference-log-prob precompute: ``DPOTrainer.compute_ref_log_probs`` (the public method its
  ``precompute_ref_log_probs=True`` pass calls batch by batch) over TRL's ``DataCollatorForPreference`` batches in
  dataset order, once with the policy and once with the reference model.

The policy is the reference with a small deterministic perturbation of every weight (a stand-in for a trained proxy).
All three get identical token ids (our ``encode_pair``, which follows TRL's tokenization rule), so the check that they
agree (fp32, 1e-3 nats) is exact work-for-work. TRL's own dataset tokenization and its datasets-cache write are not
timed (that favours TRL); ours includes tokenization and writing its cache parts.

Also reported: ours with the reference already cached (scoring a new policy against a reference scored before),
which is what re-scoring after each proxy retrain costs.

The last line printed is the ratio line.
"""

from __future__ import annotations

import copy
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None, help="number of pairs (quick 8, full 64)")
    parser.add_argument("--max-length", type=int, default=None, help="max tokens of prompt + response (quick 192, full 512)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default=None, help="quick: fp32, full: both")
    parser.add_argument("--dataset", default="ultrafeedback", help="bundled dataset name or a pairs file")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop (slow on long data)")
    args = parser.parse_args(argv)
    _common.setup_environment()
    n_pairs = args.pairs or (8 if args.quick else 64)
    max_length = args.max_length or (192 if args.quick else 512)
    repeats = args.repeats or (2 if args.quick else 3)
    dtypes = _common.dtypes(args.dtype, args.quick)

    import torch

    from dpo_engine.margins import scoring
    from dpo_engine.data.pairs import bundled_datasets, load_pairs
    from dpo_engine.models.loading import load_model
    from dpo_engine.models.tokenization import encode_pair

    device = _common.resolve_device(args.device)
    source = bundled_datasets().get(args.dataset, args.dataset)
    pairs = load_pairs(source).pairs
    pairs = pairs[pairs.warnings == ""].sample(n=min(n_pairs, len(pairs)), random_state=0).reset_index(drop=True)
    max_prompt_length = max_length // 2

    cache_root = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    scoring.cache_dir = lambda: cache_root  # private score cache: each repeat starts cold

    results = {"settings": {"pairs": len(pairs), "max_length": max_length, "max_prompt_length": max_prompt_length,
                            "batch_size": args.batch_size, "repeats": repeats, "model": args.model, "device": device}}
    ratio_parts = []
    try:
        for dtype in dtypes:
            reference, tokenizer = load_model(args.model, dtype=dtype, device=device)
            policy = perturbed_copy(reference)
            encoded = [
                encode_pair(tokenizer, list(r.prompt_messages), r.chosen, r.rejected, max_length, max_prompt_length)
                for r in pairs.itertuples()
            ]
            n_tokens = sum(2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in encoded)
            trainer = make_trl_trainer(policy, reference, tokenizer, args.batch_size, max_length, dtype, cache_root)

            def ours():
                out = []
                for model in (policy, reference):
                    out.append(scoring.score_logps(
                        pairs, model, tokenizer, cache_key=f"run-{uuid.uuid4().hex}", batch_size=args.batch_size,
                        max_length=max_length, max_prompt_length=max_prompt_length,
                    ))
                return _stack(out[0].chosen_logps, out[0].rejected_logps, out[1].chosen_logps, out[1].rejected_logps)

            warm_key = f"ref-{dtype}"
            scoring.score_logps(pairs, reference, tokenizer, cache_key=warm_key, batch_size=args.batch_size,
                                max_length=max_length, max_prompt_length=max_prompt_length)

            def ours_reference_cached():
                pol = scoring.score_logps(pairs, policy, tokenizer, cache_key=f"run-{uuid.uuid4().hex}",
                                          batch_size=args.batch_size, max_length=max_length,
                                          max_prompt_length=max_prompt_length)
                ref = scoring.score_logps(pairs, reference, tokenizer, cache_key=warm_key, batch_size=args.batch_size,
                                          max_length=max_length, max_prompt_length=max_prompt_length)
                return _stack(pol.chosen_logps, pol.rejected_logps, ref.chosen_logps, ref.rejected_logps)

            contenders = {"ours": ours, "TRL precompute": lambda: trl_logps(trainer, policy, reference, encoded, args.batch_size)}
            if not args.no_naive:
                contenders["naive loop"] = lambda: naive_logps(policy, reference, encoded)
            contenders["ours, reference cached"] = ours_reference_cached
            timed = _common.interleaved(contenders, repeats, warmup=not args.quick)

            base = timed["naive loop"]["result"] if "naive loop" in timed else timed["TRL precompute"]["result"]
            agreement = {name: float((entry["result"] - base).abs().max()) for name, entry in timed.items()}
            if dtype == "fp32":
                # 1e-3 nats, plus 1e-4 relative: a sum of hundreds of fp32 token log-probs drifts by ~1e-5 relative
                # between kernels of different shapes (batch 1 vs batched), whoever computes it.
                bad = {name: diff for name, diff in agreement.items()
                       if not torch.allclose(timed[name]["result"], base, rtol=1e-4, atol=1e-3)}
                if bad:
                    raise SystemExit(f"log-probs disagree in fp32 (rtol 1e-4, atol 1e-3): {bad}")
            ours_time = timed["ours"]["median"]
            rows = []
            for name, entry in timed.items():
                rows.append([name, entry["median"], len(pairs) / entry["median"], n_tokens / entry["median"],
                             entry["median"] / ours_time, agreement[name]])
            print(f"\n## scoring, {dtype}, {len(pairs)} pairs, max_length {max_length}, batch {args.batch_size}, "
                  f"{device}, {n_tokens} input tokens (policy + reference = 2 passes)")
            print(_common.table(["contender", "median s", "pairs/s", "tokens/s", "time / ours", "max |logp diff| vs naive"], rows))
            work = multiply_adds(reference, encoded)
            print(f"multiply-adds per model pass (linear layers + LM head, attention left out): ours "
                  f"{work['ours'] / 1e9:.0f} G, naive {work['naive'] / 1e9:.0f} G: naive does "
                  f"{work['naive'] / work['ours']:.2f}x ours' work, the ratio a compute-bound machine allows")
            results[dtype] = {name: {"median_s": e["median"], "times_s": e["times"], "max_abs_diff": agreement[name]}
                              for name, e in timed.items()}
            results.setdefault("multiply_adds", {})[dtype] = work
            vs = {"naive": timed.get("naive loop", {}).get("median"), "TRL": timed["TRL precompute"]["median"]}
            part = f"{dtype}:" + " ".join(f"{k}/ours={v / ours_time:.2f}x" for k, v in vs.items() if v)
            ratio_parts.append(part)
            del trainer, policy, reference
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    results["ratio"] = "RATIO scoring " + " | ".join(ratio_parts)
    return _common.finish("scoring", results, args.json_out)


def perturbed_copy(model, scale: float = 0.02, seed: int = 0):
    """A copy of ``model`` with every weight moved by ``scale`` times its own std of Gaussian noise (fixed seed)."""
    import torch

    policy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if parameter.dim() < 2 or "embed" in name:
                continue
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            parameter.add_((noise * scale * parameter.float().std()).to(parameter.dtype).to(parameter.device))
    return policy.eval()


def multiply_adds(model, encoded) -> dict[str, float]:
    """Multiply-adds of one model pass over ``encoded``, linear layers and LM head only, for ours and the naive loop.

    Naive: every token of ``prompt + chosen`` and ``prompt + rejected`` through the body and the head. Ours: each pair
    in the layout ``prefer_packed`` picks (the prompt once when packed), no padding, the head only at positions that
    predict a response token.
    """
    from dpo_engine.models.logps import _logit_positions, layer_multiply_adds, prefer_packed

    config = model.config
    body = config.num_hidden_layers * layer_multiply_adds(model)[0]
    head = config.hidden_size * config.vocab_size
    naive = ours = 0.0
    for pair in encoded:
        p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
        naive += (2 * p + c + r) * (body + head)
        ours += (p + c + r if prefer_packed(model, pair) else 2 * p + c + r) * body + _logit_positions(pair) * head
    return {"ours": ours, "naive": naive}


def naive_logps(policy, reference, encoded):
    """The plain transformers loop: one sequence per forward, full logits, log_softmax, gather, sum."""
    import torch

    out = []
    for model in (policy, reference):
        device = next(model.parameters()).device
        chosen, rejected = [], []
        for pair in encoded:
            for response, sink in ((pair.chosen_ids, chosen), (pair.rejected_ids, rejected)):
                ids = torch.tensor([pair.prompt_ids + response], device=device)
                with torch.no_grad():
                    logprobs = model(ids).logits[0, :-1].float().log_softmax(-1)
                start = len(pair.prompt_ids)
                targets = ids[0, start:]
                sink.append(logprobs[torch.arange(start - 1, ids.shape[1] - 1, device=device), targets].sum().item())
        out += [chosen, rejected]
    return _stack(*out)


def make_trl_trainer(policy, reference, tokenizer, batch_size, max_length, dtype, workdir):
    """A ``DPOTrainer`` holding both models, set up the way its precompute pass would run."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=batch_size,
        precompute_ref_batch_size=batch_size,
        max_length=max_length,
        bf16=dtype == "bf16",
        use_cpu=next(policy.parameters()).device.type == "cpu",
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    dummy = Dataset.from_list([{
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    }])
    return DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=dummy, processing_class=tokenizer)


def trl_logps(trainer, policy, reference, encoded, batch_size):
    """TRL's precompute loop: its collator, its accelerator-prepared DataLoader, ``compute_ref_log_probs`` per batch."""
    import torch
    from torch.utils.data import DataLoader

    rows = [{"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids} for p in encoded]
    out = []
    for model in (trainer.model, trainer.ref_model):
        loader = trainer.accelerator.prepare(
            DataLoader(rows, batch_size=batch_size, collate_fn=trainer.data_collator, shuffle=False)
        )
        chosen, rejected = [], []
        for batch in loader:
            c, r = trainer.compute_ref_log_probs(model, batch)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
        out += [torch.cat(chosen), torch.cat(rejected)]
    return _stack(*out)


def _stack(*columns):
    """``(4, N)`` float64 tensor: policy chosen, policy rejected, reference chosen, reference rejected."""
    import numpy as np
    import torch

    return torch.as_tensor(np.stack([np.asarray(column, dtype=np.float64).reshape(-1) for column in columns]))


if __name__ == "__main__":
    main()
