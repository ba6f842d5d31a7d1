"""Tags and notes of a run, kept in its directory (``annotations.json``) so they move and vanish with the run.

Tags group and filter runs (a sweep tags its runs ``sweep:<id>``); notes are free text. The training worker
never writes this file, so editing it while a run trains is safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dpo_engine.errors import UserError
from dpo_engine.files import atomic_write_json, read_json

ANNOTATIONS_FILE = "annotations.json"
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.:=+-]{1,48}$")
SWEEP_TAG_PREFIX = "sweep:"


class AnnotationError(UserError):
    """A tag that cannot be stored (empty, too long, or with characters other than letters, digits, _ . : = + -)."""


@dataclass(frozen=True)
class Annotations:
    tags: tuple[str, ...] = ()
    notes: str = ""

    @property
    def sweep(self) -> str | None:
        """The sweep id of a run launched by a sweep, from its ``sweep:<id>`` tag."""
        return next((tag.removeprefix(SWEEP_TAG_PREFIX) for tag in self.tags if tag.startswith(SWEEP_TAG_PREFIX)), None)


def parse_tags(text: str) -> tuple[str, ...]:
    """``"baseline, dm-mul  lr=1e-5"`` -> ``("baseline", "dm-mul", "lr=1e-5")``: split on commas and spaces,
    duplicates dropped, first-seen order kept. ``AnnotationError`` names the tag that is not allowed."""
    tags: list[str] = []
    for tag in re.split(r"[,\s]+", text.strip()):
        if not tag:
            continue
        if not TAG_PATTERN.match(tag):
            raise AnnotationError(
                f"tags: {tag!r} is not a tag (1-48 letters, digits or _ . : = + -; separate tags with commas)"
            )
        if tag not in tags:
            tags.append(tag)
    return tuple(tags)


def read_annotations(run_dir: str | Path) -> Annotations:
    """The run's tags and notes (empty for a run that has none)."""
    record = read_json(Path(run_dir) / ANNOTATIONS_FILE, {}) or {}
    return Annotations(tags=tuple(record.get("tags", ())), notes=record.get("notes", ""))


def write_annotations(run_dir: str | Path, annotations: Annotations) -> None:
    """Replace the run's tags and notes (atomically: a reader sees the old ones or the new ones)."""
    for tag in annotations.tags:
        parse_tags(tag)
    atomic_write_json(Path(run_dir) / ANNOTATIONS_FILE, {"tags": list(annotations.tags), "notes": annotations.notes})
