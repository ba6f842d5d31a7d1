"""Streaming validation: ``dpo-engine validate`` on 1 million small rows, time and peak memory, new vs old loader.

    python benchmarks/bench_validate.py [--rows 1000000] [--old-commit 4031bca]

Writes ``rows`` small plain-string pairs to a temporary jsonl, then in separate child processes (so each peak
RSS is its own) checks it with ``dpo_engine.data.validate_source`` (what ``validate`` runs now) and with the
old ``load_pairs`` from ``--old-commit`` (what ``validate`` ran before: the whole file, every row dict and the
DataFrame in memory). Prints seconds, peak RSS, RSS / file size, and the old/new ratios. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_rows(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(rows):
            handle.write(json.dumps({"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}.", "rejected": f"{i}."}) + "\n")


def child(which: str, path: str, old_module: str | None) -> None:
    """Run one contender and print {seconds, peak_rss_mb, n_pairs} as JSON."""
    started = time.perf_counter()
    if which == "new":
        from dpo_engine.data import validate_source

        n_pairs = validate_source(path).report.n_pairs
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("old_pairs", old_module)
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_pairs"] = old  # dataclasses look their module up there
        spec.loader.exec_module(old)
        n_pairs = old.load_pairs(path).report.n_pairs
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "n_pairs": n_pairs}))


def run_child(which: str, path: Path, old_module: Path | None) -> dict:
    command = [sys.executable, __file__, "--child", which, "--file", str(path)]
    if old_module is not None:
        command += ["--old-module", str(old_module)]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--old-commit", default="4031bca", help="commit whose data/pairs.py is the old loader")
    parser.add_argument("--child", choices=["new", "old"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--old-module", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.file, args.old_module)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        write_rows(data, args.rows)
        old_module = Path(tmp) / "old_pairs.py"
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{args.old_commit}:dpo_engine/data/pairs.py"],
                                check=True, capture_output=True, text=True).stdout
        old_module.write_text(source, encoding="utf-8")
        size_mb = data.stat().st_size / 2**20
        print(f"{args.rows:,} rows, file {size_mb:.1f} MiB")
        results = {"new": run_child("new", data, None), "old": run_child("old", data, old_module)}
        for name, result in results.items():
            print(f"{name}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MiB "
                  f"({result['peak_rss_mb'] / size_mb:.1f}x the file), {result['n_pairs']:,} pairs")
        old, new = results["old"], results["new"]
        print(f"old/new: time {old['seconds'] / new['seconds']:.2f}x, memory {old['peak_rss_mb'] / new['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
