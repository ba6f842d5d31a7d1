"""The data-map recorder: every ``data_map_every`` steps, each subset pair's implicit margin into ``data_map.jsonl``.

One JSON line per (step, pair) with `dpo_engine.margins.data_map.RECORD_COLUMNS`, beside ``metrics.jsonl``. The
per-pair scoring is `pair_rewards.pair_rewards_table` (the same pass a finished run writes ``pair_rewards.parquet``
with) on the reference the run already holds: the precomputed table, else the reference scored at the first record
and kept. On a resume the lines after the checkpoint's step are dropped, so each (step, pair) is written once; a
fresh start removes the file. Only the main process records (under DDP the others go on to the next step).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from transformers import TrainerCallback

from dpo_engine.files import atomic_write_text, read_jsonl
from dpo_engine.margins.data_map import RECORD_COLUMNS, step_records
from dpo_engine.training.config import TrainConfig
from dpo_engine.training.pair_rewards import pair_rewards_table

DATA_MAP_FILE = "data_map.jsonl"


def read_data_map(path: str | Path) -> pd.DataFrame:
    """The records of a ``data_map.jsonl`` (a torn last line skipped); an empty frame when there is none."""
    frame = pd.DataFrame(list(read_jsonl(path)))
    return frame if not frame.empty else pd.DataFrame(columns=list(RECORD_COLUMNS))


class DataMapRecorder(TrainerCallback):
    """Scores every pair of the run's subset at steps ``K, 2K, ...`` and at the last step (``K = data_map_every``)."""

    def __init__(self, path: Path, config: TrainConfig, scoring: dict):
        self.path = path
        self.every = config.data_map_every
        self.beta = float(config.resolved_loss_params().get("beta", 0.1))
        self.scoring = scoring  # pair_rewards_table's arguments but the policy: ref_model, reference, tokenizer, ...

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        kept = [record for record in read_jsonl(self.path) if record.get("step", 0) <= state.global_step]
        if state.global_step == 0 or not kept:
            self.path.unlink(missing_ok=True)
        else:
            atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        due = state.global_step % self.every == 0 or state.global_step >= state.max_steps
        if not due or not state.is_world_process_zero or model is None:
            return
        was_training = model.training
        table = pair_rewards_table(model, **self.scoring)
        if was_training:
            model.train()
        if self.scoring["reference"] is None and table.ref_chosen_logps.notna().all():
            # The reference does not change: score it once, not at every record.
            self.scoring["reference"] = pd.DataFrame({"chosen_logps": table.ref_chosen_logps.to_numpy(),
                                                      "rejected_logps": table.ref_rejected_logps.to_numpy()})
        records = step_records(state.global_step, table.pair_id, table.implicit_margin, self.beta)
        text = records.to_json(orient="records", lines=True)  # NaN as null: valid JSON lines
        with open(self.path, "a", encoding="utf-8") as handle:  # one append per step: a reader skips a torn line
            handle.write(text if text.endswith("\n") else text + "\n")


def data_map_callbacks(config: TrainConfig, run_dir: Path, ref_model, reference, tokenizer, pairs, encoded,
                       device: str) -> list[TrainerCallback]:
    """``[DataMapRecorder]`` when ``config.data_map_every`` is set, else ``[]``; the arguments after ``run_dir`` are
    `pair_rewards_table`'s after the policy."""
    if config.data_map_every <= 0:
        return []
    scoring = {"ref_model": ref_model, "reference": reference, "tokenizer": tokenizer, "pairs": pairs,
               "encoded": encoded, "config": config, "device": device}
    return [DataMapRecorder(Path(run_dir) / DATA_MAP_FILE, config, scoring)]
