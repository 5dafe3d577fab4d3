"""Serving beyond loopback needs TLS and caller authentication, or an explicit --insecure (which
warns). Each server command and the NATS command follow the same rule."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROLLMESH = [sys.executable, "-m", "rollmesh.cli"]
EXPOSED = "0.0.0.0"


def _wait_for(proc: subprocess.Popen[str], text: str, timeout_s: float = 60) -> str:
    seen = ""
    deadline = time.monotonic() + timeout_s
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if text in line:
            return seen
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{text!r} not printed; got:\n{seen}")


@pytest.mark.parametrize(
    "command",
    [
        ["env", "serve", "arithmetic", "--port", "0"],
        ["nats", "--port", "0"],
    ],
)
def test_an_exposed_address_without_security_is_refused(command: list[str]) -> None:
    r = subprocess.run([*ROLLMESH, *command, "--host", EXPOSED], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "refusing to serve" in r.stderr and "--insecure" in r.stderr, r.stderr


def test_tls_without_a_ca_or_tokens_is_not_enough(certs: Path) -> None:
    r = subprocess.run(
        [*ROLLMESH, "env", "serve", "arithmetic", "--port", "0", "--host", EXPOSED,
         "--tls-cert", str(certs / "env.pem"), "--tls-key", str(certs / "env-key.pem")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "caller authentication" in r.stderr, r.stderr


def test_insecure_serves_and_warns() -> None:
    proc = subprocess.Popen(
        [*ROLLMESH, "env", "serve", "arithmetic", "--port", "0", "--host", EXPOSED, "--insecure"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        seen = _wait_for(proc, "rollmesh env server on")
        assert "without TLS and caller authentication (--insecure)" in seen
    finally:
        proc.terminate()
        proc.wait(30)


def test_mutual_tls_serves_an_exposed_address(certs: Path) -> None:
    proc = subprocess.Popen(
        [*ROLLMESH, "env", "serve", "arithmetic", "--port", "0", "--host", EXPOSED,
         "--tls-cert", str(certs / "env.pem"), "--tls-key", str(certs / "env-key.pem"),
         "--tls-ca", str(certs / "ca.pem")],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        seen = _wait_for(proc, "rollmesh env server on")
        assert "--insecure" not in seen
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_missing_key_file_is_a_clear_error(certs: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [*ROLLMESH, "env", "serve", "arithmetic", "--port", "0",
         "--tls-cert", str(certs / "env.pem"), "--tls-key", str(tmp_path / "nope.pem")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "cannot read the private key" in r.stderr, r.stderr
