"""The GPU check: the engine's scale paths on one CUDA device, each side by side with plain transformers.

    python benchmarks/gpu_check.py --out gpu_check.json            # one CUDA GPU, <= 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick --out x.json  # the same code paths, tiny shapes, CPU

Sections (each result goes into the ``--out`` JSON, and a line is printed):

1. **scoring**: summed response log-probs of random pairs on random-init models shaped like Llama-3.2-1B and
   Llama-3-8B (built from a config, no weights), bf16: ours (``pair_logps``: padding-free rows, response-only
   logits) against plain transformers (left-padded rows, full logits, log-softmax); tokens/s, MFU, agreement,
   and the projected time of 61k UltraFeedback-size pairs x 2 passes at the measured rate.
2. **fused attention**: ``MARGIN_LAB_FUSED_ATTENTION`` varlen and flex against segment SDPA, on raw attention
   (packed ``[prompt | chosen | rejected]`` segments included) and on the 1B model's log-probs.
3. **training step**: one LoRA DPO step on the 8B shape at 4 pairs x 1,024 tokens, with and without gradient
   checkpointing, and plain transformers' padded step: seconds, peak memory, and our memory estimate beside it.
4. **generation**: 64 slots of continuous batching (``stream_answers``) against ``model.generate`` on one
   batch of 64: new tokens/s.

It imports torch, transformers, peft and the engine modules that need nothing else (no datasets, TRL, gguf or
pandas: ``tests/test_benchmarks.py`` runs the quick mode with those imports blocked).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dpo_engine.evaluation.decoding import stream_answers  # noqa: E402
from dpo_engine.models import varlen_attention  # noqa: E402
from dpo_engine.models.logps import _segment_mask, pair_logps  # noqa: E402
from dpo_engine.models.segment_attention import segment_sdpa  # noqa: E402
from dpo_engine.models.tokenization import EncodedPair, collate  # noqa: E402
from dpo_engine.training.checkpointing import attention_for_training, enable_checkpointing  # noqa: E402
from dpo_engine.training.memory import ModelShape, estimate_training_memory  # noqa: E402

SHAPES = {  # Llama-3.2-1B and Llama-3-8B (config.json values), and a tiny one for --quick
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
ULTRAFEEDBACK_PAIRS = 61_000
PAIR_SHAPE = (256, 384, 384)  # prompt, chosen, rejected tokens: 1,024 per pair, as the 4 x 1,024 step
QUICK_PAIR_SHAPE = (24, 20, 16)


def build_model(shape: str, device: str, dtype: torch.dtype):
    """A random-init Llama of ``shape`` on ``device`` in ``dtype`` (SDPA attention, dropout off)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def random_pairs(n: int, lengths: tuple[int, int, int], vocab: int, seed: int = 0, vary: bool = True) -> list[EncodedPair]:
    """``n`` pairs of random token ids with ``lengths`` (prompt, chosen, rejected), each shortened by up to 25 %
    when ``vary`` (pairs of different lengths, as real data)."""
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        scales = [0.75 + 0.25 * torch.rand(1, generator=generator).item() if vary else 1.0 for _ in lengths]
        sizes = [max(2, int(length * scale)) for length, scale in zip(lengths, scales)]
        ids = [torch.randint(10, vocab, (size,), generator=generator).tolist() for size in sizes]
        pairs.append(EncodedPair(*ids))
    return pairs


def pair_tokens(pairs) -> int:
    """Tokens of the pairs as two plain sequences each (prompt + chosen, prompt + rejected)."""
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, device: str, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up call, and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        result = function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2], result


def plain_logps(model, pairs, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """What a straightforward implementation computes: 2B left-padded rows, full logits, log-softmax, gather."""
    batch = {key: value.to(model.device) for key, value in collate(pairs, pad_id).items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], use_cache=False).logits[:, :-1].float()
    token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    summed = (token_logps * batch["response_mask"][:, 1:]).sum(-1)
    n = len(pairs)
    return {"chosen_logps": summed[:n], "rejected_logps": summed[n:]}


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(0)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def model_flops(model, tokens: int, backward: bool = False) -> float:
    """2 x non-embedding parameters x tokens (x 3 with a backward pass); attention's share is left out."""
    parameters = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    return 2 * parameters * tokens * (3 if backward else 1)


def agreement(ours: dict, plain: dict) -> float:
    """Largest absolute difference of the chosen and rejected log-probs, relative to their mean magnitude."""
    diffs = [(ours[key].float() - plain[key].float()).abs().max() for key in ("chosen_logps", "rejected_logps")]
    scale = torch.cat([plain["chosen_logps"], plain["rejected_logps"]]).float().abs().mean().clamp(min=1e-6)
    return float(max(diffs) / scale)


