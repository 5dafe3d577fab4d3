from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from rollmesh.proto.v1 import bus_pb2
from rollmesh.registry import REGISTRY_BUCKET, Registry, record_for

ENV = bus_pb2.SERVICE_KIND_ENVIRONMENT
INF = bus_pb2.SERVICE_KIND_INFERENCE


def _bucket() -> str:
    # A bucket per test keeps tests independent on the shared session server.
    return f"test-registry-{uuid.uuid4().hex[:8]}"


async def test_register_list_close(nats_url: str) -> None:
    reg = await Registry.connect(nats_url, bucket=_bucket())
    try:
        assert await reg.list() == []
        rec = record_for(ENV, "guess-number", "1.0", "127.0.0.1:5000", 8, "abc", labels={"zone": "a"})
        registration = await reg.register(rec)
        assert registration.key == "environment.guess-number.abc"
        [got] = await reg.list()
        assert (got.name, got.address, got.capacity, got.labels["zone"]) == (
            "guess-number",
            "127.0.0.1:5000",
            8,
            "a",
        )
        assert got.started_at.seconds > 0 and got.heartbeat_at.seconds > 0
        await registration.close()
        assert await reg.list() == []
    finally:
        await reg.close()


async def test_default_bucket_name(nats_url: str) -> None:
    async with await Registry.connect(nats_url) as reg:
        assert reg.kv._name == REGISTRY_BUCKET
        assert reg.ttl_s > 0  # 15 s unless another test created the bucket first


async def test_filter_by_kind_and_name(nats_url: str) -> None:
    async with await Registry.connect(nats_url, bucket=_bucket()) as reg:
        regs = [
            await reg.register(record_for(ENV, "arithmetic", "1", "h:1", 4, "i1")),
            await reg.register(record_for(ENV, "arithmetic", "1", "h:2", 4, "i2")),
            await reg.register(record_for("environment", "wiki-search", "1", "h:3", 4, "i3")),
            await reg.register(record_for(INF, "arithmetic", "1", "h:4", 64, "i4")),
        ]
        assert [r.instance_id for r in await reg.list()] == ["i1", "i2", "i3", "i4"]
        assert [r.instance_id for r in await reg.list(kind=ENV)] == ["i1", "i2", "i3"]
        assert [r.instance_id for r in await reg.list(kind="inference")] == ["i4"]
        assert [r.instance_id for r in await reg.list(name="arithmetic")] == ["i1", "i2", "i4"]
        assert [r.instance_id for r in await reg.list(kind=ENV, name="wiki-search")] == ["i3"]
        assert await reg.list(kind=bus_pb2.SERVICE_KIND_RUBRIC) == []
        for r in regs:
            await r.close()


async def test_heartbeat_keeps_alive_and_ttl_expires_dead(nats_url: str) -> None:
    async with await Registry.connect(nats_url, ttl_s=1.0, bucket=_bucket()) as reg:
        alive = await reg.register(record_for(ENV, "alive", "1", "h:1", 1, "a"), heartbeat_s=0.2)
        dead = await reg.register(record_for(ENV, "dead", "1", "h:2", 1, "d"))
        first_beat = (await reg.list(name="alive"))[0].heartbeat_at.ToNanoseconds()
        # Simulate a crash: the heartbeat stops and nobody deletes the key.
        assert dead._task is not None
        dead._task.cancel()
        deadline = time.monotonic() + 5.0
        while [r.name for r in await reg.list()] != ["alive"]:
            assert time.monotonic() < deadline, "dead record did not expire"
            await asyncio.sleep(0.1)
        assert (await reg.list(name="alive"))[0].heartbeat_at.ToNanoseconds() > first_beat
        await alive.close()


@pytest.mark.parametrize(
    ("name", "instance"), [("has.dot", "i"), ("sp ace", "i"), ("ok", "wild*"), ("", "i"), ("ok", "a>b")]
)
def test_invalid_tokens_raise(name: str, instance: str) -> None:
    with pytest.raises(ValueError, match="invalid registry"):
        record_for(ENV, name, "1", "h:1", 1, instance)


def test_unspecified_kind_raises() -> None:
    with pytest.raises(ValueError, match="kind must be set"):
        record_for(bus_pb2.SERVICE_KIND_UNSPECIFIED, "x", "1", "h:1", 1, "i")


async def test_register_validates(nats_url: str) -> None:
    async with await Registry.connect(nats_url, bucket=_bucket()) as reg:
        bad = bus_pb2.ServiceRecord(kind=ENV, name="a.b", instance_id="i")
        with pytest.raises(ValueError, match="invalid registry name"):
            await reg.register(bad)
        with pytest.raises(ValueError):
            await reg.list(name="a.b")


async def test_a_record_is_listed_right_after_it_is_registered(nats_url: str) -> None:
    """Regression: a KV watch could report "no more entries" before counting entries already on
    their way, so a server registered a moment earlier looked absent."""
    async with await Registry.connect(nats_url, bucket=_bucket()) as reg:
        for i in range(40):
            registration = await reg.register(record_for("environment", f"env{i}", "1", f"127.0.0.1:{i + 1}", 1))
            assert [r.name for r in await reg.list("environment", f"env{i}")] == [f"env{i}"]
            await registration.close()
            assert await reg.list("environment", f"env{i}") == []
