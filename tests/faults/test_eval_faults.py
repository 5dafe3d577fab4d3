"""`rollmesh eval` while servers die or freeze under it: every rollout comes back (finished, or an
error with a reason, never a reward), the killed replica's episodes rerun elsewhere, and the
command's output has no asyncio "Task was destroyed" noise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rollmesh.apps.launcher import EnvServerConfig, InferenceConfig, Mesh, MeshConfig, NatsConfig

TASKS, ROLLOUTS = 24, 4


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    config = MeshConfig(
        dir=str(tmp_path / "mesh"),
        nats=NatsConfig(port=0),
        envs=[EnvServerConfig(target="guess-number", replicas=2)],
        inference=InferenceConfig(model="guess-number", backend="scripted", replicas=2),
        grace_s=1.0,
    )
    async with Mesh(config) as m:
        yield m


def _eval(mesh: Mesh, out: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "rollmesh.cli", "eval", "--nats", mesh.nats_url, "--no-progress",
           "--env", "guess-number", "--model", "scripted-guess-number", "-n", str(TASKS), "-r", str(ROLLOUTS),
           "--concurrency", "32", "--split", "train", "--out", str(out), *extra]  # fmt: skip
    credentials = mesh.identity("orchestrator")  # the mesh runs with mTLS: eval is its orchestrator
    env = {**os.environ, **(credentials.env() if credentials else {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_lines(path: Path, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while len(_lines(path)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)


def _check(out: Path, proc: subprocess.Popen[str]) -> list[dict]:
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Task was destroyed" not in stderr and "aclose()" not in stderr, stderr[-3000:]
    rows = _lines(out / "trajectories.jsonl")
    ids = [r["trajectory_id"] for r in rows]
    assert len(ids) == TASKS * ROLLOUTS == len(set(ids)), "every rollout exactly once"
    for r in rows:
        if r.get("stopReason") == "STOP_REASON_ERROR" or r.get("stop_reason") == "STOP_REASON_ERROR":
            assert r.get("error") and not r.get("reward") and not r.get("rewards"), r
    return rows


@pytest.mark.parametrize("victim", ["environment", "inference"])
async def test_a_replica_killed_mid_eval_loses_nothing(mesh: Mesh, tmp_path: Path, victim: str) -> None:
    out = tmp_path / "out"
    proc = _eval(mesh, out)
    _wait_lines(out / "trajectories.jsonl", 4, proc)
    target = next(s for s in mesh.services if s.kind == victim)
    target.signal(signal.SIGKILL)
    rows = _check(out, proc)
    errors = [r for r in rows if r.get("error")]
    print(f"{victim} killed: {len(rows)} rollouts, {len(errors)} errors, "
          f"{sum(1 for r in rows if r.get('attempts', 1) > 1)} rerun")  # fmt: skip
    assert errors == [], [(r["error"], r.get("attempts")) for r in errors]  # the other replica took the work


async def test_a_frozen_environment_replica_mid_eval(mesh: Mesh, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _eval(mesh, out, "--step-timeout", "3")
    _wait_lines(out / "trajectories.jsonl", 4, proc)
    target = next(s for s in mesh.services if s.kind == "environment")
    os.kill(target.pid, signal.SIGSTOP)
    try:
        rows = _check(out, proc)
    finally:
        os.kill(target.pid, signal.SIGCONT)
    assert [r for r in rows if r.get("error")] == []
    assert any(r.get("attempts", 1) > 1 for r in rows)
