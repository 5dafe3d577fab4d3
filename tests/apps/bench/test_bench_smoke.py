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
        "bare_grpc_steps_per_s",
        "ratio_vs_bare_grpc",
        "bare_mtls_steps_per_s",
        "ratio_mtls_vs_bare_grpc",
        "cpu_us_per_step",
        "bare_cpu_us_per_step",
        "ratio_cpu_bare_vs_grpc",
    ):
        assert result[key] > 0, key
    assert result["grpc_p50_us"] <= result["grpc_p99_us"]
    # The bare echo carried a real step's bytes, and the ratio is the one of the reported rates.
    assert result["step_request_bytes"] > 0 and result["step_response_bytes"] > 0
    assert abs(result["ratio_vs_bare_grpc"] - result["grpc_steps_per_s"] / result["bare_grpc_steps_per_s"]) < 1e-3


def test_rollouts_bench_reports_mesh_and_inprocess() -> None:
    code = "from rollmesh.apps.bench.rollouts import main; main(True, episodes=16, concurrency=8)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["inproc_eps"] > 0 and result["cpu_ms_per_episode"]["inproc"] > 0
    for replicas in ("1", "2"):
        assert result["mesh_eps"][replicas] > 0
        assert result["ratio"][replicas] > 0
        assert result["cpu_ms_per_episode"][replicas] > 0
        assert result["errors"][replicas] == 0
        assert result["total_cpu_ms_per_episode"][replicas] > result["cpu_ms_per_episode"][replicas]
        assert result["ratio_vs_bare_transport"][replicas] > 0
    # the bare transport carried a real episode's messages, through processes of its own
    assert result["bare_eps"] > 0 and set(result["bare_cpu_ms_per_episode"]) == {"client", "env", "inference", "nats"}
    # other processes' CPU is read in clock ticks (10 ms), which a 16-episode run may not reach
    assert result["bare_cpu_ms_per_episode"]["client"] > 0
    assert all(ms >= 0 for ms in result["bare_cpu_ms_per_episode"].values())


def test_rubric_bench_reports_live_and_inprocess() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rollmesh.cli", "bench", "rubric", "--json", "--traces", "200"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["traces"] == 200 and result["service"] == "subprocess"
    for key in (
        "traces_per_s",
        "p50_ms",
        "p99_ms",
        "paced_p50_ms",
        "inproc_traces_per_s",
        "ratio",
        "bare_jetstream_traces_per_s",
        "ratio_vs_bare_jetstream",
        "service_cpu_ms_per_trace",
        "bare_consumer_cpu_ms_per_trace",
    ):
        assert result[key] > 0, key
    assert result["p50_ms"] <= result["p99_ms"]
    # The bare pipeline moved messages the size of the real ones.
    assert result["trace_bytes"] > 100 and result["score_bytes"] > 100
    assert result["ratio_vs_bare_jetstream"] == result["traces_per_s"] / result["bare_jetstream_traces_per_s"]
