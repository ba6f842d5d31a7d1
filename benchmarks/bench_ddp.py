"""DDP training on the CPU: 2 single-thread processes (gloo, ``accelerate launch``) against 1, same global batch.

Both runs train the same small random Llama (``make_tiny_model``, wider than the test one so compute outweighs the
gradient all-reduce) on the same pairs for the same steps through ``python -m dpo_engine.cli train``. Throughput
is pairs per second of training, read from each run's ``metrics.jsonl`` (``elapsed_seconds``) from the end of the
first step to the last, so process start-up, model loading and the reference pass are left out. The ratio is
printed next to the largest loss difference between the two runs (they should agree to ~1e-6). With
``--repeats`` the two contenders alternate (1, 2, 1, 2, ...) and the ratio of the median speeds is reported, so
the load other jobs put on the machine falls on both alike.

    python benchmarks/bench_ddp.py [--pairs 64] [--batch-size 8] [--steps 8] [--hidden 256] [--layers 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def pairs(n: int) -> list[dict]:
    return [{"prompt": f"Question {i}: explain why {i} + {i} = {2 * i}, " + "in words " * (i % 7),
             "chosen": f"Because adding {i} to itself doubles it. " * (1 + i % 3),
             "rejected": f"It is {2 * i + 1}, I think. " * (1 + i % 4)} for i in range(n)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train(work: Path, config: Path, processes: int, repeat: int = 0) -> list[dict]:
    """Metrics records of one run of ``config`` with ``processes`` ranks (one thread each), in its own directories."""
    tag = f"{processes}_{repeat}"
    run_dir = work / f"run_{tag}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO_ROOT), "MARGIN_LAB_HOME": str(work / f"home_{tag}"),
           "DPO_ENGINE_CACHE": str(work / f"cache_{tag}")}
    train_args = ["-m", "dpo_engine.cli", "train", str(config), "--run-dir", str(run_dir)]
    if processes == 1:
        command = [sys.executable] + train_args
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--num_cpu_threads_per_process", "1",
                   "--main_process_port", str(free_port())] + train_args
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{processes}-process run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def pairs_per_second(records: list[dict], batch_size: int) -> float:
    """Pairs trained per wall second from the end of step 1 to the end of the last step."""
    first, last = records[0], records[-1]
    return (last["step"] - first["step"]) * batch_size / (last["elapsed_seconds"] - first["elapsed_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (each of 2 ranks takes half)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each contender, alternating")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from dpo_engine.models.loading import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        work = Path(tmp)
        model = make_tiny_model(work / "model", hidden_size=args.hidden, num_layers=args.layers)
        subset = work / "pairs.jsonl"
        subset.write_text("".join(json.dumps(pair) + "\n" for pair in pairs(args.pairs)))
        config = work / "config.yaml"
        config.write_text(json.dumps({
            "model": str(model), "subset": str(subset), "device": "cpu", "batch_size": args.batch_size,
            "max_steps": args.steps, "learning_rate": 1e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0,
            "max_length": 256, "max_prompt_length": 128, "save_steps": args.steps,
        }))
        runs = {1: [], 2: []}
        for repeat in range(args.repeats):
            for processes in (1, 2):
                runs[processes].append(train(work, config, processes, repeat))
    one, two = runs[1][0], runs[2][0]
    gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two))
    speeds = {n: [pairs_per_second(records, args.batch_size) for records in runs[n]] for n in runs}
    speed_one, speed_two = statistics.median(speeds[1]), statistics.median(speeds[2])
    print(f"1 process: {speed_one:.1f} pairs/s; 2 processes: {speed_two:.1f} pairs/s (medians of "
          f"{args.repeats}: {', '.join(f'{v:.1f}' for v in speeds[1])} and {', '.join(f'{v:.1f}' for v in speeds[2])})")
    print(f"DDP 2 vs 1 process: {speed_two / speed_one:.2f}x pairs/s, max loss difference {gap:.2e} "
          f"over {len(one)} steps")


if __name__ == "__main__":
    main()
