"""Preference training: a run configuration, a ``transformers.Trainer`` with our losses, and ``train()``.

The trainer is plain ``transformers.Trainer`` with one override, ``compute_loss``: it scores the collated batch with
``dpo_engine.logps.policy_logps`` (the function behind the margins the dashboard shows) and applies one of the
eight losses of ``dpo_engine.losses``. Everything else (optimizer, scheduler, gradient accumulation, clipping,
checkpoints with optimizer/scheduler/RNG state, resume) is the Trainer's own, driven through its public callbacks.

The reference model is the model before training. Its log-probs come, in order of preference, from a one-off pass
over the subset before training (``precompute_reference``, cached on disk by ``dpo_engine.models.logp_cache``, on
the trainer's own encodings), from the LoRA model with its adapter disabled, or from a frozen copy of the initial
model (full fine-tuning). This matches
TRL's ``DPOTrainer`` (field-notes §1.3, §1.5); ``tests/test_training.py`` checks the numbers against it.

A run directory holds (docs/architecture.md): ``metrics.jsonl`` (one record per logged step), ``checkpoints/``,
``adapter/`` (LoRA) or ``model/`` (full fine-tuning), and ``pair_rewards.parquet`` (per-pair log-probs and
implicit margins after training).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from dpo_engine.files import append_jsonl, atomic_write_json, atomic_write_text, read_json, read_jsonl
from dpo_engine.margins.scoring import implicit_margin_table
from dpo_engine.models.logp_cache import cached_logps, logps_cache_key, logps_dir
from dpo_engine.models.logps import pair_logps, policy_logps
from dpo_engine.losses.functions import is_stateful, make_loss, uses_reference
from dpo_engine.models.loading import detect_device, device_precision, load_model, resolve_model
from dpo_engine.models.tokenization import EncodedPair, collate, encode_pairs
from dpo_engine.training.config import TrainConfig, load_subset

METRICS_FILE = "metrics.jsonl"
PAIR_REWARDS_FILE = "pair_rewards.parquet"
LOSS_STATE_FILE = "loss_state.json"  # written into each checkpoint directory when the loss keeps state (alpha_dpo)
# Keys of each metrics.jsonl record, in order.
METRIC_KEYS = (
    "step", "epoch", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected", "learning_rate", "grad_norm", "tokens_per_second", "elapsed_seconds",
)

ShouldStop = Callable[[], bool]
OnProgress = Callable[[int, int], None]


# ---- the trainer --------------------------------------------------------------------------------------------------


class StepStats:
    """Per-batch training statistics, summed until the next log, then averaged (as TRL averages its ``_metrics``)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.batches = 0
        self.tokens = 0

    def add(self, values: dict[str, float], tokens: int) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.batches += 1
        self.tokens += tokens

    def pop(self) -> tuple[dict[str, float], int]:
        """Means since the last call and the number of input tokens seen; then start over."""
        means = {key: total / self.batches for key, total in self.sums.items()}
        tokens = self.tokens
        self.sums, self.batches, self.tokens = {}, 0, 0
        return means, tokens


