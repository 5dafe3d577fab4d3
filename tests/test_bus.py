"""The JetStream bus on a real nats-server: streams, dedup, dead letters, size limits, policy KV."""

from __future__ import annotations

import uuid

import pytest
from rollmesh import bus
from rollmesh.errors import InvalidArgumentError, ResourceExhaustedError, UnavailableError
from rollmesh.proto.v1 import bus_pb2, messages_pb2, trajectory_pb2


@pytest.fixture
async def publisher(nats_url: str):
    nc = await bus.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    yield bus.Publisher(nc, js)
    await nc.close()


async def test_streams_are_created_idempotently(publisher: bus.Publisher) -> None:
    await bus.ensure_streams(publisher.js)
    names = {s.config.name for s in await publisher.js.streams_info()}
    assert {"ROLLOUTS", "MONITOR", "SCORES", "DEADLETTER"} <= names


async def test_a_republished_trajectory_is_dropped_as_duplicate(publisher: bus.Publisher) -> None:
    run = f"run-{uuid.uuid4().hex[:8]}"
    t = trajectory_pb2.Trajectory(trajectory_id=f"{run}-t0", run_id=run, task=messages_pb2.Task(env="arithmetic"))
    assert await publisher.publish_trajectory(t) is True
    assert await publisher.publish_trajectory(t) is False
    sub = await publisher.js.pull_subscribe(bus.rollouts_subject(run), durable=None)
    msgs = await sub.fetch(10, timeout=2)
    assert len(msgs) == 1
    assert trajectory_pb2.Trajectory.FromString(msgs[0].data).trajectory_id == t.trajectory_id


async def test_batched_publishes_are_all_acknowledged(publisher: bus.Publisher) -> None:
    app = f"app{uuid.uuid4().hex[:8]}"
    for i in range(300):
        await publisher.publish(bus.monitor_subject(app), bus_pb2.MonitorTrace(trace_id=str(i), app=app))
    await publisher.flush()
    info = await publisher.js.stream_info("MONITOR", subjects_filter=bus.monitor_subject(app))
    assert info.state.subjects[bus.monitor_subject(app)] == 300


async def test_oversized_payload_is_refused_with_a_clear_error(publisher: bus.Publisher) -> None:
    big = bus_pb2.MonitorTrace(trace_id="x", answer="a" * (publisher.nc.max_payload + 1))
    with pytest.raises(ResourceExhaustedError, match="max_payload"):
        await publisher.publish_now(bus.monitor_subject("big"), big)


async def test_dead_letters_keep_payload_and_reason(publisher: bus.Publisher) -> None:
    app = f"dl{uuid.uuid4().hex[:8]}"
    subject = bus.monitor_subject(app)
    await publisher.dead_letter(subject, "not a MonitorTrace", b"\xff\x00garbage", service="test")
    sub = await publisher.js.pull_subscribe(bus.deadletter_subject(subject), durable=None)
    (msg,) = await sub.fetch(1, timeout=2)
    letter = bus_pb2.DeadLetter.FromString(msg.data)
    assert (letter.subject, letter.reason, letter.payload, letter.service) == (
        subject,
        "not a MonitorTrace",
        b"\xff\x00garbage",
        "test",
    )


async def test_policy_versions_round_trip(publisher: bus.Publisher) -> None:
    store = await bus.PolicyStore.open(publisher.js)
    run = f"run-{uuid.uuid4().hex[:8]}"
    assert await store.get(run) is None and await store.version(run) == 0
    await store.put(run, 3, checkpoint="/ckpt/3")
    got = await store.get(run)
    assert got is not None and (got.version, got.checkpoint) == (3, "/ckpt/3")


def test_subject_tokens_are_validated() -> None:
    with pytest.raises(InvalidArgumentError, match="NATS subject"):
        bus.rollouts_subject("a.b", "env")
    assert bus.deadletter_subject("rollmesh.monitor.shop") == "rollmesh.deadletter.monitor.shop"


async def test_a_bus_that_is_down_is_a_clear_error() -> None:
    from rollmesh.natsd import free_port

    with pytest.raises(UnavailableError, match="cannot reach NATS"):
        await bus.connect(f"nats://127.0.0.1:{free_port()}", connect_timeout_s=0.5)
