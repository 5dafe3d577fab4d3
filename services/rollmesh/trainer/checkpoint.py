"""Checkpoint directories that are complete or invisible.

<dir>/step-00000010/         a complete checkpoint
    ds/ ...                  DeepSpeed shards of every rank (model, optimizer, scheduler)
    hf/                      Hugging Face export (model + tokenizer), when enabled
    trainer_state.json       step, policy version, stream cursor, rollouts of each step since the last one
    COMPLETE                 written last: the marker that makes the directory a checkpoint
<dir>/.tmp-step-00000011/    being written: never picked up, removed at the next start

A checkpoint is written into a temporary directory, flushed to disk, marked COMPLETE and renamed
into place in one atomic rename, so a trainer killed at any moment leaves either the previous
checkpoint as the newest or the new one whole. Directories without the marker are ignored.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..durable import fsync_dir
from ..telemetry import get_logger

log = get_logger(__name__)

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
HF_DIR = "hf"
_NAME_RE = re.compile(r"^step-(\d{8,})$")
TMP_PREFIX = ".tmp-"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]

    @property
    def hf_path(self) -> Path:
        return self.path / HF_DIR


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path` if it is complete (marker and readable state), else None."""
    m = _NAME_RE.match(path.name)
    if not m or not (path / MARKER).is_file():
        return None
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        log.warning("ignoring checkpoint %s: unreadable %s", path, STATE_FILE)
        return None
    return Checkpoint(path=path, step=int(m.group(1)), state=state)


class CheckpointStore:
    """The checkpoints of one run in one directory (shared by every rank: a shared file system
    when ranks span machines)."""

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.dir = Path(directory)
        self.keep = keep

    def complete(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [c for p in self.dir.iterdir() if p.is_dir() and (c := read_checkpoint(p)) is not None]
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Checkpoint | None:
        done = self.complete()
        return done[-1] if done else None

    def remove_partial(self) -> list[Path]:
        """Deletes what killed trainers left half-written (temporary dirs, step dirs without the
        marker). Only rank 0 calls it, before any rank writes."""
        removed = []
        if not self.dir.is_dir():
            return removed
        for p in self.dir.iterdir():
            if p.is_dir() and (p.name.startswith(TMP_PREFIX) or (_NAME_RE.match(p.name) and not (p / MARKER).exists())):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        if removed:
            log.warning("removed half-written checkpoints: %s", ", ".join(str(p) for p in removed))
        return removed

    def staging(self, step: int) -> Path:
        """The temporary directory a checkpoint of `step` is written into (same on every rank)."""
        return self.dir / f"{TMP_PREFIX}{step_name(step)}"

    def prepare(self, step: int) -> Path:
        path = self.staging(step)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def commit(self, step: int, state: dict[str, Any]) -> Checkpoint:
        """Writes the state, flushes everything, marks the staging dir COMPLETE and renames it into
        place; then drops the oldest checkpoints beyond `keep`."""
        staging = self.staging(step)
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
        _fsync_tree(staging)
        marker = staging / MARKER
        marker.write_text(json.dumps({"step": step}))
        _fsync_tree(staging)
        final = self.dir / step_name(step)
        if final.exists():  # an incomplete leftover of the same step
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_dir(self.dir)
        checkpoint = Checkpoint(path=final, step=step, state=state)
        self.prune()
        return checkpoint

    def prune(self) -> None:
        done = self.complete()
        for old in done[: max(0, len(done) - self.keep)]:
            # Unmark first: a crash half-way through the delete leaves an ignored dir, not a broken checkpoint.
            (old.path / MARKER).unlink(missing_ok=True)
            shutil.rmtree(old.path, ignore_errors=True)
