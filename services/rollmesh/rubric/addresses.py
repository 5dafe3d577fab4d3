"""Which servers a client's inline rubric spec may make the rubric service call.

Built-ins that connect somewhere (a judge's or env_score's `params.address`, see
Builtin.address_params) would otherwise let any client point the service at any host:port it can
reach (server-side request forgery). An inline spec may name only:
- an address of a server in the NATS registry (when the service has a NATS URL);
- an address a configured rubric of the service uses;
- an address on the service's `server.allowed_addresses`.
Anything else is PERMISSION_DENIED, reason ADDRESS_NOT_ALLOWED. Addresses compare exactly as
written ("localhost:50051" is not "127.0.0.1:50051"): a target string is what gRPC dials.
A judge named by `params.model` and an environment without an address are looked up in the
registry, so they need no check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..errors import PermissionDeniedError, quoted
from ..proto.v1 import rubric_pb2 as rubric_pb
from ..registry import Registry
from .builtin_functions import BUILTINS
from .config import RubricConfig

log = logging.getLogger(__name__)

# A registered address stays allowed this long after the listing that found it; a miss always
# lists again, so a server registered just before a request is found.
REGISTRY_TTL_S = 5.0


def _named(function: str, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(param key, address) of every address param of a built-in `function` set to a string."""
    b = BUILTINS.get(function.strip())
    for key in b.address_params if b else ():
        value = params.get(key)
        if isinstance(value, str) and value:
            yield key, value


def spec_addresses(spec: rubric_pb.RubricSpec) -> Iterator[tuple[rubric_pb.RewardFunctionSpec, str, str]]:
    """(function, param key, address) of each address an inline spec names."""
    for f in spec.functions:
        fields = f.params.fields
        params = {k: fields[k].string_value for k in fields if fields[k].WhichOneof("kind") == "string_value"}
        for key, address in _named(f.function, params):
            yield f, key, address


def config_addresses(rubrics: Iterable[RubricConfig]) -> set[str]:
    return {address for r in rubrics for f in r.functions for _, address in _named(f.function, f.params)}


class AddressPolicy:
    """The allow-list of one rubric service. close() it (it may hold a registry connection)."""

    def __init__(self, allowed: Iterable[str] = (), *, nats_url: str | None = None) -> None:
        self.allowed = frozenset(a.strip() for a in allowed)
        self.nats_url = nats_url
        self._registry: Registry | None = None
        self._registered: frozenset[str] = frozenset()
        self._listed_at = float("-inf")  # monotonic start of the last listing
        self._lock = asyncio.Lock()

    async def check(self, spec: rubric_pb.RubricSpec) -> None:
        """PermissionDeniedError (ADDRESS_NOT_ALLOWED) for the first address of `spec` not allowed."""
        for f, key, address in spec_addresses(spec):
            if not await self.allows(address):
                raise PermissionDeniedError(
                    f"reward function {quoted(f.name)} ({quoted(f.function)}): params.{key} = {quoted(address)} "
                    "is not an address this rubric service may call for an inline spec; use a server in the "
                    "registry (a judge by params.model), one a configured rubric uses, or one on the service's "
                    "server.allowed_addresses",
                    reason="ADDRESS_NOT_ALLOWED",
                )

    async def allows(self, address: str) -> bool:
        if address in self.allowed:
            return True
        if not self.nats_url:
            return False
        asked = time.monotonic()
        if address in self._registered and asked - self._listed_at < REGISTRY_TTL_S:
            return True
        async with self._lock:  # concurrent misses share one listing that started after them
            if self._listed_at < asked:
                await self._list()
        return address in self._registered

    async def _list(self) -> None:
        assert self.nats_url
        self._listed_at = time.monotonic()
        try:
            if self._registry is None:
                self._registry = await Registry.connect(self.nats_url)
            records = await self._registry.list()
        except Exception:
            # Nothing is allowed that cannot be checked; the next miss tries again.
            log.warning("could not read the registry at %s to check an address", self.nats_url, exc_info=True)
            self._registered = frozenset()
            await self._drop_registry()
            return
        self._registered = frozenset(r.address for r in records if r.address)

    async def _drop_registry(self) -> None:
        registry, self._registry = self._registry, None
        if registry is not None:
            try:
                await registry.close()
            except Exception:
                log.debug("closing the registry connection failed", exc_info=True)

    async def close(self) -> None:
        await self._drop_registry()
