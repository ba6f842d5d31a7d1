"""Sharded scoring: shares of the pairs by length, rank-named cache parts, real worker processes, resume per shard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dpo_engine.cli import main
from dpo_engine.cli import score as score_cli
from dpo_engine.cli.flags import config_to_argv
from dpo_engine.cli.score_shards import ShardFailed, score_in_processes, shards_dir, worker_config
from dpo_engine.data.pairs import load_pairs
from dpo_engine.errors import ConfigError
from dpo_engine.margins import scoring
from dpo_engine.margins.config import ScoreConfig
from dpo_engine.margins.table import load_margins_table
from dpo_engine.models.logp_cache import MissingLogps, read_cached_logps
from dpo_engine.models.shards import Shard, shard_device, shard_from_env, shard_positions
from tests.test_runs import wait_for

REPO = Path(__file__).resolve().parents[1]
LENGTHS = dict(max_length=128, max_prompt_length=64)
NUMERIC = ["external_margin", "implicit_margin", "policy_chosen_logps", "policy_rejected_logps",
           "ref_chosen_logps", "ref_rejected_logps", "dm_add", "dm_mul", "bees"]


def make_pairs(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        prompt = f"Question {i}: what is {i} plus {i}?" + " Think." * (i % 5)
        rows.append({"id": f"p{i}", "prompt": prompt, "chosen": f"It is {2 * i}." + " Indeed." * (i % 7),
                     "rejected": f"Maybe {i}?", "score_chosen": float(5 + i % 4), "score_rejected": 3.0})
    return pd.DataFrame(rows)


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text(make_pairs(24).to_json(orient="records", lines=True))
    return path


def use_cache(monkeypatch, directory: Path) -> Path:
    """Point this process and the workers it starts at their own log-prob cache."""
    monkeypatch.setenv("DPO_ENGINE_CACHE", str(directory))
    return directory


def score_args(pairs_file: Path, out: Path, *extra: str) -> list[str]:
    return ["score", str(pairs_file), "--out", str(out), "--max-length", "128", "--max-prompt-length", "64",
            "--token-budget", "256", *extra]


def parts(cache: Path) -> dict[str, list[str]]:
    """Every cache part under ``cache``, by file, with the pair ids it holds."""
    return {str(path.relative_to(cache)): pd.read_parquet(path).pair_id.tolist()
            for path in sorted((cache / "logps").glob("*/part-*.parquet"))}


# ---- which pairs a process scores ---------------------------------------------------------------------------------


def test_shard_positions_deal_longest_first_in_snake_order():
    lengths = [5, 90, 40, 70, 10, 60, 30]
    shares = [shard_positions(lengths, Shard(rank, 2)) for rank in range(2)]
    # sorted: 90(1) 70(3) 60(5) 40(2) 30(6) 10(4) 5(0); snake: r0 r1 r1 r0 r0 r1 r1
    assert shares == [[1, 2, 6], [3, 5, 4, 0]]
    assert [sum(lengths[i] for i in share) for share in shares] == [160, 145]


def test_shard_positions_cover_every_pair_once_with_balanced_work():
    lengths = np.random.default_rng(0).integers(20, 2000, 1001).tolist()
    shares = [shard_positions(lengths, Shard(rank, 3)) for rank in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(1001))
    work = [sum(lengths[i] for i in share) for share in shares]
    assert max(work) - min(work) <= max(lengths)  # within about one pair, not sorted blocks
    assert shard_positions(lengths, Shard(1, 3)) == shares[1]  # deterministic: a resumed job gets the same share


def test_shard_from_env_reads_what_launchers_set():
    assert shard_from_env({}) is None and shard_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert shard_from_env({"WORLD_SIZE": "2", "RANK": "1"}) == Shard(1, 2, 1)
    assert shard_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Shard(3, 4, 1)
    assert (shard_device("cuda", Shard(3, 4, 1)), shard_device("cpu", Shard(1, 2)), shard_device("cuda", None)) == \
        ("cuda:1", "cpu", "cuda")


def test_score_config_checks_num_processes(pairs_file, tmp_path):
    with pytest.raises(ConfigError, match="num_processes"):
        ScoreConfig(pairs=str(pairs_file), out=str(tmp_path / "m.parquet"), num_processes=0).validate()
    config = ScoreConfig(pairs=str(pairs_file), out=str(tmp_path / "m.parquet"), num_processes=3)
    worker = worker_config(config, "/adapters/proxy", 2)
    assert (worker.implicit, worker.policy, worker.external, worker.num_processes) == ("policy", "/adapters/proxy",
                                                                                       "none", 1)
    assert worker.progress_file == str(tmp_path / "m-shards" / "rank2.progress.json")


# ---- shards in one cache ------------------------------------------------------------------------------------------


def test_two_shards_fill_one_cache_with_rank_named_parts(pairs_file, tmp_path, monkeypatch, perturbed_adapter):
    cache = use_cache(monkeypatch, tmp_path / "cache")
    pairs = load_pairs(pairs_file).pairs
    for rank in range(2):
        assert scoring.implicit_margins(pairs, str(perturbed_adapter), shard=Shard(rank, 2), **LENGTHS) is None
    written = parts(cache)
    assert sorted(Path(name).name[:9] for name in written) == ["part-r000", "part-r000", "part-r001", "part-r001"]
    merged = scoring.merged_implicit_margins(pairs, str(perturbed_adapter), **LENGTHS)

    use_cache(monkeypatch, tmp_path / "single")
    single = scoring.implicit_margins(pairs, str(perturbed_adapter), **LENGTHS)
    pd.testing.assert_frame_equal(merged, single, atol=1e-5, rtol=0)
    assert merged.pair_id.tolist() == pairs.pair_id.tolist()


def test_the_merge_names_an_unfinished_share(pairs_file, tmp_path, monkeypatch, perturbed_adapter):
    use_cache(monkeypatch, tmp_path / "cache")
    pairs = load_pairs(pairs_file).pairs
    scoring.implicit_margins(pairs, str(perturbed_adapter), shard=Shard(0, 3), **LENGTHS)
    with pytest.raises(MissingLogps, match=r"16 of 24 pairs have no log-probs in .*running the job again"):
        scoring.merged_implicit_margins(pairs, str(perturbed_adapter), **LENGTHS)
    with pytest.raises(MissingLogps):
        read_cached_logps(tmp_path / "nowhere", ["a"])


# ---- the command, with real worker processes ----------------------------------------------------------------------


def test_two_process_scoring_gives_the_one_process_table(pairs_file, tmp_path, monkeypatch, tiny_model_dir):
    """--num-processes 2 trains the warm-up once, shards both passes over two workers, and merges: same table."""
    use_cache(monkeypatch, tmp_path / "cache2")
    sharded_out, progress = tmp_path / "sharded.parquet", tmp_path / "progress.json"
    reports = []
    update = score_cli._Progress.update
    monkeypatch.setattr(score_cli._Progress, "update",
                        lambda self, done, total: reports.append((self.name, done, total)) or update(self, done, total))
    warmup = ["--implicit", "warmup", "--model", str(tiny_model_dir), "--seed-size", "6", "--warmup-epochs", "1",
              "--warmup-lr", "0.05",
              "--warmup-dir", str(tmp_path / "warmup")]
    assert main(score_args(pairs_file, sharded_out, *warmup, "--num-processes", "2",
                           "--progress-file", str(progress))) == 0
    written = parts(tmp_path / "cache2")
    sharded_keys = {Path(name).parent.name for name in written if Path(name).name.startswith("part-r")}
    assert len(sharded_keys) == 2  # the policy and the reference pass, each by both ranks
    assert {Path(name).name[:9] for name in written if Path(name).parent.name in sharded_keys} == {"part-r000",
                                                                                                  "part-r001"}
    assert not (tmp_path / "sharded-shards").exists()  # the workers' logs go once they succeed

    use_cache(monkeypatch, tmp_path / "cache1")
    single_out = tmp_path / "single.parquet"
    assert main(score_args(pairs_file, single_out, *warmup)) == 0  # reuses the same proxy, scores in one process
    sharded, meta = load_margins_table(sharded_out)
    single, _ = load_margins_table(single_out)
    assert sharded.pair_id.tolist() == single.pair_id.tolist() and len(sharded) == 24
    np.testing.assert_allclose(sharded[NUMERIC].to_numpy(float), single[NUMERIC].to_numpy(float), atol=1e-5, rtol=0)
    assert (sharded.in_warmup == single.in_warmup).all() and np.abs(sharded.implicit_margin).max() > 0
    assert meta["implicit"]["num_processes"] == 2
    assert '"state": "completed"' in progress.read_text()
    passes = [(done, total) for name, done, total in reports if "2 processes" in name]
    assert passes[-1][0] == passes[-1][1] == 2 * 24  # both shares' progress, policy and reference pass: all done


def test_resume_after_a_killed_shard_redoes_only_its_missing_pairs(pairs_file, tmp_path, monkeypatch,
                                                                   perturbed_adapter):
    cache = use_cache(monkeypatch, tmp_path / "cache")
    pairs = load_pairs(pairs_file).pairs

    class Killed(Exception):
        pass

    def die_midway(done, total):
        if done >= 4 and done < total // 2:  # shard 1 dies inside its policy pass, having written a part
            raise Killed

    scoring.implicit_margins(pairs, str(perturbed_adapter), shard=Shard(0, 2), **LENGTHS)
    with pytest.raises(Killed):
        scoring.implicit_margins(pairs, str(perturbed_adapter), shard=Shard(1, 2), batch_size=2,
                                 progress=die_midway, **LENGTHS)
    before = parts(cache)
    share_one = set(pairs.pair_id.to_numpy()[shard_positions_of(pairs, perturbed_adapter, 1)])

    args = score_args(pairs_file, tmp_path / "resumed.parquet", "--implicit", "policy", "--policy",
                      str(perturbed_adapter), "--num-processes", "2")
    assert main(args) == 0
    new = {name: ids for name, ids in parts(cache).items() if name not in before}
    assert new and all(Path(name).name.startswith("part-r001-") for name in new)  # shard 0 had finished
    for cache_key in {Path(name).parent.name for name in parts(cache)}:
        old_ids = {i for name, ids in before.items() if Path(name).parent.name == cache_key for i in ids}
        new_ids = [i for name, ids in new.items() if Path(name).parent.name == cache_key for i in ids]
        assert sorted(new_ids) == sorted(share_one - old_ids)  # only shard 1's missing pairs, each once
    assert sum(len(ids) for name, ids in before.items() if "part-r001-" in name) == 4  # what shard 1 had kept

    use_cache(monkeypatch, tmp_path / "fresh")
    assert main(score_args(pairs_file, tmp_path / "single.parquet", "--implicit", "policy", "--policy",
                           str(perturbed_adapter))) == 0
    resumed, single = load_margins_table(tmp_path / "resumed.parquet")[0], load_margins_table(tmp_path / "single.parquet")[0]
    np.testing.assert_allclose(resumed[NUMERIC].to_numpy(float), single[NUMERIC].to_numpy(float), atol=1e-5, rtol=0)


def shard_positions_of(pairs: pd.DataFrame, adapter: Path, rank: int) -> list[int]:
    """Shard ``rank`` of 2's positions, from the pairs' row tokens under the adapter's model."""
    from dpo_engine.models.loading import load_model
    from dpo_engine.models.logps import row_tokens

    model, tokenizer = load_model(str(adapter), dtype="fp32", device="cpu")
    encoded = scoring.encode_frame(pairs, tokenizer, **LENGTHS)
    return shard_positions([row_tokens(model, pair) for pair in encoded], Shard(rank, 2))


