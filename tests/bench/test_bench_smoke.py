"""The benchmarks run end to end and report their fields. Figures are not asserted here: a
benchmark is read, side by side with its reference, not timed in a unit test."""

from __future__ import annotations

import json
import subprocess
import sys


def test_env_step_bench_reports_both_paths() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rollmesh.cli",
            "bench",
            "env-step",
            "--json",
            "--seconds",
            "0.5",
            "--episodes",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    for key in (
        "inproc_steps_per_s",
        "grpc_steps_per_s",
        "grpc_p50_us",
        "grpc_p99_us",
        "ratio_grpc_vs_inproc",
    ):
        assert result[key] > 0, key
    assert result["grpc_p50_us"] <= result["grpc_p99_us"]
