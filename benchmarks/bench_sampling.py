"""Benchmark: one sampling step for every decoding slot, batched (``decoding.Sampler``) vs a generator per row.

The per-row contender is what ``stream_answers`` did before: the warpers on one row at a time, then
``torch.multinomial`` with that row's generator and ``int()`` (a device synchronisation per row on a GPU). Ours
warps all rows at once and draws by inverse CDF from a hash of (seed, step). Same logits (SmolLM2's vocabulary
size), temperature 0.7, top-p 0.9; the two alternate, order rotated, and medians are reported. The last line
printed is the ratio line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main(argv=None) -> None:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=49152)
    args = parser.parse_args(argv)
    _common.setup_environment()
    import torch
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from dpo_engine.evaluation.decoding import Sampler

    device = _common.resolve_device(args.device)
    logits = torch.randn(args.slots, args.vocab, generator=torch.Generator().manual_seed(0)).mul(3).to(device)
    rows = [{"seed": i, "answer": [1] * 5, "generator": torch.Generator(device=device).manual_seed(i)}
            for i in range(args.slots)]
    warpers = [TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.9)]

    def per_row() -> list[int]:
        tokens = []
        for row, scores in zip(rows, logits.float()):
            for warp in warpers:
                scores = warp(None, scores[None])[0]
            tokens.append(int(torch.multinomial(scores.softmax(-1), 1, generator=row["generator"])))
        return tokens

    sampler = Sampler(0.7, 0.9)
    contenders = {"per-row generators": per_row, "batched Sampler": lambda: sampler(logits, rows)}
    repeats = args.repeats or (3 if args.quick else 7)
    times = {name: [] for name in contenders}
    for repeat in range(repeats):
        names = list(contenders)[repeat % 2:] + list(contenders)[: repeat % 2]
        for name in names:
            started = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - started)
    medians = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"{name}: {seconds * 1e3:.1f} ms per step ({args.slots} slots, vocabulary {args.vocab:,}, {device})")
    print(f"RATIO sampling: batched/per-row = {medians['per-row generators'] / medians['batched Sampler']:.2f}x")


if __name__ == "__main__":
    main()
