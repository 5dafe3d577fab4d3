"""A JetStream cluster as the bus, on real nats-server processes: streams and KV buckets with
replicas, the settings that choose them, clusters with and without the mesh's TLS, and rollouts that
survive the loss of a node (every acknowledged one there exactly once)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from rollmesh import bus
from rollmesh.apps.launcher import Mesh, MeshConfig, MeshSecurityConfig, NatsConfig
from rollmesh.config import load_config
from rollmesh.errors import FailedPreconditionError, InvalidArgumentError, RollmeshError
from rollmesh.natsd import ClusterOptions, EmbeddedNats, EmbeddedNatsCluster, free_ports, route_url
from rollmesh.proto.v1 import messages_pb2, trajectory_pb2
from rollmesh.registry import REGISTRY_BUCKET, Registry
from rollmesh.security import nats_auth, pki
from rollmesh.security.tls import TlsConfig
from rollmesh.trainer.config import TrainerConfig

pytestmark = pytest.mark.timeout(120)  # bounds a hang; each test takes seconds

# Loopback addresses of their own: one node per "host", with the same ports on each.
HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pki.init(tmp_path_factory.mktemp("cluster-pki"), hosts=HOSTS[1:])


@pytest.fixture(autouse=True)
def _no_bus_settings() -> Iterator[None]:
    """Each test starts with the replicas unset, whatever ROLLMESH_NATS_REPLICAS says."""
    previous = bus.configure(bus.BusSettings())
    yield
    bus.configure(previous)


@pytest.fixture
def cluster() -> Iterator[EmbeddedNatsCluster]:
    with EmbeddedNatsCluster(3) as c:
        yield c


@pytest.fixture
async def client(cluster: EmbeddedNatsCluster) -> AsyncIterator[NATS]:
    nc = await bus.connect(cluster.urls, tls=TlsConfig())
    yield nc
    await nc.close()


def trajectory(run: str, i: int) -> trajectory_pb2.Trajectory:
    return trajectory_pb2.Trajectory(trajectory_id=f"{run}-{i:04d}", run_id=run, task=messages_pb2.Task(env="arith"))


async def stream_leader(
    js: JetStreamContext, stream: str = "ROLLOUTS", *, other_than: str = "", timeout_s: float = 15.0
) -> str:
    """The server name of the stream's leader, once there is one (and it is not `other_than`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader not in (None, "", other_than):
                return info.cluster.leader
        except nats.errors.Error:
            pass  # no stream leader to answer yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {stream} has no leader after {timeout_s:g}s")
        await asyncio.sleep(0.1)


