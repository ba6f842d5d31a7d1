"""Jobs on the runs' process layer: argv generated from config dataclasses, options found without argv scanning,
finished launch subprocesses reaped (no zombies), one timestamp format."""

from __future__ import annotations

import time

import psutil
from conftest import wait_for

from dpo_engine import jobs, runs
from dpo_engine.cli import build_parser
from dpo_engine.cli.flags import config_from_args
from dpo_engine.files import read_json
from dpo_engine.runs import processes


def test_start_builds_the_argv_the_cli_parses_back_from_a_config(workspace):
    request = runs.LaunchRequest(config="/no/such/config.yaml", name="demo run", selection="dm-mul-2k")
    job_dir = jobs.start("launch", request)
    record = jobs.status(job_dir)

    assert record["argv"] == ["runs", "launch", "/no/such/config.yaml", "--name", "demo run",
                              "--selection", "dm-mul-2k"]
    parsed = build_parser().parse_args(record["argv"])
    assert config_from_args(runs.LaunchRequest, parsed, config=str(parsed.config)) == request
    assert record["options"] == {"config": "/no/such/config.yaml", "name": "demo run", "selection": "dm-mul-2k", "tags": ""}
    assert isinstance(record["created"], float) and abs(record["created"] - time.time()) < 60
    final = wait_for(lambda: (info := jobs.status(job_dir))["state"] != "running" and info, what="the job to end")
    assert final["state"] == "failed" and "not found" in final["message"]  # the CLI's own error, exit 2

    stop = jobs.start("stop", runs.StopRequest(run_id="no-such-run", timeout=5))
    assert jobs.status(stop)["argv"] == ["runs", "stop", "no-such-run", "--timeout", "5"]


def test_find_matches_options_of_config_and_argv_jobs(workspace):
    older = jobs.start("score", ["score", "/no/a.jsonl", "--out", "/tmp/a.parquet"])
    newer = jobs.start("score", ["score", "/no/b.jsonl", "--out", "/tmp/b.parquet"])
    assert jobs.find("score", out="/tmp/a.parquet")["dir"] == str(older)
    assert jobs.find("score", out="/tmp/b.parquet")["dir"] == str(newer)
    assert jobs.find("score", out="/tmp/c.parquet") is None


def test_finished_launch_subprocesses_are_reaped_without_polling(workspace):
    """Nothing here polls the jobs (no status, no list_jobs): the reaper threads alone must collect them."""
    started = [jobs.start("launch", runs.LaunchRequest(config=f"/no/such/{k}.yaml")) for k in range(4)]
    pids = [read_json(job_dir / "job.json")["pid"] for job_dir in started]
    wait_for(lambda: all((job_dir / "exit.json").exists() for job_dir in started), what="the jobs to record their exit")
    # A zombie still has its /proc entry: a pid that no longer exists was collected by its parent, this process.
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in pids), what="the exited jobs to be reaped")

    zombies = [child.pid for child in psutil.Process().children() if child.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []
    assert not set(pids) & set(processes.children)
