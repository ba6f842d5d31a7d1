"""Generate answers to evaluation prompts with a base model or a trained LoRA adapter.

The prompt set is AlpacaEval's 805 instructions with GPT-4 Turbo reference answers (bundled, CC BY-NC 4.0), a seeded
subset of them, or any jsonl/csv/json/parquet file with an instruction column. Each instruction becomes one user
message and goes through the model's chat template exactly as training and scoring see prompts
(``dpo_engine.tokenization.prompt_ids``).

Generation decodes 64 prompts at a time on a CUDA GPU and 16 elsewhere by default (``config.generation_defaults``,
with bf16 weights and answers up to 2048 tokens on CUDA, fp32 and 256 tokens elsewhere), by continuous batching
(``decoding.py``: when an answer finishes, its slot takes the next prompt): on a CPU one decoding step costs about
the same for a few prompts as for one, so keeping every slot busy is what makes batching pay (docs/benchmarks.md
§3). Models whose cache cannot be spliced get left-padded batches through ``model.generate`` (pad = ``<|im_end|>``;
batched greedy answers equal one-prompt-at-a-time ones, ``tests/test_generation.py``). Greedy decoding by default.
Outputs are cached on disk, one parquet part file per finished group of ``batch_size`` prompts (longest
instructions first), keyed by (model weights, adapter weights, prompt set, settings): a killed job keeps its
finished groups and a rerun generates only the rest; changing any setting starts a new cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpo_engine.errors import ConfigError, DataError
from dpo_engine.evaluation.config import EvalConfig, generation_defaults
from dpo_engine.evaluation.decoding import stream_answers, supports_continuous_batching
from dpo_engine.files import (
    atomic_write_json,
    part_path,
    read_parts,
    weights_identity,
    write_part,
)
from dpo_engine.models.loading import (
    DTYPES,
    adapter_base,
    detect_device,
    load_model,
    resolve_model,
)
from dpo_engine.paths import ASSETS_DIR, workspace_subdir
from dpo_engine.models.tokenization import prompt_ids

Progress = Callable[[int, int], None]

BUNDLED_PROMPTS = ASSETS_DIR / "eval" / "alpaca_eval_805_gpt4_turbo_reference.jsonl"
PROMPT_COLUMNS = ["prompt_id", "instruction", "reference_output", "dataset"]
OUTPUT_COLUMNS = ["prompt_id", "output", "output_tokens"]

# Accepted source columns, first match wins.
INSTRUCTION_COLUMNS = ("instruction", "prompt")
ID_COLUMNS = ("id", "prompt_id")
REFERENCE_COLUMNS = ("reference_output", "output")


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated. Every field, resolved for the device (``resolved``), is part of the cache key.

    ``max_new_tokens``: cap on generated tokens per answer (the stop token not counted).
    ``temperature``: 0.0 = greedy decoding; above 0, sampling with this temperature and ``top_p`` (a fraction).
    ``batch_size``: prompts decoded at once (continuous batching: a finished answer's slot takes the next prompt).
    ``seed``: sampling seed (the prompt in row ``i`` of the prompt set samples from ``seed + i``, so a resumed job
    samples what an uninterrupted one would). ``dtype``: ``"fp32"``, ``"bf16"`` or ``"auto"`` weights.
    ``device``: ``"auto"`` (cuda, then mps, then cpu), or a torch device name. ``max_new_tokens``, ``batch_size``
    None and ``dtype`` ``auto`` take the device's defaults (``dpo_engine.evaluation.config.generation_defaults``:
    2048 tokens, 64 slots and bf16 on CUDA; 256, 16 and fp32 elsewhere). Other defaults are ``EvalConfig``'s.
    """

    max_new_tokens: int | None = None
    temperature: float = EvalConfig.temperature
    top_p: float = EvalConfig.top_p
    batch_size: int | None = None
    seed: int = EvalConfig.seed
    dtype: str = EvalConfig.dtype
    device: str = EvalConfig.device

    @classmethod
    def from_eval_config(cls, config: EvalConfig) -> "GenerationSettings":
        """The generation part of an evaluation's config."""
        return cls(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                   batch_size=config.batch_size, seed=config.seed, dtype=config.dtype, device=config.device)

    def resolved(self, device: str) -> "GenerationSettings":
        """These settings on ``device`` (cuda, mps or cpu): device defaults filled in, ``dtype`` concrete."""
        defaults = generation_defaults(device)
        return replace(
            self,
            max_new_tokens=self.max_new_tokens if self.max_new_tokens is not None else defaults["max_new_tokens"],
            batch_size=self.batch_size if self.batch_size is not None else defaults["batch_size"],
            dtype=defaults["dtype"] if self.dtype == "auto" else self.dtype,
            device=device,
        )

    def describe(self) -> str:
        """One line for the terminal, e.g. ``cuda, bf16, 64 slots, up to 2048 new tokens, greedy``."""
        sampling = "greedy" if self.temperature == 0 else f"temperature {self.temperature:g}, top-p {self.top_p:g}"
        return (f"{self.device}, {self.dtype}, {self.batch_size} slots, up to {self.max_new_tokens} new tokens, "
                f"{sampling}")

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad field."""
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens", f"must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError("temperature", f"must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size", f"must be at least 1, got {self.batch_size}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be auto or one of {sorted(DTYPES)}, got '{self.dtype}'")

    def to_dict(self) -> dict:
        return asdict(self)


def load_eval_prompts(source: str | Path | None = None, n: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Evaluation prompts as a DataFrame ``prompt_id, instruction, reference_output, dataset``.

    ``source``: None for the bundled AlpacaEval set (805 prompts with GPT-4 Turbo references), or a jsonl, csv,
    json or parquet file with an ``instruction`` (or ``prompt``) column; optional columns ``id``/``prompt_id``,
    ``reference_output``/``output`` and ``dataset``. A missing id becomes ``<file stem>-<row>``, a missing reference
    ``""``, a missing dataset the file stem.
    ``n``: keep a random subset of ``n`` prompts, fixed by ``seed`` and kept in file order (None = all).

    Raises ``DataError`` naming the file, row (0-based) and column of the first problem. ``df.attrs["prompt_set"]``
    describes the set (source, seed, sizes, fingerprint).
    """
    from dpo_engine.data.pairs import (
        _read_records,  # the pairs loader's readers: same formats, same located errors
    )

    path = Path(source).expanduser() if source is not None else BUNDLED_PROMPTS
    label = str(path)
    records = _read_records(path, fmt=None, split="train", label=label)
    found = list(dict.fromkeys(key for record in records for key in record))
    instruction_column = _first_present(INSTRUCTION_COLUMNS, found)
    if instruction_column is None:
        raise DataError(
            f"no instruction column: expected one of {', '.join(INSTRUCTION_COLUMNS)}; found {', '.join(found)}",
            file=label, column=INSTRUCTION_COLUMNS[0],
        )
    id_column = _first_present(ID_COLUMNS, found)
    reference_column = _first_present(REFERENCE_COLUMNS, found)

    rows = []
    for row, record in enumerate(records):
        instruction = record.get(instruction_column)
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(f"the instruction must be non-empty text, got {instruction!r:.60}", file=label, row=row,
                            column=instruction_column)
        prompt_id = f"{path.stem}-{row}" if id_column is None else record.get(id_column)
        if prompt_id is None or (isinstance(prompt_id, float) and np.isnan(prompt_id)) or str(prompt_id) == "":
            raise DataError("the id is empty", file=label, row=row, column=id_column)
        reference = record.get(reference_column) if reference_column else ""
        if reference is not None and not isinstance(reference, str):
            raise DataError(f"the reference output must be text, got {type(reference).__name__}", file=label, row=row,
                            column=reference_column)
        rows.append({
            "prompt_id": str(prompt_id),
            "instruction": instruction,
            "reference_output": reference or "",
            "dataset": str(record.get("dataset") or path.stem),
        })
    prompts = pd.DataFrame(rows, columns=PROMPT_COLUMNS)
    duplicated = prompts.prompt_id.duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise DataError(f"duplicate id '{prompts.prompt_id[row]}' (ids must be unique)", file=label, row=row,
                        column=id_column)

    n_total = len(prompts)
    if n is not None:
        if n < 1:
            raise ConfigError("n", f"must be at least 1, got {n}")
        if n < n_total:
            keep = np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))
            prompts = prompts.iloc[keep].reset_index(drop=True)
    prompts.attrs["prompt_set"] = {
        "source": label,
        "n_total": n_total,
        "n": len(prompts),
        "subset_seed": seed if len(prompts) < n_total else None,
        "fingerprint": prompt_set_fingerprint(prompts),
    }
    return prompts


