"""Shared helpers for the benchmark scripts: arguments, interleaved timing, machine description, result files.

Every benchmark times ours and the baseline in the same process, alternating them repeat by repeat (the order
rotates each repeat), and reports medians and the ratio. The machines these run on are shared and noisy, so the
ratio is the number to read; absolute times are only meaningful on a quiet machine or a GPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes: finishes in under 2 minutes on 2 CPU cores")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name or directory (tests: tiny-random)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (median is reported)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results to this JSON file")
    return parser


def dtypes(choice: str | None, quick: bool) -> list[str]:
    """The ``--dtype`` choice as a list: ``both`` is fp32 then bf16; unset is fp32 in quick mode, both otherwise."""
    if choice is None:
        return ["fp32"] if quick else ["fp32", "bf16"]
    return ["fp32", "bf16"] if choice == "both" else [choice]


def setup_environment() -> None:
    """Quiet, offline, deterministic-ish defaults shared by every benchmark."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def resolve_device(device: str) -> str:
    from dpo_engine.models.loading import detect_device

    return detect_device() if device == "auto" else device


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    info = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, dict]:
    """Time each contender ``repeats`` times, alternating them (order rotated each round); medians and raw times.

    ``warmup`` runs each once untimed first (lazy imports, allocator, first-call kernel selection).
    Returns ``{name: {"median": s, "times": [...], "result": last return value}}``.
    """
    names = list(contenders)
    out = {name: {"times": [], "result": None} for name in names}
    if warmup:
        for name in names:
            out[name]["result"] = contenders[name]()
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            out[name]["result"] = contenders[name]()
            out[name]["times"].append(time.perf_counter() - start)
    for name in names:
        out[name]["median"] = statistics.median(out[name]["times"])
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def table(headers: list[str], rows: list[list]) -> str:
    """A small Markdown table."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:])


def save(name: str, payload: dict, json_out: str | None) -> None:
    """Write the results (with machine and command) to ``json_out`` when asked."""
    if not json_out:
        return
    payload = {"benchmark": name, "command": command_line(), "machine": machine(), **payload}
    path = Path(json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def finish(name: str, results: dict, json_out: str | None) -> dict:
    """Save the results (``save``), print the machine, then ``results["ratio"]`` as the last line; return them."""
    save(name, results, json_out)
    print(f"machine: {machine()}")
    print(results["ratio"])
    return results
