"""The shipped demo study (``assets/demo/``), copied into the workspace so the normal engine code shows it.

``assets/demo/workspace/`` has a workspace's layout (``runs/``, ``evals/``, ``selections/``), written by the study
runner's export (``experiments/dm_small``), and ``rounds/``: two iterative-DPO loops (docs/rounds.md, CPU run 3)
with their rounds' runs inside them (``round-NN/run/``), registered when installed. `install_demo` copies it into ``$MARGIN_LAB_HOME`` once per demo
(``manifest.json``'s ``demo_id``), so the Runs and Results pages list it through `dpo_engine.runs` and
`dpo_engine.evaluation.report` like any other run or evaluation, and a user may delete it there for good:

- nothing already in the workspace is overwritten (same run id, evaluation id or selection file name);
- ``resolved_config.json``'s ``subset`` is pointed at the installed run's ``subset.jsonl``;
- the run registry is re-indexed;
- ``$MARGIN_LAB_HOME/demo.json`` records what was installed; while it names the shipped ``demo_id``, later calls
  do nothing (``force=True`` copies again whatever is missing).

``python -m dpo_engine.demo install`` runs it (``make demo`` does, before starting the dashboard).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from dpo_engine.files import atomic_write_json, read_json, staged_directory
from dpo_engine.paths import ASSETS_DIR, home_dir, workspace_subdir
from dpo_engine.timestamps import utc_now_iso

DEMO_DIR = ASSETS_DIR / "demo"
MANIFEST_FILE = "manifest.json"
MARKER_FILE = "demo.json"


def demo_manifest(source: str | Path = DEMO_DIR) -> dict | None:
    """The shipped demo's manifest (study, profile, date, command, contents), or None when there is no demo."""
    manifest = read_json(Path(source) / MANIFEST_FILE)
    return manifest if isinstance(manifest, dict) else None


def install_demo(source: str | Path = DEMO_DIR, *, force: bool = False) -> dict:
    """Copy the demo's runs, evaluations, selections and rounds loops into the workspace (once per demo); say what
    happened. A workspace that has this demo already gets only the loops it has never been given (they were
    shipped later); a loop the user deleted is not copied again.

    Returns ``{"installed": bool, "demo_id", "runs", "evals", "selections", "rounds", "reason"}`` where the lists
    name what was copied now.
    """
    source = Path(source)
    manifest = demo_manifest(source)
    result = {"installed": False, "demo_id": None, "runs": [], "evals": [], "selections": [], "rounds": [],
              "reason": ""}
    if manifest is None or not (source / "workspace").is_dir():
        result["reason"] = f"no demo in {source}"
        return result
    result["demo_id"] = manifest.get("demo_id")
    marker = home_dir() / MARKER_FILE
    previous = read_json(marker, {}) or {}
    shipped = source / "workspace"
    if not force and previous.get("demo_id") == manifest.get("demo_id"):
        new_loops = _install_loops(shipped / "rounds", skip=set(previous.get("rounds", [])))
        if not new_loops:
            result["reason"] = f"demo {manifest.get('demo_id')} was installed on {previous.get('installed', '?')}"
            return result
        atomic_write_json(marker, {**previous, "rounds": sorted(set(previous.get("rounds", [])) | set(new_loops))})
        return {**result, "installed": True, "rounds": new_loops}

    for run_dir in sorted((shipped / "runs").glob("*")):
        target = workspace_subdir("runs") / run_dir.name
        if not (run_dir / "run.json").is_file() or target.exists():
            continue
        with staged_directory(target) as staging:
            shutil.copytree(run_dir, staging, dirs_exist_ok=True)
            _point_subset_at(staging, target)
        result["runs"].append(run_dir.name)
    for eval_dir in sorted((shipped / "evals").glob("*")):
        target = workspace_subdir("evals") / eval_dir.name
        if (eval_dir / "meta.json").is_file() and not target.exists():
            shutil.copytree(eval_dir, target)
            result["evals"].append(eval_dir.name)
    for selection in sorted((shipped / "selections").glob("*.json")):
        target = workspace_subdir("selections") / selection.name
        if not target.exists():
            shutil.copy2(selection, target)
            result["selections"].append(selection.name)
    result["rounds"] = _install_loops(shipped / "rounds")
    if result["runs"] or result["rounds"]:
        from dpo_engine.runs import rebuild_registry

        rebuild_registry()
    atomic_write_json(marker, {
        "demo_id": manifest.get("demo_id"),
        "source": str(source),
        "installed": utc_now_iso(),
        "study": manifest.get("study"),
        "profile": manifest.get("profile"),
        "runs": sorted(set(previous.get("runs", [])) | set(result["runs"])),
        "evals": sorted(set(previous.get("evals", [])) | set(result["evals"])),
        "rounds": sorted(set(previous.get("rounds", [])) | set(result["rounds"])),
    })
    result["installed"] = True
    return result


def _point_subset_at(run_files: Path, run_dir: Path) -> None:
    """Make the ``resolved_config.json`` in ``run_files`` name the training pairs of the run installed at
    ``run_dir`` (its ``subset.jsonl``), not where the run was exported from."""
    resolved = read_json(run_files / "resolved_config.json", {})
    resolved["subset"] = str(run_dir / "subset.jsonl")
    atomic_write_json(run_files / "resolved_config.json", resolved)


def _install_loops(shipped: Path, skip: set[str] = frozenset()) -> list[str]:
    """Copy the shipped rounds loops that the workspace lacks (but none named in ``skip``) and register each round's
    run where it now lies (its ``resolved_config.json`` pointed at the installed ``subset.jsonl``); return the
    names copied."""
    from dpo_engine.runs.layout import read_record
    from dpo_engine.runs.registry import register

    installed = []
    for loop in sorted(shipped.glob("*")):
        target = workspace_subdir("rounds") / loop.name
        if loop.name in skip or not (loop / "config.json").is_file() or target.exists():
            continue
        with staged_directory(target) as staging:
            shutil.copytree(loop, staging, dirs_exist_ok=True)
        for run_dir in sorted(target.glob("round-*/run")):
            _point_subset_at(run_dir, run_dir)
            register(read_record(run_dir), run_dir)
        installed.append(loop.name)
    return installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_engine.demo", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="copy the shipped demo study into $MARGIN_LAB_HOME (once)")
    install.add_argument("--source", default=str(DEMO_DIR), help="demo directory (default: assets/demo)")
    install.add_argument("--force", action="store_true", help="copy again whatever is missing from the workspace")
    args = parser.parse_args(argv)
    result = install_demo(args.source, force=args.force)
    if result["installed"]:
        print(f"demo {result['demo_id']}: copied {len(result['runs'])} runs, {len(result['evals'])} evaluations, "
              f"{len(result['selections'])} selections and {len(result['rounds'])} rounds loops into {home_dir()}")
    else:
        print(f"demo: nothing to do ({result['reason']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
