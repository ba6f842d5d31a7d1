"""Training across processes on the CPU: DDP over gloo, two ranks started by accelerate launch (torchrun).

The two process tests start real ranks on the tiny model: one through ``accelerate launch -m dpo_engine.cli train``
(compared number for number with one process), one through the run worker (``num_processes: 2``), killed and
resumed. The rest are the pure pieces: shards, batch split, the DataParallel refusal, the launch command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from dpo_engine import runs
from dpo_engine.errors import ConfigError
from dpo_engine.files import read_jsonl, write_part
from dpo_engine.models.logp_cache import LOGP_COLUMNS
from dpo_engine.runs.ranks import _free_port, accelerate_command
from dpo_engine.training.config import TrainConfig
from dpo_engine.training.distributed import World, per_device_batch, rank_device, refuse_data_parallel, shard
from dpo_engine.training.pair_rewards import merge_rank_parts
from dpo_engine.training.trainer import train
from tests.test_runs import wait_for


def weighted_pairs(n: int) -> list[dict]:
    """``n`` small pairs of different lengths, each with a loss weight ``w`` (0.5, 1.5 or 2.5)."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
            "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
            "rejected": [{"role": "assistant", "content": f"No idea, maybe {i}{'!' * i}."}],
            "w": 0.5 + i % 3,
        }
        for i in range(n)
    ]


def config_values(tmp_path: Path, model_dir: Path, n_pairs: int, **overrides) -> dict:
    subset = tmp_path / "pairs.jsonl"
    subset.write_text("".join(json.dumps(pair) + "\n" for pair in weighted_pairs(n_pairs)))
    return dict(model=str(model_dir), subset=str(subset), learning_rate=1e-2, lr_scheduler="constant",
                warmup_ratio=0.0, max_length=256, max_prompt_length=128, device="cpu", batch_size=4, **overrides)