# ---- 1. scoring ------------------------------------------------------------------------------------------------------


def check_scoring(model, name: str, args, pairs) -> dict:
    tokens = pair_tokens(pairs)
    with torch.inference_mode():
        ours_s, ours = timed(lambda: pair_logps(model, pairs, 0), args.device, args.repeats)
        plain_s, plain = timed(lambda: plain_logps(model, pairs), args.device, args.repeats)
    peak = peak_flops(args.device)
    result = {
        "model": name, "pairs": len(pairs), "tokens": tokens,
        "ours_tokens_per_s": tokens / ours_s, "plain_tokens_per_s": tokens / plain_s, "ratio": plain_s / ours_s,
        "ours_mfu": model_flops(model, tokens) / ours_s / peak if peak else None,
        "plain_mfu": model_flops(model, tokens) / plain_s / peak if peak else None,
        "relative_difference": agreement(ours, plain),
        "projected_minutes_61k_two_passes": 2 * ULTRAFEEDBACK_PAIRS * (tokens / len(pairs)) / (tokens / ours_s) / 60,
    }
    mfu = f", MFU {result['ours_mfu']:.1%} vs {result['plain_mfu']:.1%}" if peak else ""
    print(f"scoring {name}: ours {result['ours_tokens_per_s']:,.0f} tok/s, plain transformers "
          f"{result['plain_tokens_per_s']:,.0f} tok/s ({result['ratio']:.2f}x){mfu}; relative difference "
          f"{result['relative_difference']:.1e}; 61k pairs x 2 passes ~ {result['projected_minutes_61k_two_passes']:.0f} min",
          flush=True)
    return result


# ---- 2. fused attention -------------------------------------------------------------------------------------------


class _Attention(torch.nn.Module):
    is_causal = True


def check_fused_attention(model, args, pairs) -> dict:
    """varlen and flex against segment SDPA: raw attention on a row with packed segments, then the model's log-probs."""
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(1)
    packed = _segment_mask([0] * 40 + [1] * 30 + [2] * 50, args.device)
    segments = [(0, 64, None), (64, 184, packed), (184, 300, None)]
    heads, kv_heads, dim = 8, 2, 64
    query = torch.randn(1, heads, 300, dim, generator=generator).to(args.device, dtype)
    key, value = (torch.randn(1, kv_heads, 300, dim, generator=generator).to(args.device, dtype) for _ in range(2))
    module = _Attention()
    module.num_key_value_groups = heads // kv_heads
    backends = ["varlen", "flex"] if args.device.startswith("cuda") else ["flex"]
    results = {"backends": backends, "varlen_available": varlen_attention.has_varlen()}
    with _fused(None), torch.inference_mode():
        expected, _ = segment_sdpa(module, query, key, value, None, scaling=dim**-0.5, segments=segments)
        reference_s, reference = timed(lambda: pair_logps(model, pairs, 0), args.device, args.repeats)
    for backend in backends:
        try:
            with _fused(backend), torch.inference_mode():
                out, _ = segment_sdpa(module, query, key, value, None, scaling=dim**-0.5, segments=segments)
                seconds, fused = timed(lambda: pair_logps(model, pairs, 0), args.device, args.repeats)
            results[backend] = {
                "attention_max_abs_diff": float((out.float() - expected.float()).abs().max()),
                "logps_relative_difference": agreement(fused, reference),
                "speedup_over_segment_sdpa": reference_s / seconds,
            }
            print(f"fused attention {backend}: attention max |diff| {results[backend]['attention_max_abs_diff']:.1e}, "
                  f"log-probs relative difference {results[backend]['logps_relative_difference']:.1e}, "
                  f"{results[backend]['speedup_over_segment_sdpa']:.2f}x segment SDPA's speed", flush=True)
        except Exception as error:  # a backend this torch or GPU lacks: recorded, the check goes on
            results[backend] = {"error": f"{type(error).__name__}: {error}"[:500]}
            print(f"fused attention {backend}: failed: {results[backend]['error']}", flush=True)
    return results


@contextlib.contextmanager
def _fused(backend: str | None):
    previous = os.environ.get(varlen_attention.FUSED_ATTENTION_ENV)
    os.environ[varlen_attention.FUSED_ATTENTION_ENV] = backend or "off"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(varlen_attention.FUSED_ATTENTION_ENV, None)
        else:
            os.environ[varlen_attention.FUSED_ATTENTION_ENV] = previous


# ---- 3. one training step -----------------------------------------------------------------------------------------


def dpo_loss(policy: dict, reference: dict, beta: float = 0.1) -> torch.Tensor:
    margin = (policy["chosen_logps"] - reference["chosen_logps"]) - (policy["rejected_logps"] - reference["rejected_logps"])
    return -torch.nn.functional.logsigmoid(beta * margin).mean()