class PreferenceTrainer(Trainer):
    """``transformers.Trainer`` with a preference loss. Overrides ``compute_loss`` only.

    Batches come from ``PairCollator``: ``2B`` left-padded rows (chosen then rejected) and, when precomputed,
    ``ref_chosen_logps`` / ``ref_rejected_logps``. Without them the reference is the adapter-disabled model (LoRA)
    or ``ref_model`` (full fine-tuning).
    """

    # compute_loss returns a mean over the batch's pairs, so the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss_fn: Callable, needs_reference: bool, ref_model=None, step_stats: StepStats, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.needs_reference = needs_reference
        self.ref_model = ref_model
        self.step_stats = step_stats

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        policy = policy_logps(model, inputs)
        ref_chosen, ref_rejected = self._reference_logps(model, inputs) if self.needs_reference else (None, None)
        output = self.loss_fn(
            policy["chosen_logps"], policy["rejected_logps"], ref_chosen, ref_rejected,
            policy["chosen_tokens"], policy["rejected_tokens"],
        )
        loss = output.loss.mean()
        if model.training:
            self._record(policy, output, int(inputs["attention_mask"].sum()))
        return (loss, output) if return_outputs else loss

    def _reference_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen_logps" in inputs:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        # The policy's forward is wrapped in the mixed-precision autocast by accelerate; the reference gets the same.
        with torch.no_grad(), self.accelerator.autocast():
            if self.ref_model is not None:
                reference = policy_logps(self.ref_model, inputs)
            else:
                with self.accelerator.unwrap_model(model).disable_adapter():
                    reference = policy_logps(model, inputs)
        return reference["chosen_logps"], reference["rejected_logps"]

    def _record(self, policy: dict, output, tokens: int) -> None:
        """Batch means of what TRL logs (field-notes §1.7): rewards as the loss defines them, summed log-probs."""
        chosen_rewards, rejected_rewards = output.chosen_rewards.float(), output.rejected_rewards.float()
        self.step_stats.add(
            {
                "rewards/chosen": chosen_rewards.mean().item(),
                "rewards/rejected": rejected_rewards.mean().item(),
                "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
                "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
                "logps/chosen": policy["chosen_logps"].detach().mean().item(),
                "logps/rejected": policy["rejected_logps"].detach().mean().item(),
            },
            tokens,
        )


def pair_dataset(encoded: list[EncodedPair], reference: pd.DataFrame | None = None):
    """Encoded pairs as a ``datasets.Dataset`` of Trainer examples, with the precomputed reference log-probs if any.

    A ``datasets.Dataset`` because the Trainer's length-grouped sampler reads its ``length`` column (prompt + the
    longer response, in tokens).
    """
    from datasets import Dataset

    columns = {
        "prompt_ids": [pair.prompt_ids for pair in encoded],
        "chosen_ids": [pair.chosen_ids for pair in encoded],
        "rejected_ids": [pair.rejected_ids for pair in encoded],
        "length": [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in encoded],
    }
    if reference is not None:
        columns["ref_chosen_logps"] = reference.chosen_logps.to_numpy(float)
        columns["ref_rejected_logps"] = reference.rejected_logps.to_numpy(float)
    return Dataset.from_dict(columns)


class PairCollator:
    """Examples of ``pair_dataset`` to one batch: ``collate()`` plus the precomputed reference log-probs, if any."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        pairs = [EncodedPair(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples]
        batch = collate(pairs, self.pad_token_id)
        batch["pairs"] = pairs  # policy_logps scores these directly, without unpacking the padded rows
        if "ref_chosen_logps" in examples[0]:
            for key in ("ref_chosen_logps", "ref_rejected_logps"):
                batch[key] = torch.tensor([example[key] for example in examples], dtype=torch.float32)
        return batch


# ---- callbacks ----------------------------------------------------------------------------------------------------


class MetricsLogger(TrainerCallback):
    """Appends one ``METRIC_KEYS`` record to ``metrics.jsonl`` per Trainer log.

    ``elapsed_seconds`` counts training time across resumes (it continues from the last kept record);
    ``tokens_per_second`` is input tokens (prompt and response, chosen and rejected rows) per wall second since
    the previous record.
    """

    def __init__(self, path: Path, step_stats: StepStats, elapsed_before: float = 0.0):
        self.path = path
        self.step_stats = step_stats
        self.elapsed_before = elapsed_before
        self.started = self.last_logged = 0.0  # set when training begins
        self.last_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_logged = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # the end-of-training summary log has no per-step loss
            return
        now = time.perf_counter()
        stats, tokens = self.step_stats.pop()
        record = {
            "step": state.global_step,
            "epoch": logs.get("epoch", state.epoch),
            "loss": logs["loss"],
            **stats,
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens_per_second": tokens / max(now - self.last_logged, 1e-9),
            "elapsed_seconds": self.elapsed_before + now - self.started,
        }
        append_jsonl(self.path, {key: _plain(record.get(key)) for key in METRIC_KEYS})
        self.last_logged = now
        self.last_loss = logs["loss"]


class RunControl(TrainerCallback):
    """Reports progress after each optimizer step and stops gracefully when asked: checkpoint, then exit."""

    def __init__(self, should_stop: ShouldStop | None, on_progress: OnProgress | None):
        self.should_stop = should_stop
        self.on_progress = on_progress
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.on_progress is not None:
            self.on_progress(state.global_step, state.max_steps)
        if self.should_stop is not None and state.global_step < state.max_steps and self.should_stop():
            self.stopped = True
            control.should_log = True  # the steps since the last record are logged before the checkpoint
            control.should_save = True
            control.should_training_stop = True
        return control


class LossStateSaver(TrainerCallback):
    """Writes a stateful loss's ``state_dict()`` (alpha_dpo's EMA statistics) into every checkpoint."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        atomic_write_json(checkpoint / LOSS_STATE_FILE, self.loss_fn.state_dict())