async def stored_ids(js: JetStreamContext, stream: str = "ROLLOUTS") -> list[str]:
    """The Nats-Msg-Id of every message in the stream, in order."""
    info = await js.stream_info(stream)
    return [
        (await js.get_msg(stream, seq)).headers[bus.MSG_ID]  # type: ignore[index]
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


def node_messages(node: EmbeddedNats, stream: str = "ROLLOUTS") -> int | None:
    """Messages in that node's own copy of the stream (its monitoring endpoint)."""
    for account in node.monitor("jsz?streams=true").get("account_details", []):
        for detail in account.get("stream_detail", []):
            if detail["name"] == stream:
                return int(detail["state"]["messages"])
    return None


def wait_for_copies(cluster: EmbeddedNatsCluster, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (copies := [node_messages(n) for n in cluster.nodes]) != [count] * len(cluster.nodes):
        if time.monotonic() > deadline:
            raise AssertionError(f"copies of ROLLOUTS per node: {copies}, expected {count} on each")
        time.sleep(0.1)


# ---- forming a cluster, replicas ----------------------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
async def test_a_cluster_on_three_addresses_gets_r3_streams_and_buckets(secure: bool, request) -> None:
    """One node per address with the same ports (as on three machines); with the mesh's TLS the nats
    certificate names every address (`certs init --host`), which routes and clients check."""
    certs: Path | None = request.getfixturevalue("certs") if secure else None
    (port, route_port, monitor_port) = free_ports(["127.0.0.1"] * 3)
    ports = {"port": port, "cluster_port": route_port, "monitor_port": monitor_port}
    with EmbeddedNatsCluster(hosts=HOSTS, auth_dir=certs, **ports) as c:
        assert c.urls == ",".join(f"nats://{h}:{port}" for h in HOSTS)
        argv = c.nodes[1].command()
        assert [argv[argv.index(flag) + 1] for flag in ("-a", "-p", "-m")] == [HOSTS[1], str(port), str(monitor_port)]
        assert c.nodes[0].monitor("jsz")["meta_cluster"]["cluster_size"] == 3
        bus.configure(bus.BusSettings(replicas=3))
        nc = await bus.connect(c.urls, tls=pki.member_config(certs, "orchestrator") if certs else TlsConfig())
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js)
            await bus.ensure_policy_bucket(js)
            await Registry.from_client(nc)
            for name in [s.name for s in bus.STREAMS] + [f"KV_{bus.POLICY_BUCKET}", f"KV_{REGISTRY_BUCKET}"]:
                info = await js.stream_info(name)
                assert info.config.num_replicas == 3, name
                assert info.cluster is not None and info.cluster.leader in c.server_names
                assert sorted([info.cluster.leader, *(p.name for p in info.cluster.replicas or [])]) == c.server_names
        finally:
            await nc.close()


async def test_existing_streams_are_scaled_only_by_a_process_with_the_setting(client: NATS) -> None:
    js = client.jetstream()
    await bus.ensure_streams(js, (bus.ROLLOUTS,))  # unset: one copy
    await bus.ensure_policy_bucket(js)
    assert (await js.stream_info("ROLLOUTS")).config.num_replicas == 1
    bus.configure(bus.BusSettings(replicas=3))
    await bus.ensure_streams(js, (bus.ROLLOUTS,))
    await bus.ensure_policy_bucket(js)
    assert (await js.stream_info("ROLLOUTS")).config.num_replicas == 3
    assert (await js.stream_info(f"KV_{bus.POLICY_BUCKET}")).config.num_replicas == 3
    # A process without the setting (a publisher, say) leaves the cluster's streams as they are.
    bus.configure(bus.BusSettings())
    await bus.ensure_streams(js, (bus.ROLLOUTS,))
    await bus.ensure_policy_bucket(js)
    assert (await js.stream_info("ROLLOUTS")).config.num_replicas == 3
    assert (await js.stream_info(f"KV_{bus.POLICY_BUCKET}")).config.num_replicas == 3
    # And an explicit setting scales back down.
    await bus.ensure_streams(js, (bus.ROLLOUTS,), replicas=1)
    assert (await js.stream_info("ROLLOUTS")).config.num_replicas == 1


async def test_more_replicas_than_servers_is_a_clear_error(client: NATS) -> None:
    js = client.jetstream()
    for replicas in (4, 5):
        with pytest.raises(FailedPreconditionError, match=f"cannot keep {replicas} replicas of stream ROLLOUTS") as e:
            await bus.ensure_streams(js, (bus.ROLLOUTS,), replicas=replicas)
        assert e.value.reason == "BAD_REPLICAS"
        assert f"fewer than {replicas} JetStream servers" in str(e.value) and "err_code 10005" in str(e.value)
    with pytest.raises(FailedPreconditionError, match=f"cannot keep 5 replicas of KV bucket {bus.POLICY_BUCKET}"):
        await bus.ensure_key_value(js, KeyValueConfig(bucket=bus.POLICY_BUCKET), replicas=5)
    await bus.ensure_streams(js, (bus.ROLLOUTS,), replicas=3)  # what fits is fine
    with pytest.raises(FailedPreconditionError, match="cannot keep 4 replicas of stream ROLLOUTS"):
        await bus.ensure_streams(js, (bus.ROLLOUTS,), replicas=4)  # scaling up an existing one too
    assert (await js.stream_info("ROLLOUTS")).config.num_replicas == 3


async def test_replicas_on_a_single_server_is_a_clear_error(nats_url: str) -> None:
    nc = await bus.connect(nats_url, tls=TlsConfig())
    try:
        with pytest.raises(FailedPreconditionError, match="not a cluster") as e:
            await bus.ensure_streams(nc.jetstream(), (bus.SCORES,), replicas=3)
        assert e.value.reason == "BAD_REPLICAS" and "err_code 10074" in str(e.value)
    finally:
        await nc.close()


def test_replica_settings_are_validated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for bad in ("0", "6", "three", "-1"):
        with pytest.raises(InvalidArgumentError, match=r"ROLLMESH_NATS_REPLICAS = .*from 1 to 5") as e:
            bus.BusSettings.from_env({bus.ENV_REPLICAS: bad})
        assert e.value.reason == "BAD_REPLICAS"
    assert bus.BusSettings.from_env({bus.ENV_REPLICAS: " 3 "}) == bus.BusSettings(replicas=3)
    assert bus.BusSettings.from_env({}).replicas is None
    assert bus.BusSettings(replicas=3).env() == {bus.ENV_REPLICAS: "3"} and bus.BusSettings().env() == {}
    monkeypatch.setenv(bus.ENV_REPLICAS, "5")
    bus.configure(None)  # read the environment again
    assert bus.settings().replicas == 5
    assert bus.settings().overridden(replicas=3).replicas == 3
    with pytest.raises(InvalidArgumentError, match="from 1 to 5"):
        bus.settings().overridden(replicas=9)

    # The mesh's [nats] table: replicas in range, and more than one only with a cluster's URLs.
    with pytest.raises(InvalidArgumentError, match=r"nats\.replicas"):
        load_config(MeshConfig, None, ["nats.replicas=0"])
    with pytest.raises(InvalidArgumentError, match="needs a NATS cluster"):
        load_config(MeshConfig, None, ["nats.replicas=3"])
    cfg = load_config(MeshConfig, None, ["nats.replicas=3", 'nats.url=["nats://a:4222", " nats://b:4222 "]'])
    assert (cfg.nats.url, cfg.nats.replicas) == ("nats://a:4222,nats://b:4222", 3)


def test_nats_urls_may_be_a_toml_list(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.toml"
    mesh.write_text('[nats]\nurl = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]\nreplicas = 3\n')
    assert load_config(MeshConfig, mesh).nats.url == "nats://10.0.0.1:4222,nats://10.0.0.2:4222"
    assert NatsConfig(url="nats://a:1, nats://b:2,").url == "nats://a:1,nats://b:2"
    trainer = TrainerConfig(run_id="r", model="m", nats_url=["nats://a:4222", "nats://b:4222"])  # type: ignore[arg-type]
    assert trainer.nats_url == trainer.bus_url == "nats://a:4222,nats://b:4222"
    with pytest.raises(ValueError):
        NatsConfig(url=[1, 2])  # type: ignore[arg-type]


# ---- losing a node ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("victim", "secure"),
    [("connected", True), ("leader", True), ("connected", False), ("leader", False)],
    ids=["tls-client-node", "tls-stream-leader", "plain-client-node", "plain-stream-leader"],
)
async def test_acknowledged_rollouts_survive_losing_a_node(victim: str, secure: bool, request) -> None:
    """R3 rollouts: kill a node (the client's own, not the stream leader; or the stream leader),
    keep publishing through the survivors, restart it, and find every acknowledged trajectory exactly
    once, on every node's copy. With the mesh's TLS, routes and clients use its certificates and the
    publisher and reader are users with their roles' permissions."""
    certs: Path | None = request.getfixturevalue("certs") if secure else None
    run = f"{victim}-{'tls' if secure else 'plain'}"
    with EmbeddedNatsCluster(3, auth_dir=certs) as c:
        publishing = pki.member_config(certs, "orchestrator") if certs else TlsConfig()
        nc = await bus.connect(c.urls, tls=publishing)
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js, replicas=3)
            publisher = bus.Publisher(nc, js)
            sent = [trajectory(run, i) for i in range(60)]
            for t in sent[:20]:
                await publisher.publish_trajectory(t)

            leader = await stream_leader(js)
            assert nc.connected_url is not None
            here = next(i for i, n in enumerate(c.nodes) if n.url.endswith(nc.connected_url.netloc))
            if victim == "connected" and c.server_names[here] == leader:
                # Move the leadership away, so that this case loses a follower and the client's server.
                await nc.request("$JS.API.STREAM.LEADER.STEPDOWN.ROLLOUTS", b"", timeout=5)
                leader = await stream_leader(js, other_than=leader)
            lost = here if victim == "connected" else c.index(leader)
            c.kill(lost)
            # Straight after the loss: the publisher itself retries (same Nats-Msg-Id) while the client
            # moves to another server or the stream elects a new leader; queued publishes too.
            for t in sent[20:30]:
                await publisher.publish_trajectory(t)
            for t in sent[30:40]:
                await publisher.publish_trajectory(t, now=False)
            await publisher.flush()
            assert nc.connected_url is not None and c.nodes[lost].url.removeprefix("nats://") != nc.connected_url.netloc
            if victim == "leader":
                await stream_leader(js, other_than=leader, timeout_s=1)

            await asyncio.to_thread(c.restart, lost)
            for t in sent[40:]:
                await publisher.publish_trajectory(t)
            # Publishing again what was acknowledged stores nothing new.
            assert [await publisher.publish_trajectory(t) for t in sent[::10]] == [False] * 6
        finally:
            await nc.close()

        reading = pki.member_config(certs, "trainer") if certs else TlsConfig()
        reader = await bus.connect(c.urls, tls=reading)
        try:
            ids = await stored_ids(reader.jetstream())
        finally:
            await reader.close()
        assert sorted(ids) == [t.trajectory_id for t in sent] and len(set(ids)) == len(ids)
        await asyncio.to_thread(wait_for_copies, c, len(sent))


