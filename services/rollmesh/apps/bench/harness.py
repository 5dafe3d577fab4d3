"""Shared pieces of the benchmarks: percentiles and a server subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ADDRESS_RE = re.compile(r"server on (\S+):")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far; None where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_env_server(
    target: str, args: Sequence[str] = (), env: dict[str, str] | None = None, python: str = sys.executable
) -> tuple[subprocess.Popen, str]:
    """`rollmesh env serve` in its own process (run by `python`); returns (process, address) once it listens."""
    return start_server([python, "-m", "rollmesh.cli", "env", "serve", target, "--port", "0", *args], env)


def start_server(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A server process that announces "... server on HOST:PORT: ..." on stderr; returns (process,
    address) once it has."""
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})}
    )
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if m := ADDRESS_RE.search(line):
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
