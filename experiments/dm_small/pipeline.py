"""The study's stages, each resumable: data -> margins -> selections -> per variant (train, evaluate, summary) ->
combined evaluation -> summary.

Everything goes through the engine: `dpo-engine score` (margins, when no table is given), `select_pairs` and
`save_selection` / `export_selection` (subsets), `runs.create_run` / `run_foreground` / `resume` (training runs
in a normal workspace, so the dashboard's Runs page shows them), `evaluation.report.evaluate` (generation,
offline judge, win rates with bootstrap CIs, paired differences; the Results page shows them).

A stage skips work whose outputs exist and were made with the same settings:

- a run is current when its name is the variant key, its resolved config equals the study's (apart from the
  subset's path) and its subset holds the same pairs; a completed one is kept, a stopped or failed one (a killed
  study) is resumed from its last checkpoint, a running one (a resumed worker still going) is waited for;
- an evaluation is current when it has this study's name for the variant, evaluated exactly that run, on the same
  prompts, with the same generation settings, judge and baseline. Generations are cached per batch by the engine,
  so an interrupted evaluation only generates what is missing.

Runs and evaluations that are not current are left in the workspace, untouched, and not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from dpo_engine.errors import UserError
from dpo_engine.files import atomic_write_json, read_json
from dpo_engine.timestamps import utc_now_iso

from .config import STUDY, Profile, Variant, resolve_path, stamp

STATE_FILE = "study.json"
LOG_FILE = "study.log"
REQUIRED_COLUMNS = ("external_margin", "implicit_margin", "dm_add", "dm_mul")
POLL_S = 2.0
WAIT_LOG_S = 30.0
# Settings that change what a variant's run or evaluation is (the variant lists do not).
RESULT_SETTINGS = ("data", "data_limit", "margins", "score", "frac", "train", "eval")


class StudyError(UserError):
    """A stage could not finish (a run failed, a margins table does not cover the data, ...)."""


@contextlib.contextmanager
def workspace_env(workspace: Path):
    """Point the engine's workspace (``MARGIN_LAB_HOME``) at ``workspace`` while the study runs."""
    previous = os.environ.get("MARGIN_LAB_HOME")
    os.environ["MARGIN_LAB_HOME"] = str(workspace)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MARGIN_LAB_HOME", None)
        else:
            os.environ["MARGIN_LAB_HOME"] = previous


