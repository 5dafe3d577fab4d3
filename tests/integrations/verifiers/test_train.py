"""`rollmesh train` on a verifiers environment: the mesh starts its environment server from
.venv-verifiers (`python` of [[mesh.envs]]) and the trainer from this one; the tiny model learns
the toy task (reply with digits) scored by the verifiers rubric, so the reward must rise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ENVS, VF_BIN

pytest.importorskip("deepspeed")

STEPS, ROLLOUTS_PER_STEP = 24, 32
CONFIG = f"""
run_id = "vf-digits"
steps = {STEPS}
max_ahead_steps = 1
seed = 0
dir = "run"

[mesh.nats]
port = 0

[mesh.inference]
model = "tiny"
backend = "hf"

[[mesh.envs]]
target = "{ENVS / "vf_digits.py"}"
python = "{VF_BIN / "python"}"

[rollout]
env = "vf-digits"
split = "train"
rollouts_per_task = 8
max_concurrency = 32
max_off_policy_steps = 2
sampling = {{ temperature = 1.0, max_tokens = 8 }}

[trainer]
lr = 1e-3

[trainer.batch]
rollouts_per_step = {ROLLOUTS_PER_STEP}

[trainer.checkpoint]
every_n_steps = 1000
"""


def test_training_on_a_verifiers_env_raises_its_reward(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(CONFIG)
    proc = subprocess.run(
        [sys.executable, "-m", "rollmesh.cli", "train", "run.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == len(records) == STEPS and summary["errored"] == 0
    # Every step trained a full batch of the verifiers environment's rollouts, none skipped for an error.
    assert all(r["rollouts_by_env"] == {"vf-digits": ROLLOUTS_PER_STEP} and r["skipped_error"] == 0 for r in records)
    # The reward climbs from ~0.1 (babble) to ~0.5 in 24 steps (runs are asynchronous: not bit-reproducible).
    assert summary["reward_first"] < 0.3 and summary["reward_last"] > summary["reward_first"] + 0.15, summary
