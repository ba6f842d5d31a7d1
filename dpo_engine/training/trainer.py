"""Preference training: ``train()``, its foreground form, and the run directory it writes.

``train()`` loads the model, encodes the pairs, checks the longest batch fits the device (``memory``), computes the
reference once when it can (``pair_rewards.reference_table``), and runs a ``PreferenceTrainer`` (plain
``transformers.Trainer`` with our losses, ``preference_trainer``) over length-grouped batches, the heaviest first
(``batches``), with the run's callbacks (``callbacks``). Under ``accelerate launch`` each rank runs it on its own
device with its share of every batch (``distributed``; docs/distributed.md).

With ``gradient_checkpointing`` the padding-free rows are kept: the model's attention stays the segment function
(``dpo_engine.models.segment_attention``) for the whole of training, so the forward recomputed during backward
(non-reentrant checkpointing) reads the same ``segments`` from its keyword arguments as the first one did.

A run directory holds (docs/architecture.md): ``metrics.jsonl`` (one record per logged step), ``checkpoints/``,
``adapter/`` (LoRA) or ``model/`` (full fine-tuning), and ``pair_rewards.parquet`` (per-pair log-probs and
implicit margins after training).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import signal
import time
import warnings
from pathlib import Path

import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from dpo_engine.errors import ConfigError
from dpo_engine.files import atomic_write_text, read_json, read_jsonl
from dpo_engine.losses.functions import is_stateful, make_loss, uses_reference
from dpo_engine.models.loading import detect_device, device_precision, load_model, resolve_model
from dpo_engine.models.adapters import record_base_model
from dpo_engine.models.tokenization import EncodedPair
from dpo_engine.models.tokenization import encode_pairs as encode_pairs_batched
from dpo_engine.training.batches import PairCollator, length_grouped_order, pair_dataset, pair_tokens
from dpo_engine.training.callbacks import (
    LOSS_STATE_FILE,
    LossStateSaver,
    MetricsLogger,
    OnProgress,
    RunControl,
    ShouldStop,
    StepStats,
)
from dpo_engine.training.checkpointing import attention_for_training, enable_checkpointing
from dpo_engine.training.config import TrainConfig
from dpo_engine.training.data_map import data_map_callbacks
from dpo_engine.training.distributed import (
    SINGLE_PROCESS,
    World,
    backend_for,
    current_world,
    from_main,
    per_device_batch,
    rank_device,
    refuse_data_parallel,
    start_process_group,
)
from dpo_engine.training.memory import MemoryEstimate, ModelShape, check_fits, device_memory, estimate_for_config
from dpo_engine.training.pair_rewards import pair_rewards_table, reference_table
from dpo_engine.training.preference_trainer import PreferenceTrainer
from dpo_engine.training.trackers import tracker_setup

METRICS_FILE = "metrics.jsonl"
PAIR_REWARDS_FILE = "pair_rewards.parquet"


def train(config: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = False,
          should_stop: ShouldStop | None = None, on_progress: OnProgress | None = None) -> dict:
    """Train ``config`` into ``run_dir``; return a summary.

    ``resume``: continue from the newest checkpoint in ``run_dir/checkpoints`` (optimizer, scheduler, RNG and loss
    state restored; ``metrics.jsonl`` is cut back to that step so the curve continues without duplicates). Without
    a checkpoint, or without ``resume``, training starts over and earlier outputs in ``run_dir`` are removed.
    ``should_stop()`` is polled after each optimizer step; when it returns True, a checkpoint is written and
    training ends (``stopped`` in the summary). ``on_progress(step, total_steps)`` is called after each step.
    Raises ``ConfigError`` before the first step when the longest batch will not fit the device's memory.
    Under ``accelerate launch`` every rank makes this call (``distributed``); rank 0 alone writes ``run_dir``.

    Summary keys: ``stopped``, ``steps``, ``total_steps``, ``final_loss`` (last logged loss), ``elapsed_seconds``
    (this call, wall), ``checkpoint``, ``adapter`` (LoRA) or ``model_dir`` (full fine-tuning) and
    ``pair_rewards`` (None when stopped), ``loss_params`` (with defaults filled in), ``loss_state`` (alpha_dpo's
    statistics, else None), ``memory_estimate`` (``memory.MemoryEstimate.to_dict``), ``num_processes``.
    """
    started = time.perf_counter()
    _, pair_inputs = config.checked_inputs()  # validate(), keeping the pairs it loaded
    world = current_world()
    device = rank_device(detect_device() if config.device == "auto" else config.device, world)
    start_process_group(device, world)
    config = dataclasses.replace(config, precision=device_precision(config.precision, device))  # "auto" resolved
    run_dir = Path(run_dir)
    checkpoint, elapsed_before = _start_run_dir(run_dir, resume, world)

    pairs = pair_inputs.pairs  # in curriculum order when there is one
    model, tokenizer = _load_policy(config, device)
    encoded = encode_pairs(tokenizer, pairs, config)
    rank_config = dataclasses.replace(config, batch_size=per_device_batch(config.batch_size, world))
    estimate = _checked_estimate(rank_config, ModelShape.from_config(model.config.to_dict()), encoded, device)[0]
    loss_fn = make_loss(config.loss, **config.loss_params)
    needs_reference = uses_reference(config.loss)
    reference = (reference_table(model, tokenizer, pairs, encoded, config, device, world)
                 if config.precompute_reference and (needs_reference or config.full_finetune) else None)
    model, ref_model = _policy_and_reference(model, config, needs_reference and reference is None, world)
    _restore_loss_state(loss_fn, checkpoint, config)
    step_stats = StepStats()
    metrics = MetricsLogger(run_dir / METRICS_FILE, step_stats, elapsed_before)
    control = RunControl(should_stop, on_progress, world)
    trainer = _preference_trainer(
        model, tokenizer,
        args=_training_arguments(config, run_dir / "checkpoints", device, world, sequential=pair_inputs.sequential),
        train_dataset=_training_dataset(encoded, reference if needs_reference else None, pair_inputs, config),
        callbacks=_callbacks(metrics, control, loss_fn, config, run_dir, world)
        + data_map_callbacks(config, run_dir, ref_model, reference, tokenizer, pairs, encoded, device),
        loss_fn=loss_fn, needs_reference=needs_reference, ref_model=ref_model, step_stats=step_stats,
    )
    with attention_for_training(model, config.gradient_checkpointing):
        trainer.train(resume_from_checkpoint=checkpoint)

    summary = _summary(trainer, control, metrics, loss_fn, config, estimate, run_dir, world)
    if not control.stopped:
        summary.update(_save_outputs(trainer, tokenizer, config, run_dir, world))
        table = pair_rewards_table(trainer.model, ref_model, reference, tokenizer, pairs, encoded, config, device,
                                   world)
        summary["pair_rewards"] = _write_pair_rewards(table, run_dir, world)
    summary["elapsed_seconds"] = time.perf_counter() - started
    return summary


def dry_run(config: TrainConfig) -> tuple[MemoryEstimate, str, int]:
    """What ``train(config)`` would need, without loading weights: ``(estimate, device, device memory in bytes)``.

    Validates the config, encodes the subset with the model's tokenizer, and estimates the memory of its longest
    batch from the model's ``config.json``. Raises ``ConfigError`` (naming the field to change) when it will not fit.
    """
    from dpo_engine.models.loading import load_tokenizer

    pairs, _ = config.checked_inputs()
    device = detect_device() if config.device == "auto" else config.device
    config = dataclasses.replace(config, precision=device_precision(config.precision, device))
    model_path = resolve_model(config.model)
    encoded = encode_pairs(load_tokenizer(str(model_path)), pairs, config)
    estimate, available = _checked_estimate(config, ModelShape.from_model_dir(model_path), encoded, device)
    return estimate, device, available


def _checked_estimate(config: TrainConfig, shape: ModelShape, encoded: list[EncodedPair],
                      device: str) -> tuple[MemoryEstimate, int]:
    """The memory estimate of the encoded pairs' longest batch and the device's memory; ``ConfigError`` when the
    estimate does not fit."""
    lengths = [(len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)) for p in encoded]
    estimate = estimate_for_config(config, shape, lengths, device=device)
    available = device_memory(device)
    check_fits(estimate, available)
    return estimate, available


def encode_pairs(tokenizer, pairs, config: TrainConfig) -> list[EncodedPair]:
    """The subset's pairs as token ids, cut to the config's lengths (the tokenizer called in batches)."""
    return encode_pairs_batched(tokenizer, [list(m) for m in pairs.prompt_messages], list(pairs.chosen),
                                list(pairs.rejected), config.max_length, config.max_prompt_length)


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


# ---- helpers ------------------------------------------------------------------------------------------------------


def _start_run_dir(run_dir: Path, resume: bool, world: World) -> tuple[str | None, float]:
    """``(checkpoint to resume from or None, training seconds already spent)``, the run directory made ready by
    rank 0 (``_prepare_run_dir``); the other ranks learn the checkpoint from it and write nothing."""
    checkpoint, elapsed_before = None, 0.0
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = last_complete_checkpoint(run_dir / "checkpoints") if resume else None
        elapsed_before = _prepare_run_dir(run_dir, checkpoint)
    return from_main(checkpoint, world), elapsed_before


def _load_policy(config: TrainConfig, device: str):
    """``(model, tokenizer)`` on ``device``, dropout off."""
    # With LoRA the base is frozen, so it can be stored in bf16; trained weights stay fp32 for the optimizer.
    lora = not config.full_finetune
    model, tokenizer = load_model(config.model, dtype="bf16" if config.precision == "bf16" and lora else "fp32",
                                  device=device)
    _disable_dropout(model)
    return model, tokenizer


def _training_dataset(encoded: list[EncodedPair], reference, pair_inputs, config: TrainConfig):
    """The Trainer's examples: a curriculum keeps its own order; otherwise length groups, the heaviest batch first.

    The groups are cut at the global ``batch_size``: across processes each rank reads its equal share of every
    batch (accelerate's batch-sampler sharding), so the ranks together train on the batches one process would.
    """
    order = (length_grouped_order([pair_tokens(p) for p in encoded], config.batch_size, config.seed)
             if config.group_by_length and not pair_inputs.sequential else None)
    return pair_dataset(encoded, reference, order, {"pair_weight": pair_inputs.weight, "use_sft": pair_inputs.use_sft})


def _preference_trainer(model, tokenizer, **kwargs) -> PreferenceTrainer:
    """A ``PreferenceTrainer`` over ``PairCollator`` batches, without the Trainer's printers: progress is ours to
    report (on_progress, train_foreground's bar), and theirs would interleave with it."""
    trainer = PreferenceTrainer(model=model, data_collator=PairCollator(tokenizer.pad_token_id),
                                processing_class=tokenizer, **kwargs)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def _write_pair_rewards(table, run_dir: Path, world: World) -> str:
    """``pair_rewards.parquet`` written by rank 0; its path."""
    if world.is_main:
        table.to_parquet(run_dir / PAIR_REWARDS_FILE, index=False)
    return str(run_dir / PAIR_REWARDS_FILE)


def _callbacks(metrics: MetricsLogger, control: RunControl, loss_fn, config: TrainConfig, run_dir: Path,
               world: World) -> list:
    """The run's Trainer callbacks, in order: metrics first (trackers, after it, see its DPO metrics)."""
    callbacks = [metrics, control]
    if is_stateful(loss_fn):
        callbacks.append(LossStateSaver(loss_fn))
    if world.is_main:  # trackers write into the run directory
        callbacks += tracker_setup(config.report_to, run_dir)
    return callbacks


def _summary(trainer, control: RunControl, metrics: MetricsLogger, loss_fn, config: TrainConfig,
             estimate: MemoryEstimate, run_dir: Path, world: World) -> dict:
    """The summary of a finished or stopped ``trainer.train()``, before the outputs are saved."""
    return {
        "stopped": control.stopped,
        "steps": trainer.state.global_step,
        "total_steps": trainer.state.max_steps,
        "final_loss": metrics.last_loss if metrics.last_loss is not None else _last_logged_loss(run_dir),
        "checkpoint": get_last_checkpoint(str(run_dir / "checkpoints")) if world.is_main else None,
        "adapter": None,
        "model_dir": None,
        "pair_rewards": None,
        "loss_params": config.resolved_loss_params(),
        "precision": config.precision,
        "loss_state": loss_fn.state_dict() if is_stateful(loss_fn) else None,
        "memory_estimate": estimate.to_dict(),
        "num_processes": world.size,
    }


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


def _policy_and_reference(model, config: TrainConfig, needs_reference_copy: bool, world: World = SINGLE_PROCESS):
    """``(model to train, frozen reference copy or None)``: checkpointing enabled if asked, then the LoRA adapter
    (LoRA) or, for full fine-tuning that needs a live reference, a frozen copy of the initial model.

    Across processes full fine-tuning takes its reference from the precomputed table: a frozen copy would be a
    second whole model on every rank, outside what FSDP or ZeRO shard.
    """
    if config.full_finetune and needs_reference_copy and world.distributed:
        raise ConfigError("precompute_reference", "must be true for full fine-tuning across processes (a frozen "
                                                  "reference copy would be a whole unsharded model on every rank)")
    set_seed(config.seed)  # right before the adapter is created: its initialisation is random (TRL does the same)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    if not config.full_finetune:
        return _add_lora(model, config), None
    if needs_reference_copy:
        return model, copy.deepcopy(model).requires_grad_(False).eval()
    return model, None


def _add_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # PEFT reads transformers' deprecated property: noise in every run's log
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lora_config)


def _restore_loss_state(loss_fn, checkpoint: str | None, config: TrainConfig) -> None:
    """A stateful loss's statistics from the checkpoint training resumes from."""
    if checkpoint is None or not is_stateful(loss_fn):
        return
    state = read_json(Path(checkpoint) / LOSS_STATE_FILE)
    if state is None:  # the process died between the Trainer's save and ours
        warnings.warn(f"{checkpoint} has no {LOSS_STATE_FILE}: the {config.loss} statistics restart from zero",
                      stacklevel=3)
    else:
        loss_fn.load_state_dict(state)


def _training_arguments(config: TrainConfig, output_dir: Path, device: str, world: World = SINGLE_PROCESS,
                        sequential: bool = False) -> TrainingArguments:
    """The Trainer's arguments; ``ConfigError`` when this one process would drive several GPUs (DataParallel)."""
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device_batch(config.batch_size, world),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        optim=config.optim,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        # Length-grouped runs and curricula come in their own order (batches.length_grouped_order), read as it is.
        train_sampling_strategy="sequential" if config.group_by_length or sequential else "random",
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        bf16=config.precision == "bf16",
        use_cpu=device == "cpu",
        report_to="none",  # trackers are added as callbacks (training.trackers), in our order
        remove_unused_columns=False,  # examples are our own dicts, not model inputs
        dataloader_num_workers=0,
        disable_tqdm=True,
        ddp_backend=backend_for(device) if world.distributed else None,
        ddp_find_unused_parameters=False,  # every trained weight takes part in each step's one forward
    )
    refuse_data_parallel(arguments.n_gpu, world)
    return arguments


def _save_outputs(trainer, tokenizer, config: TrainConfig, run_dir: Path, world: World = SINGLE_PROCESS) -> dict:
    """The trained adapter (LoRA) or model (full fine-tuning): ``{"adapter": ...}`` or ``{"model_dir": ...}``.

    ``save_model`` is called on every rank (FSDP and ZeRO-3 gather the weights together) and writes on rank 0.
    """
    if config.full_finetune:
        trainer.save_model(str(run_dir / "model"))
        return {"model_dir": str(run_dir / "model")}
    if world.is_main:
        _save_adapter(trainer.model, tokenizer, config, run_dir / "adapter")
    return {"adapter": str(run_dir / "adapter")}


def _save_adapter(model, tokenizer, config: TrainConfig, directory: Path) -> Path:
    """The LoRA adapter and tokenizer, loadable by PEFT as they are (`dpo_engine.models.adapters`)."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    record_base_model(directory, config.model)
    return directory


def _last_logged_loss(run_dir: Path) -> float | None:
    losses = [record["loss"] for record in read_jsonl(run_dir / METRICS_FILE) if record.get("loss") is not None]
    return losses[-1] if losses else None
