"""TrainerProgress follows metrics.jsonl while the trainer writes it, including when a resumed
trainer replaces it with a shorter history (the resume crash: reads began mid-line)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rollmesh.apps.train import TrainerProgress


def _line(step: int, **kw: object) -> str:
    return json.dumps({"step": step, "rollouts": 4, "skipped": {}, **kw}) + "\n"


def test_a_replaced_metrics_file_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(_line(s, reward_mean=0.1 * s) for s in range(1, 8)))
    progress = TrainerProgress(path)
    progress.poll()
    assert progress.step == 7
    # A resumed trainer keeps steps 1-3 of its checkpoint and replaces the file (write + rename);
    # the offset of the old file now points into the middle of a line of the new one.
    tmp = tmp_path / "metrics.tmp"
    tmp.write_text("".join(_line(s, reward_mean=0.1 * s, padding="x" * 7) for s in range(1, 4)))
    os.replace(tmp, path)
    with path.open("a") as f:
        f.write(_line(4, reward_mean=0.9))
    progress.poll()
    assert [r["step"] for r in progress.records] == [1, 2, 3, 4]
    assert progress.records[-1]["reward_mean"] == 0.9


def test_torn_and_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(_line(1) + '{"step": 2, "rollo\n' + _line(3) + '{"step": 4')
    progress = TrainerProgress(path)
    progress.poll()
    assert [r["step"] for r in progress.records] == [1, 3]  # the torn line is skipped, the partial one waits
    with path.open("a") as f:
        f.write(', "rollouts": 4, "skipped": {"t9": "error", "t8": "stale"}}\n')
    progress.poll()
    assert [r["step"] for r in progress.records] == [1, 3, 4]
    assert progress.consumed == 4 * 3 + 1  # errored rollouts are counted by the orchestrator itself
