"""Benchmark: sharded scoring, `dpo-engine score --num-processes 2` vs 1 process, single-thread processes, same pairs.

Both contenders run the whole command as a fresh process (``OMP_NUM_THREADS=1``), each repeat with an empty
log-prob cache: load the pairs, the policy and reference passes of the implicit margin (a full-model policy against
its reference), the margins table. The 2-process run pays for two more process start-ups (torch and transformers
imports, model loads) than the 1-process run; the model is a random Llama built from a config (byte-level
tokenizer) sized so that the forwards dominate. The tables of the two must agree to 1e-5 nats (the script exits
non-zero otherwise). The ratio is 1-process seconds / 2-process seconds: 2x is the limit on two idle cores.

Control, "independent halves": two unrelated 1-process jobs at once, each on half of the pairs (alternate rows),
timed until both end: what this machine gives two processes with no sharding at all (shared caches and memory
bandwidth, a VM's vCPUs, other users). 1-process seconds / its seconds is the machine's ceiling for the ratio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None, help="number of pairs (quick 16, full 300)")
    parser.add_argument("--max-length", type=int, default=256, help="max tokens of prompt + response")
    parser.add_argument("--hidden-size", type=int, default=None, help="random model width (quick 64, full 384)")
    parser.add_argument("--layers", type=int, default=None, help="random model layers (quick 2, full 8)")
    parser.add_argument("--processes", type=int, default=2, help="processes of the sharded contender")
    parser.add_argument("--no-control", action="store_true", help="skip the independent-halves control")
    args = parser.parse_args(argv)
    _common.setup_environment()
    n_pairs = args.pairs or (16 if args.quick else 300)
    repeats = args.repeats or (1 if args.quick else 2)
    work = Path(tempfile.mkdtemp(prefix="bench-sharded-"))
    hidden_size, layers = args.hidden_size or (64 if args.quick else 384), args.layers or (2 if args.quick else 8)
    policy, reference = build_models(work, hidden_size, layers)
    pairs_file = sample_pairs(work, n_pairs)
    contenders = {
        f"{n} process{'es' if n > 1 else ''}": (lambda n=n: score_once(work, [pairs_file], policy, reference, n,
                                                                         args.max_length))
        for n in (1, args.processes)
    }
    if not args.no_control:
        halves = split_pairs(work, pairs_file, args.processes)
        contenders["independent halves"] = lambda: score_once(work, halves, policy, reference, 1, args.max_length)
    timed = _common.interleaved(contenders, repeats, warmup=False)
    names = list(contenders)
    gap = max_abs_diff(timed[names[0]]["result"], timed[names[1]]["result"])
    one, sharded = timed[names[0]]["median"], timed[names[1]]["median"]
    results = {
        "settings": {"pairs": n_pairs, "max_length": args.max_length, "repeats": repeats, "processes": args.processes,
                     "threads_per_process": 1, "model": {"hidden_size": hidden_size, "layers": layers}},
        "seconds": {name: {"median": entry["median"], "times": entry["times"]} for name, entry in timed.items()},
        "max_abs_diff": gap,
        "speedup": one / sharded,
    }
    if not args.no_control:
        results["machine_ceiling"] = one / timed["independent halves"]["median"]
        results["efficiency_vs_ceiling"] = results["speedup"] / results["machine_ceiling"]
    print(_common.table(["contender", "median s", "times"],
                        [[name, entry["median"], ", ".join(f"{t:.1f}" for t in entry["times"])]
                         for name, entry in timed.items()]))
    ceiling = f"; independent halves {results['machine_ceiling']:.2f}x" if not args.no_control else ""
    results["ratio"] = (f"RATIO sharded_scoring: {args.processes} single-thread processes are {one / sharded:.2f}x "
                        f"1 process ({one:.1f} s vs {sharded:.1f} s, {n_pairs} pairs; tables agree to {gap:.1e})"
                        + ceiling)
    if gap > 1e-5:
        print(f"the sharded table differs from the 1-process one by {gap}", file=sys.stderr)
        _common.finish("sharded_scoring", results, args.json_out)
        sys.exit(1)
    return _common.finish("sharded_scoring", results, args.json_out)


def build_models(work: Path, hidden_size: int, layers: int) -> tuple[Path, Path]:
    """A random Llama (the reference) and a copy with every weight nudged (the policy), both saved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_engine.models.loading import make_tiny_model

    reference = make_tiny_model(work / "reference", seed=0, hidden_size=hidden_size, num_layers=layers)
    model = AutoModelForCausalLM.from_pretrained(reference)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    policy = work / "policy"
    model.save_pretrained(policy)
    AutoTokenizer.from_pretrained(reference).save_pretrained(policy)
    return policy, reference


def sample_pairs(work: Path, n_pairs: int) -> Path:
    from dpo_engine.data.pairs import bundled_datasets, load_pairs, save_pairs

    pairs = load_pairs(bundled_datasets()["ultrafeedback"]).pairs
    pairs = pairs[pairs.warnings == ""].sample(n=n_pairs, random_state=0)
    return save_pairs(pairs, work / "pairs.jsonl")


def split_pairs(work: Path, pairs_file: Path, parts: int) -> list[Path]:
    """``pairs_file`` dealt row by row into ``parts`` files (the control's unrelated jobs)."""
    lines = pairs_file.read_text().splitlines(keepends=True)
    paths = [work / f"pairs-part{k}.jsonl" for k in range(parts)]
    for k, path in enumerate(paths):
        path.write_text("".join(lines[k::parts]))
    return paths


def score_once(work: Path, pairs_files: list[Path], policy: Path, reference: Path, processes: int, max_length: int):
    """`dpo-engine score` from a cold cache, one command per file of ``pairs_files``, all at once; returns the
    first one's margins table once every command has ended."""
    from dpo_engine.margins.table import load_margins_table

    run = work / f"run-{processes}-{time.monotonic_ns()}"
    commands = []
    for k, pairs_file in enumerate(pairs_files):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "DPO_ENGINE_CACHE": str(run / f"cache{k}"), "PYTHONPATH": str(_common.REPO_ROOT)}
        out = run / f"margins{k}.parquet"
        argv = [sys.executable, "-m", "dpo_engine.cli", "score", str(pairs_file), "--out", str(out),
                "--external", "none", "--implicit", "policy", "--policy", str(policy), "--reference", str(reference),
                "--device", "cpu", "--dtype", "fp32", "--max-length", str(max_length),
                "--max-prompt-length", str(max_length // 2), "--num-processes", str(processes)]
        commands.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for command in commands:
        _, stderr = command.communicate()
        if command.returncode != 0:
            raise SystemExit(f"scoring with {processes} processes failed:\n{stderr[-3000:]}")
    return load_margins_table(run / "margins0.parquet")[0]


def max_abs_diff(first, second) -> float:
    """Largest gap between the two tables' log-prob and margin columns, same pairs in the same order."""
    import numpy as np

    columns = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
               "implicit_margin"]
    assert first.pair_id.tolist() == second.pair_id.tolist()
    return float(np.max(np.abs(first[columns].to_numpy(float) - second[columns].to_numpy(float))))


if __name__ == "__main__":
    main()