# ---- TLS ----------------------------------------------------------------------------------------


def test_routes_refuse_hosts_the_nats_certificate_does_not_name(tmp_path: Path) -> None:
    certs = pki.init(tmp_path / "pki")
    with pytest.raises(FailedPreconditionError, match=r"does not name 127\.0\.0\.2, 127\.0\.0\.3") as e:
        EmbeddedNatsCluster(hosts=HOSTS, port=14222, cluster_port=16222, monitor_port=18222, auth_dir=certs).start()
    assert e.value.reason == "NATS_CONFIG" and "--host 127.0.0.2 --host 127.0.0.3" in str(e.value)


def test_an_older_nats_config_gets_the_routes_tls(tmp_path: Path) -> None:
    certs = pki.init(tmp_path / "pki")
    conf = certs / nats_auth.CONFIG_NAME
    body = json.loads(conf.read_text())
    client_files = {k: body["tls"][k] for k in ("cert_file", "key_file", "ca_file")}
    assert body["cluster"]["tls"] == {**client_files, "verify": True, "timeout": 5}
    del body["cluster"]
    conf.write_text(json.dumps(body))
    nats_auth.ensure_current(certs, routes=True)
    assert json.loads(conf.read_text())["cluster"]["tls"]["cert_file"] == str((certs / "nats.pem").resolve())
    conf.write_text("tls { cert_file: x }\n")  # not the JSON certs init writes
    with pytest.raises(FailedPreconditionError, match=r"cluster \{ tls"):
        nats_auth.ensure_current(certs, routes=True)
    nats_auth.ensure_current(certs, routes=False)  # a single server: a hand-written file is its author's
    assert conf.read_text() == "tls { cert_file: x }\n"


