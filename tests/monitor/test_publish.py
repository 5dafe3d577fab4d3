"""The Python helpers of production agents: TracePublisher, publish_trace, ScoreReader, on a real
nats-server (with the rubric service scoring in between where scores are read)."""

from __future__ import annotations

import asyncio

import pytest
from rollmesh import bus
from rollmesh.errors import InvalidArgumentError
from rollmesh.monitor import ScoreReader, TracePublisher, make_trace, publish_trace
from rollmesh.monitor.service import RubricService
from rollmesh.proto.v1 import bus_pb2

from .conftest import chat, service_config, uid


async def stored(js, app: str) -> int:
    info = await js.stream_info(bus.MONITOR.name, subjects_filter=bus.monitor_subject(app))
    return info.state.subjects.get(bus.monitor_subject(app), 0) if info.state.subjects else 0


async def test_publisher_batches_acks_and_deduplicates_by_trace_id(nats_url: str) -> None:
    app = uid("pub")
    async with await TracePublisher.connect(nats_url, max_pending=64) as traces:
        ids = []
        for i in range(300):
            messages, answer = chat(i)
            ids.append(await traces.publish(app, messages, answer=answer, info={"i": i}, labels={"user": "u"}))
        await traces.publish(app, chat(0)[0], trace_id=ids[0])  # a retry of the first one
        await traces.flush()
        assert len(set(ids)) == 300
        assert await stored(traces.js, app) == 300
        sub = await traces.js.pull_subscribe(bus.monitor_subject(app), durable=None, stream=bus.MONITOR.name)
        first = bus_pb2.MonitorTrace.FromString((await sub.fetch(1, timeout=5))[0].data)
    assert first.trace_id == ids[0] and first.app == app and first.answer == "1" and first.info["i"] == 0
    assert [m.role for m in first.messages] == ["user", "assistant"] and first.labels["user"] == "u"
    assert first.HasField("created_at")


async def test_invalid_traces_are_refused_before_sending(nats_url: str) -> None:
    async with await TracePublisher.connect(nats_url) as traces:
        with pytest.raises(InvalidArgumentError, match="subject token"):
            await traces.publish("not.one.token", chat(0)[0])
        with pytest.raises(InvalidArgumentError, match="trace_id and app"):
            await traces.publish_trace(bus_pb2.MonitorTrace(app="x"))


async def test_one_shot_publish_from_synchronous_code(nats_url: str) -> None:
    app = uid("sync")
    trace_id = await asyncio.to_thread(publish_trace, nats_url, app, chat(1)[0], answer="2", trace_id="fixed-id")
    assert trace_id == "fixed-id"
    nc = await bus.connect(nats_url)
    try:
        assert await stored(nc.jetstream(), app) == 1
    finally:
        await nc.close()
    with pytest.raises(RuntimeError, match="TracePublisher"):
        publish_trace(nats_url, app, chat(1)[0])  # inside a running loop


async def test_scores_are_read_back_live_and_from_the_stream(nats_url: str) -> None:
    app = uid("read")
    service = await RubricService(service_config({app: "rules"}), nats_url=nats_url).start()
    try:
        async with ScoreReader(nats_url, app) as scores:
            async with await TracePublisher.connect(nats_url) as traces:
                sent = [await traces.publish(app, *chat(i)[:1], answer=chat(i)[1]) for i in range(5)]
            got = await scores.collect(5, timeout_s=20)
            assert sorted(s.trace_id for s in got) == sorted(sent) and all(s.reward == 1.5 for s in got)
            with pytest.raises(TimeoutError):
                await scores.next(0.2)
        async with ScoreReader(nats_url, app, deliver="all") as again:
            replay = [s.trace_id async for s in _take(again, 5)]
        assert sorted(replay) == sorted(sent)
    finally:
        await service.stop(1)


async def _take(reader: ScoreReader, n: int):
    for _ in range(n):
        yield await reader.next(10)


def test_make_trace_accepts_message_protos() -> None:
    t = make_trace("a", make_trace("a", chat(3)[0]).messages, answer="4")
    assert [m.content for m in t.messages][1].endswith("4")
