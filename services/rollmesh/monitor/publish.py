"""Python side of live scoring for production agents: publish traces, read their scores back.

async with await TracePublisher.connect("nats://127.0.0.1:4222") as traces:
    trace_id = await traces.publish("shop", [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "Hello!"}])
# acks are awaited in batches; leaving the block (or flush()) waits for the rest

async with ScoreReader("nats://127.0.0.1:4222", "shop") as scores:
    async for score in scores:            # rollmesh.v1.MonitorScore, as the rubric service publishes them
        print(score.trace_id, score.reward, dict(score.rewards))

publish_trace("nats://127.0.0.1:4222", "shop", messages)   # one-shot, from synchronous code

Tracing: each trace is published in a `monitor.publish` span (a child of the caller's current
span, if any) whose W3C context goes in the message's headers; the rubric service scores it in a
child span and publishes the score with the same trace context, so trace in and score out are one
distributed trace. Spans exist when the process has an OpenTelemetry SDK tracer provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy
from opentelemetry.trace import SpanKind

from .. import bus
from ..errors import InvalidArgumentError, UnavailableError
from ..proto.v1 import bus_pb2 as bus_pb
from ..proto.v1 import messages_pb2 as msg_pb
from ..telemetry import start_span
from .traces import make_trace

Messages = Iterable[Mapping[str, Any]] | Iterable[msg_pb.Message]


class TracePublisher:
    """Publishes MonitorTraces on rollmesh.monitor.<app> (the MONITOR stream), deduplicated by
    trace_id, with acks awaited in batches of `max_pending` (one round trip per trace would cap a
    client at a few hundred traces/s)."""

    def __init__(self, nc: NATS, *, max_pending: int = 512, owns_connection: bool = False) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self._publisher = bus.Publisher(nc, self.js, max_pending=max_pending)
        self._owns = owns_connection

    @classmethod
    async def connect(cls, nats_url: str, *, max_pending: int = 512, create_stream: bool = True) -> TracePublisher:
        """`create_stream`: make sure the MONITOR stream exists (idempotent; needs the permission)."""
        nc = await bus.connect(nats_url, name="rollmesh-traces")
        if create_stream:
            try:
                await bus.ensure_streams(nc.jetstream(), (bus.MONITOR,))
            except Exception:
                await nc.close()
                raise
        return cls(nc, max_pending=max_pending, owns_connection=True)

    async def publish(
        self,
        app: str,
        messages: Messages,
        *,
        answer: str = "",
        info: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        trace_id: str | None = None,
        created_at: float | None = None,
    ) -> str:
        """Queues one trace (chat messages, OpenAI style or Message protos) and returns its trace_id.
        Its ack is awaited by flush(), close(), or when max_pending are outstanding."""
        trace = make_trace(
            app, messages, answer=answer, info=info, labels=labels, trace_id=trace_id, created_at=created_at
        )
        return await self.publish_trace(trace)

    async def publish_trace(self, trace: bus_pb.MonitorTrace) -> str:
        if not trace.trace_id or not trace.app:
            raise InvalidArgumentError(
                "a published trace needs trace_id and app (see make_trace)", reason="MISSING_FIELD"
            )
        subject = bus.monitor_subject(trace.app)
        with start_span(
            "monitor.publish",
            instrumentation="rollmesh.monitor",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.message.id": trace.trace_id, "rollmesh.app": trace.app},
        ):
            await self._publisher.publish(subject, trace, msg_id=trace.trace_id)
        return trace.trace_id

    async def flush(self) -> None:
        """Waits until JetStream stored every queued trace (UnavailableError if one was not)."""
        await self._publisher.flush()

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            if self._owns:
                await self.nc.close()

    async def __aenter__(self) -> TracePublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def publish_trace(nats_url: str, app: str, messages: Messages, **kwargs: Any) -> str:
    """Publishes one trace and waits for JetStream to store it; for synchronous code (one
    connection per call: batch with TracePublisher for many traces)."""

    async def once() -> str:
        async with await TracePublisher.connect(nats_url) as publisher:
            return await publisher.publish(app, messages, **kwargs)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(once())
    raise RuntimeError("publish_trace() is for synchronous code; in async code use TracePublisher")


class ScoreReader:
    """The MonitorScores of one app ("*" for all) as an async iterator, from a JetStream ordered
    consumer on the SCORES stream: deliver="new" from now on, "all" from what the stream retains."""

    def __init__(self, nats_url: str, app: str = "*", *, deliver: str = "new") -> None:
        if deliver not in ("new", "all"):
            raise InvalidArgumentError("deliver must be 'new' or 'all'")
        self.nats_url = nats_url
        self.subject = bus.scores_subject(app)
        self.deliver = deliver
        self.nc: NATS | None = None
        self._sub: Any = None

    async def start(self) -> ScoreReader:
        self.nc = await bus.connect(self.nats_url, name="rollmesh-scores")
        js = self.nc.jetstream()
        await bus.ensure_streams(js, (bus.SCORES,))
        policy = DeliverPolicy.NEW if self.deliver == "new" else DeliverPolicy.ALL
        self._sub = await js.subscribe(self.subject, ordered_consumer=True, deliver_policy=policy)
        return self

    async def next(self, timeout_s: float | None = None) -> bus_pb.MonitorScore:
        """The next score; TimeoutError after `timeout_s` without one."""
        if self._sub is None:
            raise RuntimeError("ScoreReader not started: use `async with ScoreReader(...)`")
        try:
            msg = await self._sub.next_msg(timeout=timeout_s)
        except nats.errors.TimeoutError as e:
            raise TimeoutError(f"no score on {self.subject} within {timeout_s} s") from e
        except nats.errors.ConnectionClosedError as e:
            raise UnavailableError(f"NATS connection closed while reading {self.subject}") from e
        return bus_pb.MonitorScore.FromString(msg.data)

    async def collect(self, n: int, timeout_s: float) -> list[bus_pb.MonitorScore]:
        """The next `n` scores, TimeoutError when they do not all come within `timeout_s` in total."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        return [await self.next(max(0.001, deadline - loop.time())) for _ in range(n)]

    def __aiter__(self) -> AsyncIterator[bus_pb.MonitorScore]:
        return self

    async def __anext__(self) -> bus_pb.MonitorScore:
        return await self.next(None)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
            self.nc = None
            self._sub = None

    async def __aenter__(self) -> ScoreReader:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
