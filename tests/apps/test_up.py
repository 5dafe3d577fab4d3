"""`rollmesh up` as a real subprocess: the mesh from a TOML file, `rollmesh eval` against it with
nothing but --env/--model (and the NATS URL in the environment, as `up` tells you), ctrl-C stops
every child; bad configurations are clear errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rollmesh.natsd import free_port


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (this test's temporary paths)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        assert proc.poll() is None, f"`rollmesh up` exited with {proc.returncode}:\n{content}"
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in {path}:\n{path.read_text()}")


@pytest.fixture
def up_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:  # a failed test must not leave a mesh behind
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_up_eval_and_ctrl_c(tmp_path: Path, up_procs: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    (tmp_path / "mesh.toml").write_text(
        f"""
dir = "{tmp_path / "mesh"}"
grace_s = 1
[nats]
port = {port}
[[envs]]
target = "guess-number"
args = {{ max_turns = 2 }}
[inference]
model = "tiny"
backend = "hf"
"""
    )
    env = {**os.environ, "ROLLMESH_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    log = tmp_path / "up.log"
    with log.open("wb") as f:
        up = subprocess.Popen(
            [sys.executable, "-m", "rollmesh.cli", "up", "mesh.toml"], cwd=tmp_path, env=env, stdout=f, stderr=f
        )
    up_procs.append(up)
    output = wait_for_text(log, "ready.", up)
    url = f"nats://127.0.0.1:{port}"
    assert f"export ROLLMESH_NATS_URL={url}" in output
    state = json.loads((tmp_path / "mesh" / "mesh.json").read_text())
    assert state["nats_url"] == url and {s["kind"] for s in state["services"]} == {"environment", "inference"}
    children = [s["pid"] for s in state["services"]] + [state["nats_pid"]]
    assert all(alive(pid) for pid in children)

    # Security is on by default: mTLS and NATS users, credentials made in <dir>/pki; `up` prints the
    # line that gives another terminal the orchestrator's identity.
    assert state["certs"] == str((tmp_path / "mesh" / "pki").resolve())
    exports = re.search(r"with its credentials: export (.*?); then", " ".join(output.split())).group(1)
    credentials = dict(item.split("=", 1) for item in exports.split())
    assert credentials["ROLLMESH_TLS_CERT"].endswith("orchestrator.pem")

    # eval with no flags beyond --env/--model: the model is the mesh's, found by name.
    client_env = {**env, "ROLLMESH_NATS_URL": url, **credentials}
    r = subprocess.run(
        [sys.executable, "-m", "rollmesh.cli", "eval", "--env", "guess-number", "--model", "tiny",
         "-n", "2", "-r", "2", "--max-tokens", "4", "--no-progress"],
        cwd=tmp_path, env=client_env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "starting an inference server" not in r.stderr  # it used the mesh's
    (results,) = (tmp_path / "rollmesh-runs").iterdir()
    summary = json.loads((results / "summary.json").read_text())
    assert summary["counts"]["trajectories"] == 4 and summary["counts"]["errored"] == 0
    assert summary["run"]["model"] == "tiny"

    # A model given as a path gets a private inference server, stopped when the eval ends.
    model_dir = tmp_path / "cache" / "models" / "tiny"
    r = subprocess.run(
        [sys.executable, "-m", "rollmesh.cli", "eval", "--env", "guess-number", "--model", str(model_dir),
         "--backend", "hf", "-n", "1", "-r", "1", "--max-tokens", "4", "--no-progress", "--out", "private"],
        cwd=tmp_path, env=client_env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "starting an inference server" in r.stderr
    assert (tmp_path / "private" / "logs" / "inference.log").exists()
    mesh_inference = {s["pid"] for s in state["services"] if s["kind"] == "inference"}
    assert set(processes_mentioning(f"--model {model_dir}")) == mesh_inference

    # ctrl-C: every service and NATS stop, `up` exits 0.
    up.send_signal(signal.SIGINT)
    assert up.wait(60) == 0, log.read_text()
    assert "mesh stopped" in log.read_text()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)]
    assert processes_mentioning(str(tmp_path)) == []
    assert not (tmp_path / "mesh" / "mesh.json").exists()
    with socket.socket() as s:  # the NATS port is free again (no listener; closed connections may linger)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def run_up(tmp_path: Path, toml: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "bad.toml").write_text(toml)
    return subprocess.run(
        [sys.executable, "-m", "rollmesh.cli", "up", "bad.toml", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip


def test_up_bad_configurations(tmp_path: Path) -> None:
    r = run_up(tmp_path, '[[envs]]\ntarget = "guess-number"\nreplica = 2\n')
    assert r.returncode == 2 and "envs.0.replica: Extra inputs are not permitted" in r.stderr
    r = run_up(tmp_path, "[nats\n")
    assert r.returncode == 2 and "invalid TOML" in r.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_up(tmp_path, f"dir = 'm'\n[nats]\nport = {port}\n")
        assert r.returncode == 1 and f"port {port} on 127.0.0.1 is taken" in r.stdout
    r = run_up(tmp_path, "dir = 'm'\n[nats]\nurl = 'nats://127.0.0.1:1'\n")
    assert r.returncode == 1 and "cannot reach NATS at nats://127.0.0.1:1" in r.stdout
    assert "Connect call failed" not in r.stdout + r.stderr
    # A service that cannot start: its log tail is in the message, and nothing is left running.
    r = run_up(tmp_path, f"dir = '{tmp_path / 'm'}'\n[nats]\nport = 0\n[[envs]]\ntarget = 'no-such-env'\n")
    assert r.returncode == 1 and "env-no-such-env-0 exited with code" in r.stdout and "no-such-env" in r.stdout
    assert processes_mentioning(str(tmp_path)) == []
