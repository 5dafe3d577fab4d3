"""Replica pools: which environment or inference server gets the next episode or model call.

- least-loaded choice (requests this orchestrator has in flight on each replica, relative to the
  replica's capacity);
- a replica that fails is benched for a back-off that grows with consecutive failures, and only
  used again when no healthy replica is left; a success clears its record;
- pools fed by the registry are re-synced periodically: new servers join, servers whose record
  expired leave once their in-flight work is done;
- inference calls are sticky per episode (the engine keeps the replica an episode started on, so the
  server's prefix cache holds the conversation) and reroute to another replica on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from ..errors import UnavailableError
from ..proto.v1 import environment_pb2 as env_pb
from ..proto.v1 import environment_pb2_grpc as env_grpc
from ..proto.v1 import inference_pb2 as inf_pb
from ..proto.v1 import inference_pb2_grpc as inf_grpc
from ..rpc import RpcLimits, create_channel
from ..rpc_errors import error_from_rpc

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass(eq=False)
class Replica:
    address: str
    channel: grpc.aio.Channel
    capacity: int = 0  # 0 = unknown
    inflight: int = 0
    failures: int = 0  # consecutive
    benched_until: float = 0.0
    retired: bool = False  # left the registry: no new work, closed when idle
    last_error: str = ""

    def load(self) -> float:
        return self.inflight / self.capacity if self.capacity > 0 else float(self.inflight)

    async def close(self) -> None:
        await self.channel.close()


@dataclass(eq=False)
class EnvReplica(Replica):
    stub: Any = None
    info: env_pb.EnvironmentInfo = field(default_factory=env_pb.EnvironmentInfo)
    instance_id: str = ""


@dataclass(eq=False)
class InferenceReplica(Replica):
    stub: Any = None
    model: str = ""
    context_length: int = 0
    policy_version: int = 0  # latest version seen in a sample or model info
    # GetModelInfo's capabilities (a server without them can do everything)
    token_ids: bool = True
    weight_updates: bool = True
    endpoint: str = ""  # the OpenAI-compatible endpoint behind an "openai" backend

    def missing_for_training(self) -> list[str]:
        """What this server lacks that RL training needs."""
        return [
            what for what, has in (("token ids", self.token_ids), ("weight updates", self.weight_updates)) if not has
        ]


R = TypeVar("R", bound=Replica)


class ReplicaPool(Generic[R]):
    def __init__(self, what: str, connect: Callable[[str], Awaitable[R]]) -> None:
        self.what = what  # e.g. "environment 'arithmetic'", for messages
        self._connect = connect
        self.replicas: dict[str, R] = {}
        self._lock = asyncio.Lock()
        self._room = asyncio.Event()  # set when a replica frees a slot
        self._changed = asyncio.Event()  # replaced by a new one at each change (see _notify)

    @property
    def active(self) -> list[R]:
        return [r for r in self.replicas.values() if not r.retired]

    def pick(self, exclude: Iterable[R] = ()) -> R:
        """The least-loaded healthy replica not in `exclude`; a benched one when none is healthy
        (the one whose back-off ends first); UnavailableError when nothing is left."""
        excluded = set(map(id, exclude))
        now = time.monotonic()
        best: R | None = None
        benched: R | None = None
        for r in self.replicas.values():
            if r.retired or id(r) in excluded:
                continue
            if r.benched_until > now:
                if benched is None or r.benched_until < benched.benched_until:
                    benched = r
            elif best is None or r.load() < best.load():
                best = r
        chosen = best or benched
        if chosen is None:
            tried = ", ".join(f"{r.address} ({r.last_error or 'excluded'})" for r in self.replicas.values())
            raise UnavailableError(
                f"no {self.what} replica available" + (f"; tried {tried}" if tried else ""), reason="NO_REPLICA"
            )
        return chosen

    async def pick_healthy(self, exclude: Iterable[R] = (), wait_s: float = 0.0) -> R:
        """Like pick(), but while no replica outside `exclude` is healthy, waits up to `wait_s` for
        one (a back-off that ends, a replica that joins): a dead or restarting replica then
        delays rollouts instead of failing each of them at once. After the wait, pick()."""
        exclude = list(exclude)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                chosen: R | None = self.pick(exclude)
            except UnavailableError:
                if time.monotonic() >= deadline:
                    raise
                chosen = None  # every replica excluded or gone: wait for one to join
            now = time.monotonic()
            if chosen is not None and chosen.benched_until <= now:
                return chosen
            left = deadline - now
            if left <= 0:
                return self.pick(exclude)
            changed = self._changed
            until_unbenched = chosen.benched_until - now if chosen is not None else left
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(0.01, min(left, until_unbenched)))

    def _notify(self) -> None:
        """Wakes pick_healthy() waiters: a replica joined or recovered."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def acquire(self, exclude: Iterable[R] = (), wait_s: float = 0.0) -> R:
        """Like pick_healthy(), then takes a slot on the replica; waits while every candidate is at
        the capacity it advertised (more episodes would only be refused with EPISODE_LIMIT)."""
        exclude = list(exclude)
        while True:
            replica = await self.pick_healthy(exclude, wait_s)
            if replica.capacity <= 0 or replica.inflight < replica.capacity:
                replica.inflight += 1
                return replica
            self._room.clear()
            await self._room.wait()

    def release(self, replica: R) -> None:
        replica.inflight -= 1
        self._room.set()

    def failed(self, replica: R, error: BaseException) -> None:
        replica.failures += 1
        replica.last_error = f"{type(error).__name__}: {error}"[:300]
        replica.benched_until = time.monotonic() + min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (replica.failures - 1))
        log.warning("%s replica %s failed (%d in a row): %s", self.what, replica.address, replica.failures, error)

    def succeeded(self, replica: Replica) -> None:
        if replica.failures:
            replica.failures = 0
            replica.benched_until = 0.0
            self._notify()

    async def add(self, address: str) -> R:
        """Connects (and describes) one replica; raises when it is unreachable or unsuitable."""
        replica = await self._connect(address)
        async with self._lock:
            old = self.replicas.get(address)
            if old is not None and not old.retired:
                await replica.close()
                return old
            self.replicas[address] = replica
            self._notify()
        if old is not None:
            await old.close()
        return replica

    async def sync(self, addresses: Sequence[str]) -> list[tuple[str, BaseException]]:
        """Makes the pool's replicas those at `addresses`: connects new ones, retires the others.
        Returns the addresses that could not be added, with why."""
        wanted = set(addresses)
        problems: list[tuple[str, BaseException]] = []
        for address in wanted - {a for a, r in self.replicas.items() if not r.retired}:
            try:
                await self.add(address)
            except Exception as e:
                problems.append((address, e))
        for address, r in list(self.replicas.items()):
            if address not in wanted and not r.retired:
                r.retired = True
                log.info("%s replica %s left the registry", self.what, address)
        await self.close_idle_retired()
        return problems

    async def close_idle_retired(self) -> None:
        for address, r in list(self.replicas.items()):
            if r.retired and r.inflight == 0:
                self.replicas.pop(address, None)
                await r.close()

    async def close(self) -> None:
        replicas, self.replicas = list(self.replicas.values()), {}
        await asyncio.gather(*(r.close() for r in replicas), return_exceptions=True)


