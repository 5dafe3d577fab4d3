"""Several "hosts" on this machine: one Linux network namespace each, with its own address on a
private bridge, so that processes reach each other only over a real network stack (routes, ARP,
TCP) and a host can be cut off (`link_down`) or killed (`kill`) like a machine.

    with Network(["nats1", "env1"]) as net:
        proc = net["env1"].popen(["rollmesh", "env", "serve", ...], log=tmp / "env1.log")
        net["nats1"].link_down()

The bridge sits in the test's own namespace and holds the first address of the subnet, so the test
process can reach every host too (to read the stream, scrape metrics). Every name and address is
private to one Network and removed when it closes; names left by a killed test run are removed at
the next start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

PREFIX = "rmh"  # every interface and namespace made here starts with it


class NamespacesUnavailable(RuntimeError):
    """The kernel (or our privileges) refuses network namespaces."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def available() -> str | None:
    """None when namespaces can be made here, else why not (the skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    name = f"{PREFIX}probe{secrets.token_hex(2)}"
    try:
        made = _ip("netns", "add", name, check=False)
    except FileNotFoundError:
        return "iproute2's `ip` is not installed"
    if made.returncode != 0:
        return f"the kernel refuses network namespaces: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def remove_stale() -> None:
    """Namespaces and links of earlier runs whose process died before tearing down."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX) and not _owner_alive(name):
            for pid in _pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        dev = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if dev.startswith(PREFIX) and not _owner_alive(dev):
            _ip("link", "del", dev, check=False)


def _owner_alive(name: str) -> bool:
    # Names carry the creating pid's tag: rmh<tag>...; a Network registers its tag in /run.
    tag = name[len(PREFIX) : len(PREFIX) + 4]
    owner = Path(f"/run/{PREFIX}-{tag}.pid")
    try:
        os.kill(int(owner.read_text()), 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    return True


def _pids(namespace: str) -> list[int]:
    out = _ip("netns", "pids", namespace, check=False).stdout
    return [int(p) for p in out.split()]


class Host:
    """One namespace: an address, processes started in it, and its link to the bridge."""

    def __init__(self, name: str, namespace: str, address: str, link: str) -> None:
        self.name = name
        self.namespace = namespace
        self.address = address
        self._link = link  # the bridge side of the host's veth pair
        self.procs: list[subprocess.Popen[bytes]] = []

    def argv(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *map(str, argv)]

    def popen(
        self, argv: Sequence[str | os.PathLike[str]], *, log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Starts `argv` in this host, stdout and stderr to `log` (a file: never a full pipe)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.argv(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(
        self, argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(argv), env=dict(env) if env is not None else None, capture_output=True, text=True, timeout=timeout
        )

    def link_down(self) -> None:
        """Cuts the host off the network (its processes live on, as behind a failed switch port)."""
        _ip("link", "set", self._link, "down")

    def link_up(self) -> None:
        _ip("link", "set", self._link, "up")

    def kill(self) -> None:
        """Every process of the host, at once (SIGKILL): a machine that lost power."""
        for pid in _pids(self.namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs = [p for p in self.procs if p.poll() is None]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to what this host started, then SIGKILL to whatever is left in it."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        self.kill()


class Network:
    """Hosts on one bridge, in 10.<a>.<b>.0/24 (random per network). Use as a context manager."""

    def __init__(self, hosts: Sequence[str]) -> None:
        reason = available()
        if reason is not None:
            raise NamespacesUnavailable(reason)
        remove_stale()
        self.tag = secrets.token_hex(2)
        self._owner = Path(f"/run/{PREFIX}-{self.tag}.pid")
        a, b = secrets.randbelow(200) + 20, secrets.randbelow(250) + 1
        self.subnet = f"10.{a}.{b}"
        self.gateway = f"{self.subnet}.1"  # the bridge: the test process's address on this network
        self.bridge = f"{PREFIX}{self.tag}br"
        self.hosts: dict[str, Host] = {}
        self._names = list(hosts)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def start(self) -> Network:
        self._owner.write_text(str(os.getpid()))
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, name in enumerate(self._names, start=2):
                self.hosts[name] = self._add_host(name, i)
        except BaseException:
            self.close()
            raise
        return self

    def _add_host(self, name: str, index: int) -> Host:
        namespace = f"{PREFIX}{self.tag}-{name}"
        outside, inside = f"{PREFIX}{self.tag}v{index}", f"{PREFIX}{self.tag}i{index}"
        address = f"{self.subnet}.{index}"
        _ip("netns", "add", namespace)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", namespace)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        in_ns = ("-n", namespace)
        _ip(*in_ns, "link", "set", inside, "name", "eth0")
        _ip(*in_ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip(*in_ns, "link", "set", "eth0", "up")
        _ip(*in_ns, "link", "set", "lo", "up")
        _ip(*in_ns, "route", "add", "default", "via", self.gateway)
        return Host(name, namespace, address, outside)

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop(grace_s=5.0)
        for host in self.hosts.values():
            _ip("netns", "del", host.namespace, check=False)  # takes the veth pair with it
        _ip("link", "del", self.bridge, check=False)
        self._owner.unlink(missing_ok=True)
        self.hosts = {}

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def network(hosts: Sequence[str]) -> Iterator[Network]:
    with Network(hosts) as net:
        yield net
