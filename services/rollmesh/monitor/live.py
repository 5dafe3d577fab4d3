"""Live scoring: production traces from the MONITOR stream scored with their app's rubric, scores
published on rollmesh.scores.<app>.

Delivery contract ("nothing is lost"; the bus in docs/protocol.md):
- one durable pull consumer shared by every replica, so each trace goes to one replica at a time;
- a trace is acknowledged only after its score (or its dead letter) is stored in JetStream; the
  score is published with Nats-Msg-Id = trace_id, so a redelivered trace does not score twice
  within the SCORES duplicate window;
- a trace that cannot be scored (bad payload, missing fields, no rubric, every function failed)
  is dead-lettered at once with its reason; an infrastructure failure (publish not acknowledged,
  a bug) hands it back for another delivery after `retry_delay_s`;
- a replica that dies before acknowledging: its traces come back after `ack_wait_s` to any replica;
- after `max_deliveries` deliveries a trace is dead-lettered instead of scored again (the consumer's
  server-side max_deliver is one more, so that last delivery happens), never redelivered forever.

Tracing: each delivery is handled in a `monitor.score` span, a child of the span that published
the trace (its traceparent header); the score is published with this span's trace context, and a
dead letter with the trace's own, so trace in and score out are one distributed trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace

from .. import bus
from ..errors import ResourceExhaustedError
from ..rubric.config import MonitorConfig
from ..telemetry import extract_trace_context, inject_trace_headers, start_span
from .metrics import LiveMetrics
from .pull import PullConsumer
from .traces import (
    INTERNAL,
    MONITOR_PREFIX,
    SCORE_TOO_LARGE,
    TOO_MANY_DELIVERIES,
    ScoredTrace,
    TraceRejected,
    TraceScorer,
)

log = logging.getLogger(__name__)

STREAM = bus.MONITOR.name


@dataclass
class LiveStats:
    scored: int = 0
    dead_lettered: int = 0
    retried: int = 0
    redelivered: int = 0
    duplicates: int = 0  # scores JetStream had already stored (a redelivered trace)


class LiveScorer:
    def __init__(
        self,
        scorer: TraceScorer,
        nats_url: str,
        cfg: MonitorConfig | None = None,
        *,
        metrics: LiveMetrics | None = None,
        on_scored: Callable[[ScoredTrace], None] | None = None,
        before_publish: Callable[[ScoredTrace], None] | None = None,
        on_dead_letter: Callable[[TraceRejected], None] | None = None,
        service: str = "rollmesh-rubric",
    ) -> None:
        self.scorer = scorer
        self.nats_url = nats_url
        self.cfg = cfg or MonitorConfig()
        self.metrics = metrics
        self.on_scored = on_scored  # after the score is stored and the trace acknowledged
        self.before_publish = before_publish
        self.on_dead_letter = on_dead_letter
        self.service = service
        self.stats = LiveStats()
        self.nc: NATS | None = None
        self.publisher: bus.Publisher | None = None
        self.js: JetStreamContext | None = None
        self.puller: PullConsumer | None = None
        # In flight: id -> (message, time of the last sign of life sent for it).
        self._inflight: dict[int, tuple[Msg, float]] = {}
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._naks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.puller is not None and self.nc is not None and self.nc.is_connected

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def start(self) -> LiveScorer:
        self.nc = await bus.connect(self.nats_url, name=self.service)
        js = self.js = self.nc.jetstream()
        await bus.ensure_streams(js)
        self.publisher = bus.Publisher(self.nc, js)
        await self._ensure_consumer(js)
        self.puller = PullConsumer(
            self.nc,
            STREAM,
            self.cfg.durable,
            on_message=self._dispatch,
            on_late=self._hand_back,
            room=lambda: self.cfg.max_in_flight - len(self._inflight),
            batch=self.cfg.fetch_batch,
        )
        await self.puller.start()
        self._progress = asyncio.create_task(self._progress_loop(), name="live-scoring progress")
        log.info(
            "live scoring %s with durable consumer %s (apps %s, default rubric %s)",
            ", ".join(self.cfg.filter_subjects),
            self.cfg.durable,
            self.scorer.apps or "none mapped",
            self.scorer.default or "none",
        )
        return self

    def consumer_config(self) -> ConsumerConfig:
        filters = self.cfg.filter_subjects
        return ConsumerConfig(
            name=self.cfg.durable,
            durable_name=self.cfg.durable,
            deliver_policy=DeliverPolicy.NEW if self.cfg.deliver == "new" else DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.cfg.ack_wait_s,
            # One more than the scoring attempts: the last delivery only writes the dead letter.
            max_deliver=self.cfg.max_deliveries + 1,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
            # Bounds unacknowledged traces over all replicas (each bounds itself by max_in_flight).
            max_ack_pending=max(1000, 32 * self.cfg.max_in_flight),
        )

    async def _ensure_consumer(self, js: JetStreamContext) -> None:
        config = self.consumer_config()
        try:
            await js.add_consumer(STREAM, config)
        except nats.js.errors.BadRequestError as e:
            # It exists with another configuration (another version of this service): keep it, but say so.
            info = await js.consumer_info(STREAM, self.cfg.durable)
            log.warning(
                "durable consumer %s exists with another configuration (%s); using it as it is: "
                "ack_wait=%ss max_deliver=%s filter=%s. Delete it (nats consumer rm MONITOR %s) to apply the new one",
                self.cfg.durable,
                e.description,
                info.config.ack_wait,
                info.config.max_deliver,
                info.config.filter_subject or info.config.filter_subjects,
                self.cfg.durable,
            )

    # ---- per message -----------------------------------------------------------------------------

    def _dispatch(self, msg: Msg) -> None:
        key = self._next_id
        self._next_id += 1
        self._inflight[key] = (msg, time.monotonic())
        self._idle.clear()
        if self.metrics is not None:
            self.metrics.in_flight = len(self._inflight)
        task = asyncio.create_task(self._handle(key, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _hand_back(self, msg: Msg) -> None:
        """A message delivered after stop(): straight back to the stream for another replica."""
        task = asyncio.create_task(self._nak(msg, 0.0))
        self._naks.add(task)
        task.add_done_callback(self._naks.discard)

    async def _handle(self, key: int, msg: Msg) -> None:
        app = msg.subject.removeprefix(MONITOR_PREFIX)
        with start_span(
            "monitor.score",
            instrumentation="rollmesh.monitor",
            context=extract_trace_context(msg.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.message.id": (msg.headers or {}).get(bus.MSG_ID, ""),
                "rollmesh.app": app,
            },
        ):
            await self._handle_in_span(key, msg, app)

    async def _handle_in_span(self, key: int, msg: Msg, app: str) -> None:
        delivered = 1
        try:
            meta = msg.metadata
            delivered = meta.num_delivered
            if delivered > 1:
                self.stats.redelivered += 1
                if self.metrics is not None:
                    self.metrics.observe_redelivery(app)
            if delivered > self.cfg.max_deliveries:
                raise TraceRejected(
                    TOO_MANY_DELIVERIES,
                    f"delivered {delivered} times without being acknowledged (replicas died while scoring it, or "
                    f"scoring outlasted ack_wait_s={self.cfg.ack_wait_s:g})",
                    app=app,
                )
            scored = await self.scorer.score(msg.subject, msg.data, arrived_at=meta.timestamp.timestamp())
            span = trace.get_current_span()
            span.set_attribute("rollmesh.rubric", scored.score.rubric)
            span.set_attribute("rollmesh.reward", scored.score.reward)
            if self.before_publish is not None:
                self.before_publish(scored)
            await self._publish(scored)
            await msg.ack()
            self.stats.scored += 1
            if self.metrics is not None:
                self.metrics.observe_score(scored.score, scored.scoring_s, scored.judges)
            if self.on_scored is not None:
                self.on_scored(scored)
        except TraceRejected as rejected:
            trace.get_current_span().set_status(trace.Status(trace.StatusCode.ERROR, rejected.code))
            await self._reject(msg, rejected, delivered)
        except Exception as e:
            trace.get_current_span().set_status(trace.Status(trace.StatusCode.ERROR, type(e).__name__))
            if delivered >= self.cfg.max_deliveries:
                why = f"failed on each of {delivered} deliveries, last: {type(e).__name__}: {e}"
                await self._reject(msg, TraceRejected(INTERNAL, why, app=app), delivered)
            else:
                log.warning("scoring a trace of %s failed (delivery %d), retrying: %r", app, delivered, e)
                self.stats.retried += 1
                if self.metrics is not None:
                    self.metrics.observe_retry(app)
                await self._nak(msg, self.cfg.retry_delay_s)
        finally:
            self._inflight.pop(key, None)
            if self.metrics is not None:
                self.metrics.in_flight = len(self._inflight)
            if not self._inflight:
                self._idle.set()
            if self.puller is not None:
                self.puller.wake()

    async def _publish(self, scored: ScoredTrace) -> None:
        assert self.publisher is not None and self.js is not None
        score = scored.score
        subject = bus.scores_subject(score.app)
        data = score.SerializeToString()
        try:
            self.publisher.check_size(subject, data)
        except ResourceExhaustedError as e:  # the trace's labels are too large to echo back
            raise TraceRejected(SCORE_TOO_LARGE, str(e), app=score.app, trace_id=score.trace_id) from e
        # Many of these are in flight at once (one per trace being handled): their acks overlap.
        ack = await self.js.publish(
            subject,
            data,
            headers=inject_trace_headers({bus.MSG_ID: score.trace_id}),  # in the scored message's trace
            timeout=self.cfg.publish_timeout_s,
        )
        if ack.duplicate:
            self.stats.duplicates += 1

    async def _reject(self, msg: Msg, rejected: TraceRejected, delivered: int) -> None:
        assert self.publisher is not None
        try:
            await self.publisher.dead_letter(
                msg.subject, rejected.reason, msg.data, service=self.service, headers=msg.headers
            )
            await msg.ack()
        except Exception as e:  # the dead letter is not stored: the trace must stay in the stream
            log.warning("could not dead-letter a trace of %s (%s): %r; handing it back", msg.subject, rejected.code, e)
            await self._nak(msg, self.cfg.retry_delay_s)
            return
        self.stats.dead_lettered += 1
        if self.metrics is not None:
            self.metrics.observe_dead_letter(rejected.app, rejected.code)
        if self.on_dead_letter is not None:
            self.on_dead_letter(rejected)

    async def _nak(self, msg: Msg, delay_s: float) -> None:
        # When even this fails (NATS gone), the trace comes back after ack_wait anyway.
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay_s or None)

    async def _progress_loop(self) -> None:
        """Tells JetStream a slow trace (an LLM judge) is still being worked on, so it is not
        delivered to another replica meanwhile."""
        period = self.cfg.ack_wait_s / 3
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for key, (msg, last) in list(self._inflight.items()):
                if now - last >= period:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
                    if key in self._inflight:
                        self._inflight[key] = (msg, now)

    # ---- life cycle ------------------------------------------------------------------------------

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stops pulling, lets traces in flight finish for `grace_s`, hands the rest (and anything
        delivered meanwhile) back to the stream for another replica, then closes the connection."""
        if self.puller is not None:
            await self.puller.stop()
        if self._inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
        if self._inflight:
            # Handed back now rather than after ack_wait_s (a score published meanwhile is deduplicated).
            log.warning("%d traces still being scored at shutdown: handing them back", len(self._inflight))
            for msg, _ in list(self._inflight.values()):
                self._hand_back(msg)
        if self._progress is not None:
            self._progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._progress
            self._progress = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._naks:
            await asyncio.gather(*self._naks, return_exceptions=True)
        self.puller = None
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            self.nc = None

    async def __aenter__(self) -> LiveScorer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