# ---- connecting ----------------------------------------------------------------------------------


async def _open(
    what: str, kind: str, address: str, stub_class: type, method: str, request: Any, timeout_s: float, limits: RpcLimits
) -> tuple[grpc.aio.Channel, Any, Any]:
    """A channel to `address` and its stub, checked with one call whose answer is returned; the
    channel is closed again when that call fails (UnavailableError). With TLS the server must hold a
    certificate for `kind`, so a rogue process that registered an address is never used."""
    channel = create_channel(address, kind=kind, limits=limits)
    stub = stub_class(channel)
    try:
        return channel, stub, await getattr(stub, method)(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as e:
        await channel.close()
        raise UnavailableError(f"cannot reach the {what} at {address}: {error_from_rpc(e)}") from e
    except BaseException:
        await channel.close()
        raise


async def connect_env(
    address: str, env: str, *, timeout_s: float, limits: RpcLimits, known: set[str] | None = None
) -> EnvReplica:
    """An environment replica for `env` at `address`, described. NotFound-like problems raise
    LookupError (naming what the server hosts, collected in `known`); transport ones raise
    UnavailableError."""
    channel, stub, described = await _open(
        "environment server",
        "env",
        address,
        env_grpc.EnvironmentServiceStub,
        "Describe",
        env_pb.DescribeRequest(),
        timeout_s,
        limits,
    )
    names = [e.name for e in described.environments]
    if known is not None:
        known.update(names)
    info = next((e for e in described.environments if e.name == env), None)
    if info is None:
        await channel.close()
        raise LookupError(f"the server at {address} hosts {sorted(names)}, not {env!r}")
    return EnvReplica(
        address=address,
        channel=channel,
        stub=stub,
        info=info,
        capacity=described.limits.max_concurrent_episodes,
        instance_id=described.server.instance_id,
    )


async def connect_inference(address: str, model: str, *, timeout_s: float, limits: RpcLimits) -> InferenceReplica:
    channel, stub, info = await _open(
        "inference server",
        "inference",
        address,
        inf_grpc.InferenceServiceStub,
        "GetModelInfo",
        inf_pb.GetModelInfoRequest(),
        timeout_s,
        limits,
    )
    if model and info.model != model:
        await channel.close()
        raise LookupError(f"the inference server at {address} serves {info.model!r}, not {model!r}")
    return InferenceReplica(
        address=address,
        channel=channel,
        stub=stub,
        model=info.model,
        context_length=info.context_length,
        policy_version=info.policy_version,
        token_ids=info.capabilities.token_ids if info.HasField("capabilities") else True,
        weight_updates=info.capabilities.weight_updates if info.HasField("capabilities") else True,
        endpoint=info.endpoint,
    )
