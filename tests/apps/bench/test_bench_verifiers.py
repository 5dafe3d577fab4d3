"""`rollmesh bench verifiers` runs both hosts of the verifiers environment to completion with the
same model replies. Figures are read, not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

VF_PYTHON = Path(__file__).resolve().parents[3] / ".venv-verifiers" / "bin" / "python"


@pytest.mark.skipif(not VF_PYTHON.exists(), reason="no .venv-verifiers (`make setup` builds it): no verifiers side")
def test_verifiers_bench_completes_every_rollout_on_both_sides() -> None:
    rollouts, repeats = 8, 2
    cmd = [sys.executable, "-m", "rollmesh.cli", "bench", "verifiers", "--json"]
    cmd += ["--rollouts", str(rollouts), "--concurrency", "4", "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["rollouts"], result["concurrency"], result["repeats"]) == (rollouts, 4, repeats)
    for side in ("rollmesh", "verifiers"):
        s = result[side]
        assert s["completed"] == rollouts * repeats and s["failed"] == 0, (side, s)
        assert s["rollouts_per_s"] > 0 and len(s["repeats_rollouts_per_s"]) == repeats
        assert all(ms > 0 for ms in s["cpu_ms_per_rollout"].values()), (side, s)
    # The scripted model answered both sides alike: same turns, same rewards.
    assert result["rollmesh"]["model_calls_per_rollout"] == result["verifiers"]["model_calls_per_rollout"] > 1
    assert result["rollmesh"]["reward_mean"] == result["verifiers"]["reward_mean"] > 0
    assert result["ratio"] == pytest.approx(
        result["rollmesh"]["rollouts_per_s"] / result["verifiers"]["rollouts_per_s"], rel=0.01
    )


def test_verifiers_bench_refuses_a_missing_interpreter(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "rollmesh.cli", "bench", "verifiers", "--verifiers-python", str(tmp_path / "python")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no verifiers interpreter" in proc.stderr
