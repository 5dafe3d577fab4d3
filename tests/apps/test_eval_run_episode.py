"""`rollmesh eval` (the real command, in a subprocess) on chain-arithmetic, whose agent is an external
program: RunEpisode on a real environment server, the orchestrator's interception endpoint, and a
real inference server (scripted with the right answers of the first test task, so it must score 1)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from rollmesh.env.loader import load_environments
from rollmesh.env.server import EnvironmentServer
from rollmesh.inference.backends.scripted import ScriptedBackend
from rollmesh.inference.server import InferenceServer


async def test_eval_scores_an_agent_programs_episodes(tmp_path: Path) -> None:
    env = load_environments("rollmesh.examples.chain_arithmetic", {"num_train": 2, "num_test": 2})[0]
    task = env.tasks("test")[0]
    answers = [str(v) for v in task.info["values"]]  # the model "solves" the first task
    inference = InferenceServer(ScriptedBackend(answers))
    await inference.start()
    try:
        async with EnvironmentServer([env]) as server:
            proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "rollmesh.cli", "eval", "--env", "chain-arithmetic"],
                *["--env-address", server.address, "--model", inference.address, "-n", "1", "-r", "2"],
                *["--no-publish", "--no-progress", "--json", "--out", str(tmp_path / "out"), "--max-tokens", "8"],
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await inference.stop(0)
    assert proc.returncode == 0, err.decode()[-3000:]
    summary = json.loads(out)
    assert (summary["counts"]["finished"], summary["counts"]["errored"]) == (2, 0), summary
    assert summary["reward"]["mean"] == 1.0 and summary["tokens"]["model_calls"] == 6, summary
    rows = [json.loads(line) for line in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["task"]["task_id"] == task.task_id
        assert [m["content"] for m in row["messages"] if m["role"] == "assistant"] == answers
        assert len(row["turns"]) == len(answers) and all(t["completion_ids"] for t in row["turns"])
