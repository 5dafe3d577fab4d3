"""Real servers on loopback for the orchestrator tests: environment servers (in this process or
as `rollmesh env serve` subprocesses) and inference servers (scripted backend or the tiny model)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from rollmesh.env.loader import load_environments
from rollmesh.env.server import EnvironmentServer, EpisodeLimits
from rollmesh.inference.backends.scripted import ScriptedBackend, load_script
from rollmesh.inference.server import InferenceServer


def env(name: str, **kwargs: Any):
    """A built-in environment by entry-point name."""
    module = {"arithmetic": "rollmesh.examples.arithmetic", "guess-number": "rollmesh.examples.guess_number"}.get(
        name, "rollmesh.examples.wiki_search"
    )
    return load_environments(module, kwargs)[0]


@contextlib.asynccontextmanager
async def env_server(
    *envs: Any,
    nats_url: str | None = None,
    limits: EpisodeLimits = EpisodeLimits(),  # noqa: B008 (frozen dataclass)
) -> AsyncIterator[EnvironmentServer]:
    server = EnvironmentServer(list(envs), nats_url=nats_url, limits=limits)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def scripted_inference(
    script: str | Sequence[str],
    *,
    name: str = "scripted",
    nats_url: str | None = None,
    delay_s: float = 0.0,
    weights_roots: Sequence[str] = (),
    context_length: int = 8192,
) -> AsyncIterator[InferenceServer]:
    replies = load_script(script) if isinstance(script, str) else list(script)
    backend = ScriptedBackend(replies, model=name, delay_s=delay_s, context_length=context_length)
    server = InferenceServer(backend, nats_url=nats_url, weights_roots=list(weights_roots))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Polls a condition on engine or server state (counters have no events to wait on)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