# ---- train --------------------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    should_stop: ShouldStop | None = None,
    on_progress: OnProgress | None = None,
) -> dict:
    """Train ``config`` into ``run_dir``; return a summary.

    ``resume``: continue from the newest checkpoint in ``run_dir/checkpoints`` (optimizer, scheduler, RNG and loss
    state restored; ``metrics.jsonl`` is cut back to that step so the curve continues without duplicates). Without
    a checkpoint, or without ``resume``, training starts over and earlier outputs in ``run_dir`` are removed.
    ``should_stop()`` is polled after each optimizer step; when it returns True, a checkpoint is written and
    training ends (``stopped`` in the summary). ``on_progress(step, total_steps)`` is called after each step.

    Summary keys: ``stopped``, ``steps``, ``total_steps``, ``final_loss`` (last logged loss), ``elapsed_seconds``
    (this call, wall), ``checkpoint``, ``adapter`` (LoRA) or ``model_dir`` (full fine-tuning) and
    ``pair_rewards`` (None when stopped), ``loss_params`` (with defaults filled in), ``loss_state`` (alpha_dpo's
    statistics, else None).
    """
    started = time.perf_counter()
    config.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = run_dir / "checkpoints"
    checkpoint = last_complete_checkpoint(checkpoint_dir) if resume else None
    elapsed_before = _prepare_run_dir(run_dir, checkpoint)

    pairs = load_subset(config)
    device = detect_device() if config.device == "auto" else config.device
    config = dataclasses.replace(config, precision=device_precision(config.precision, device))  # "auto" resolved
    lora = not config.full_finetune
    bf16 = config.precision == "bf16"
    # With LoRA the base is frozen, so it can be stored in bf16; trained weights stay fp32 for the optimizer.
    model, tokenizer = load_model(config.model, dtype="bf16" if bf16 and lora else "fp32", device=device)
    _disable_dropout(model)
    encoded = encode_pairs(tokenizer, [list(m) for m in pairs.prompt_messages], list(pairs.chosen),
                           list(pairs.rejected), config.max_length, config.max_prompt_length)

    loss_fn = make_loss(config.loss, **config.loss_params)
    needs_reference = uses_reference(config.loss)
    reference = None
    if config.precompute_reference and (needs_reference or config.full_finetune):
        reference = _reference_table(model, tokenizer, pairs, encoded, config, device)

    set_seed(config.seed)  # right before the adapter is created: its initialisation is random (TRL does the same)
    ref_model = None
    if lora:
        model = _add_lora(model, config)
    elif needs_reference and reference is None:
        ref_model = copy.deepcopy(model).requires_grad_(False).eval()

    if checkpoint is not None and is_stateful(loss_fn):
        state = read_json(Path(checkpoint) / LOSS_STATE_FILE)
        if state is None:  # the process died between the Trainer's save and ours
            warnings.warn(f"{checkpoint} has no {LOSS_STATE_FILE}: the {config.loss} statistics restart from zero",
                          stacklevel=2)
        else:
            loss_fn.load_state_dict(state)

    step_stats = StepStats()
    metrics = MetricsLogger(run_dir / METRICS_FILE, step_stats, elapsed_before)
    control = RunControl(should_stop, on_progress)
    callbacks = [metrics, control] + ([LossStateSaver(loss_fn)] if is_stateful(loss_fn) else [])
    trainer = PreferenceTrainer(
        model=model,
        args=_training_arguments(config, checkpoint_dir, device),
        data_collator=PairCollator(tokenizer.pad_token_id),
        train_dataset=pair_dataset(encoded, reference if needs_reference else None),
        processing_class=tokenizer,
        callbacks=callbacks,
        loss_fn=loss_fn,
        needs_reference=needs_reference,
        ref_model=ref_model,
        step_stats=step_stats,
    )
    # Progress is ours to report (on_progress, train_foreground's bar); the Trainer's printers would interleave.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.train(resume_from_checkpoint=checkpoint)

    summary = {
        "stopped": control.stopped,
        "steps": trainer.state.global_step,
        "total_steps": trainer.state.max_steps,
        "final_loss": metrics.last_loss if metrics.last_loss is not None else _last_logged_loss(run_dir),
        "checkpoint": get_last_checkpoint(str(checkpoint_dir)),
        "adapter": None,
        "model_dir": None,
        "pair_rewards": None,
        "loss_params": config.resolved_loss_params(),
        "precision": config.precision,
        "loss_state": loss_fn.state_dict() if is_stateful(loss_fn) else None,
    }
    if not control.stopped:
        model = trainer.model
        if lora:
            summary["adapter"] = str(_save_adapter(model, tokenizer, config, run_dir / "adapter"))
        else:
            trainer.save_model(str(run_dir / "model"))
            summary["model_dir"] = str(run_dir / "model")
        table = _pair_rewards(model, ref_model, reference, tokenizer, pairs, encoded, config, device)
        table.to_parquet(run_dir / PAIR_REWARDS_FILE, index=False)
        summary["pair_rewards"] = str(run_dir / PAIR_REWARDS_FILE)
    summary["elapsed_seconds"] = time.perf_counter() - started
    return summary


