"""Two training runs at once on one CPU (``MARGIN_LAB_RUNS_PER_DEVICE=2``): each on its share of the cores vs each
on every core.

Both contenders start two ``python -m dpo_engine.cli train`` runs of the same config at the same moment, in one
workspace with two CPU slots, and time them until both have ended (start-up, loading, the reference pass and the
steps). "Each on its share" is the default: the worker gives each run ``cpu_count // 2`` threads
(``dpo_engine.runs.devices.cpu_threads_per_process``). The baseline, "each on every core", sets
``OMP_NUM_THREADS`` to the core count, which the worker leaves alone: what every run did before the share existed.
The ratio is baseline seconds / share seconds; above 1 the share is faster.

    python benchmarks/bench_shared_cpu.py [--quick] [--pairs 32] [--steps 6] [--hidden 256] [--layers 4] [--repeats 2]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from bench_ddp import pairs  # noqa: E402

RUNS = 2


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None, help="pairs per run (quick 8, full 32)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (quick 2, full 6)")
    parser.add_argument("--hidden", type=int, default=None, help="random model width (quick 64, full 256)")
    parser.add_argument("--layers", type=int, default=None, help="random model layers (quick 2, full 4)")
    args = parser.parse_args(argv)
    _common.setup_environment()
    from dpo_engine.models.loading import make_tiny_model

    n_pairs, steps = args.pairs or (8 if args.quick else 32), args.steps or (2 if args.quick else 6)
    hidden, layers = args.hidden or (64 if args.quick else 256), args.layers or (2 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 2)
    work = Path(tempfile.mkdtemp(prefix="bench-shared-cpu-"))
    subset = work / "pairs.jsonl"
    subset.write_text("".join(json.dumps(pair) + "\n" for pair in pairs(n_pairs)))
    config = work / "config.yaml"
    config.write_text(json.dumps({
        "model": str(make_tiny_model(work / "model", hidden_size=hidden, num_layers=layers)), "subset": str(subset),
        "device": "cpu", "batch_size": 4, "max_steps": steps, "max_length": 256, "max_prompt_length": 128,
        "save_steps": steps,
    }))
    cores = os.cpu_count() or 1
    contenders = {
        "each on its share": lambda: train_two(work, config, threads=None),
        "each on every core": lambda: train_two(work, config, threads=cores),
    }
    timed = _common.interleaved(contenders, repeats, warmup=False)
    share, every = timed["each on its share"]["median"], timed["each on every core"]["median"]
    print(_common.table(["contender", "median s", "times", "threads per run"],
                        [[name, entry["median"], ", ".join(f"{t:.1f}" for t in entry["times"]), entry["result"]]
                         for name, entry in timed.items()]))
    results = {
        "settings": {"pairs": n_pairs, "steps": steps, "runs": RUNS, "cores": cores, "repeats": repeats,
                     "model": {"hidden_size": hidden, "layers": layers}},
        "seconds": {name: {"median": entry["median"], "times": entry["times"]} for name, entry in timed.items()},
        "threads_per_run": {name: entry["result"] for name, entry in timed.items()},
        "speedup": every / share,
        "ratio": f"RATIO shared_cpu: {RUNS} runs at once, each on its share of the {cores} cores, are "
                 f"{every / share:.2f}x each on every core ({share:.1f} s vs {every:.1f} s)",
    }
    return _common.finish("shared_cpu", results, args.json_out)


def train_two(work: Path, config: Path, threads: int | None) -> str:
    """Start ``RUNS`` runs of ``config`` at once in a fresh workspace with that many CPU slots; wait for both.

    ``threads`` sets ``OMP_NUM_THREADS`` for them (None: unset, so the worker picks the share). Returns the thread
    counts the runs trained on: ``threads``, or the share each worker's log reports.
    """
    tag = work / f"{'share' if threads is None else 'every'}-{time.monotonic_ns()}"
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env.update({"MARGIN_LAB_HOME": str(tag / "home"), "MARGIN_LAB_RUNS_PER_DEVICE": str(RUNS),
                "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(_common.REPO_ROOT)})
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    commands = [subprocess.Popen([sys.executable, "-m", "dpo_engine.cli", "train", str(config), "--run-dir",
                                  str(tag / f"run{k}")], env={**env, "DPO_ENGINE_CACHE": str(tag / f"cache{k}")},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for k in range(RUNS)]
    outputs = [command.communicate()[0] for command in commands]
    for command, output in zip(commands, outputs):
        if command.returncode != 0:
            sys.exit(f"a training run failed:\n{output[-3000:]}")
    if threads is not None:
        return f"{threads} (OMP_NUM_THREADS)"
    return ", ".join(_reported_threads(output) for output in outputs)


def _reported_threads(output: str) -> str:
    """N from the worker's "[margin-lab] N CPU threads (the CPU is shared ...)" line; "?" if it has none."""
    for line in output.splitlines():
        if line.startswith("[margin-lab] ") and " CPU thread" in line:
            return line.split()[1]
    return "?"


if __name__ == "__main__":
    main()