@dataclass
class Study:
    """One profile's study in ``out_dir``, with its engine workspace in ``workspace`` (default ``out_dir/workspace``)."""

    profile: Profile
    out_dir: Path
    workspace: Path | None = None
    command: str = ""
    state: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir).resolve()
        self.workspace = Path(self.workspace).resolve() if self.workspace else self.out_dir / "workspace"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.state = read_json(self.state_path, {}) or {}
        self._judge = None
        self._fingerprints: dict[tuple[str, int], str] = {}

    # ---- bookkeeping ---------------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    @property
    def summary_dir(self) -> Path:
        return self.out_dir / "summary"

    @property
    def tag(self) -> str:
        """Prefix of this study's evaluation names: ``dm-small-cpu``."""
        return f"{STUDY}-{self.profile.name}"

    def log(self, message: str) -> None:
        line = f"[{STUDY}] {message}"
        print(line, flush=True)
        with open(self.out_dir / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(f"{datetime.now().isoformat(timespec='seconds')} {line}\n")

    def save_state(self) -> None:
        self.state.update({
            "study": STUDY,
            "profile": self.profile.name,
            "settings": self.profile.values,
            "out_dir": str(self.out_dir),
            "workspace": str(self.workspace),
            "updated": utc_now_iso(),
        })
        if self.command and self.command not in self.state.setdefault("invocations", []):
            self.state["invocations"].append(self.command)
        atomic_write_json(self.state_path, self.state)

    def variant_state(self, key: str) -> dict:
        return self.state.setdefault("variants", {}).setdefault(key, {})

    # ---- the whole study ---------------------------------------------------------------------------------------

    def run(self, variants: list[Variant], *, evaluate: bool = True) -> int:
        """Run every stage for ``variants`` (in their order); return 0 when all of them completed and were evaluated."""
        with workspace_env(self.workspace):
            self.log(f"profile {self.profile.name}: {len(variants)} variants -> {self.out_dir} "
                     f"(workspace {self.workspace})")
            pairs_path, pairs, fingerprint = self.prepare_data()
            table = self.prepare_margins(pairs_path, pairs, fingerprint)
            settings = stamp({"settings": self.profile.stamp(*RESULT_SETTINGS), "data": fingerprint,
                              "margins": _file_digest(Path(self.state["margins"]["path"]))})
            if self.state.get("settings_stamp") not in (None, settings):
                self.log("settings, data or margins changed since the last invocation: every variant is checked again")
                self.state.pop("variants", None)
                self.state.pop("combined_eval_id", None)
            self.state["settings_stamp"] = settings
            subsets = self.prepare_selections(variants, table, pairs, fingerprint)
            prompts = self.eval_prompts() if evaluate else None
            failures = []
            for number, variant in enumerate(variants, 1):
                self.log(f"variant {number}/{len(variants)}: {variant.key} ({variant.label})")
                try:
                    run_id = self.train(variant, subsets[variant.subset.key])
                    if evaluate:
                        self.evaluate_variant(variant, run_id, prompts)
                        self.refresh_summary()
                except UserError as error:
                    failures.append(variant.key)
                    self.variant_state(variant.key)["error"] = str(error).splitlines()[0]
                    self.save_state()
                    self.log(f"{variant.key}: FAILED: {error}")
            if evaluate:
                self.combined_evaluation(prompts)
                self.refresh_summary()
            self.log("done" if not failures else f"done, with failures: {', '.join(failures)}")
            return 1 if failures else 0

    # ---- data and margins ------------------------------------------------------------------------------------------

    def prepare_data(self) -> tuple[Path, pd.DataFrame, str]:
        """The pairs the study trains on: the data file, or its first ``data_limit`` pairs (written once)."""
        from dpo_engine.data.pairs import fingerprint, load_pairs, save_pairs

        source = self.profile.data_path
        pairs = load_pairs(source).pairs
        limit = self.profile.get("data_limit")
        path = source
        if limit:
            pairs = pairs.iloc[: int(limit)].reset_index(drop=True)
            path = self.out_dir / "data" / f"{source.stem}-first{int(limit)}.jsonl"
            if not path.exists() or self.subset_fingerprint(path) != fingerprint(pairs):
                save_pairs(pairs, path)
        digest = fingerprint(pairs)
        self.state["data"] = {"source": str(source), "path": str(path), "n_pairs": len(pairs), "fingerprint": digest}
        self.log(f"data: {len(pairs)} pairs from {source}" + (f" (first {limit})" if limit else ""))
        return path, pairs, digest

    def prepare_margins(self, pairs_path: Path, pairs: pd.DataFrame, fingerprint: str) -> pd.DataFrame:
        """The margins table, restricted to the study's pairs (in their order).

        The profile's ``margins`` table when it exists; otherwise one computed with ``dpo-engine score`` under
        ``out_dir/margins/`` (skipped when a table made from the same pairs and settings is there).
        """
        from dpo_engine.margins.table import load_margins_table

        given = self.profile.margins_path
        if given is not None and given.exists():
            path = given
        else:
            path = self.compute_margins(pairs_path, fingerprint, missing=given)
        table, meta = load_margins_table(path)
        missing = sorted(set(pairs.pair_id) - set(table.pair_id))
        if missing:
            raise StudyError(f"margins table {path} has no row for {len(missing)} of the {len(pairs)} pairs "
                             f"(e.g. '{missing[0]}'): was it computed on another dataset?")
        if meta.get("dataset_fingerprint") not in (None, fingerprint):
            self.log(f"margins: {path} was computed on a larger or different file; using the rows of these pairs")
        table = table.set_index("pair_id").loc[list(pairs.pair_id)].reset_index()
        empty = [column for column in REQUIRED_COLUMNS if column not in table or table[column].isna().all()]
        if empty:
            raise StudyError(f"margins table {path} has no values in {', '.join(empty)}: score both margins first")
        self.state["margins"] = {"path": str(path), "meta": meta}
        self.log(f"margins: {path}")
        return table

    def compute_margins(self, pairs_path: Path, fingerprint: str, missing: Path | None) -> Path:
        """``dpo-engine score`` with the profile's ``score`` settings (the engine caches log-probs and the proxy)."""
        from dpo_engine.cli import main as engine_cli

        score = self.profile["score"]
        out = self.out_dir / "margins" / f"{Path(self.profile['data']).stem}.parquet"
        stamp_path = out.with_name(out.name + ".study-stamp.json")
        wanted = {"settings": score, "dataset_fingerprint": fingerprint}
        if out.exists() and read_json(stamp_path) == json.loads(json.dumps(wanted)):
            return out
        if missing is not None:
            self.log(f"margins: {missing} does not exist; computing a table with `dpo-engine score` -> {out}")
        args = ["score", str(pairs_path), "--out", str(out), "--external", score["external"],
                "--model", score["model"], "--dtype", score["dtype"], "--max-length", str(score["max_length"]),
                "--max-prompt-length", str(score["max_prompt_length"]), "--batch-size", str(score["batch_size"]),
                "--warmup-epochs", str(score["warmup_epochs"]), "--seed", str(score["seed"]),
                "--warmup-dir", str(self.out_dir / "margins" / "warmup")]
        if score.get("seed_size"):
            args += ["--seed-size", str(score["seed_size"])]
        if score.get("reward_model"):
            args += ["--reward-model", str(resolve_path(score["reward_model"]))]
        self.log("margins: dpo-engine " + " ".join(args))
        if engine_cli(args) != 0:
            raise StudyError(f"`dpo-engine score` failed for {pairs_path}")
        atomic_write_json(stamp_path, wanted)
        return out

    # ---- selections ----------------------------------------------------------------------------------------------

    def prepare_selections(self, variants: list[Variant], table: pd.DataFrame, pairs: pd.DataFrame,
                           fingerprint: str) -> dict[str, Path]:
        """Save each subset the variants need as an engine Selection (study copy + workspace) and export its pairs.

        Returns ``{subset key: exported pairs file}``. A selection whose rule, parameters, data and ids did not
        change keeps its file (and creation time).
        """
        from dpo_engine.selection.rules import select_pairs
        from dpo_engine.selection.store import Selection, export_selection, load_selection, save_selection

        exported = {}
        for spec in {variant.subset.key: variant.subset for variant in variants}.values():
            params = dict(spec.params)
            if spec.rule == "manual":
                params["pair_ids"] = list(pairs.pair_id)
            pair_ids = select_pairs(table, spec.rule, params)
            selection = Selection(name=spec.selection_name, rule=spec.rule, params=params,
                                  dataset_fingerprint=fingerprint, pair_ids=pair_ids)
            study_copy = self.out_dir / "selections" / f"{spec.selection_name}.json"
            subset_path = self.out_dir / "subsets" / f"{spec.selection_name}.jsonl"
            previous = load_selection(study_copy) if study_copy.exists() else None
            same = previous is not None and (previous.rule, previous.params, previous.dataset_fingerprint,
                                             previous.pair_ids) == (selection.rule, json.loads(json.dumps(params)),
                                                                    fingerprint, pair_ids)
            if same:
                selection = previous
            else:
                save_selection(selection, path=study_copy, overwrite=True)
            save_selection(selection, overwrite=True)  # the workspace copy: the dashboard and results.csv's subset_rule read it
            if not same or not subset_path.exists():
                export_selection(selection, pairs, subset_path)
            exported[spec.key] = subset_path
            self.state.setdefault("selections", {})[spec.key] = {
                "name": spec.selection_name, "rule": spec.rule, "n_pairs": len(pair_ids), "file": str(study_copy),
                "subset": str(subset_path),
            }
        self.save_state()
        sizes = [f"{key} ({self.state['selections'][key]['n_pairs']})" for key in exported]
        self.log(f"selections: {', '.join(sizes)}")
        return exported

    # ---- training ------------------------------------------------------------------------------------------------

    def train_config(self, variant: Variant, subset_path: Path) -> dict:
        config = dict(self.profile["train"])
        config.update(subset=str(subset_path), loss=variant.loss)
        return config

    def subset_fingerprint(self, path: Path) -> str:
        """`dpo_engine.data.fingerprint` of a pairs file, memoised by (path, mtime)."""
        from dpo_engine.data.pairs import fingerprint, load_pairs

        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._fingerprints:
            self._fingerprints[key] = fingerprint(load_pairs(path).pairs)
        return self._fingerprints[key]

    def _config_stamp(self, config: dict, subset_path: Path) -> str:
        values = {key: value for key, value in config.items() if key != "subset"}
        return stamp({"config": values, "subset": self.subset_fingerprint(subset_path)})

    def _desired_stamp(self, config: dict, subset_path: Path) -> str:
        from dpo_engine.training.config import TrainConfig

        resolved = TrainConfig.from_dict(config).to_dict()
        model_path = Path(resolved["model"]).expanduser()
        if model_path.exists():  # create_run stores local model directories as absolute paths
            resolved["model"] = str(model_path.resolve())
        return self._config_stamp(resolved, subset_path)

    def current_runs(self, variant: Variant, wanted: str) -> list:
        """Runs of this variant made with the wanted settings, newest first."""
        from dpo_engine import runs

        found = []
        for run in runs.list_runs():
            if run.name != variant.key or not run.subset_path.exists():
                continue
            if run.state == "completed" and not (run.adapter_dir / "adapter_config.json").exists():
                continue  # e.g. a shipped demo run, installed without its weights: it cannot be evaluated
            if self._config_stamp(run.config, run.subset_path) == wanted:
                found.append(run)
        return found

    def train(self, variant: Variant, subset_path: Path) -> str:
        """The variant's completed run id: an existing one, a resumed one, or a new one trained in this process."""
        from dpo_engine import runs

        config = self.train_config(variant, subset_path)
        wanted = self._desired_stamp(config, subset_path)
        candidates = self.current_runs(variant, wanted)
        run = next((run for run in candidates if run.state == "completed"), None) or (candidates[0] if candidates else None)
        if run is not None and run.state == "completed":
            self.log(f"train {variant.key}: skip (completed run {run.run_id})")
        elif run is not None and run.is_active and run.status.get("launched") is None:
            self.log(f"train {variant.key}: run {run.run_id} was created but never started; training it")
            self._foreground(run.run_id)
        elif run is not None and run.is_active:
            self.log(f"train {variant.key}: run {run.run_id} is {run.state} in another process; waiting for it")
            self._wait(run.run_id)
        elif run is not None:
            self.log(f"train {variant.key}: resuming {run.state} run {run.run_id} from step {run.step} "
                     "(its last checkpoint)")
            runs.resume(run.run_id)
            self._wait(run.run_id)
        else:
            run_id = runs.create_run(config, name=variant.key, selection_name=variant.subset.selection_name)
            self.log(f"train {variant.key}: new run {run_id} ({variant.loss}, {subset_path.name})")
            self._foreground(run_id)
            run = runs.get_run(run_id)
        final = runs.get_run(run.run_id)
        info = self.variant_state(variant.key)
        info.update(run_id=final.run_id, run_dir=str(final.run_dir), run_state=final.state, loss=variant.loss,
                    subset=variant.subset.key, label=variant.label, group=variant.group,
                    train_seconds=_elapsed(final.status))
        info.pop("error", None)
        self.save_state()
        if final.state != "completed":
            raise StudyError(f"run {final.run_id} ended {final.state}: {final.message.splitlines()[0] if final.message else ''}")
        return final.run_id

    def _foreground(self, run_id: str) -> None:
        from dpo_engine import runs

        final = runs.run_foreground(run_id)
        self.log(f"run {run_id}: {final['state']}: {(final.get('message') or '').splitlines()[0]}")

    def _wait(self, run_id: str) -> None:
        from dpo_engine import runs

        last, logged = None, 0.0
        while True:
            info = runs.get_run(run_id)
            if not info.is_active:
                self.log(f"run {run_id}: {info.state}: {info.message.splitlines()[0] if info.message else ''}")
                return
            if (info.step, info.state) != last and time.monotonic() - logged >= WAIT_LOG_S:
                last, logged = (info.step, info.state), time.monotonic()
                self.log(f"run {run_id}: {info.state}, step {info.step}/{info.total_steps or '?'}")
            time.sleep(POLL_S)

    # ---- evaluation ----------------------------------------------------------------------------------------------

    def eval_prompts(self) -> pd.DataFrame:
        from dpo_engine.evaluation.generation import load_eval_prompts

        settings = self.profile["eval"]
        source = settings.get("prompts")
        return load_eval_prompts(resolve_path(source) if source else None, n=settings["n_prompts"],
                                 seed=settings["prompt_seed"])

    def generation_settings(self):
        from dpo_engine.evaluation.generation import GenerationSettings

        settings = self.profile["eval"]
        return GenerationSettings(
            max_new_tokens=int(settings["max_new_tokens"]), temperature=float(settings["temperature"]),
            batch_size=int(settings["batch_size"]), seed=int(settings["prompt_seed"]), dtype=settings["dtype"],
            device=settings["device"],
        )

    @property
    def judge(self):
        if self._judge is None:
            from dpo_engine.evaluation.judge_factory import make_judge

            self._judge = make_judge(self.profile["eval"]["judge"])
        return self._judge

    def eval_name(self, key: str) -> str:
        return f"{self.tag}: {key}"

    def find_eval(self, name: str, run_ids: list[str], prompts: pd.DataFrame) -> str | None:
        """The newest saved evaluation called ``name`` of exactly ``run_ids`` with the study's eval settings."""
        from dpo_engine.evaluation.store import list_evals, load_eval

        evals = list_evals()
        for eval_id in evals[evals.name == name].eval_id:
            meta = load_eval(eval_id).meta
            if self._eval_matches(meta, run_ids, prompts):
                return eval_id
        return None

    def _eval_matches(self, meta: dict, run_ids: list[str], prompts: pd.DataFrame) -> bool:
        return (
            list(meta.get("runs", [])) == list(run_ids)
            and meta.get("settings") == self.generation_settings().to_dict()
            and meta.get("prompt_set", {}).get("prompt_ids") == list(prompts.prompt_id)
            and meta.get("baseline") == self.profile["eval"]["baseline"]
            and meta.get("judge", {}).get("name") == self.judge.name
        )

    def evaluate_variant(self, variant: Variant, run_id: str, prompts: pd.DataFrame) -> str:
        """The variant's evaluation against the base model: an existing current one, or a new one."""
        from dpo_engine.evaluation.report import evaluate

        name = self.eval_name(variant.key)
        eval_id = self.find_eval(name, [run_id], prompts)
        if eval_id is not None:
            self.log(f"eval {variant.key}: skip (evaluation {eval_id})")
        else:
            started = time.perf_counter()
            result = evaluate([run_id], judge=self.judge, prompts=prompts, baseline=self.profile["eval"]["baseline"],
                              settings=self.generation_settings(), eval_name=name, progress=self._progress())
            eval_id = result.eval_id
            row = result.results.iloc[0]
            self.log(f"eval {variant.key}: {eval_id}: win rate {row.win_rate:.1f} % "
                     f"[{row.ci_low:.1f}, {row.ci_high:.1f}] on {int(row.n)} prompts "
                     f"({time.perf_counter() - started:.0f} s)")
            self.variant_state(variant.key)["eval_seconds"] = round(time.perf_counter() - started, 1)
        self.variant_state(variant.key)["eval_id"] = eval_id
        self.save_state()
        return eval_id

    def combined_evaluation(self, prompts: pd.DataFrame) -> str | None:
        """One engine evaluation of every evaluated variant (the Results page's figure, paired against random).

        Generations come from the engine's cache, so this costs judging only. An older combined evaluation of a
        subset of these runs (a partial study) is deleted when a new one replaces it.
        """
        from dpo_engine.evaluation.report import evaluate
        from dpo_engine.evaluation.store import list_evals, load_eval

        variants = self.evaluated()
        if not variants:
            return None
        run_ids = [info["run_id"] for _, info in variants]
        keys = [key for key, _ in variants]
        compare_to = run_ids[keys.index(self.reference_key(keys))]
        name = self.eval_name("all variants")
        eval_id = self.find_eval(name, run_ids, prompts)
        if eval_id is not None:
            self.log(f"combined evaluation: skip ({eval_id})")
        else:
            self.log(f"combined evaluation of {len(run_ids)} runs (cached generations; judging only)")
            eval_id = evaluate(run_ids, judge=self.judge, prompts=prompts, baseline=self.profile["eval"]["baseline"],
                               settings=self.generation_settings(), eval_name=name, compare_to=compare_to,
                               progress=self._progress()).eval_id
            self.log(f"combined evaluation: {eval_id}")
        evals = list_evals()
        for stale in evals[(evals.name == name) & (evals.eval_id != eval_id)].eval_id:
            # Only one whose runs the new one all has (an earlier, partial study); others stay (other settings).
            if set(load_eval(stale).meta.get("runs", [])) <= set(run_ids):
                shutil.rmtree(self.workspace / "evals" / stale, ignore_errors=True)
                self.log(f"combined evaluation: removed superseded {stale}")
        self.state["combined_eval_id"] = eval_id
        self.save_state()
        return eval_id

    def evaluated(self) -> list[tuple[str, dict]]:
        """``(variant key, state)`` of every variant with a completed run and an evaluation, in study order."""
        from .config import all_variants

        variants = self.state.get("variants", {})
        order = [variant.key for variant in all_variants(self.profile)]
        return [(key, variants[key]) for key in order
                if key in variants and variants[key].get("eval_id") and variants[key].get("run_state") == "completed"]

    @staticmethod
    def reference_key(keys: list[str]) -> str:
        """The variant paired differences are taken against: the first random seed, else the first variant."""
        return next((key for key in keys if key.startswith("random-")), keys[0])

    def refresh_summary(self) -> None:
        from .summary import write_summary

        path = write_summary(self)
        if path is not None:
            self.log(f"summary: {path}")

    def _progress(self):
        """A progress callback for `evaluate` that logs each stage once (stdout only, not the log file)."""
        seen = set()

        def report(stage: str, done: int, total: int) -> None:
            if stage not in seen:
                seen.add(stage)
                print(f"[{STUDY}]   {stage}", flush=True, file=sys.stdout)

        return report


def _file_digest(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _elapsed(status: dict) -> float | None:
    summary = status.get("summary") or {}
    if summary.get("elapsed_seconds") is not None:
        return round(float(summary["elapsed_seconds"]), 1)
    if status.get("started") and status.get("finished"):
        return round(status["finished"] - status["started"], 1)
    return None