def prompt_set_fingerprint(prompts: pd.DataFrame) -> str:
    """A short hash of the prompt ids and instructions, in order."""
    content = json.dumps(list(zip(prompts.prompt_id, prompts.instruction)))
    return hashlib.sha1(content.encode("utf-8")).hexdigest()[:16]


def generations_dir() -> Path:
    """Where generation caches live: ``$MARGIN_LAB_HOME/evals/_generations/<cache key>/``."""
    return workspace_subdir("evals") / "_generations"


def generation_cache_key(model_path: Path, adapter: Path | None, prompts: pd.DataFrame, settings: GenerationSettings,
                         device: str) -> str:
    """A key that changes when the base weights, the adapter weights, the prompts or any setting change."""
    identity = {
        "model": weights_identity(model_path),
        "adapter": weights_identity(adapter) if adapter is not None else None,
        "prompts": prompt_set_fingerprint(prompts),
        "settings": {**settings.to_dict(), "device": device},
    }
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def generate(
    model: str,
    adapter: str | Path | None,
    prompts: pd.DataFrame,
    settings: GenerationSettings | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Answers of ``model`` (plus LoRA ``adapter``, if given) to every prompt: ``prompt_id, output, output_tokens``.

    ``model`` is anything ``dpo_engine.models.load_model`` takes (a LoRA adapter directory works too).
    ``prompts`` has ``prompt_id`` and ``instruction`` (``load_eval_prompts``). Rows come back in ``prompts`` order;
    ``output`` is the decoded answer up to the first stop token, whitespace-stripped; ``output_tokens`` counts its
    generated tokens (stop token excluded). ``progress(done, total)`` counts prompts and is called once at the
    start (with what the cache already holds) and after each batch. ``df.attrs["generation"]`` records the model,
    adapter, settings and cache directory (also written to that directory's ``meta.json``).
    """
    settings = settings or GenerationSettings()
    settings.validate()
    model_path = resolve_model(model)
    if adapter is None and adapter_base(model_path) is not None:  # ``model`` is itself an adapter directory
        adapter, model_path = model_path, resolve_model(adapter_base(model_path))
    adapter = Path(adapter) if adapter is not None else None
    device = detect_device() if settings.device == "auto" else settings.device
    settings = settings.resolved(device)

    cache_key = generation_cache_key(model_path, adapter, prompts, settings, device)
    cache = generations_dir() / cache_key
    record = {
        "model": str(model),
        "model_path": str(model_path),
        "adapter": str(adapter) if adapter is not None else None,
        "settings": {**settings.to_dict(), "device": device},
        "prompt_set_fingerprint": prompt_set_fingerprint(prompts),
        "n_prompts": len(prompts),
        "cache_key": cache_key,
        "cache_dir": str(cache),
    }
    if not (cache / "meta.json").exists():
        atomic_write_json(cache / "meta.json", record)

    batches = _length_sorted_batches(prompts, settings.batch_size)
    todo = [index for index in range(len(batches)) if not part_path(cache, index).exists()]
    done = len(prompts) - sum(len(batches[index]) for index in todo)
    if progress:
        progress(done, len(prompts))
    if todo:
        loaded_model, tokenizer = load_model(str(model_path), dtype=settings.dtype, device=device, adapter=adapter)
        rows = [row for index in todo for row in batches[index]]  # longest instruction first
        part_of = {row: index for index in todo for row in batches[index]}
        finished: dict[int, dict[int, tuple[str, int]]] = {index: {} for index in todo}
        answers = stream_generations(loaded_model, tokenizer, [prompts.instruction.iloc[row] for row in rows], settings,
                                     seeds=[settings.seed + row for row in rows])
        for position, output, count in answers:
            row = rows[position]
            index = part_of[row]
            finished[index][row] = (output, count)
            if len(finished[index]) < len(batches[index]):
                continue
            part_rows = batches[index]
            write_part(cache, index, pd.DataFrame({
                "prompt_id": list(prompts.prompt_id.iloc[part_rows]),
                "output": [finished[index][row][0] for row in part_rows],
                "output_tokens": [finished[index][row][1] for row in part_rows],
            }))
            done += len(part_rows)
            if progress:
                progress(done, len(prompts))

    generated = read_parts(cache, OUTPUT_COLUMNS).drop_duplicates("prompt_id").set_index("prompt_id")
    result = generated.loc[list(prompts.prompt_id)].reset_index()[OUTPUT_COLUMNS]
    result["output_tokens"] = result.output_tokens.astype(int)
    result.attrs["generation"] = record
    return result


def stream_generations(model, tokenizer, instructions: list[str], settings: GenerationSettings,
                       seeds: list[int] | None = None) -> Iterator[tuple[int, str, int]]:
    """Answers to ``instructions`` (each a single user message) as they finish: ``(index, answer, tokens)``.

    ``answer`` is decoded up to the first stop token, whitespace-stripped; ``tokens`` counts its generated tokens
    (the stop token not counted). Decodes ``settings.batch_size`` prompts at a time by continuous batching
    (`decoding.stream_answers`); a model whose cache cannot be spliced (sliding-window attention, recurrent layers)
    gets padded batches of ``settings.batch_size`` through ``model.generate`` instead. ``seeds[i]`` seeds prompt
    ``i``'s sampling (default ``settings.seed + i``).
    """
    settings = settings.resolved(next(model.parameters()).device.type)
    stop_ids = stop_token_ids(tokenizer)
    encoded = [prompt_ids(tokenizer, [{"role": "user", "content": instruction}]) for instruction in instructions]
    seeds = seeds if seeds is not None else [settings.seed + i for i in range(len(encoded))]
    if supports_continuous_batching(model):
        answers = stream_answers(model, encoded, slots=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                                 stop_ids=stop_ids, temperature=settings.temperature, top_p=settings.top_p, seeds=seeds)
    else:
        answers = _padded_batches(model, tokenizer, encoded, settings, stop_ids, seeds)
    for index, new_tokens in answers:
        length = next((position for position, token in enumerate(new_tokens) if token in stop_ids), len(new_tokens))
        yield index, tokenizer.decode(new_tokens[:length], skip_special_tokens=True).strip(), length


def generate_batch(model, tokenizer, instructions: list[str], settings: GenerationSettings) -> tuple[list[str], list[int]]:
    """`stream_generations` collected in ``instructions`` order: the answers and their token counts."""
    outputs, counts = [""] * len(instructions), [0] * len(instructions)
    for index, output, count in stream_generations(model, tokenizer, instructions, settings):
        outputs[index], counts[index] = output, count
    return outputs, counts


def _padded_batches(model, tokenizer, encoded: list[list[int]], settings: GenerationSettings, stop_ids: set[int],
                    seeds: list[int]) -> Iterator[tuple[int, list[int]]]:
    """``(index, new token ids)`` per prompt, from one left-padded ``model.generate`` call per ``batch_size`` prompts
    (the first prompt's seed seeds a sampled batch)."""
    pad_id = _pad_token_id(tokenizer)
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
    greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    device = next(model.parameters()).device
    for start in range(0, len(encoded), settings.batch_size):
        batch = encoded[start:start + settings.batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        if settings.temperature > 0:
            torch.manual_seed(seeds[start])
        with torch.inference_mode():
            sequences = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=sorted(stop_ids),
                **(sampling if settings.temperature > 0 else greedy),
            )
        for row, new_tokens in enumerate(sequences[:, width:].tolist()):
            yield start + row, new_tokens


def stop_token_ids(tokenizer) -> set[int]:
    """Token ids that end an answer: the tokenizer's EOS and ChatML's ``<|im_end|>`` when the vocabulary has it."""
    stop = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if im_end is not None and im_end != tokenizer.unk_token_id:
        stop.add(im_end)
    return stop


def _pad_token_id(tokenizer) -> int:
    """``<|im_end|>`` when the vocabulary has it (batched greedy answers then equal one-prompt-at-a-time ones,
    ``tests/test_generation.py``), else the tokenizer's pad token."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if im_end is not None and im_end != tokenizer.unk_token_id:
        return im_end
    return tokenizer.pad_token_id


def _length_sorted_batches(prompts: pd.DataFrame, batch_size: int) -> list[list[int]]:
    """Row positions in batches of ``batch_size``, longest instruction first (little padding, and memory errors
    show up at once). Fixed by the prompts and the batch size alone, so a resumed job finds the same batches."""
    order = np.argsort(-prompts.instruction.str.len().to_numpy(), kind="stable").tolist()
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _first_present(candidates: tuple[str, ...], found: list[str]) -> str | None:
    return next((column for column in candidates if column in found), None)
