"""`rollmesh demo`: the embedded quickstart. Starts a local mesh (rollmesh.apps.launcher: NATS and an
environment server hosting the built-in environments), finds the server through the registry,
checks it with the conformance suite, and plays episodes with scripted policies (a calculator, a
binary search and a search-then-read agent), showing the rewards the environments return."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.table import Table

from ..env.client import EnvClient, EpisodeSession
from ..registry import print_services
from .conformance import print_report, run_conformance
from .launcher import EnvServerConfig, Mesh, MeshConfig, NatsConfig

ENVS = ("arithmetic", "guess-number", "wiki-search")
EPISODES = 16


async def calculator(ep: EpisodeSession) -> None:
    a, op, b = re.search(r"(-?\d+) ([-+*]) (-?\d+)", ep.messages[-1]["content"]).groups()  # type: ignore[union-attr]
    x, y = int(a), int(b)
    await ep.step(str({"+": x + y, "-": x - y, "*": x * y}[op]))


async def binary_search(ep: EpisodeSession) -> None:
    low, high = (int(v) for v in re.findall(r"\d+", ep.messages[-1]["content"])[:2])
    while not ep.done:
        guess = (low + high) // 2
        reply = (await ep.step(str(guess))).messages[0]["content"]
        if reply.startswith("Higher"):
            low = guess + 1
        elif reply.startswith("Lower"):
            high = guess - 1


def _call(name: str, **arguments: object) -> dict:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": f"call-{name}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


async def search_and_read(ep: EpisodeSession) -> None:
    """Searches the question, reads the best page, answers with the page's first sentence: a
    policy with no language model, so its reward shows what retrieval alone earns."""
    question = ep.messages[-1]["content"]
    hits = (await ep.step(_call("search_pages", query=question))).messages[0]["content"]
    page_id = hits.split(":", 1)[0].strip()
    page = (await ep.step(_call("read_page", page_id=page_id))).messages[0]["content"]
    first_sentence = re.split(r"(?<=[.!?])\s", page.split("\n", 1)[-1].strip(), maxsplit=1)[0]
    await ep.step(f"ANSWER: {first_sentence[:80]}")


POLICIES: dict[str, tuple[str, Callable[[EpisodeSession], Awaitable[None]]]] = {
    "arithmetic": ("calculator", calculator),
    "guess-number": ("binary search", binary_search),
    "wiki-search": ("search + read, no model", search_and_read),
}


async def play_env(name: str, nats_url: str) -> tuple[str, str, float, float, float]:
    label, policy = POLICIES[name]
    async with await EnvClient.connect(name=name, nats_url=nats_url) as client:
        tasks = await client.tasks(name, "test", limit=EPISODES)

        async def one(task_id: str) -> tuple[float, int]:
            async with client.episode(name, task_id, split="test") as ep:
                await policy(ep)
                assert ep.last is not None
                return ep.last.reward or 0.0, ep.last.turn

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(t.task_id) for t in tasks))
        rate = len(tasks) / (time.perf_counter() - t0)
    rewards, turns = zip(*results, strict=True)
    return label, client.address, sum(rewards) / len(rewards), sum(turns) / len(turns), rate


async def play(nats_url: str) -> Table:
    table = Table(title=f"{EPISODES} episodes per environment, scripted policies")
    for col in ("environment", "policy", "server (from registry)"):
        table.add_column(col)
    for col in ("mean reward", "mean turns", "episodes/s"):
        table.add_column(col, justify="right")
    for name in ENVS:
        label, address, reward, turns, rate = await play_env(name, nats_url)
        table.add_row(name, label, address, f"{reward:.2f}", f"{turns:.1f}", f"{rate:,.0f}")
    return table


def run() -> int:
    import tempfile

    console = Console()
    console.rule("[bold]rollmesh demo")
    with tempfile.TemporaryDirectory(prefix="rollmesh-demo-") as tmp:
        mesh = Mesh(MeshConfig(dir=tmp, nats=NatsConfig(port=0), envs=[EnvServerConfig(target=list(ENVS))]))
        try:
            asyncio.run(mesh.start())
            (server,) = mesh.services
            console.print(f"1. embedded NATS (JetStream) at [cyan]{mesh.nats_url}[/]")
            console.print(f"2. environment server on [cyan]{server.address}[/] hosting {', '.join(ENVS)}; registry:")
            asyncio.run(print_services(mesh.nats_url))
            console.print("3. conformance suite against it:")
            report = asyncio.run(run_conformance(server.address))
            print_report(report)
            console.print("4. episodes, servers found by name through the registry:")
            console.print(asyncio.run(play(mesh.nats_url)))
            code = asyncio.run(server.stop(mesh.config.grace_s))
            console.print(f"5. server stopped (exit code {code}); registry now:")
            asyncio.run(print_services(mesh.nats_url))
        finally:
            asyncio.run(mesh.stop())
    ok = report.passed
    console.rule("[green]demo finished" if ok else "[red]conformance failed")
    return 0 if ok else 1
