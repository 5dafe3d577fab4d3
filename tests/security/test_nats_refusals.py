"""Callers that try to use the bus without the right to: the embedded nats-server with the mesh's
authorization (TLS, client certificates mapped to per-role users). Strangers cannot connect; a
known identity cannot publish forged rollouts, register a rogue server, write the policy version
or publish traces for apps it was not given, and nothing of theirs reaches a stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from rollmesh import bus
from rollmesh.errors import UnavailableError
from rollmesh.natsd import EmbeddedNats
from rollmesh.proto.v1 import bus_pb2
from rollmesh.registry import Registry
from rollmesh.security.tls import TlsConfig

from .conftest import callers, member


@pytest.fixture(scope="module")
async def secured(certs: Path) -> AsyncIterator[str]:
    async with EmbeddedNats(auth_dir=certs) as server:
        nc = await bus.connect(server.url, tls=member(certs, "operator"))
        js = nc.jetstream()
        await bus.ensure_streams(js)
        await js.create_key_value(bucket="rollmesh-policy")
        await nc.close()
        yield server.url


async def _connect(url: str, config: TlsConfig) -> tuple[nats.NATS, list[str]]:
    """A connection and the asynchronous errors the server sent it (permission violations)."""
    errors: list[str] = []
    nc = await bus.connect(url, tls=config)

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    nc._error_cb = on_error  # nats-py reports -ERR from the server here
    return nc, errors


async def _count(url: str, certs: Path, stream: str) -> int:
    nc = await bus.connect(url, tls=member(certs, "operator"))
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


async def _violation_reported(errors: list[str]) -> None:
    for _ in range(100):
        if any("permissions violation" in e for e in errors):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the server reported no permissions violation: {errors}")


async def _refused_publish(nc: nats.NATS, errors: list[str], subject: str) -> None:
    with pytest.raises((TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await nc.jetstream().publish(subject, b"forged", timeout=1.0)
    await _violation_reported(errors)


@pytest.mark.parametrize("who", ["no certificate", "another CA", "expired"])
async def test_strangers_cannot_connect(secured: str, certs: Path, foreign: Path, expired: TlsConfig, who: str) -> None:
    with pytest.raises(UnavailableError):
        nc = await bus.connect(secured, tls=callers(certs, foreign, expired)[who], connect_timeout_s=1.0)
        await nc.close()


async def test_plaintext_cannot_connect(secured: str) -> None:
    with pytest.raises(UnavailableError):
        await bus.connect(secured, tls=TlsConfig(), connect_timeout_s=1.0)


@pytest.mark.parametrize("who", ["reader", "publisher", "trainer", "env", "inference"])
async def test_only_orchestrators_publish_rollouts(secured: str, certs: Path, who: str) -> None:
    before = await _count(secured, certs, "ROLLOUTS")
    nc, errors = await _connect(secured, member(certs, who))
    try:
        await _refused_publish(nc, errors, "rollmesh.rollouts.run.arithmetic")
    finally:
        await nc.close()
    assert await _count(secured, certs, "ROLLOUTS") == before
    nc, _ = await _connect(secured, member(certs, "orchestrator"))
    try:
        await nc.jetstream().publish("rollmesh.rollouts.run.arithmetic", b"ok", timeout=5)
    finally:
        await nc.close()
    assert await _count(secured, certs, "ROLLOUTS") == before + 1


@pytest.mark.parametrize("who", ["orchestrator", "reader", "publisher", "trainer"])
async def test_only_servers_register(secured: str, certs: Path, who: str) -> None:
    record = bus_pb2.ServiceRecord(
        kind=bus_pb2.SERVICE_KIND_INFERENCE, name="tiny", address="10.9.9.9:1", instance_id=f"rogue-{who}"
    )
    nc, errors = await _connect(secured, member(certs, who))
    try:
        registry = await Registry.from_client(nc)
        with pytest.raises((TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            registration = await asyncio.wait_for(registry.register(record), 3)
            await registration.close()
        await _violation_reported(errors)
    finally:
        await nc.close()
    nc, _ = await _connect(secured, member(certs, "orchestrator"))
    try:
        listed = await (await Registry.from_client(nc)).list(bus_pb2.SERVICE_KIND_INFERENCE, "tiny")
        assert [r for r in listed if r.instance_id.startswith("rogue")] == []
    finally:
        await nc.close()
    # A server identity may.
    nc, _ = await _connect(secured, member(certs, "inference"))
    try:
        record.instance_id = "legit"
        registration = await (await Registry.from_client(nc)).register(record)
        await registration.close()
    finally:
        await nc.close()


@pytest.mark.parametrize("who", ["orchestrator", "reader", "publisher", "env"])
async def test_only_the_trainer_writes_the_policy_version(secured: str, certs: Path, who: str) -> None:
    nc, errors = await _connect(secured, member(certs, who))
    try:
        store = await bus.PolicyStore.open(nc.jetstream())
        with pytest.raises((TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await asyncio.wait_for(store.put("run", 2**62), 3)
        await _violation_reported(errors)
    finally:
        await nc.close()
    nc, _ = await _connect(secured, member(certs, "trainer"))
    try:
        store = await bus.PolicyStore.open(nc.jetstream())
        assert await store.version("run") < 2**62
        await store.put("run", 7)
        assert await store.version("run") == 7
    finally:
        await nc.close()


async def test_publishers_publish_only_their_apps(secured: str, certs: Path) -> None:
    before = await _count(secured, certs, "MONITOR")
    nc, errors = await _connect(secured, member(certs, "publisher"))  # given the app "shop" (conftest)
    try:
        await nc.jetstream().publish("rollmesh.monitor.shop", b"trace", timeout=5)
        await _refused_publish(nc, errors, "rollmesh.monitor.bank")
    finally:
        await nc.close()
    assert await _count(secured, certs, "MONITOR") == before + 1


async def test_readers_read_scores_and_publishers_do_not(secured: str, certs: Path) -> None:
    from rollmesh.monitor.publish import ScoreReader
    from rollmesh.security.tls import using

    with using(member(certs, "reader")):
        async with ScoreReader(secured, "shop", deliver="new") as reader:
            nc, _ = await _connect(secured, member(certs, "rubric"))  # the rubric service writes scores
            try:
                score = bus_pb2.MonitorScore(app="shop", trace_id="t-read")
                await nc.jetstream().publish("rollmesh.scores.shop", score.SerializeToString(), timeout=5)
            finally:
                await nc.close()
            assert (await reader.next(10)).trace_id == "t-read"
    with using(member(certs, "publisher")), pytest.raises((TimeoutError, nats.errors.TimeoutError)):
        async with ScoreReader(secured, "shop") as reader:
            await reader.next(1)


@pytest.mark.parametrize(
    ("who", "stream", "subject"),
    [("trainer", "ROLLOUTS", "rollmesh.rollouts.acks.digits"), ("rubric", "MONITOR", "rollmesh.monitor.acks")],
)
async def test_consumers_acknowledge_what_they_consume(
    secured: str, certs: Path, who: str, stream: str, subject: str
) -> None:
    """The trainer (rollouts) and the rubric service (production traces) take messages off durable
    consumers and acknowledge them; refused acknowledgements would bring every message back after
    ack_wait, and a restarted consumer would start over from its first unacknowledged one."""
    admin = await bus.connect(secured, tls=member(certs, "operator"))
    try:
        await admin.jetstream().publish(subject, b"payload")
    finally:
        await admin.close()
    nc, errors = await _connect(secured, member(certs, who))
    try:
        js = nc.jetstream()
        durable = f"acks-{who}"
        sub = await js.pull_subscribe(subject, durable=durable, stream=stream)
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack_sync(timeout=5)
        info = await js.consumer_info(stream, durable)
        assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == msg.metadata.sequence.stream
        assert not [e for e in errors if "permissions violation" in e], errors
    finally:
        await nc.close()


async def test_an_older_directory_gets_todays_permissions(tmp_path: Path) -> None:
    """A credentials directory written by an earlier rollmesh (here: the trainer without the right to
    acknowledge) gets the current role table when a server starts on it; a publisher keeps its apps."""
    from rollmesh.security import nats_auth, pki

    certs = pki.init(tmp_path / "pki", publisher_apps=["shop"])
    conf = certs / nats_auth.CONFIG_NAME
    body = json.loads(conf.read_text())
    for user in body["authorization"]["users"]:
        user["permissions"]["publish"]["allow"] = [
            s for s in user["permissions"]["publish"]["allow"] if not s.startswith("$JS.ACK.")
        ]
    conf.write_text(json.dumps(body))
    async with EmbeddedNats(auth_dir=certs) as server:
        users = {u["user"]: u["permissions"] for u in json.loads(conf.read_text())["authorization"]["users"]}
        trainer = next(p for u, p in users.items() if "OU=trainer" in u)
        publisher = next(p for u, p in users.items() if "OU=publisher" in u)
        assert "$JS.ACK.ROLLOUTS.>" in trainer["publish"]["allow"]
        assert "rollmesh.monitor.shop" in publisher["publish"]["allow"]
        assert "rollmesh.monitor.>" not in publisher["publish"]["allow"]
        admin = await bus.connect(server.url, tls=member(certs, "operator"))
        try:
            await bus.ensure_streams(admin.jetstream())
            await admin.jetstream().publish("rollmesh.rollouts.old.digits", b"payload")
        finally:
            await admin.close()
        nc = await bus.connect(server.url, tls=member(certs, "trainer"))
        try:
            sub = await nc.jetstream().pull_subscribe("rollmesh.rollouts.old.digits", durable="old", stream="ROLLOUTS")
            [msg] = await sub.fetch(1, timeout=5)
            await msg.ack_sync(timeout=5)
        finally:
            await nc.close()