async def test_a_node_without_the_mesh_ca_cannot_join(certs: Path, tmp_path: Path) -> None:
    with EmbeddedNatsCluster(3, auth_dir=certs) as c:
        intruder = EmbeddedNats(
            server_name="intruder",
            cluster=ClusterOptions("rollmesh", 0, (c.nodes[0].route_url,)),
            monitor_port=0,
            store_dir=tmp_path / "intruder",
        ).start()
        try:
            deadline = time.monotonic() + 10
            while "TLS route handshake error" not in c.nodes[0].log_tail(50_000):
                assert time.monotonic() < deadline, c.nodes[0].log_tail()
                await asyncio.sleep(0.1)
            assert c.nodes[0].monitor("jsz")["meta_cluster"]["cluster_size"] == 3
            assert intruder.monitor("routez")["num_routes"] == 0
        finally:
            intruder.stop()


# ---- the command line, the mesh -----------------------------------------------------------------


def _rollmesh(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "rollmesh.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _line_starting(proc: subprocess.Popen[str], prefix: str, timeout_s: float = 20.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no line starting with {prefix!r}:\n{''.join(seen)}")


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_rollmesh_nats_cluster_prints_the_urls() -> None:
    proc = _rollmesh("nats", "--cluster", "3", "--port", "0")
    try:
        urls = _line_starting(proc, "ROLLMESH_NATS_URL=").removeprefix("ROLLMESH_NATS_URL=")
        assert len(urls.split(",")) == 3
        nc = await bus.connect(urls, tls=TlsConfig())
        try:
            await bus.ensure_streams(nc.jetstream(), (bus.ROLLOUTS,), replicas=3)
        finally:
            await nc.close()
    finally:
        assert _stop(proc) == 0
    with pytest.raises(RollmeshError, match="cannot reach NATS"):
        await bus.connect(urls, tls=TlsConfig(), connect_timeout_s=0.5)