def test_a_failing_worker_is_reported_with_its_log(pairs_file, tmp_path, monkeypatch):
    use_cache(monkeypatch, tmp_path / "cache")
    config = ScoreConfig(pairs=str(pairs_file), out=str(tmp_path / "m.parquet"), num_processes=2)
    log = shards_dir(config) / "rank1.log"

    def own_share(shard, progress):  # this process's share "works"; the worker's model does not exist
        assert shard == Shard(0, 2, 0)
        progress(3, 12)
        wait_for(lambda: "error:" in (log.read_text() if log.exists() else ""), timeout=120, what="the worker to fail")

    with pytest.raises(ShardFailed, match=r"scoring process 1 exited with code 2; running the job again resumes") as err:
        score_in_processes(config, str(tmp_path / "no-such-adapter"), lambda done, total: None, own_share)
    assert "no-such-adapter" in str(err.value).split("End of")[1]  # the worker's own message, from its log


def test_a_failing_share_fails_the_command(pairs_file, tmp_path, monkeypatch, capsys):
    use_cache(monkeypatch, tmp_path / "cache")
    args = score_args(pairs_file, tmp_path / "m.parquet", "--implicit", "policy", "--policy",
                      str(tmp_path / "no-such-adapter"), "--num-processes", "2")
    assert main(args) == 2
    assert "no-such-adapter" in capsys.readouterr().err


