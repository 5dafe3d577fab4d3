"""Connections and pools the reward functions of a RubricBook share: environment clients (for
env_score and tool specs), judge endpoints (client, rate limit, cache) and the math-verify workers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import convert
from ..env.client import EnvClient
from ..env.client import resolve as resolve_env
from ..errors import InvalidArgumentError, NotFoundError, UnavailableError
from ..inference.client import InferenceClient
from ..inference.client import resolve as resolve_model
from .judge import JudgeEndpoint, TokenBucket
from .mathverify import MathVerifier

log = logging.getLogger(__name__)


class Resources:
    def __init__(self, nats_url: str | None = None, *, math_workers: int = 2) -> None:
        self.nats_url = nats_url
        self.math = MathVerifier(math_workers)
        self._env_clients: dict[str, EnvClient] = {}  # by address
        self._env_addresses: dict[str, str] = {}  # env name -> resolved address
        self._env_tools: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._judges: dict[tuple[Any, ...], JudgeEndpoint] = {}
        self._lock = asyncio.Lock()

    # ---- environments ---------------------------------------------------------------------------

    async def env_client(self, env: str, address: str = "", *, timeout_s: float = 30.0) -> EnvClient:
        """A client of `address`, or of a live server of `env` found in the registry."""
        async with self._lock:
            if not address:
                address = self._env_addresses.get(env, "")
            if not address:
                if not self.nats_url:
                    raise InvalidArgumentError(
                        f"no address for environment {env!r}: set params.address, or start the rubric service "
                        "with a NATS URL so environments are found in the registry",
                        reason="BAD_PARAMS",
                    )
                address = await resolve_env(env, self.nats_url)
                self._env_addresses[env] = address
            client = self._env_clients.get(address)
            if client is None:
                client = self._env_clients[address] = await EnvClient.connect(address, timeout_s=timeout_s)
            return client

    async def forget_env(self, env: str, address: str) -> None:
        """After UNAVAILABLE: resolve again next time (the replica may be gone)."""
        async with self._lock:
            if self._env_addresses.get(env) == address:
                del self._env_addresses[env]
            client = self._env_clients.pop(address, None)
        if client is not None:
            await client.close()

    async def env_tools(self, env: str, address: str = "") -> list[dict[str, Any]]:
        """Tool specs an environment offers (from its Describe), cached."""
        client = await self.env_client(env, address)
        key = (client.address, env)
        if key not in self._env_tools:
            try:
                described = await client.describe()
            except UnavailableError:
                await self.forget_env(env, client.address)
                raise
            for info in described.environments:
                self._env_tools[(client.address, info.name)] = [convert.tool_spec_from_pb(t) for t in info.tools]
            if key not in self._env_tools:
                hosted = sorted(name for address, name in self._env_tools if address == client.address)
                raise NotFoundError(
                    f"the server at {client.address} does not host environment {env!r} (it hosts {hosted})",
                    reason="UNKNOWN_ENVIRONMENT",
                    metadata={"environments": ",".join(hosted)},
                )
        return self._env_tools[key]

    # ---- judges ---------------------------------------------------------------------------------

    def judge_endpoint(
        self, *, model: str, address: str, requests_per_s: float, max_concurrent: int, cache_size: int
    ) -> JudgeEndpoint:
        key = (model, address, requests_per_s, max_concurrent, cache_size)
        endpoint = self._judges.get(key)
        if endpoint is None:
            nats_url = self.nats_url

            async def connect() -> InferenceClient:
                target = address or await resolve_model(model, nats_url or "")
                return await InferenceClient.connect(target)

            endpoint = self._judges[key] = JudgeEndpoint(
                connect=connect,
                limiter=TokenBucket(requests_per_s),
                max_concurrent=max_concurrent,
                cache_size=cache_size,
            )
        return endpoint

    def judge_endpoints(self) -> list[JudgeEndpoint]:
        return list(self._judges.values())

    # ---------------------------------------------------------------------------------------------

    async def close(self) -> None:
        for client in self._env_clients.values():
            await client.close()
        self._env_clients.clear()
        for endpoint in self._judges.values():
            await endpoint.close()
        await self.math.close()
