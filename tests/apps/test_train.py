"""`rollmesh train`, the main job, end to end as a user runs it: the built-in quickstart (embedded
NATS, a digits environment server, an hf inference server with the tiny model, the orchestrator
and a DeepSpeed trainer subprocess). With its fixed seed the reward must clearly rise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")


def rollmesh(*args: str, cwd: Path, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollmesh.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_quickstart_reward_rises(tmp_path: Path) -> None:
    proc = rollmesh("train", "--set", "mesh.nats.port=0", "--set", "dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == len(records) == 60
    assert summary["reward_first"] < 0.35, summary
    assert summary["reward_last"] > 0.8, summary
    assert summary["errored"] == 0
    assert (run / "reward_curve.png").stat().st_size > 10_000
    assert any(p.name.startswith("step-") for p in (run / "checkpoints").iterdir())
    # Sampling followed the trainer: weights were pushed and rollouts stayed near-on-policy.
    assert records[-1]["pushed_version"] >= 59
    assert max(r["policy_lag_max"] or 0 for r in records) <= 3
    assert "reward (mean of the first / last" in proc.stdout


def test_a_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('steps = 2\n[rollout]\nenv = "digits"\nsamplng = {}\n')
    proc = rollmesh("train", "run.toml", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "samplng" in proc.stderr + proc.stdout
    proc = rollmesh("train", "missing.toml", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr + proc.stdout