def test_accelerate_launch_scores_one_table(pairs_file, tmp_path, perturbed_adapter):
    """`accelerate launch --multi_gpu --num_processes 2 -m dpo_engine.cli score` on the CPU (gloo): two ranks, one
    table, the same as one process's."""
    env = {**os.environ, "DPO_ENGINE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dpo_engine.cli"]
    args = score_args(pairs_file, tmp_path / "launched.parquet", "--implicit", "policy", "--policy",
                      str(perturbed_adapter))
    done = subprocess.run(launcher + args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote 24 rows") == 1  # rank 0 writes the table
    env["DPO_ENGINE_CACHE"] = str(tmp_path / "single-cache")
    single = subprocess.run([sys.executable, "-m", "dpo_engine.cli", *score_args(
        pairs_file, tmp_path / "single.parquet", "--implicit", "policy", "--policy", str(perturbed_adapter))],
        env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    launched = load_margins_table(tmp_path / "launched.parquet")[0]
    reference = load_margins_table(tmp_path / "single.parquet")[0]
    np.testing.assert_allclose(launched[NUMERIC].to_numpy(float), reference[NUMERIC].to_numpy(float), atol=1e-5, rtol=0)
    assert {Path(name).name[:9] for name in parts(tmp_path / "cache")} == {"part-r000", "part-r001"}
    assert "waiting" not in done.stdout


# ---- the dashboard's scoring form ---------------------------------------------------------------------------------


def test_the_scoring_form_offers_cpu_processes_as_an_advanced_option(tmp_path, monkeypatch):
    from dpo_engine import jobs
    from tests.test_dashboard_pages import app

    started = []
    monkeypatch.setattr(jobs, "start", lambda kind, config, **_: started.append((kind, config)) or "job")
    own = tmp_path / "own.jsonl"
    own.write_text(make_pairs(6).to_json(orient="records", lines=True))
    at = app("views/data.py")
    at.radio[0].set_value("Path or Hub dataset").run()
    at.text_input[0].set_value(str(own)).run()
    at.switch_page("views/margins.py")
    at.run()
    (processes,) = [item for item in at.number_input if item.label == "CPU processes"]
    assert processes.value == 1 and any(expander.label == "Advanced" for expander in at.expander)
    processes.set_value(2)
    next(button for button in at.get("form_submit_button") if button.label == "Review margins job").click().run()
    next(button for button in at.button if button.label == "Compute margins").click().run()
    assert not at.exception, [error.message for error in at.exception]
    ((kind, config),) = started
    assert kind == "score" and config.num_processes == 2
    assert config_to_argv(config)[-2:] == ["--num-processes", "2"]


def test_the_sharded_scoring_benchmark_runs_quick(tmp_path):
    from tests.test_benchmarks import run_script

    last, result = run_script("bench_sharded_scoring.py", ["--quick", "--pairs", "8", "--no-control"], tmp_path)
    assert last.startswith("RATIO sharded_scoring: 2 single-thread processes are ") and result["ratio"] == last
    assert result["max_abs_diff"] <= 1e-5 and set(result["seconds"]) == {"1 process", "2 processes"}
