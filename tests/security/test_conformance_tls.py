"""`rollmesh conformance` over mutual TLS: an environment server with the mesh's env certificate
passes every check for an orchestrator, and the same run as a reader fails (its episodes are
refused), so the suite really went through the role check."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROLLMESH = [sys.executable, "-m", "rollmesh.cli"]


@pytest.fixture(scope="module")
def server(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("conformance-tls") / "server.log"
    with log.open("w") as f:  # a file, not a pipe: the refusals it logs must never block it
        proc = subprocess.Popen(
            [*ROLLMESH, "env", "serve", "arithmetic", "--port", "0", "--idle-timeout", "2",
             "--tls-cert", str(certs / "env.pem"), "--tls-key", str(certs / "env-key.pem"),
             "--tls-ca", str(certs / "ca.pem")],
            stderr=f, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (m := re.search(r"rollmesh env server on (\S+):\s", log.read_text())):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield m.group(1)
    proc.terminate()
    proc.wait(30)


def _conformance(certs: Path, identity: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ROLLMESH, "conformance", address, "--json", "--max-wait", "5",
         "--tls-cert", str(certs / f"{identity}.pem"), "--tls-key", str(certs / f"{identity}-key.pem"),
         "--tls-ca", str(certs / "ca.pem")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_an_orchestrator_sees_a_conformant_server(certs: Path, server: str) -> None:
    r = _conformance(certs, "orchestrator", server)
    report = json.loads(r.stdout)
    failed = [c for c in report["checks"] if c["status"] == "FAIL"]
    assert r.returncode == 0 and not failed, failed


def test_a_reader_is_refused_its_episodes(certs: Path, server: str) -> None:
    r = _conformance(certs, "reader", server)
    assert r.returncode != 0
    assert "MISSING_ROLE" in r.stdout or "PERMISSION_DENIED" in r.stdout, r.stdout[-2000:]
