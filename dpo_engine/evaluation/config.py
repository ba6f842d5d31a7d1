"""The configuration of an evaluation: ``EvalConfig``, its defaults (declared once, here) and its validation.

``dpo-engine eval``'s flags are generated from these fields (``dpo_engine.cli.flags``), and the dashboard builds the
same dataclass. Kept free of torch: generation settings that depend on the device (``max_new_tokens``,
``batch_size``, ``dtype``) are None or ``auto`` here and resolved by ``generation_defaults`` once the device is
known: long answers, many slots and bf16 on a CUDA GPU, the short CPU demo's values elsewhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from dpo_engine.errors import ConfigError, UserError
from dpo_engine.evaluation.judge_factory import JUDGE_HELP
from dpo_engine.paths import check_name

# Device-dependent generation defaults. On a GPU, AlpacaEval 2 answers run to ~2,000 tokens and 64 slots keep it
# busy; on a CPU the demo stays short (a 135M model makes 50-90 tokens/s with 8 slots, docs/benchmarks.md §3).
CUDA_GENERATION = {"max_new_tokens": 2048, "batch_size": 64, "dtype": "bf16"}
OTHER_GENERATION = {"max_new_tokens": 256, "batch_size": 16, "dtype": "fp32"}


def generation_defaults(device: str) -> dict:
    """``max_new_tokens``, ``batch_size`` and ``dtype`` a generation on ``device`` (resolved, not ``auto``) takes."""
    return dict(CUDA_GENERATION if device.startswith("cuda") else OTHER_GENERATION)


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class EvalConfig:
    """Everything ``dpo-engine eval`` needs. ``validate()`` before launch raises ``ConfigError`` naming the field."""

    run_ids: list[str] = field(default_factory=list, metadata=_help(
        "runs to evaluate (see `dpo-engine runs list`)"))
    judge: str = field(default="builtin", metadata=_help(JUDGE_HELP))
    prompts: str | None = field(default=None, metadata=_help(
        "prompt file (jsonl/csv/json/parquet with an 'instruction' or 'prompt' column; optional id, "
        "reference_output, dataset); default: the bundled AlpacaEval set"))
    n: int | None = field(default=None, metadata=_help(
        "evaluate a random subset of N prompts (fixed by --seed); default: all"))
    seed: int = field(default=0, metadata=_help("seed of the prompt subset and of sampling"))
    baseline: Literal["base", "reference"] = field(default="base", metadata=_help(
        "'base': the run's base model's own answers; 'reference': the prompts' reference answers "
        "(GPT-4 Turbo for the bundled set)"))
    compare_to: str | None = field(default=None, metadata=_help(
        "run the others are paired with (default: the first)"))
    max_new_tokens: int | None = field(default=None, metadata=_help(
        f"generated tokens per answer, at most (default: {CUDA_GENERATION['max_new_tokens']} on CUDA, long enough "
        f"for AlpacaEval answers; {OTHER_GENERATION['max_new_tokens']} elsewhere, the CPU demo's)"))
    temperature: float = field(default=0.0, metadata=_help("0 = greedy; above 0, sampling"))
    top_p: float = field(default=1.0, metadata=_help("nucleus sampling mass (with --temperature > 0)"))
    batch_size: int | None = field(default=None, metadata=_help(
        f"prompts decoded at once (default: {CUDA_GENERATION['batch_size']} on CUDA, "
        f"{OTHER_GENERATION['batch_size']} elsewhere)"))
    dtype: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata=_help(
        "model weights precision; 'auto': bf16 on CUDA, fp32 elsewhere"))
    device: str = field(default="auto", metadata=_help("cuda, mps, cpu or auto"))
    name: str | None = field(default=None, metadata=_help("a name for this evaluation (prefix of its id)"))
    progress_file: str | None = field(default=None, metadata=_help(
        "JSON file updated with {stage, done, total} (for the dashboard)"))

    def validate(self) -> None:
        """Check every field before launch (no model is loaded); raise ``ConfigError`` naming the first bad one."""
        if not self.run_ids:
            raise ConfigError("run_ids", "give at least one run to evaluate")
        if not (self.judge == "builtin" or (self.judge.startswith("reward-model:") and len(self.judge) > 13)
                or (self.judge.startswith("openai:") and len(self.judge) > 7)):
            raise ConfigError("judge", f"'{self.judge}' is not builtin, reward-model:PATH, openai:NAME or "
                              "openai:BASE_URL:MODEL")
        if self.name is not None:
            try:
                check_name(self.name, "evaluation name")
            except UserError as error:
                raise ConfigError("name", str(error)) from None
        checks = [
            ("n", self.n is None or self.n >= 1, "at least 1 (or unset: all prompts)"),
            ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1, "at least 1"),
            ("temperature", self.temperature >= 0, ">= 0 (0 = greedy)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("batch_size", self.batch_size is None or self.batch_size >= 1, "at least 1"),
            ("baseline", self.baseline in ("base", "reference"), "'base' or 'reference'"),
            ("dtype", self.dtype in ("auto", "fp32", "bf16"), "auto, fp32 or bf16"),
            ("device", self.device in ("auto", "cpu", "mps") or self.device.startswith("cuda"), "auto, cpu, cuda or mps"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(name, f"must be {rule}, got {getattr(self, name)!r}")
        if self.compare_to is not None and self.compare_to not in self.run_ids:
            raise ConfigError("compare_to", f"'{self.compare_to}' is not one of the evaluated runs")

    def to_dict(self) -> dict:
        return asdict(self)