@pytest.fixture
def rank_environment(monkeypatch):
    """One thread per rank, and nothing of a crashed test left running."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    before = {process.pid for process in psutil.Process().children(recursive=True)}
    yield
    for process in psutil.Process().children(recursive=True):
        if process.pid not in before:
            process.kill()


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path, tiny_model_dir, monkeypatch,
                                                               rank_environment):
    # Weighted pairs: each rank's loss is normalised by the whole batch's weight sum, not its half's.
    values = config_values(tmp_path, tiny_model_dir, 12, max_steps=3, weight_column="w")
    config_yaml = tmp_path / "config.yaml"
    config_yaml.write_text(yaml.safe_dump(values))
    monkeypatch.setenv("DPO_ENGINE_CACHE", str(tmp_path / "cache_one"))
    one = train(TrainConfig.from_dict(values), tmp_path / "one")

    monkeypatch.setenv("DPO_ENGINE_CACHE", str(tmp_path / "cache_two"))  # the reference pass is sharded anew
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--main_process_port", str(_free_port()), "-m", "dpo_engine.cli", "train", str(config_yaml),
         "--run-dir", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]

    listed = runs.list_runs()
    assert len(listed) == 1 and listed[0].state == "completed"  # one run, registered once, by rank 0
    assert listed[0].run_dir == tmp_path / "two"
    one_metrics, two_metrics = list(read_jsonl(tmp_path / "one/metrics.jsonl")), list(read_jsonl(tmp_path / "two/metrics.jsonl"))
    assert [m["step"] for m in two_metrics] == [1, 2, 3]
    for key in ("loss", "rewards/margins", "rewards/chosen", "grad_norm"):
        np.testing.assert_allclose([m[key] for m in two_metrics], [m[key] for m in one_metrics], atol=1e-4, err_msg=key)
    assert two_metrics[-1]["rewards/margins"] > 0.1  # it trained: the comparison is not of two zeros
    rewards_one = pd.read_parquet(one["pair_rewards"])
    rewards_two = pd.read_parquet(tmp_path / "two/pair_rewards.parquet")
    assert list(rewards_two.pair_id) == list(rewards_one.pair_id)
    for column in ("policy_chosen_logps", "ref_rejected_logps", "implicit_margin"):
        np.testing.assert_allclose(rewards_two[column], rewards_one[column], atol=1e-4, err_msg=column)
    (entry,) = (tmp_path / "cache_two/logps").iterdir()
    assert not list(entry.glob("rank-*"))  # both ranks' parts merged into the cache entry
    assert len(pd.concat([pd.read_parquet(part) for part in entry.glob("part-*.parquet")]).pair_id.unique()) == 12
    checkpoint = tmp_path / "two/checkpoints/checkpoint-3"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()


def rank_process(run_id: str, rank: int) -> psutil.Process | None:
    """The live process of one rank of a run (a grandchild of its worker, through accelerate and torchrun)."""
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "dpo_engine.runs.ranks" in " ".join(process.info["cmdline"] or []) and \
                    str(runs.get_run(run_id).run_dir) in process.info["cmdline"] and \
                    process.environ().get("RANK") == str(rank):
                return process
        except psutil.Error:
            continue
    return None


def test_a_killed_rank_fails_the_run_and_resume_continues_it(tmp_path, tiny_model_dir, monkeypatch,
                                                             rank_environment):
    monkeypatch.setenv("DPO_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(runs.HEARTBEAT_INTERVAL_ENV, "0.1")
    run_id = runs.create_run(config_values(tmp_path, tiny_model_dir, 16, max_steps=24, save_steps=3,
                                           num_processes=2))
    runs.launch(run_id)
    wait_for(lambda: (runs.get_run(run_id).status.get("step") or 0) >= 4, 180, "four steps")
    rank_process(run_id, 1).send_signal(signal.SIGKILL)

    failed = wait_for(lambda: (info := runs.get_run(run_id)).state == "failed" and info, 60, "the failed state")
    assert "training processes ended" in failed.message, failed.message
    assert rank_process(run_id, 0) is None  # the other rank went with it
    kept = sorted(int(path.name.split("-")[1]) for path in failed.checkpoints_dir.iterdir())
    assert kept and kept[-1] < 24
    first_record = next(read_jsonl(failed.run_dir / "metrics.jsonl"))

    runs.resume(run_id)
    final = wait_for(lambda: (info := runs.get_run(run_id)).state not in runs.ACTIVE_STATES and info, 180, "the end")
    assert final.state == "completed" and final.step == 24, final.message + runs.tail_log(run_id)
    steps = [record["step"] for record in read_jsonl(final.run_dir / "metrics.jsonl")]
    assert steps == list(range(1, 25))  # cut back to the checkpoint, then continued: no gap, no duplicate
    assert next(read_jsonl(final.run_dir / "metrics.jsonl")) == first_record  # kept, not trained again
    assert len(runs.list_runs()) == 1


def test_a_shard_deals_the_longest_pairs_out_in_turn():
    lengths = [5, 50, 10, 40, 20, 30]
    assert shard(lengths, World(rank=0, size=2)) == [1, 5, 2]
    assert shard(lengths, World(rank=1, size=2)) == [3, 4, 0]
    assert shard(lengths, World()) == [1, 3, 5, 4, 2, 0]


def test_the_global_batch_is_split_evenly_or_refused(tmp_path):
    assert per_device_batch(8, World(size=2)) == 4
    with pytest.raises(ConfigError, match="batch_size"):
        per_device_batch(6, World(size=4))
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig.from_dict({"batch_size": 6, "num_processes": 4})
    with pytest.raises(ConfigError, match="num_processes"):
        TrainConfig.from_dict({"num_processes": 0})
    with pytest.raises(ConfigError, match="accelerate_config"):
        TrainConfig.from_dict({"num_processes": 2, "accelerate_config": str(tmp_path / "missing.yaml")})


def test_one_process_with_several_gpus_is_refused_instead_of_data_parallel():
    with pytest.raises(ConfigError, match="sees 4 CUDA GPUs.*num_processes: 4"):
        refuse_data_parallel(4, World())
    refuse_data_parallel(1, World())
    refuse_data_parallel(4, World(rank=1, local_rank=1, size=4))  # one GPU per rank under accelerate launch
    assert rank_device("cuda", World(rank=3, local_rank=1, size=4)) == "cuda:1"
    assert rank_device("cpu", World(rank=1, local_rank=1, size=2)) == "cpu"


def test_the_launch_command_passes_an_accelerate_config_through(tmp_path):
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("distributed_type: FSDP\n")
    command = accelerate_command({"num_processes": 4, "accelerate_config": str(fsdp)}, tmp_path / "run",
                                 resume=True, device="cuda", port=29123)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--config_file") + 1] == str(fsdp) and "--multi_gpu" not in command
    assert command[command.index("--num_processes") + 1] == "4"
    assert command[-4:] == ["-m", "dpo_engine.runs.ranks", str(tmp_path / "run"), "--resume"]
    cpu = accelerate_command({"num_processes": 2}, tmp_path / "run", resume=False, device="cpu", port=29124)
    assert "--multi_gpu" in cpu and "--num_cpu_threads_per_process" in cpu and "--cpu" not in cpu


def test_rank_parts_are_merged_into_the_cache_entry(tmp_path):
    def part(ids):
        return pd.DataFrame({"pair_id": ids, "chosen_logps": np.float32(-1.0), "rejected_logps": np.float32(-2.0),
                             "chosen_tokens": 3, "rejected_tokens": 4})[LOGP_COLUMNS]

    write_part(tmp_path, 0, part(["a", "b"]))
    write_part(tmp_path / "rank-0", 0, part(["c"]))
    write_part(tmp_path / "rank-1", 0, part(["d", "e"]))
    assert merge_rank_parts(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000000.parquet", "part-00000002.parquet",
                                                          "part-00000003.parquet"]
    merged = pd.concat([pd.read_parquet(p) for p in sorted(tmp_path.iterdir())])
    assert sorted(merged.pair_id) == ["a", "b", "c", "d", "e"]
    assert os.listdir(tmp_path) and not list(tmp_path.glob("rank-*"))
