"""Copy a small, shippable part of a finished (or partial) study into ``assets/demo/``, in the engine's formats.

Layout of the export (``dpo_engine.demo.install_demo`` copies ``workspace/`` into a Margin Lab workspace, where the
normal engine code, and so the dashboard's Runs and Results pages, read it):

    README.md, manifest.json        what this is: study, profile, date, command, commit, contents
    margins/<data>.parquet (+ .meta.json)   the margins table the subsets were selected from
    summary/                        the study summary (table.md, summary.md, results.csv, figures)
    workspace/selections/*.json     the engine Selection of every exported run's subset
    workspace/runs/<run_id>/        run directories without checkpoints/ (and without adapter/ when it is larger
                                    than ``export.max_adapter_mb``): run.json, config.yaml, resolved_config.json,
                                    status.json, subset.jsonl, metrics.jsonl, pair_rewards.parquet, train.log
    workspace/evals/<eval_id>/      the combined evaluation (every variant: generations and judgements in
                                    per_prompt.parquet and judgements.jsonl, results.csv, meta.json); the
                                    per-variant ones when there is no combined evaluation yet
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from dpo_engine.files import atomic_write_json, atomic_write_text, read_json
from dpo_engine.paths import REPO_ROOT
from dpo_engine.timestamps import utc_now_iso

from .config import STUDY
from .pipeline import StudyError

if TYPE_CHECKING:
    from .pipeline import Study

DEFAULT_TARGET = REPO_ROOT / "assets" / "demo"
RUN_SKIP = {"checkpoints", ".status.lock"}


def _size_mb(path: Path) -> float:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) / 2**20


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                              check=False)
    except OSError:
        return None
    return done.stdout.strip() or None


def copy_run(run_dir: Path, target: Path, max_adapter_mb: float) -> bool:
    """Copy one run directory without checkpoints (and a large adapter); return whether the adapter was kept."""
    target.mkdir(parents=True)
    adapter_kept = False
    for item in sorted(run_dir.iterdir()):
        if item.name in RUN_SKIP or item.name.startswith("."):
            continue
        if item.name in ("adapter", "model"):
            if item.name == "adapter" and _size_mb(item) <= max_adapter_mb:
                shutil.copytree(item, target / item.name)
                adapter_kept = True
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name)
        else:
            shutil.copy2(item, target / item.name)
    resolved = read_json(target / "resolved_config.json", {})
    resolved["subset"] = "subset.jsonl"  # install_demo points it at the installed copy
    atomic_write_json(target / "resolved_config.json", resolved)
    if not adapter_kept:
        status = read_json(target / "status.json", {})
        note = "shipped demo run: trained weights not included (re-run the study to evaluate it again)"
        status["message"] = f"{status.get('message') or ''} · {note}".lstrip(" ·")
        atomic_write_json(target / "status.json", status)
    return adapter_kept


def export_demo(study: Study, target: Path = DEFAULT_TARGET, command: str = "") -> Path:
    """Write the export into ``target`` (replacing it as a whole, atomically by rename) and return it."""
    evaluated = study.evaluated()
    if not evaluated:
        raise StudyError(f"nothing to export from {study.out_dir}: no variant has been trained and evaluated yet")
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        manifest = _fill(study, staging, evaluated, command)
        _write_readme(staging, manifest)
        old = target.parent / f".{target.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    study.log(f"export: {target} ({_size_mb(target):.1f} MB)")
    return target


def _fill(study: Study, staging: Path, evaluated: list[tuple[str, dict]], command: str) -> dict:
    workspace = staging / "workspace"
    max_adapter_mb = float((study.profile.get("export") or {}).get("max_adapter_mb", 1.0))
    created = utc_now_iso()

    margins = Path(study.state["margins"]["path"])
    (staging / "margins").mkdir()
    shutil.copy2(margins, staging / "margins" / margins.name)
    sidecar = margins.with_name(margins.name + ".meta.json")
    if sidecar.exists():
        shutil.copy2(sidecar, staging / "margins" / sidecar.name)

    if study.summary_dir.exists():
        shutil.copytree(study.summary_dir, staging / "summary")

    runs, selections = [], {}
    for key, info in evaluated:
        run_dir = Path(info["run_dir"])
        kept = copy_run(run_dir, workspace / "runs" / run_dir.name, max_adapter_mb)
        subset = study.state["selections"][info["subset"]]
        if subset["name"] not in selections:
            (workspace / "selections").mkdir(parents=True, exist_ok=True)
            shutil.copy2(subset["file"], workspace / "selections" / Path(subset["file"]).name)
            selections[subset["name"]] = Path(subset["file"]).name
        runs.append({"variant": key, "label": info["label"], "run_id": info["run_id"], "loss": info["loss"],
                     "selection": subset["name"], "n_pairs": subset["n_pairs"], "adapter_shipped": kept,
                     "train_seconds": info.get("train_seconds")})

    combined = study.state.get("combined_eval_id")
    combined_ok = combined and (study.workspace / "evals" / combined / "meta.json").exists()
    eval_ids = [combined] if combined_ok else [info["eval_id"] for _, info in evaluated]
    for eval_id in eval_ids:
        shutil.copytree(study.workspace / "evals" / eval_id, workspace / "evals" / eval_id)

    profile = study.profile
    reproduce = f"python -m experiments.dm_small run --profile {profile.name}"
    if any(key == "full" for key, _ in evaluated) and "full" in (profile.get("optional") or []):
        reproduce += " --with-optional"
    return {
        "demo_id": f"{STUDY}-{profile.name}-{created}",
        "study": STUDY,
        "produced_by": "experiments/dm_small (python -m experiments.dm_small)",
        "profile": profile.name,
        "created": created,
        "command": reproduce,
        "invocations": study.state.get("invocations", []),
        "exported_by": command,
        "git_commit": _git_commit(),
        "data": study.state.get("data"),
        "margins": f"margins/{margins.name}",
        "model": profile["train"]["model"],
        "settings": profile.values,
        "runs": runs,
        "selections": sorted(selections.values()),
        "evals": eval_ids,
        "combined_eval": combined if combined_ok else None,
        "summary": "summary/summary.md" if (staging / "summary" / "summary.md").exists() else None,
        "install": "python -m dpo_engine.demo install  (run by `make demo`)",
    }


def _write_readme(staging: Path, manifest: dict) -> None:
    atomic_write_json(staging / "manifest.json", manifest)
    table_path = staging / "summary" / "table.md"
    table = table_path.read_text(encoding="utf-8").strip() if table_path.exists() else "(no summary yet)"
    dropped = [run["variant"] for run in manifest["runs"] if not run["adapter_shipped"]]
    lines = [
        "# Demo study: dual-margin selection at small scale",
        "",
        f"Produced by the `{STUDY}` study runner (`experiments/dm_small/`), profile **{manifest['profile']}**, "
        f"on {manifest['created'][:10]}" + (f", commit `{manifest['git_commit'][:12]}`" if manifest["git_commit"] else "")
        + ".",
        "",
        f"Command: `{manifest['command']}` (run with the settings in `manifest.json`; invocations: "
        + ", ".join(f"`{line}`" for line in manifest["invocations"]) + ")",
        "",
        "Everything here is in the engine's own formats. `make demo` (or `python -m dpo_engine.demo install`) copies",
        "`workspace/` into the Margin Lab workspace (`$MARGIN_LAB_HOME`) once, so the dashboard's Runs page lists these",
        "runs and its Results page shows the evaluation; deleting them there is final (the copy is not repeated).",
        "",
        "- `margins/`: the margins table the subsets were selected from (and its `.meta.json`).",
        "- `workspace/selections/`: the saved selections (rule, parameters, pair ids).",
        "- `workspace/runs/`: run directories (config, status, metrics.jsonl, subset, pair_rewards) without checkpoints"
        + (f"; trained adapters are not shipped for {', '.join(dropped)}, so these runs cannot be evaluated again"
           if dropped else "") + ".",
        "- `workspace/evals/`: generations, raw judgements, results.csv and per_prompt.parquet.",
        "- `summary/`: the study's summary table, orderings and figures.",
        "",
        "Win rates are against the base model's own answers, judged by the offline stand-in judge: compare the variants",
        "with each other, not with published AlpacaEval numbers.",
        "",
        table,
        "",
    ]
    atomic_write_text(staging / "README.md", "\n".join(lines))


def load_manifest(path: Path = DEFAULT_TARGET) -> dict | None:
    return read_json(Path(path) / "manifest.json")

