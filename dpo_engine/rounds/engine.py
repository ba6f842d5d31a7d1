"""Every engine call the rounds loop makes, each wrapped once here: generation, scoring, implicit margins,
selection, training through the runs queue, merging an adapter, and evaluation against the base model.

Other modules change inside; the loop depends on them only through these functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.rounds.config import RoundsConfig

Progress = Callable[[int, int], None]
RUN_POLL_S = 2.0


# ---- prompts and generation -------------------------------------------------------------------------------------


def round_prompts(config: RoundsConfig, round_number: int) -> pd.DataFrame:
    """Round ``round_number``'s (1-based) prompts: its slice of one seeded shuffle of the training prompts."""
    from dpo_engine.evaluation.generation import load_eval_prompts

    prompts = load_eval_prompts(config.train_prompts_source)
    order = np.random.default_rng(config.prompt_seed).permutation(len(prompts))
    start = (round_number - 1) * config.prompts_per_round
    return prompts.iloc[np.sort(order[start:start + config.prompts_per_round])].reset_index(drop=True)


def eval_prompts(config: RoundsConfig) -> pd.DataFrame:
    """The held-out evaluation prompts (the same every round)."""
    from dpo_engine.evaluation.generation import load_eval_prompts

    return load_eval_prompts(config.eval_prompts or None, n=config.eval_n, seed=0)


def sample_answers(config: RoundsConfig, policy: str, prompts: pd.DataFrame, progress: Progress | None = None
                   ) -> pd.DataFrame:
    """K sampled answers per prompt from ``policy`` (a model or a LoRA adapter directory), batched and cached.

    Returns ``prompt_id, sample, instruction, output, output_tokens``, one row per (prompt, sample). Each answer
    row is its own prompt row for `generate`, so sample k of prompt i gets its own seed and all K x N answers share
    the decoding batches.
    """
    from dpo_engine.evaluation.generation import GenerationSettings, generate

    k = config.samples_per_prompt
    expanded = prompts.loc[prompts.index.repeat(k)].reset_index(drop=True)
    expanded["sample"] = np.tile(np.arange(k), len(prompts))
    expanded["source_id"] = expanded.prompt_id
    expanded["prompt_id"] = expanded.source_id + "#" + expanded["sample"].astype(str)
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                  top_p=config.top_p, batch_size=config.generation_batch_size, seed=config.seed,
                                  dtype=config.precision, device=config.device)
    answers = generate(policy, None, expanded, settings, progress=progress)
    return pd.DataFrame({
        "prompt_id": expanded.source_id, "sample": expanded["sample"], "instruction": expanded.instruction,
        "output": answers.output, "output_tokens": answers.output_tokens,
    })


# ---- scoring and margins ------------------------------------------------------------------------------------------


def score_answers(config: RoundsConfig, answers: pd.DataFrame) -> tuple[np.ndarray, str]:
    """``(scores (n,) float64, description)`` of each answer by the configured scorer (`scorers.make_scorer`)."""
    from dpo_engine.rounds.scorers import make_scorer

    score, description = make_scorer(config)
    return np.asarray(score(list(answers.instruction), list(answers.output)), dtype=np.float64), description


def load_round_pairs(path: Path) -> pd.DataFrame:
    """The engine's pairs DataFrame of a round's ``pairs.jsonl`` (`dpo_engine.data.load_pairs`)."""
    from dpo_engine.data.pairs import load_pairs

    return load_pairs(path).pairs


def policy_implicit_margins(config: RoundsConfig, pairs: pd.DataFrame, adapter: str, progress: Progress | None = None
                            ) -> pd.DataFrame:
    """``pair_id, implicit_margin`` (nats) of the LoRA policy ``adapter`` against its base with adapters disabled."""
    from dpo_engine.margins.scoring import implicit_margins

    limits = _train_limits(config)
    table = implicit_margins(pairs, adapter, dtype=config.precision, device=config.device, progress=progress,
                             **limits)
    return table[["pair_id", "implicit_margin"]]


