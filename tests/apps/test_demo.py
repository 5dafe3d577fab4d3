"""The main job (`rollmesh demo`, behind `make demo`) runs end to end and exits 0."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end() -> None:
    result = subprocess.run([sys.executable, "-m", "rollmesh.cli", "demo"], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "conformant: " in out and " 0 failed" in out
    for env in ("arithmetic", "guess-number", "wiki-search"):
        assert env in out
    assert "no live services registered" in out  # deregistered on shutdown
