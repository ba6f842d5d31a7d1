"""The Runs page's per-tick read of N runs (status, last metrics, ETA) with tags/notes (one annotations.json per run)
and without, alternated in one process: `python benchmarks/bench_runs_table.py 100`."""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

home = tempfile.mkdtemp()
os.environ["MARGIN_LAB_HOME"] = home  # before the engine reads it
from dpo_engine import progress  # noqa: E402
from dpo_engine import runs  # noqa: E402
from dpo_engine.runs.annotations import Annotations, read_annotations, write_annotations  # noqa: E402

pairs = Path(home) / "pairs.jsonl"
pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
N = int(sys.argv[1])
for i in range(N):
    run_id = runs.create_run({"model": "tiny-random", "subset": str(pairs), "max_steps": 2})
    write_annotations(runs.get_run(run_id).run_dir, Annotations(tags=("sweep:sw1", f"t{i % 5}"), notes="n"))

def tick(with_annotations):
    now = time.time()
    rows = []
    for run in runs.list_runs():
        estimate = progress.from_run_status(run.status, now)
        row = {"run": run.run_id, "last": run.last_metrics, "eta": progress.describe(estimate)}
        if with_annotations:
            row["tags"] = read_annotations(run.run_dir).tags
        rows.append(row)
    return rows

tick(True)  # warm the file cache and imports
tick(False)
times = {True: [], False: []}
for _ in range(15):
    for flag in (False, True):
        start = time.perf_counter()
        tick(flag)
        times[flag].append(time.perf_counter() - start)
med = {flag: sorted(values)[len(values) // 2] for flag, values in times.items()}
print(json.dumps({"runs": N, "median_s_without": round(med[False], 4), "median_s_with": round(med[True], 4),
                  "ratio_with_over_without": round(med[True] / med[False], 3)}))