def train_foreground(config: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = False) -> dict:
    """``train()`` in the terminal, with a tqdm bar (for ``dpo-engine train CONFIG.yaml``).

    The first Ctrl-C stops gracefully (checkpoint, then return with ``stopped``); a second one interrupts at once.
    """
    from tqdm import tqdm

    interrupted = []

    def on_sigint(signum, frame):
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        bar.write("Stopping after this step (checkpoint first); press Ctrl-C again to abort now.")

    bar = tqdm(total=0, unit="step", desc="training", dynamic_ncols=True)

    def on_progress(step: int, total: int) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return train(config, run_dir, resume=resume, should_stop=lambda: bool(interrupted), on_progress=on_progress)
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()


# ---- helpers ------------------------------------------------------------------------------------------------------


def _prepare_run_dir(run_dir: Path, checkpoint: str | None) -> float:
    """Make ``run_dir`` consistent with where training (re)starts; return the training seconds already spent.

    Resuming keeps the metrics up to the checkpoint's step (later records belong to steps that will be redone).
    Starting over removes earlier training outputs.
    """
    metrics_path = run_dir / METRICS_FILE
    if checkpoint is None:
        for name in ("checkpoints", "adapter", "model"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        for name in (METRICS_FILE, PAIR_REWARDS_FILE):
            (run_dir / name).unlink(missing_ok=True)
        return 0.0
    step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    kept = [record for record in read_jsonl(metrics_path) if record.get("step", 0) <= step]
    atomic_write_text(metrics_path, "".join(json.dumps(record) + "\n" for record in kept))
    for name in ("adapter", "model"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    (run_dir / PAIR_REWARDS_FILE).unlink(missing_ok=True)
    return float(kept[-1].get("elapsed_seconds") or 0.0) if kept else 0.0


def _disable_dropout(model) -> None:
    """Dropout off in the base model, as TRL's ``disable_dropout``: the policy and reference must score alike."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _add_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def _training_arguments(config: TrainConfig, output_dir: Path, device: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        optim=config.optim,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        bf16=config.precision == "bf16",
        use_cpu=device == "cpu",
        report_to=config.report_to or "none",
        remove_unused_columns=False,  # examples are our own dicts, not model inputs
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _autocast(config: TrainConfig, device: str):
    """The Trainer's bf16 autocast, for passes outside the Trainer (reference, final scoring)."""
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def _reference_table(model, tokenizer, pairs: pd.DataFrame, encoded: list[EncodedPair], config: TrainConfig,
                     device: str) -> pd.DataFrame:
    """Reference log-probs of every pair (the model before training), in ``pairs`` order; cached on disk."""
    # bf16 runs score under the training step's autocast, which differs from scoring's plain bf16: separate keys.
    dtype_key = "fp32" if config.precision == "fp32" else f"bf16-autocast-{'full' if config.full_finetune else 'lora'}"
    key = logps_cache_key(pairs, resolve_model(config.model), None, config.max_length, config.max_prompt_length,
                          dtype_key)
    with _autocast(config, device):
        return cached_logps(model, encoded, pairs.pair_id.tolist(), logps_dir(key), pad_token_id=tokenizer.pad_token_id)


def _batched_logps(model, encoded: list[EncodedPair], pad_token_id: int, batch_size: int) -> dict[str, np.ndarray]:
    """``pair_logps`` over all pairs in inference mode, concatenated in order."""
    parts: dict[str, list] = {}
    model.eval()
    for start in range(0, len(encoded), batch_size):
        with torch.inference_mode():
            out = pair_logps(model, encoded[start : start + batch_size], pad_token_id)
        for key, value in out.items():
            parts.setdefault(key, []).append(value.float().cpu().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def _pair_rewards(model, ref_model, reference, tokenizer, pairs, encoded, config, device) -> pd.DataFrame:
    """Per pair: policy log-probs after training, reference log-probs and the implicit margin (nats, no beta).

    The reference is the precomputed table, else the adapter-disabled model (LoRA), else the frozen copy; with
    full fine-tuning of a reference-free loss and no precompute there is none, and those columns are NaN.
    """
    batch_size = 2 * config.batch_size
    with _autocast(config, device):
        policy = _batched_logps(model, encoded, tokenizer.pad_token_id, batch_size)
        if reference is not None:
            ref_chosen, ref_rejected = reference.chosen_logps.to_numpy(), reference.rejected_logps.to_numpy()
        elif ref_model is not None or not config.full_finetune:
            if ref_model is not None:
                ref = _batched_logps(ref_model, encoded, tokenizer.pad_token_id, batch_size)
            else:
                with model.disable_adapter():
                    ref = _batched_logps(model, encoded, tokenizer.pad_token_id, batch_size)
            ref_chosen, ref_rejected = ref["chosen_logps"], ref["rejected_logps"]
        else:
            ref_chosen = ref_rejected = None
    reference_logps = None if ref_chosen is None else {"chosen_logps": ref_chosen, "rejected_logps": ref_rejected}
    return implicit_margin_table(pairs.pair_id.to_numpy(), policy, reference_logps)


def _save_adapter(model, tokenizer, config: TrainConfig, directory: Path) -> Path:
    """The LoRA adapter and tokenizer. The adapter names its base as configured ('smollm2-135m-instruct', not a
    cache path), so ``load_model(directory)`` finds the base on any machine."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    config_file = directory / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text())
    adapter_config["base_model_name_or_path"] = config.model
    atomic_write_json(config_file, adapter_config)
    return directory


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint in ``checkpoint_dir`` that was written completely, or None.

    The Trainer does not write checkpoints atomically; ``trainer_state.json`` comes last. A process killed while
    saving leaves a newer checkpoint without it, which ``get_last_checkpoint`` would pick and every resume would
    then fail on: such leftovers are removed.
    """
    if not checkpoint_dir.is_dir():
        return None
    for candidate in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if candidate.is_dir() and not (candidate / "trainer_state.json").is_file():
            shutil.rmtree(candidate, ignore_errors=True)
    return get_last_checkpoint(str(checkpoint_dir))


def _last_logged_loss(run_dir: Path) -> float | None:
    losses = [record["loss"] for record in read_jsonl(run_dir / METRICS_FILE) if record.get("loss") is not None]
    return losses[-1] if losses else None


def _plain(value):
    """JSON-safe scalars: tensors to floats, NaN/inf to None."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
