"""The iterative-DPO loop: rounds of policy -> generate -> score -> pairs -> margins -> select -> train -> eval.

`run_loop` walks the rounds in order and runs each step whose file (`store.STEP_FILES`) is missing, so a loop
killed anywhere restarts at the step where it stopped, and finished steps are never redone. A step writes its
file last and atomically. Training goes through the runs queue in a detached worker (`engine.train_until_done`):
a loop killed while training finds the same run, still going or resumable, when it starts again.

Implicit margins are the current policy's (the adapter trained in the previous round) against its reference
(the base it was trained on). In round 1 the policy is the base model itself, so every implicit margin is 0 and
DM-MUL ranks by the external margin alone (the paper does not say how it obtains implicit margins online).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.files import append_jsonl, atomic_write_json, atomic_write_text, read_json, read_jsonl
from dpo_engine.job_directory import check_same_config, exclusive, set_status
from dpo_engine.rounds import engine
from dpo_engine.rounds.config import RoundsConfig
from dpo_engine.rounds.pairs import build_pairs
from dpo_engine.rounds.store import (
    CONFIG_FILE,
    EVENTS_FILE,
    LOCK_FILE,
    STEP_FILES,
    STEPS,
    loop_dir,
    round_dir,
)

Report = Callable[[str, int, int], None]  # (stage, done, total)


def run_loop(config: RoundsConfig, report: Report | None = None) -> Path:
    """Run (or resume) the loop ``config.name`` to its last round; return its directory.

    ``config`` must match the one the loop started with, except ``rounds``, which may grow (to add rounds).
    Raises ``ConfigError`` on a bad or changed field, ``UserError`` when another process runs this loop.
    """
    config.validate()
    directory = loop_dir(config.name)
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive(directory, LOCK_FILE, "loop"):
        check_same_config(directory, config.to_dict(), "loop", may_change=("rounds",))
        atomic_write_json(directory / CONFIG_FILE, config.to_dict())
        set_status(directory, state="running", pid=os.getpid(), message="starting")
        try:
            recorded = {(event.get("round"), event.get("step")) for event in read_jsonl(directory / EVENTS_FILE)
                        if event.get("event") == "finished"}
            for number in range(1, config.rounds + 1):
                for step in STEPS:
                    if not (round_dir(directory, number) / STEP_FILES[step]).is_file():
                        _run_step(config, directory, number, step, report)
                    elif (number, step) not in recorded:
                        # Killed between writing the step's file and logging it: the file is the truth.
                        append_jsonl(directory / EVENTS_FILE, {"time": time.time(), "round": number, "step": step,
                                                               "event": "finished", "recovered": True})
        except BaseException as error:
            set_status(directory, state="failed", message=f"{type(error).__name__}: {error}")
            raise
        set_status(directory, state="completed", round=config.rounds, step=None, progress=None,
                   message=f"{config.rounds} rounds completed")
    return directory


def _run_step(config: RoundsConfig, directory: Path, number: int, step: str, report: Report | None) -> None:
    folder = round_dir(directory, number)
    folder.mkdir(parents=True, exist_ok=True)
    set_status(directory, state="running", pid=os.getpid(), round=number, step=step,
               message=f"round {number}: {step}", progress=None)
    append_jsonl(directory / EVENTS_FILE, {"time": time.time(), "round": number, "step": step, "event": "started"})

    def progress(done: int, total: int) -> None:
        set_status(directory, progress={"done": done, "total": total})
        if report:
            report(f"round {number}: {step}", done, total)

    STEP_FUNCTIONS[step](config, directory, number, progress)
    append_jsonl(directory / EVENTS_FILE, {"time": time.time(), "round": number, "step": step, "event": "finished"})


# ---- the steps: each reads earlier files of its round and writes its own file last ------------------------------


def _policy_step(config: RoundsConfig, directory: Path, number: int, progress) -> None:
    """Which model generates and which adapter's margins score this round; merge the last adapter in stack mode."""
    if number == 1:
        record = {"policy": config.model, "policy_adapter": None, "reference": config.model,
                  "train_base": config.model}
    else:
        previous = round_dir(directory, number - 1)
        adapter = read_json(previous / STEP_FILES["train"])["adapter"]
        reference = read_json(previous / STEP_FILES["policy"])["train_base"]
        train_base = (str(engine.merge_adapter(adapter, previous / "policy_merged"))
                      if config.adapter_mode == "stack" else config.model)
        record = {"policy": adapter, "policy_adapter": adapter, "reference": reference, "train_base": train_base}
    atomic_write_json(round_dir(directory, number) / STEP_FILES["policy"], {"round": number, **record})


def _generate_step(config: RoundsConfig, directory: Path, number: int, progress) -> None:
    folder = round_dir(directory, number)
    policy = read_json(folder / STEP_FILES["policy"])["policy"]
    answers = engine.sample_answers(config, policy, engine.round_prompts(config, number), progress)
    _write_parquet(answers, folder / STEP_FILES["generate"])


def _score_step(config: RoundsConfig, directory: Path, number: int, progress) -> None:
    folder = round_dir(directory, number)
    answers = pd.read_parquet(folder / STEP_FILES["generate"])
    answers["score"], description = engine.score_answers(config, answers)
    atomic_write_json(folder / "scores.json", {"scorer": config.scorer, "description": description,
                                               "n_unscored": int(answers.score.isna().sum())})
    _write_parquet(answers, folder / STEP_FILES["score"])


