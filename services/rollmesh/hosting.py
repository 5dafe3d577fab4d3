"""The life cycle every rollmesh server shares: start the gRPC server, register in the NATS
registry (with a heartbeat), and on stop or SIGTERM deregister first, then give in-flight work
its grace period."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

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
