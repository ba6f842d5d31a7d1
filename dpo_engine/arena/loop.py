"""The arena: select every contestant's subset, train one LoRA run each through the runs queue, evaluate all runs
on the same prompts, then write the table, the overlaps and the report.

`run_arena` runs each step whose file (`store`) is missing, so an arena killed anywhere restarts at the step where
it stopped and finished steps are never redone. Training goes through the runs queue in detached workers
(`rounds.engine.train_until_done`): an arena killed while training finds the same run, still going or resumable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from dpo_engine.arena.config import UNSIZED_RULES, ArenaConfig
from dpo_engine.arena.store import (
    CONFIG_FILE,
    CONTESTANT_STEP_FILES,
    EVAL_FILE,
    EVENTS_FILE,
    LOCK_FILE,
    arena_dir,
    contestant_dir,
    report_path,
)
from dpo_engine.errors import UserError
from dpo_engine.files import append_jsonl, atomic_write_json, read_json
from dpo_engine.job_directory import check_same_config, exclusive, set_status

Report = Callable[[str, int, int], None]  # (stage, done, total)


def run_arena(config: ArenaConfig, report: Report | None = None) -> Path:
    """Run (or resume) the arena ``config.name`` to its report; return its directory.

    ``config`` must match the one the arena started with. Raises ``ConfigError`` on a bad or changed field,
    ``UserError`` when another process runs this arena or a selector picks no pairs.
    """
    config.validate()
    directory = arena_dir(config.name)
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive(directory, LOCK_FILE, "arena"):
        check_same_config(directory, config.to_dict(), "arena")
        atomic_write_json(directory / CONFIG_FILE, config.to_dict())
        try:
            for step, name, done in _pending_steps(config, directory):
                if not done:
                    _run_step(config, directory, step, name, report)
        except BaseException as error:
            set_status(directory, state="failed", message=f"{type(error).__name__}: {error}")
            raise
        set_status(directory, state="completed", step=None, progress=None, pid=os.getpid(),
                   message=f"{len(config.contestants())} contestants trained and evaluated")
    return directory


def _pending_steps(config: ArenaConfig, directory: Path):
    """``(step, contestant or None, done)`` in order; ``done`` is read when the step is reached."""
    for step in ("select", "train"):
        for contestant in config.contestants():
            folder = contestant_dir(directory, contestant["name"])
            yield step, contestant["name"], (folder / CONTESTANT_STEP_FILES[step]).is_file()
    yield "eval", None, (directory / EVAL_FILE).is_file()
    yield "report", None, report_path(directory).is_file()


def _run_step(config: ArenaConfig, directory: Path, step: str, contestant: str | None, report: Report | None) -> None:
    label = f"{step}: {contestant}" if contestant else step
    set_status(directory, state="running", pid=os.getpid(), step=step, contestant=contestant, message=label,
               progress=None)
    append_jsonl(directory / EVENTS_FILE, {"time": time.time(), "step": step, "contestant": contestant,
                                           "event": "started"})

    def progress(done: int, total: int) -> None:
        set_status(directory, progress={"done": done, "total": total})
        if report:
            report(label, done, total)

    if step == "select":
        _select_step(config, directory, contestant)
    elif step == "train":
        _train_step(config, directory, contestant, progress)
    elif step == "eval":
        _eval_step(config, directory, report)
    else:
        from dpo_engine.arena.summary import write_summary

        write_summary(config, directory)
    append_jsonl(directory / EVENTS_FILE, {"time": time.time(), "step": step, "contestant": contestant,
                                           "event": "finished"})


# ---- the steps: each reads earlier files and writes its own file last --------------------------------------------


def contestant_pair_ids(config: ArenaConfig, contestant: dict, margins) -> list[str]:
    """The ``budget`` pair ids ``contestant`` picks: ``k = budget``, or its own pick cut to the budget."""
    from dpo_engine.selection.rules import select_pairs

    rule, params = contestant["rule"], dict(contestant["params"])
    if rule not in UNSIZED_RULES:
        params["k"] = config.budget
    return select_pairs(margins, rule, params)[:config.budget]


def _select_step(config: ArenaConfig, directory: Path, name: str) -> None:
    from dpo_engine.data.export import save_pairs
    from dpo_engine.data.pairs import fingerprint
    from dpo_engine.selection.rules import filter_by_ids
    from dpo_engine.selection.store import Selection, save_selection

    contestant = next(c for c in config.contestants() if c["name"] == name)
    from dpo_engine.arena.inputs import load_inputs

    pairs, margins = load_inputs(config)
    pair_ids = contestant_pair_ids(config, contestant, margins)
    if not pair_ids:
        raise UserError(f"contestant '{name}' (rule {contestant['rule']}) picked no pairs; check its params")
    folder = contestant_dir(directory, name)
    folder.mkdir(parents=True, exist_ok=True)
    save_pairs(filter_by_ids(pairs, pair_ids), folder / "subset.jsonl")
    params = {**contestant["params"], **({} if contestant["rule"] in UNSIZED_RULES else {"k": config.budget})}
    save_selection(Selection(name=f"{config.name}-{name}", rule=contestant["rule"], params=params,
                             dataset_fingerprint=fingerprint(pairs), pair_ids=pair_ids),
                   path=folder / CONTESTANT_STEP_FILES["select"], overwrite=True)


def _train_step(config: ArenaConfig, directory: Path, name: str, progress) -> None:
    from dpo_engine.rounds.engine import train_until_done

    run_ids = _queue_runs(config, directory)
    adapter = train_until_done(run_ids[name], progress)
    atomic_write_json(contestant_dir(directory, name) / CONTESTANT_STEP_FILES["train"],
                      {"run_id": run_ids[name], "adapter": adapter})


def _queue_runs(config: ArenaConfig, directory: Path) -> dict[str, str]:
    """Create and launch every untrained contestant's run at once: the runs queue trains them one per device slot
    while the next workers load, instead of each starting only after the last finished. ``{contestant: run_id}``."""
    from dpo_engine import runs
    from dpo_engine.rounds.engine import run_id_in

    run_ids = {}
    for contestant in config.contestants():
        folder = contestant_dir(directory, contestant["name"])
        trained = read_json(folder / CONTESTANT_STEP_FILES["train"])
        if trained is not None:
            run_ids[contestant["name"]] = trained["run_id"]
            continue
        run_dir = folder / "run"
        run_id = run_id_in(run_dir) if run_dir.exists() else None
        if run_id is None:
            label = f"{config.name}-{contestant['name']}"
            values = {**config.train, "model": config.model, "subset": str(folder / "subset.jsonl"),
                      "device": config.device, "precision": config.precision}
            run_id = runs.create_run(values, name=label, selection_name=label, run_dir=run_dir)
        if runs.get_run(run_id).status.get("launched") is None:
            runs.launch(run_id)
        run_ids[contestant["name"]] = run_id
    return run_ids


def _eval_step(config: ArenaConfig, directory: Path, report: Report | None) -> None:
    """Every run on the same prompts against the base model's answers, one saved evaluation (also on Results)."""
    from dpo_engine.evaluation.generation import GenerationSettings, load_eval_prompts
    from dpo_engine.evaluation.judge_factory import make_judge
    from dpo_engine.evaluation.report import evaluate

    run_ids = [read_json(contestant_dir(directory, c["name"]) / CONTESTANT_STEP_FILES["train"])["run_id"]
               for c in config.contestants()]
    prompts = load_eval_prompts(config.eval_prompts or None, n=config.eval_n, seed=0)
    settings = GenerationSettings(max_new_tokens=config.eval_max_new_tokens, temperature=0.0,
                                  dtype=config.precision, device=config.device)

    def progress(stage: str, done: int, total: int) -> None:
        set_status(directory, message=f"eval: {stage}", progress={"done": done, "total": total})
        if report:
            report(f"eval: {stage}", done, total)

    result = evaluate(run_ids, judge=make_judge(config.judge), prompts=prompts, baseline="base", settings=settings,
                      eval_name=f"arena-{config.name}", progress=progress)
    atomic_write_json(directory / EVAL_FILE, {"eval_id": result.eval_id, "run_ids": run_ids,
                                              "n_prompts": len(prompts)})