def training_step(model, pairs, device: str, score, checkpointing: bool) -> float:
    """One LoRA DPO step (reference = adapter disabled) under bf16 autocast; returns the loss."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    with attention_for_training(model, checkpointing), autocast:
        with torch.no_grad(), model.disable_adapter():
            reference = score(model, pairs)
        loss = dpo_loss(score(model, pairs), reference)
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def check_training(model, name: str, args, pairs) -> dict:
    """Peak memory and seconds of one step: ours with and without checkpointing, plain transformers without."""
    from peft import LoraConfig, get_peft_model

    shape = ModelShape.from_config(model.config.to_dict())
    results = {"model": name, "pairs": len(pairs),
               "tokens_per_pair": sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs) // len(pairs)}
    variants = [("ours", False, lambda m, p: pair_logps(m, p, 0)), ("ours, checkpointing", True,
                lambda m, p: pair_logps(m, p, 0)), ("plain transformers", False, plain_logps)]
    for label, checkpointing, score in variants:
        if checkpointing:
            enable_checkpointing(model)
        lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        lora.train()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        loss = training_step(lora, pairs, args.device, score, checkpointing)
        synchronize(args.device)
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
        estimate = estimate_training_memory(
            shape, batch_tokens=pair_tokens(pairs),
            logit_positions=sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs),
            weight_dtype="bf16" if args.device.startswith("cuda") else "fp32",
            compute_dtype="bf16" if args.device.startswith("cuda") else "fp32", lora_rank=16,
            checkpointing=checkpointing)
        results[label] = {"seconds": seconds, "loss": loss, "peak_bytes": peak, "estimate": estimate.to_dict()}
        model = lora.unload()  # the base model back, without adapters, for the next variant
        if checkpointing:
            disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            disable()
        peak_text = f"peak {peak / 2**30:.1f} GiB" if peak is not None else "peak n/a on CPU"
        print(f"training step {name} {label}: {seconds:.2f} s, {peak_text}, estimate "
              f"{estimate.total / 2**30:.1f} GiB, loss {loss:.4f}", flush=True)
    return results


# ---- 4. generation ------------------------------------------------------------------------------------------------


def check_generation(model, args) -> dict:
    slots, new_tokens, prompt_length = (4, 8, 12) if args.quick else (64, 128, 128)
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(10, model.config.vocab_size, (prompt_length,), generator=generator).tolist()
               for _ in range(slots)]

    def ours():
        return dict(stream_answers(model, prompts, slots=slots, max_new_tokens=new_tokens, stop_ids=set()))

    def plain():
        ids = torch.tensor(prompts, device=args.device)
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)

    ours_s, answers = timed(ours, args.device, 1)
    plain_s, _ = timed(plain, args.device, 1)
    produced = sum(len(answer) for answer in answers.values())
    result = {"slots": slots, "new_tokens": new_tokens, "ours_tokens_per_s": produced / ours_s,
              "plain_tokens_per_s": slots * new_tokens / plain_s, "ratio": plain_s / ours_s}
    print(f"generation {slots} slots: ours {result['ours_tokens_per_s']:,.0f} new tok/s, model.generate "
          f"{result['plain_tokens_per_s']:,.0f} ({result['ratio']:.2f}x)", flush=True)
    return result


# ---- main ---------------------------------------------------------------------------------------------------------


def environment(device: str) -> dict:
    import transformers

    return {
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "varlen": varlen_attention.has_varlen(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def quiet() -> None:
    """No deprecation chatter between the result lines."""
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (the CPU smoke run, under 3 minutes)")
    parser.add_argument("--out", type=Path, required=True, help="write the results here (JSON)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, 1 with --quick)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    quiet()
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    small, large = ("tiny", "tiny") if args.quick else ("llama-3.2-1b", "llama-3-8b")
    lengths = QUICK_PAIR_SHAPE if args.quick else PAIR_SHAPE
    results = {"command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "environment": environment(args.device), "dtype": str(dtype).replace("torch.", "")}
    started = time.perf_counter()

    model = build_model(small, args.device, dtype)
    pairs = random_pairs(8, lengths, model.config.vocab_size)
    results["scoring"] = [check_scoring(model, small, args, pairs)]
    results["fused_attention"] = check_fused_attention(model, args, pairs)
    results["generation"] = check_generation(model, args)
    del model
    model = build_model(large, args.device, dtype)
    results["scoring"].append(check_scoring(model, large, args, random_pairs(8, lengths, model.config.vocab_size)))
    results["training"] = check_training(model, large, args, random_pairs(4, lengths, model.config.vocab_size, seed=3, vary=False))
    results["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"GPU CHECK done in {results['seconds']:.0f} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