async def test_a_node_started_alone_joins_by_its_routes(certs: Path, tmp_path: Path) -> None:
    """Two nodes here and one from `rollmesh nats --cluster-name --routes --tls-dir`, as on three
    machines: together they form the cluster, over TLS routes."""
    ports = free_ports(["127.0.0.1"] * 8)
    clients, routes, monitors = ports[:3], ports[3:6], ports[6:]
    all_routes = tuple(route_url("127.0.0.1", p) for p in routes)
    nodes = [
        EmbeddedNats(
            port=clients[i],
            auth_dir=certs,
            server_name=f"n{i}",
            cluster=ClusterOptions("multi", routes[i], all_routes),
            monitor_port=monitors[i],
            store_dir=tmp_path / f"n{i}",
        )
        for i in range(2)
    ]
    proc = _rollmesh(
        "nats", "--port", str(clients[2]), "--store", str(tmp_path / "n2"), "--tls-dir", str(certs),
        "--cluster-name", "multi", "--server-name", "n2", "--cluster-port", str(routes[2]),
        "--routes", ",".join(all_routes[:2]), "--routes", all_routes[2],
    )  # fmt: skip
    try:
        assert "node n2 of cluster multi" in _line_starting(proc, "node n2")
        for node in nodes:
            node.start()
        deadline = time.monotonic() + 20
        while not all(n.health() == "ok" and n.monitor("jsz")["meta_cluster"]["cluster_size"] == 3 for n in nodes):
            assert time.monotonic() < deadline, [n.health() for n in nodes]
            await asyncio.sleep(0.1)
        urls = ",".join(f"nats://127.0.0.1:{p}" for p in clients)
        nc = await bus.connect(urls, tls=pki.member_config(certs, "orchestrator"))
        try:
            await bus.ensure_streams(nc.jetstream(), (bus.ROLLOUTS,), replicas=3)  # needs all three nodes
            info = await nc.jetstream().stream_info("ROLLOUTS")
            assert info.cluster is not None
            assert sorted([info.cluster.leader, *(p.name for p in info.cluster.replicas or [])]) == ["n0", "n1", "n2"]
        finally:
            await nc.close()
    finally:
        for node in nodes:
            node.stop()
        assert _stop(proc) == 0


def test_rollmesh_nats_refuses_half_a_cluster() -> None:
    for args, message in [
        (["--routes", "nats-route://a:6222"], "--cluster-name"),
        (["--cluster", "1"], "at least 2"),
        (["--cluster", "3", "--server-name", "x"], "--cluster N starts every node here"),
        (["--cluster", "3", "--host", "0.0.0.0", "--insecure"], "bind loopback"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "rollmesh.cli", "nats", *args], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)


async def test_the_mesh_sets_up_the_bus_with_its_replicas(cluster: EmbeddedNatsCluster, tmp_path: Path) -> None:
    insecure = MeshSecurityConfig(enabled=False)
    mesh = Mesh(MeshConfig(dir=str(tmp_path / "m"), nats=NatsConfig(url=cluster.urls, replicas=3), security=insecure))
    await mesh.start()
    try:
        assert bus.settings().replicas == 3 and mesh.bus_env() == {bus.ENV_REPLICAS: "3"}
        nc = await bus.connect(cluster.urls, tls=TlsConfig())
        try:
            js = nc.jetstream()
            for name in [s.name for s in bus.STREAMS] + [f"KV_{bus.POLICY_BUCKET}", f"KV_{REGISTRY_BUCKET}"]:
                assert (await js.stream_info(name)).config.num_replicas == 3, name
        finally:
            await nc.close()
    finally:
        await mesh.stop()
    assert bus.settings().replicas is None and mesh.bus_env() == {}

    too_many = MeshConfig(dir=str(tmp_path / "m5"), nats=NatsConfig(url=cluster.urls, replicas=5), security=insecure)
    with pytest.raises(FailedPreconditionError, match="cannot keep 5 replicas") as e:
        await Mesh(too_many).start()
    assert e.value.reason == "BAD_REPLICAS" and bus.settings().replicas is None