def with_fused_scores(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus DM-ADD, DM-MUL and BeeS columns (`dpo_engine.margins.fused_scores`)."""
    from dpo_engine.margins.formulas import fused_scores

    return fused_scores(table)


def select(config: RoundsConfig, table: pd.DataFrame) -> list[str]:
    """Pair ids the configured rule selects from the margins table; every pair for the ``all`` baseline."""
    from dpo_engine.selection.rules import select_pairs

    if config.takes_everything:
        return table.pair_id.astype(str).tolist()
    return select_pairs(table, config.selection_rule, dict(config.selection_params))


def save_selection_record(config: RoundsConfig, name: str, pairs: pd.DataFrame, pair_ids: list[str], path: Path
                          ) -> None:
    """The round's selection as a `dpo_engine.selection.Selection` JSON at ``path``."""
    from dpo_engine.data.pairs import fingerprint
    from dpo_engine.selection.store import Selection, save_selection

    rule = "manual" if config.takes_everything else config.selection_rule
    params = {"all": True} if config.takes_everything else dict(config.selection_params)
    save_selection(Selection(name=name, rule=rule, params=params, dataset_fingerprint=fingerprint(pairs),
                             pair_ids=pair_ids), path=path)


def save_subset(pairs: pd.DataFrame, pair_ids: list[str], path: Path) -> None:
    """The selected pairs as a jsonl file `load_pairs` reads (the round's training subset)."""
    from dpo_engine.data.pairs import save_pairs
    from dpo_engine.selection.rules import filter_by_ids

    save_pairs(filter_by_ids(pairs, pair_ids), path)


# ---- training -----------------------------------------------------------------------------------------------------


def train_config(config: RoundsConfig, base: str, subset: Path) -> dict:
    """The round's TrainConfig fields: the loop's overrides, then the model, subset and hardware it sets."""
    return {**config.train, "model": base, "subset": str(subset), "device": config.device,
            "precision": config.precision}


def run_id_in(run_dir: Path) -> str | None:
    """The id of the run whose directory is ``run_dir``, or None if no run was created there."""
    from dpo_engine.runs import list_runs

    resolved = run_dir.resolve()
    return next((info.run_id for info in list_runs() if Path(info.run_dir).resolve() == resolved), None)


def create_round_run(config: RoundsConfig, base: str, subset: Path, run_dir: Path, name: str) -> str:
    """Create (not launch) the round's run in ``run_dir``; return its id. ``ConfigError`` names a bad field."""
    from dpo_engine.runs import create_run

    return create_run(train_config(config, base, subset), name=name, selection_name=name, run_dir=run_dir)


def train_until_done(run_id: str, progress: Progress | None = None) -> str:
    """Launch the run (or resume it after a failure or stop), wait for it to complete; return its adapter directory.

    The run trains in its own detached worker (the runs queue): killing the loop leaves it training, and a
    restarted loop waits for the same run.
    """
    from dpo_engine import runs

    info = runs.get_run(run_id)
    if info.status.get("launched") is None:
        runs.launch(run_id)
    elif info.state in ("failed", "stopped"):
        runs.resume(run_id)
    while True:
        info = runs.get_run(run_id)
        if progress and info.total_steps:
            progress(info.step, info.total_steps)
        if info.state == "completed":
            return str(info.adapter_dir)
        if info.state in ("failed", "stopped"):
            raise UserError(f"run {run_id} {info.state}: {info.message}")
        time.sleep(RUN_POLL_S)


def training_metrics(run_id: str) -> pd.DataFrame:
    """The run's metrics.jsonl rows (step, loss, rewards/..., ...)."""
    from dpo_engine.runs import read_metrics

    return read_metrics(run_id)


def merge_adapter(adapter: str, out_dir: Path) -> Path:
    """Fold a LoRA adapter into its base and save the full model and tokenizer at ``out_dir`` (atomically, in fp32
    so the next round's base loses nothing to rounding: `dpo_engine.models.adapters.merge_adapter`). A round
    resumed after its merge reuses the merged model."""
    from dpo_engine.models.adapters import merge_adapter as merge_into

    if (out_dir / "config.json").is_file():
        return out_dir
    return merge_into(adapter, out_dir)


# ---- evaluation ---------------------------------------------------------------------------------------------------


def evaluate_against_base(config: RoundsConfig, policy: str, prompts: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Win rate of ``policy`` over the base model on held-out ``prompts``: greedy answers, the offline judge.

    Returns (summary: ``win_rate, standard_error, ci_low, ci_high`` in percent, ``n``, ``n_wins``, ``n_draws``,
    ``n_losses``, ``judge``; per-prompt table ``prompt_id, output, baseline_output, preference``). The baseline is
    always the original base model, also in stack mode, where each run's own base is the previous policy.
    """
    from dpo_engine.evaluation.generation import GenerationSettings, generate
    from dpo_engine.evaluation.metrics import bootstrap_ci, win_rate
    from dpo_engine.evaluation.judge_factory import offline_judge
    from dpo_engine.evaluation.results import CONFIDENCE, N_BOOTSTRAP

    settings = GenerationSettings(max_new_tokens=config.eval_max_new_tokens, temperature=0.0,
                                  batch_size=config.generation_batch_size, dtype=config.precision,
                                  device=config.device)
    candidate = generate(policy, None, prompts, settings)
    baseline = generate(config.model, None, prompts, settings)
    judge = offline_judge()
    result = judge.judge(list(prompts.instruction), list(candidate.output), list(baseline.output))
    low, high = bootstrap_ci(result.preferences, n_resamples=N_BOOTSTRAP, confidence=CONFIDENCE)
    summary = {**win_rate(result.preferences), "ci_low": low, "ci_high": high, "confidence": CONFIDENCE,
               "judge": judge.name, "judge_description": judge.description}
    per_prompt = pd.DataFrame({"prompt_id": prompts.prompt_id, "output": candidate.output,
                               "baseline_output": baseline.output, "preference": result.preferences})
    return summary, per_prompt


def _train_limits(config: RoundsConfig) -> dict:
    """The token limits training uses, so margins are computed on the same truncation."""
    from dpo_engine.training.config import TrainConfig

    defaults = TrainConfig.from_dict(config.train)
    return {"max_length": defaults.max_length, "max_prompt_length": defaults.max_prompt_length,
            "batch_size": defaults.batch_size}