def _pairs_step(config: RoundsConfig, directory: Path, number: int, progress) -> None:
    folder = round_dir(directory, number)
    pairs, ties = build_pairs(pd.read_parquet(folder / STEP_FILES["score"]), config.pairing, config.tie_tolerance)
    if pairs.empty:
        raise UserError(f"round {number}: every prompt's answers tied ({len(ties)} ties in {folder / 'ties.jsonl'}); "
                        "raise temperature or samples_per_prompt, or lower tie_tolerance")
    atomic_write_text(folder / "ties.jsonl", ties.to_json(orient="records", lines=True) if len(ties) else "")
    atomic_write_text(folder / STEP_FILES["pairs"], pairs.to_json(orient="records", lines=True, force_ascii=False))


def _margins_step(config: RoundsConfig, directory: Path, number: int, progress) -> None:
    folder = round_dir(directory, number)
    pairs = engine.load_round_pairs(folder / STEP_FILES["pairs"])
    policy = read_json(folder / STEP_FILES["policy"])
    table = pd.DataFrame({"pair_id": pairs.pair_id.astype(str),
                          "external_margin": (pairs.score_chosen - pairs.score_rejected).to_numpy(float)})
    if policy["policy_adapter"] is None:
        table["implicit_margin"] = 0.0  # the policy is its own reference
    else:
        implicit = engine.policy_implicit_margins(config, pairs, policy["policy_adapter"], progress)
        table["implicit_margin"] = implicit.implicit_margin.to_numpy(float)
    atomic_write_json(folder / "margins.json", {
        "policy_adapter": policy["policy_adapter"], "reference": policy["reference"], "n_pairs": len(table),
        "n_ties": sum(1 for line in (folder / "ties.jsonl").read_text().splitlines() if line.strip()),
        "external": "score_chosen - score_rejected", "implicit": "0 (round 1: the policy is its reference)"
        if policy["policy_adapter"] is None else "summed log-ratio of the policy adapter over its reference",
    })
    _write_parquet(engine.with_fused_scores(table), folder / STEP_FILES["margins"])


def _select_step(config: RoundsConfig, directory: Path, number: int, progress) -> None:
    folder = round_dir(directory, number)
    pairs = engine.load_round_pairs(folder / STEP_FILES["pairs"])
    table = pd.read_parquet(folder / STEP_FILES["margins"])
    pair_ids = engine.select(config, table)
    if not pair_ids:
        raise UserError(f"round {number}: the selection rule chose no pairs; check selection_params")
    atomic_write_json(folder / "selection_check.json", cut_check(config, table, pair_ids))
    engine.save_subset(pairs, pair_ids, folder / "subset.jsonl")
    engine.save_selection_record(config, f"{config.name}-round-{number:02d}", pairs, pair_ids,
                                 folder / STEP_FILES["select"])


def _train_step(config: RoundsConfig, directory: Path, number: int, progress) -> None:
    folder = round_dir(directory, number)
    run_dir = folder / "run"
    run_id = engine.run_id_in(run_dir) if run_dir.exists() else None
    if run_id is None:
        base = read_json(folder / STEP_FILES["policy"])["train_base"]
        run_id = engine.create_round_run(config, base, folder / "subset.jsonl", run_dir,
                                         f"{config.name}-r{number:02d}")
    adapter = engine.train_until_done(run_id, progress)
    atomic_write_json(folder / STEP_FILES["train"], {"run_id": run_id, "adapter": adapter})


def _eval_step(config: RoundsConfig, directory: Path, number: int, progress) -> None:
    folder = round_dir(directory, number)
    adapter = read_json(folder / STEP_FILES["train"])["adapter"]
    summary, per_prompt = engine.evaluate_against_base(config, adapter, engine.eval_prompts(config))
    _write_parquet(per_prompt, folder / "eval_per_prompt.parquet")
    atomic_write_json(folder / STEP_FILES["eval"], {"round": number, "policy": adapter, **_json_safe(summary)})


def cut_check(config: RoundsConfig, table: pd.DataFrame, pair_ids: list[str]) -> dict:
    """Whether a ranking rule's cut fell inside a block of equal scores (then table order, not the score, decided).

    DM-MUL saturates at 1 when every external margin exceeds its integer upper bound: with best-vs-worst pairs of
    a reward model whose margins are below ~1.5 (the stand-in head), ``int(max / 1.5)`` is 0 and every pair ties.
    """
    score = config.selection_params.get("score", "dm_mul")
    if config.selection_rule not in ("top_k", "bottom_k") or score not in table:
        return {"score": None, "tied_at_cut": False}
    values = table.set_index(table.pair_id.astype(str))[score]
    chosen = values.loc[pair_ids]
    rest = values.drop(index=pair_ids)
    edge = chosen.min() if config.selection_rule == "top_k" else chosen.max()
    return {"score": score, "distinct_values": int(values.nunique()),
            "tied_at_cut": bool(len(rest) and (rest == edge).any())}


STEP_FUNCTIONS = {
    "policy": _policy_step, "generate": _generate_step, "score": _score_step, "pairs": _pairs_step,
    "margins": _margins_step, "select": _select_step, "train": _train_step, "eval": _eval_step,
}


# ---- bookkeeping --------------------------------------------------------------------------------------------------


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    table.to_parquet(staging, index=False)
    os.replace(staging, path)


def _json_safe(values: dict) -> dict:
    return {key: (None if isinstance(value, float) and value != value else value) for key, value in values.items()}
