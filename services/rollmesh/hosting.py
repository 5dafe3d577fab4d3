"""The life cycle every rollmesh server shares: start the gRPC server, register in the NATS
registry (with a heartbeat), and on stop or SIGTERM deregister first, then give in-flight work
its grace period."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Self

from .proto.v1 import bus_pb2 as bus_pb
from .registry import Registration, Registry
from .rpc import RpcServer

log = logging.getLogger(__name__)


class Hosting:
    def __init__(
        self,
        rpc: RpcServer,
        *,
        nats_url: str | None = None,
        advertise_host: str | None = None,
        on_drain: Callable[[], None] = lambda: None,
    ) -> None:
        self.rpc = rpc
        self.nats_url = nats_url
        self.advertise_host = advertise_host or rpc.host
        self.on_drain = on_drain  # called first on stop: refuse new work
        self._registry: Registry | None = None
        self._registrations: list[Registration] = []

    @property
    def advertised_address(self) -> str:
        return f"{self.advertise_host}:{self.rpc.port}"

    async def start(self, records: Sequence[bus_pb.ServiceRecord] = ()) -> None:
        await self.rpc.start()
        if self.nats_url and records:
            self._registry = await Registry.connect(self.nats_url)
            for record in records:
                self._registrations.append(await self._registry.register(record))

    async def stop(self, grace_s: float) -> None:
        self.on_drain()
        for reg in self._registrations:
            try:
                await reg.close()
            except Exception:  # NATS may be gone already; the TTL expires the record anyway
                log.warning("could not deregister from %s", self.nats_url, exc_info=True)
        self._registrations.clear()
        if self._registry:
            await self._registry.close()
            self._registry = None
        await self.rpc.stop(grace_s)

    async def serve_until_signal(self, grace_s: float, describe_load: Callable[[], str] = lambda: "") -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down (%s), grace %.1f s", describe_load() or "idle", grace_s)
        await self.stop(grace_s)


class HostedServer:
    """Base of the environment, inference and rubric servers: the life cycle above, once. A server
    sets `rpc` and `hosting` (see `_host`), says what it registers (`records`), how to refuse new
    work (`drain`), what is in flight (`load`), and what to release after the gRPC server stops
    (`release`)."""

    rpc: RpcServer
    hosting: Hosting

    def _host(self, rpc: RpcServer, *, nats_url: str | None, advertise_host: str | None) -> None:
        self.rpc = rpc
        self.hosting = Hosting(rpc, nats_url=nats_url, advertise_host=advertise_host, on_drain=self.drain)

    def records(self) -> Sequence[bus_pb.ServiceRecord]:
        return ()

    def drain(self) -> None:
        """Refuse new work (called first on stop)."""

    def load(self) -> str:
        """What is in flight, for the shutdown log line."""
        return ""

    async def started(self) -> None:
        """Called once the gRPC server serves and is registered."""

    async def release(self) -> None:
        """Called after the gRPC server has stopped."""

    @property
    def address(self) -> str:
        return self.rpc.address

    @property
    def advertised_address(self) -> str:
        return self.hosting.advertised_address

    async def start(self) -> Self:
        await self.hosting.start(self.records())
        await self.started()
        return self

    async def stop(self, grace_s: float = 10.0) -> None:
        await self.hosting.stop(grace_s)
        await self.release()

    async def serve_until_signal(self, grace_s: float = 10.0) -> None:
        await self.hosting.serve_until_signal(grace_s, self.load)
        await self.release()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(0)
