"""Live scoring in one distributed trace: a production trace published in the agent's span is
scored in a child span of it, and the score (or the dead letter) goes out in the same trace."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from rollmesh import bus
from rollmesh.monitor.publish import TracePublisher
from rollmesh.monitor.service import RubricService
from rollmesh.proto.v1 import bus_pb2
from span_capture import captured_spans, span_id_of, spans_when, trace_id_of

from .conftest import service_config, traces, uid


class Headers:
    """Headers and payloads of what is published on `subject` (core NATS)."""

    def __init__(self) -> None:
        self.msgs: list[Any] = []
        self.nc: Any = None

    async def start(self, nats_url: str, subject: str) -> Headers:
        self.nc = await bus.connect(nats_url, name="test-headers")

        async def on(msg: Any) -> None:
            self.msgs.append(msg)

        await self.nc.subscribe(subject, cb=on)
        await self.nc.flush()
        return self

    async def wait_for(self, n: int, timeout_s: float = 20.0) -> list[Any]:
        async with asyncio.timeout(timeout_s):
            while len(self.msgs) < n:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return self.msgs

    async def close(self) -> None:
        await self.nc.close()


async def test_trace_in_and_score_out_are_one_trace(nats_url: str) -> None:
    app = uid("traced")
    cfg = service_config({app: "rules"})
    (scored, refused) = traces(app, 2)
    del refused.messages[:]  # no messages: dead-lettered, not scored
    tracer = trace.get_tracer("test-agent")
    with captured_spans() as exporter:
        scores = await Headers().start(nats_url, bus.scores_subject(app))
        letters = await Headers().start(nats_url, bus.deadletter_subject(bus.monitor_subject(app)))
        service = await RubricService(cfg, nats_url=nats_url).start()
        try:
            async with await TracePublisher.connect(nats_url) as publisher:
                with tracer.start_as_current_span("agent.request") as agent:
                    await publisher.publish_trace(scored)
                with tracer.start_as_current_span("agent.request") as other:
                    await publisher.publish_trace(refused)
            (score_msg,) = await scores.wait_for(1)
            (letter_msg,) = await letters.wait_for(1)
            spans = await spans_when(exporter, lambda spans: sum(s.name == "monitor.score" for s in spans) == 2)
        finally:
            await service.stop(1)
            await scores.close()
            await letters.close()

    tid = agent.get_span_context().trace_id
    (published,) = [s for s in spans if s.name == "monitor.publish" and s.context.trace_id == tid]
    (scoring,) = [s for s in spans if s.name == "monitor.score" and s.context.trace_id == tid]
    # trace in: the publish is the agent's child, the scoring the publish's (across the bus)
    assert published.kind == SpanKind.PRODUCER and published.parent.span_id == agent.get_span_context().span_id
    assert scoring.kind == SpanKind.CONSUMER and scoring.parent.span_id == published.context.span_id
    assert scoring.attributes["messaging.message.id"] == scored.trace_id
    assert scoring.attributes["rollmesh.rubric"] == "rules"
    # score out: its message carries the scoring span's context
    score = bus_pb2.MonitorScore.FromString(score_msg.data)
    assert score.trace_id == scored.trace_id
    assert trace_id_of(score_msg.headers["traceparent"]) == tid
    assert span_id_of(score_msg.headers["traceparent"]) == scoring.context.span_id
    assert score_msg.headers[bus.MSG_ID] == scored.trace_id

    # a dead letter stays in its trace, and keeps the trace's own headers
    other_tid = other.get_span_context().trace_id
    (rejected,) = [s for s in spans if s.name == "monitor.score" and s.context.trace_id == other_tid]
    assert rejected.status.status_code == trace.StatusCode.ERROR
    assert trace_id_of(letter_msg.headers["traceparent"]) == other_tid
    letter = bus_pb2.DeadLetter.FromString(letter_msg.data)
    assert letter.headers[bus.MSG_ID] == refused.trace_id
    assert trace_id_of(letter.headers["traceparent"]) == other_tid
