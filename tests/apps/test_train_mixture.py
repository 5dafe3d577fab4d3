"""`rollmesh train` over two environments at once ([[rollout.envs]]): the run serves both from one
environment server, the trainer's batches mix them, and metrics.jsonl, summary.json and the reward
curve follow each environment. A short run on the tiny model (hf backend) and a real DeepSpeed trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

RUN = """
run_id = "mix"
steps = 3
dir = "run"

[mesh.nats]
port = 0

[mesh.inference]
model = "tiny"
backend = "hf"

[rollout]
rollouts_per_task = 4
max_concurrency = 16
sampling = { temperature = 1.0, max_tokens = 8 }

[[rollout.envs]]
name = "digits"
weight = 2

[[rollout.envs]]
name = "arithmetic"
rollouts_per_task = 2
sampling = { max_tokens = 4 }

[trainer.batch]
rollouts_per_step = 10
"""


def test_a_mixture_trains_on_both_environments_and_reports_each(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(RUN)
    proc = subprocess.run(
        [sys.executable, "-m", "rollmesh.cli", "train", "run.toml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        by_env = r["rollouts_by_env"]
        assert set(by_env) <= {"digits", "arithmetic"} and sum(by_env.values()) == r["rollouts"]
        # the step's mean is the rollout-weighted mean of the environments' means
        weighted = sum(by_env[e] * r["reward_mean_by_env"][e] for e in by_env) / r["rollouts"]
        assert weighted == pytest.approx(r["reward_mean"])
    totals = {e: sum(r["rollouts_by_env"].get(e, 0) for r in records) for e in ("digits", "arithmetic")}
    # Scheduled 2:1 over tasks, in groups of 4 and 2: 4 digits rollouts per arithmetic one. The trainer takes
    # them as they finish, with up to max_ahead_steps of rollouts scheduled beyond, so only the order holds.
    assert totals["digits"] > totals["arithmetic"] > 0, totals
    # the tiny model's babble has some digits, never the exact arithmetic answer
    digits_reward = [r["reward_mean_by_env"]["digits"] for r in records if "digits" in r["reward_mean_by_env"]]
    assert max(digits_reward) > 0.0
    assert all(r["reward_mean_by_env"].get("arithmetic", 0.0) == 0.0 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["by_env"]) == {"digits", "arithmetic"} and summary["errored"] == 0
    assert (run / "reward_curve.png").stat().st_size > 10_000
    assert "arithmetic: 0.000 -> 0.000" in proc.stdout
