"""The rubric service as deployed: the gRPC server, live scoring of production traces, the
dashboard (+ /metrics, /healthz) and the registry record, assembled from one RubricServiceConfig.

    service = RubricService(load_config(RubricServiceConfig, "rubrics.toml"), nats_url="nats://...")
    await service.start(); ...; await service.stop()

Live scoring runs when the service has a NATS URL and [monitor] maps at least one app (or sets a
default rubric): a rubric service started only for gRPC scoring must not consume, and dead-letter,
every production trace on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .. import bus
from ..proto.v1 import bus_pb2 as bus_pb
from ..rubric.config import RubricServiceConfig
from ..rubric.scoring import RubricBook
from ..rubric.server import RubricServer
from ..security.tls import TlsConfig
from .dashboard import Dashboard
from .live import LiveScorer
from .metrics import LiveMetrics
from .scoreboard import Kept, Scoreboard, keep_messages
from .traces import MONITOR_PREFIX, ScoredTrace, TraceRejected, TraceScorer, reason_code

log = logging.getLogger(__name__)

DEADLETTER_MONITOR = f"{bus.PREFIX}.deadletter.monitor.>"


class BusFeed:
    """Feeds a Scoreboard with every replica's scores and dead letters (core NATS subscriptions on
    rollmesh.scores.> and rollmesh.deadletter.monitor.>), so any replica's dashboard shows them all."""

    def __init__(self, board: Scoreboard, nats_url: str) -> None:
        self.board = board
        self.nats_url = nats_url
        self.nc: NATS | None = None
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        self.nc = await bus.connect(self.nats_url, name="rollmesh-rubric-dashboard")
        self._subs = [
            await self.nc.subscribe(bus.scores_subject(">"), cb=self._on_score),
            await self.nc.subscribe(DEADLETTER_MONITOR, cb=self._on_dead_letter),
        ]

    async def _on_score(self, msg: Msg) -> None:
        try:
            self.board.add_score(bus_pb.MonitorScore.FromString(msg.data))
        except Exception as e:  # someone else's garbage on the subject must not stop the feed
            log.debug("ignoring an unreadable score on %s: %r", msg.subject, e)

    async def _on_dead_letter(self, msg: Msg) -> None:
        try:
            letter = bus_pb.DeadLetter.FromString(msg.data)
        except Exception as e:
            log.debug("ignoring an unreadable dead letter on %s: %r", msg.subject, e)
            return
        app = letter.subject.removeprefix(MONITOR_PREFIX) if letter.subject.startswith(MONITOR_PREFIX) else ""
        trace_id = ""
        with contextlib.suppress(Exception):
            trace_id = bus_pb.MonitorTrace.FromString(letter.payload).trace_id
        self.board.add_dead_letter(
            app,
            letter.reason,
            code=reason_code(letter.reason),
            trace_id=trace_id,
            at=letter.failed_at.ToNanoseconds() / 1e9 if letter.HasField("failed_at") else None,
        )

    async def stop(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            self.nc = None


class RubricService:
    def __init__(
        self, cfg: RubricServiceConfig, *, nats_url: str | None = None, dashboard_tls: TlsConfig | None = None
    ) -> None:
        """`dashboard_tls`: the dashboard's TLS and caller checks (default: the process's settings,
        security.tls.current(), which the gRPC server always uses)."""
        self.cfg = cfg
        self.nats_url = nats_url
        m, d = cfg.monitor, cfg.dashboard
        self.book = RubricBook.from_config(cfg, nats_url=nats_url)
        # Validates the [monitor] rubric names even when live scoring is off (a typo fails at start).
        self.scorer = TraceScorer(self.book, m.apps, m.default)
        self.server = RubricServer.from_config(cfg, nats_url=nats_url, book=self.book)
        self.metrics = LiveMetrics(max_apps=d.max_apps)
        self.board = Scoreboard(
            history_s=d.history_s,
            bucket_s=d.bucket_s,
            recent_traces=d.recent_traces,
            histogram_window=d.histogram_window,
            max_apps=d.max_apps,
        )
        self.live_enabled = bool(nats_url) and m.enabled and bool(m.apps or m.default)
        self.feed = BusFeed(self.board, nats_url) if nats_url and d.enabled and d.source == "bus" else None
        self.live: LiveScorer | None = None
        if self.live_enabled:
            assert nats_url is not None
            self.live = LiveScorer(
                self.scorer,
                nats_url,
                m,
                metrics=self.metrics,
                on_scored=self._on_scored,
                before_publish=self._before_publish,
                on_dead_letter=self._on_dead_letter,
            )
        self.dashboard = (
            Dashboard(
                self.board,
                metrics=self.metrics,
                health=self.health,
                host=d.host,
                port=d.port,
                refresh_s=d.refresh_s,
                tls=dashboard_tls,
            )
            if d.enabled
            else None
        )
        self._started = False

    def _messages(self, scored: ScoredTrace) -> Kept | None:
        if not self.cfg.dashboard.show_messages:
            return None
        return keep_messages(scored.trace.messages, scored.size_bytes)

    def _before_publish(self, scored: ScoredTrace) -> None:
        if self.feed is not None and (messages := self._messages(scored)) is not None:
            # the score comes back over the bus: keep its messages for it
            self.board.remember_messages(scored.trace.trace_id, messages)

    def _on_scored(self, scored: ScoredTrace) -> None:
        if self.feed is None:
            self.board.add_score(scored.score, self._messages(scored))

    def _on_dead_letter(self, rejected: TraceRejected) -> None:
        if self.feed is None:
            self.board.add_dead_letter(rejected.app, rejected.reason, code=rejected.code, trace_id=rejected.trace_id)

    def health(self) -> dict[str, Any]:
        live_ok = self.live is None or self.live.running
        return {
            "ok": self._started and live_ok,
            "grpc": self.server.address if self._started else None,
            "rubrics": self.book.names,
            "live_scoring": None if self.live is None else {"running": self.live.running, **vars(self.live.stats)},
        }

    async def start(self) -> RubricService:
        await self.server.start()
        try:
            if self.feed is not None:
                await self.feed.start()
            if self.live is not None:
                await self.live.start()
            elif self.nats_url:
                log.info("live scoring off: [monitor] maps no app and sets no default rubric")
            if self.dashboard is not None:
                await self.dashboard.start()
        except BaseException:
            await self.stop(0)
            raise
        self._started = True
        return self

    async def stop(self, grace_s: float | None = None) -> None:
        """Live scoring first (finish in-flight traces), then the gRPC server drains, then the rest."""
        grace = self.cfg.server.grace_s if grace_s is None else grace_s
        self._started = False
        if self.live is not None:
            await self.live.stop(grace)
        await self.server.stop(grace)
        if self.feed is not None:
            await self.feed.stop()
        if self.dashboard is not None:
            await self.dashboard.stop()
        await self.book.close()

    async def serve_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        in_flight = self.live.in_flight if self.live is not None else 0
        log.info("shutting down (%d traces, %d RPCs in flight)", in_flight, self.server.servicer.active)
        await self.stop()

    async def __aenter__(self) -> RubricService:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(0)


async def serve(
    cfg: RubricServiceConfig,
    nats_url: str | None = None,
    *,
    announce: Callable[[str], None] = lambda line: None,
) -> None:
    """Runs the service until SIGTERM/SIGINT (used by `rollmesh rubric serve`)."""
    service = RubricService(cfg, nats_url=nats_url)
    await service.start()
    announce(f"rollmesh rubric server on {service.server.address}: rubrics {', '.join(service.book.names) or '(none)'}")
    if service.live is not None:
        m = cfg.monitor
        routes = ", ".join(f"{a} -> {r}" for a, r in sorted(m.apps.items()))
        announce(
            f"live scoring on {', '.join(m.filter_subjects)} (durable {m.durable}): {routes or ''}"
            + (f"{'; ' if routes else ''}default -> {m.default}" if m.default else "")
        )
    if service.dashboard is not None:
        announce(f"dashboard on {service.dashboard.url} (metrics: {service.dashboard.url}/metrics)")
    await service.serve_until_signal()
