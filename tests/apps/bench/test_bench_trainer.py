"""`rollmesh bench trainer` runs end to end (tiny sizes) and reports every path and the ratios.
Figures are read, not asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("deepspeed")


BENCH = [sys.executable, "-m", "rollmesh.cli", "bench", "trainer", "--json", "--model", "tiny"]
BENCH += ["--sequences", "2", "--seq-len", "32", "--steps", "1"]


def test_bench_trainer_reports_rollmesh_and_references() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rollmesh.cli",
            "bench",
            "trainer",
            "--json",
            "--model",
            "tiny",
            "--sequences",
            "2",
            "--seq-len",
            "32",
            "--steps",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["tokens_per_step"] == 64
    for key in ("rollmesh_tokens_per_s", "torch_tokens_per_s", "ratio_vs_torch"):
        assert result[key] > 0, key
    try:
        import trl  # noqa: F401
    except ImportError:
        assert "not installed" in result["trl"]
    else:
        assert result["trl_tokens_per_s"] > 0 and result["ratio_vs_trl"] > 0
