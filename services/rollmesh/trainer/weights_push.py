"""New weights to every inference server after a step, and the new policy version on the bus.

Servers: the static addresses of the config plus every live inference server in the NATS registry
(optionally only those serving one model name), looked up again before each push so servers that
joined receive the next weights and dead ones are dropped. Pushes run concurrently; a server that
fails is reported and retried with the next step's weights (full weights each time), never a reason
to stop training. Weights travel over gRPC (UpdateWeights streams, or LoadWeights of a checkpoint's
Hugging Face export on shared storage), or, to servers on this host, through shared memory
(inference/same_host.py: written once per push for all of them, LoadWeights of its handle); only
the version goes on the bus (PolicyStore).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import bus
from ..errors import PermissionDeniedError
from ..inference import same_host
from ..inference.client import InferenceClient
from ..proto.v1 import bus_pb2
from ..registry import Registry
from ..security.tls import is_loopback
from ..telemetry import get_logger
from .config import PushConfig

if TYPE_CHECKING:
    import torch
    from nats.aio.client import Client as NATS

log = get_logger(__name__)


@dataclass
class PushReport:
    version: int
    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    same_host: list[str] = field(default_factory=list)  # got the weights through shared memory
    seconds: float = 0.0
    bytes: int = 0

    def as_metrics(self) -> dict[str, object]:
        return {
            "push_s": round(self.seconds, 4),
            "pushed_to": len(self.ok),
            "push_failures": len(self.failed),
            "pushed_same_host": len(self.same_host),
            **({"push_errors": self.failed} if self.failed else {}),
        }


class WeightsPusher:
    def __init__(self, cfg: PushConfig, run_id: str, nc: NATS | None = None) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.nc = nc
        self._registry: Registry | None = None
        self._policy: bus.PolicyStore | None = None
        self._clients: dict[str, InferenceClient] = {}
        self._shared: same_host.SharedWeights | None = None  # kept across pushes: its pages are reused
        self._same_host: dict[str, bool] = {}  # address -> weights go through shared memory

    async def start(self) -> None:
        if self.nc is not None:
            js = self.nc.jetstream()
            self._policy = await bus.PolicyStore.open(js)
            if self.cfg.enabled and self.cfg.discover:
                self._registry = await Registry.from_client(self.nc)

    async def addresses(self) -> list[str]:
        found = list(self.cfg.addresses)
        if self._registry is not None:
            try:
                records = await self._registry.list(bus_pb2.SERVICE_KIND_INFERENCE, self.cfg.model or None)
            except Exception as e:  # a registry hiccup must not stop training; static addresses still get weights
                log.warning("inference discovery failed: %r", e)
                records = []
            found += [r.address for r in records]
        return list(dict.fromkeys(found))

    async def _client(self, address: str) -> InferenceClient:
        if address not in self._clients:
            self._clients[address] = await InferenceClient.connect(address, timeout_s=self.cfg.timeout_s)
        return self._clients[address]

    async def _drop_gone(self, live: list[str]) -> None:
        for address in [a for a in self._clients if a not in live]:
            await self._clients.pop(address).close()
            self._same_host.pop(address, None)

    async def behind(self, version: int) -> list[str]:
        """Servers that serve an older policy than `version`: started (or restarted) since the last
        push, or failed it. Those that do not answer are left to the next push."""
        addresses = await self.addresses()
        await self._drop_gone(addresses)

        async def served(address: str) -> int:
            return (await (await self._client(address)).model_info()).policy_version

        versions = await asyncio.gather(*(served(a) for a in addresses), return_exceptions=True)
        return [a for a, v in zip(addresses, versions, strict=True) if isinstance(v, int) and v < version]

    async def push(
        self,
        tensors: Mapping[str, torch.Tensor] | None,
        version: int,
        path: str = "",
        *,
        to: list[str] | None = None,
    ) -> PushReport:
        """Streams `tensors` (or has each server load `path`) as policy `version` to every server
        (or to the addresses `to`)."""
        report = PushReport(version=version)
        if not self.cfg.enabled:
            return report
        t0 = time.perf_counter()
        if to is None:
            addresses = await self.addresses()
            await self._drop_gone(addresses)
        else:
            addresses = to
        if tensors is not None:
            report.bytes = sum(t.numel() * t.element_size() for t in tensors.values())

        shared = await self._share(tensors, addresses) if tensors is not None else None

        async def one(address: str) -> None:
            client = await self._client(address)
            if tensors is None:
                resp = await client.load_weights(path, policy_version=version)
            elif shared is not None and self._same_host[address]:
                try:
                    resp = await client.load_weights(shared.path, policy_version=version)
                    report.same_host.append(address)
                except PermissionDeniedError as e:
                    if self.cfg.same_host == "always":
                        raise
                    log.warning("%s cannot read weights in this host's shared memory (%s); streaming", address, e)
                    self._same_host[address] = False
                    resp = await client.update_weights(tensors, policy_version=version)
            else:
                resp = await client.update_weights(tensors, policy_version=version)
            if resp.policy_version != version:
                raise RuntimeError(f"server reports policy version {resp.policy_version}, pushed {version}")

        results = await asyncio.gather(*(one(a) for a in addresses), return_exceptions=True)
        for address, r in zip(addresses, results, strict=True):
            if isinstance(r, BaseException):
                report.failed[address] = repr(r)
                log.warning("weights push of version %d to %s failed: %r", version, address, r)
                old = self._clients.pop(address, None)  # reconnect next time
                if old is not None:
                    await old.close()
            else:
                report.ok.append(address)
        report.seconds = time.perf_counter() - t0
        if not addresses:
            log.info("no inference server to push version %d to", version)
        return report

    async def _share(self, tensors: Mapping[str, torch.Tensor], addresses: list[str]) -> same_host.SharedWeights | None:
        """The tensors written into this process's shared-memory buffer, once, if any server gets
        them that way (same_host = "always", or "auto" and a loopback address)."""
        if self.cfg.same_host == "never" or not same_host.supported():
            return None
        for address in addresses:
            if address not in self._same_host:
                host = address.removeprefix("dns:///").rsplit(":", 1)[0]
                local = address.startswith("unix:") or await asyncio.to_thread(is_loopback, host)
                self._same_host[address] = self.cfg.same_host == "always" or local
        if not any(self._same_host[a] for a in addresses):
            return None
        if self._shared is None:
            self._shared = same_host.SharedWeights()
        try:
            await asyncio.to_thread(self._shared.write, tensors)
        except OSError as e:  # out of shared memory, say: every server gets the stream instead
            log.warning("could not write the weights into shared memory (%r); streaming", e)
            self._shared.close()
            self._shared = None
        return self._shared

    async def announce(self, version: int, checkpoint: str = "") -> None:
        """Records `version` as the run's current policy in the KV bucket rollmesh-policy."""
        if self._policy is None:
            return
        try:
            await self._policy.put(self.run_id, version, checkpoint=checkpoint)
        except Exception as e:  # NATS reconnecting: the next step announces a newer version anyway
            log.warning("could not announce policy version %d: %r", version, e)

    async def current_version(self) -> int:
        return await self._policy.version(self.run_id) if self._policy is not None else 0

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        if self._registry is not None:
            await self._registry.close()
