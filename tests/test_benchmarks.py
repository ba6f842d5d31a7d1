"""Each benchmark script runs in ``--quick`` mode on the tiny model and ends with its ratio line.

Correctness only: no timing is asserted (the machines are shared and noisy). The scoring benchmark itself exits
non-zero when ours, the naive loop and TRL disagree on the fp32 log-probs, so a pass here also checks that.
The generation benchmark runs through ``run_all.py`` (one process start less for the suite).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "benchmarks"
TINY = ["--quick", "--model", "tiny-random"]

CASES = {
    "scoring": ("bench_scoring.py", TINY + ["--pairs", "4", "--repeats", "1", "--max-length", "256"]),
    "memory": ("bench_memory.py", TINY + ["--pairs", "4", "--max-length", "256"]),
    "training": ("bench_training.py", TINY + ["--pairs", "4", "--batch-size", "2", "--max-length", "1024"]),
    "scale": ("bench_scale.py", TINY + ["--sizes", "10,20", "--max-length", "128"]),
}


def run_script(script: str, args: list[str], tmp_path: Path, timeout: float = 900) -> tuple[str, dict]:
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(BENCH / script), *args, "--json", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return lines[-1], json.loads(out.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_quick_mode_runs_on_the_tiny_model(name, tmp_path):
    script, args = CASES[name]
    last, result = run_script(script, args, tmp_path)
    assert last.startswith(f"RATIO {name}"), last
    assert result["benchmark"] == name and result["ratio"] == last
    assert result["machine"]["cores"] >= 1 and result["command"].startswith(f"python benchmarks/{script}")
    if name == "scoring":
        # The three contenders computed the same fp32 log-probs (the script checks rtol 1e-4 + atol 1e-3).
        assert set(result["fp32"]) == {"ours", "TRL precompute", "naive loop", "ours, reference cached"}
        assert all(entry["max_abs_diff"] < 1e-2 for entry in result["fp32"].values())
        work = result["multiply_adds"]["fp32"]
        assert work["naive"] > work["ours"] > 0  # the naive loop computes prompts twice and logits everywhere
    if name == "training":
        assert result["fp32"]["max_loss_gap"] < 1e-3  # loss curves of ours and TRL agree step by step
    if name == "memory":
        assert result["runs"]["ours"]["peak_rss_mb"] > 0
    if name == "scale":  # every size timed fresh, cached and with the free forward
        assert all(set(entry["seconds"]) == {"fresh", "cached", "free forward"} for entry in result["sizes"].values())
        assert 0 < result["cached_share"] < 1 and result["overhead_ms_per_pair"] > 0


@pytest.mark.browser
def test_dashboard_benchmark_quick_on_a_small_table(tmp_path):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium: run `make browser`")
    last, result = run_script("bench_dashboard.py", ["--quick", "--pairs", "300", "--repeats", "1", "--no-baseline"],
                              tmp_path)
    assert last.startswith("RATIO dashboard"), last
    assert result["ours"]["first_render_s"] > 0 and result["ours"]["selection_update_s"] > 0
    assert result["ours"]["box_update_s"] > 0 and result["ours"]["box_chart_kept"]  # a box does not redraw the chart
    assert result["settings"]["pairs"] == 300


def test_load_benchmark_protocol_sessions_each_see_their_own_selection(tmp_path):
    """Two protocol sessions (no browser) on the served dashboard: each moves its slider, the server applies it
    (fewer pairs selected than the 300), and the two end in the states their own changes made."""
    last, result = run_script("bench_load.py", ["--quick", "--clients", "protocol", "--pairs", "300"], tmp_path)
    assert last.startswith("RATIO load clients=protocol sessions=2 changes=2"), last
    sessions = result["sessions"]
    assert result["isolated"] and [session["group"] for session in sessions] == [0, 1]
    assert all(0 < int(session["count"].replace(",", "")) < 300 for session in sessions)
    lows = [float(session["slider"].split()[0]) for session in sessions]
    assert lows[1] > lows[0]  # the odd session made three changes more
    assert all(len(session["seconds"]) == 2 and min(session["seconds"]) > 0 for session in sessions)


def test_run_all_passes_arguments_on_and_summarises(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--only", "generation", "--results-dir", str(tmp_path), *TINY,
         "--prompts", "2", "--batch-size", "2", "--max-new-tokens", "4", "--repeats", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "=== summary" in done.stdout and "RATIO generation" in done.stdout.split("=== summary")[1]
    generation = json.loads((tmp_path / "generation-quick.json").read_text())
    assert generation["benchmark"] == "generation" and generation["ratio"].startswith("RATIO generation")
    bad = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--only", "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown benchmark" in bad.stderr


def test_scoring_work_count_by_hand():
    """The multiply-add count behind the scoring benchmark's 'ratio a compute-bound machine allows' line."""
    from types import SimpleNamespace

    sys.path.insert(0, str(BENCH))
    from bench_scoring import multiply_adds

    config = SimpleNamespace(hidden_size=4, num_attention_heads=2, num_key_value_heads=1, head_dim=2,
                             intermediate_size=8, num_hidden_layers=3, vocab_size=10)
    pair = SimpleNamespace(prompt_ids=[1, 2], chosen_ids=[3, 4, 5], rejected_ids=[6])
    # Per token: 3 layers x (4 x (2x2x2 + 2x1x2) + 3 x 4 x 8) = 432 in the body; the head 4 x 10 = 40.
    # Naive: (2 + 3) + (2 + 1) tokens, body and head each. Ours: packed (the cheaper layout here), 6 tokens once,
    # head at 3 positions (the last prompt token, 2 chosen tokens but the last; the 1-token rejected adds none).
    work = multiply_adds(SimpleNamespace(config=config), [pair])
    assert work == {"naive": 8 * (432 + 40), "ours": 6 * 432 + 3 * 40}


GPU_BOX_LACKS = ("datasets", "trl", "gguf", "pandas")  # the GPU machine has torch, transformers, peft, accelerate


def test_gpu_check_quick_on_cpu_runs_every_section_without_what_the_gpu_box_lacks(tmp_path):
    out = tmp_path / "gpu_check.json"
    script = BENCH / "gpu_check.py"
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{str(script)!r}, '--device', 'cpu', '--quick', '--out', {str(out)!r}]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        f"print('IMPORTED', sorted(name for name in {GPU_BOX_LACKS!r} if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "IMPORTED []"
    result = json.loads(out.read_text())
    assert [entry["model"] for entry in result["scoring"]] == ["tiny", "tiny"]
    assert all(entry["relative_difference"] < 1e-4 for entry in result["scoring"])  # ours = plain transformers
    assert result["fused_attention"]["flex"]["attention_max_abs_diff"] < 1e-4
    assert result["fused_attention"]["flex"]["logps_relative_difference"] < 1e-4
    training = result["training"]
    losses = {training[label]["loss"] for label in ("ours", "ours, checkpointing", "plain transformers")}
    assert max(losses) - min(losses) < 1e-4  # the same first step, however computed
    assert training["ours, checkpointing"]["estimate"]["activations"] < training["ours"]["estimate"]["activations"]
    assert result["generation"]["ours_tokens_per_s"] > 0 and result["generation"]["slots"] == 4
