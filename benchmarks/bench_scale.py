"""Benchmark: how scoring scales with the number of pairs (fresh, cached, and with a forward that costs nothing).

For each size N (default 400 / 1,600 / 6,400 pairs; ``--quick`` 40 / 80 / 160) this scores N pairs with
``dpo_engine.margins.scoring.score_logps`` three ways, each in a fresh on-disk cache:

- **fresh**: the tiny model, nothing cached;
- **cached**: the same call again, every log-prob already on disk (what a resume, a re-score or a training run's
  reference pass over data scored before costs);
- **free forward**: a stand-in model whose forward is an embedding lookup into an 8-wide hidden state, so the time
  left is the engine's own overhead per pair: encoding, row building, the head over kept positions, bookkeeping
  and parquet I/O.

Goals (issue #16): per-pair fresh time flat within 1.3x across the sizes; cached <= 10 % of fresh; free-forward
overhead <= 2 ms per pair. Pairs are the bundled UltraFeedback sample repeated under new ids. Only
``score_logps``'s long-standing arguments are used, so the same script can time an older checkout
(``PYTHONPATH=<old checkout>``) on the same machine.

The last line printed is the ratio line.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.set_defaults(model="tiny-random")
    parser.add_argument("--sizes", default=None, help="comma-separated pair counts (quick 40,80,160; full 400,1600,6400)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per forward (default: the engine's)")
    args = parser.parse_args(argv)
    _common.setup_environment()
    sizes = [int(n) for n in (args.sizes or ("40,80,160" if args.quick else "400,1600,6400")).split(",")]
    cache_root = Path(tempfile.mkdtemp(prefix="bench-scale-"))

    from dpo_engine.margins import scoring
    from dpo_engine.models.loading import load_model

    scoring.cache_dir = lambda: cache_root  # private score cache (the models stay in the usual cache)
    model, tokenizer = load_model(args.model, dtype="fp32", device=_common.resolve_device(args.device))
    free = free_forward_model(model.config.get_text_config().vocab_size)
    options = {"max_length": args.max_length, "max_prompt_length": args.max_length // 2}
    if args.batch_size:
        options["batch_size"] = args.batch_size

    rows, results = [], {"settings": {"sizes": sizes, "model": args.model, **options}, "sizes": {}}
    for n in sizes:
        pairs = repeated_pairs(n)
        timings = {}
        for name, scorer, key in (("fresh", model, f"fresh-{n}"), ("cached", model, f"fresh-{n}"),
                                  ("free forward", free, f"free-{n}")):
            started = time.perf_counter()
            scoring.score_logps(pairs, scorer, tokenizer, cache_key=key, **options)
            timings[name] = time.perf_counter() - started
        per_pair = {name: 1000 * seconds / n for name, seconds in timings.items()}
        results["sizes"][n] = {"seconds": timings, "ms_per_pair": per_pair}
        rows.append([n, per_pair["fresh"], per_pair["cached"], timings["cached"] / timings["fresh"],
                     per_pair["free forward"]])
    print(f"\n## scoring at scale, {args.model}, max_length {args.max_length}, "
          f"batch {options.get('batch_size', 'engine default')}")
    print(_common.table(["pairs", "fresh ms/pair", "cached ms/pair", "cached / fresh", "free-forward ms/pair"], rows))
    fresh = [row[1] for row in rows]
    flatness = max(fresh) / min(fresh)
    cached_share = max(row[3] for row in rows)
    overhead = max(row[4] for row in rows)
    results.update(flatness=flatness, cached_share=cached_share, overhead_ms_per_pair=overhead)
    results["ratio"] = (f"RATIO scale fresh_per_pair_max/min={flatness:.2f}x (goal <= 1.3) "
                        f"cached/fresh={cached_share:.3f} (goal <= 0.10) overhead={overhead:.2f} ms/pair (goal <= 2)")
    return _common.finish("scale", results, args.json_out)


def repeated_pairs(n: int):
    """``n`` pairs: the bundled UltraFeedback sample repeated, each copy under new pair ids."""
    import pandas as pd

    from dpo_engine.data.pairs import bundled_datasets, load_pairs

    base = load_pairs(bundled_datasets()["ultrafeedback"]).pairs
    copies = []
    for copy_index in range(-(-n // len(base))):
        copy = base.copy()
        copy["pair_id"] = copy.pair_id.astype(str) + f"-{copy_index}"
        copies.append(copy)
    return pd.concat(copies, ignore_index=True).iloc[:n].reset_index(drop=True)


def free_forward_model(vocab_size: int, hidden_size: int = 8):
    """A causal-LM stand-in whose forward costs almost nothing: an ``(vocab, 8)`` embedding as its decoder and an
    ``(8, vocab)`` head, with the attributes the engine reads (a Llama config, sdpa attention)."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab_size, hidden_size)

        def forward(self, input_ids, **kwargs):
            return BaseModelOutput(last_hidden_state=self.embed(input_ids))

    class FreeForwardLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size,
                                      num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1)
            self.config._attn_implementation = "sdpa"
            self.decoder = Decoder()
            self.lm_head = torch.nn.Linear(hidden_size, vocab_size, bias=False)

        def get_decoder(self):
            return self.decoder

        def get_output_embeddings(self):
            return self.lm_head

        def set_attn_implementation(self, name):
            self.config._attn_implementation = name

        def forward(self, input_ids, logits_to_keep=None, **kwargs):
            hidden = self.decoder(input_ids).last_hidden_state
            return CausalLMOutput(logits=self.lm_head(hidden[logits_to_keep] if logits_to_keep is not None else hidden))

    return FreeForwardLM().eval()


if __name__ == "__main__":
    main()
