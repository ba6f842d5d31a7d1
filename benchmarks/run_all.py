"""Run every benchmark (``make bench`` runs ``--quick``) and print each one's ratio line, then a summary.

Each benchmark runs as its own process, as one would run it by hand; its full output is streamed through.
``--only scoring,memory`` picks some; other arguments (``--model``, ``--device``) are passed on to every script.
Results are also written as JSON under ``benchmarks/results/`` (``--results-dir`` to change, ``--no-save`` to skip).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "scoring": "bench_scoring.py",
    "training": "bench_training.py",
    "generation": "bench_generation.py",
    "dashboard": "bench_dashboard.py",
    "memory": "bench_memory.py",
    "load": "bench_load.py",
    "sharded_scoring": "bench_sharded_scoring.py",
    "shared_cpu": "bench_shared_cpu.py",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--no-save", action="store_true")
    args, passthrough = parser.parse_known_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}: choose from {list(BENCHMARKS)}")

    summary, failed = [], []
    for name in names:
        cmd = [sys.executable, str(HERE / BENCHMARKS[name])] + (["--quick"] if args.quick else []) + passthrough
        if not args.no_save:
            suffix = "-quick" if args.quick else ""
            cmd += ["--json", str(Path(args.results_dir) / f"{name}{suffix}.json")]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        last = ""
        for line in process.stdout:
            print(line, end="", flush=True)
            if line.strip():
                last = line.strip()
        code = process.wait()
        elapsed = time.perf_counter() - started
        if code != 0 or not last.startswith("RATIO"):
            failed.append(name)
            summary.append(f"{name}: FAILED (exit {code}) after {elapsed:.0f} s")
        else:
            summary.append(f"{last}   [{elapsed:.0f} s]")
    print("\n=== summary")
    for line in summary:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
