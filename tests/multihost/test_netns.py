"""The harness itself: hosts reach each other over their own addresses, a host whose link is down
is unreachable until it comes back, a killed host's processes are gone, and nothing is left after."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import netns

pytestmark = pytest.mark.usefixtures("namespaces_available")

SERVE = (
    "import socket,sys; s=socket.create_server((sys.argv[1], 7000)); print('up', flush=True); "
    "c,_=s.accept(); c.sendall(b'hi')"
)
PROBE = "import socket,sys; s=socket.create_connection((sys.argv[1], 7000), timeout=1); print(s.recv(2).decode())"


def _probe(host: netns.Host, address: str) -> subprocess.CompletedProcess[str]:
    return host.run([sys.executable, "-c", PROBE, address], timeout=20)


def _serve(host: netns.Host, log: Path) -> subprocess.Popen[bytes]:
    proc = host.popen([sys.executable, "-c", SERVE, host.address], log=log)
    deadline = time.monotonic() + 10
    while "up" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc


def test_hosts_talk_over_their_addresses_and_a_cut_link_cuts_them_off(tmp_path: Path) -> None:
    with netns.Network(["a", "b"]) as net:
        a, b = net["a"], net["b"]
        assert a.address != b.address and a.address.startswith(net.subnet)
        _serve(b, tmp_path / "b1.log")
        assert _probe(a, b.address).stdout.strip() == "hi"
        _serve(b, tmp_path / "b2.log")
        b.link_down()
        assert _probe(a, b.address).returncode != 0
        b.link_up()
        deadline = time.monotonic() + 10
        while (reply := _probe(a, b.address)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reply.stdout.strip() == "hi", reply.stderr
        # The test process reaches the hosts through the bridge.
        _serve(a, tmp_path / "a.log")
        out = subprocess.run([sys.executable, "-c", PROBE, a.address], capture_output=True, text=True, timeout=20)
        assert out.stdout.strip() == "hi"


def test_a_killed_host_has_no_processes_and_the_network_leaves_nothing(tmp_path: Path) -> None:
    with netns.Network(["a"]) as net:
        host = net["a"]
        proc = host.popen(["sleep", "300"], log=tmp_path / "sleep.log")
        host.kill()
        assert proc.poll() is not None
        namespace, bridge = host.namespace, net.bridge
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        if f"{net.tag}" not in links and namespace not in spaces:
            break
        time.sleep(0.2)
    assert bridge not in links and f"{netns.PREFIX}{net.tag}" not in links
    assert namespace not in spaces
