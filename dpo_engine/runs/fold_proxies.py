"""Proxies as runs (Selective DPO's fold proxies, LossDiff-IRM's validation proxy): each a LoRA DPO run launched
through the runs queue, waited on together.

`dpo_engine.training.selective_dpo` (and `dpo_engine.training.lossdiff_irm`) plan the proxies and score them; this
module only trains them, the way every other run is trained: ``create_run`` + ``launch`` (a detached worker, device
slots, ``train.log``, stop and resume from the Runs page), each tagged ``selective-dpo`` (or the caller's tag) and
``proxies:<group>``. A proxy whose run already
exists for the same config and pairs is waited on or reused instead of launched again, so a scoring job that was
interrupted while its proxies trained picks them up where they are.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from dpo_engine.data.pairs import fingerprint, save_pairs
from dpo_engine.errors import UserError
from dpo_engine.files import atomic_write_json, read_json
from dpo_engine.paths import slug
from dpo_engine.runs.annotations import Annotations, write_annotations
from dpo_engine.runs.control import launch
from dpo_engine.runs.creation import create_run
from dpo_engine.runs.layout import RunError
from dpo_engine.runs.reading import get_run
from dpo_engine.training.selective_dpo import FoldProxy

PROXY_RECORD = "proxy_run.json"  # in a proxy's work directory: its run id and what it was trained with
POLL_SECONDS = 1.0


def train_fold_proxies(
    pairs: pd.DataFrame,
    proxies: Sequence[FoldProxy],
    config: dict,
    work_dir: str | Path,
    *,
    timeout_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    tag: str = "selective-dpo",
    run_prefix: str = "sdpo",
) -> list[Path]:
    """Launch one run per proxy (``config``: `TrainConfig` fields but ``subset`` and ``seed``), wait for all of
    them, and return their adapter directories in ``proxies`` order.

    Proxy ``p``'s training pairs go to ``work_dir/<p.name>/train.jsonl``. ``progress(done, total)`` counts the
    proxies' optimizer steps. A run that fails or is stopped raises ``UserError`` naming it and its last message.
    Runs are named ``<run_prefix>-<group>-s<seed>-f<fold>`` and tagged ``tag`` (Selective DPO's by default; the
    LossDiff-IRM validation proxy passes its own).
    """
    group = slug(Path(work_dir).name, max_length=30) or "proxies"
    run_ids = [_proxy_run(pairs, proxy, config, Path(work_dir) / proxy.name, group, tag, run_prefix)
               for proxy in proxies]
    _wait_for_runs(run_ids, timeout_s, progress)
    return [get_run(run_id).run_dir / "adapter" for run_id in run_ids]


def _proxy_run(pairs: pd.DataFrame, proxy: FoldProxy, config: dict, directory: Path, group: str, tag: str,
               run_prefix: str) -> str:
    """The run id training ``proxy``: the recorded one when it trains the same config on the same pairs and has
    not failed, else a new run, launched."""
    training = pairs.iloc[proxy.training_rows]
    run_config = {**config, "subset": str(directory / "train.jsonl"), "seed": proxy.seed}
    stamp = json.loads(json.dumps({"config": run_config, "pairs": fingerprint(training)}))
    record = read_json(directory / PROXY_RECORD, {}) or {}
    if record.get("stamp") == stamp and _reusable(record.get("run_id")):
        return record["run_id"]
    save_pairs(training, directory / "train.jsonl")
    run_id = create_run(run_config, name=f"{run_prefix}-{group}-s{proxy.seed}-f{proxy.fold}")
    write_annotations(get_run(run_id).run_dir, Annotations(tags=(tag, f"proxies:{group}")))
    atomic_write_json(directory / PROXY_RECORD, {"run_id": run_id, "stamp": stamp})
    launch(run_id)
    return run_id


def _reusable(run_id: str | None) -> bool:
    """Whether a recorded proxy run still exists and is queued, running or completed with its adapter."""
    if not run_id:
        return False
    try:
        info = get_run(run_id)
    except RunError:
        return False
    if info.state == "completed":
        return (info.run_dir / "adapter" / "adapter_config.json").is_file()
    return info.is_active and info.status.get("launched") is not None


def _wait_for_runs(run_ids: Sequence[str], timeout_s: float | None,
                   progress: Callable[[int, int], None] | None) -> None:
    """Poll the runs until every one has completed; raise ``UserError`` on the first that ends otherwise."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        infos = [get_run(run_id) for run_id in run_ids]
        ended = [info for info in infos if not info.is_active and info.state != "completed"]
        if ended:
            raise UserError(f"fold proxy run {ended[0].run_id} ended {ended[0].state}: {ended[0].message}; "
                            "resume it from the Runs page (or `dpo-engine runs resume`) and score again")
        if progress is not None:
            progress(sum(info.step for info in infos), sum(info.total_steps or 0 for info in infos) or 1)
        if all(info.state == "completed" for info in infos):
            return
        if deadline is not None and time.monotonic() > deadline:
            raise UserError(f"fold proxy runs {', '.join(run_ids)} did not finish within {timeout_s:g} s")
        time.sleep(POLL_SECONDS)
