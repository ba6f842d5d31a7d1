"""Small file helpers shared by the engine: atomic writes, append-only JSONL, and part-file caches."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_directory(final_dir: str | os.PathLike) -> Iterator[Path]:
    """A hidden sibling of ``final_dir`` to fill, renamed to ``final_dir`` in one step when the block ends.

    When the block raises, the sibling is removed: a failure half-way leaves nothing that looks finished.
    ``final_dir`` must not exist or be an empty directory (else ``OSError``, and nothing is left behind either).
    A sibling left by a killed process is cleared first.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = final_dir.parent / f".{final_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if final_dir.exists():
            final_dir.rmdir()
        staging.rename(final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record as a line; a reader never sees a partial line it cannot skip."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=float) + "\n")
        handle.flush()


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield records from a JSONL file, skipping a torn last line (a writer may be mid-append)."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return


# Part-file caches: a long batch job writes each finished batch as its own parquet file, so a killed job keeps
# what it finished and a rerun does only the rest. A part file is either complete or absent (write, then rename).


def part_path(parts_dir: str | os.PathLike, index: int, prefix: str = "") -> Path:
    """The part file of batch ``index`` in ``parts_dir`` (``prefix``: the writer's name, when several write at once)."""
    return Path(parts_dir) / f"part-{prefix}{index:08d}.parquet"


def write_part(parts_dir: str | os.PathLike, index: int, table, prefix: str = "") -> Path:
    """Write one finished batch (a DataFrame) as ``part_path(parts_dir, index, prefix)``, atomically."""
    path = part_path(parts_dir, index, prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_parts(parts_dir: str | os.PathLike, columns: list[str]):
    """Every finished part in ``parts_dir``, concatenated in index order (an empty DataFrame of ``columns`` if none)."""
    import pandas as pd

    parts = sorted(Path(parts_dir).glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)[columns]


def weights_identity(directory: str | os.PathLike) -> dict:
    """Cache-key identity of a model or adapter directory: its path plus the size and modification time of each
    weight file, so retraining an adapter in place gives a new identity."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin"))
    return {"path": str(directory.resolve()), "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]}
