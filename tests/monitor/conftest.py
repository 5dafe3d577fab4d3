"""Helpers of the live scoring tests: service configs with a durable and apps of their own (the
session's nats-server is shared), traces, and a core-NATS collector of what is published on a
subject (it also sees publishes JetStream drops as duplicates, so double scoring shows)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

from rollmesh import bus
from rollmesh.monitor.traces import make_trace
from rollmesh.proto.v1 import bus_pb2
from rollmesh.rubric.config import RubricServiceConfig

RULES = {
    "name": "rules",
    "function": [
        {"name": "correct", "function": "exact_match", "params": {"extract": "last_number"}},
        {"name": "polite", "function": "regex", "weight": 0.5, "params": {"pattern": "(?i)thanks"}},
        {"name": "length", "function": "length_penalty", "weight": 0.0, "params": {"max": 200}},
    ],
}
STRICT = {"name": "strict", "function": [{"name": "correct", "function": "exact_match"}]}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def service_config(apps: dict[str, str], *, default: str | None = None, **monitor: Any) -> RubricServiceConfig:
    data: dict[str, Any] = {
        "server": {"port": 0},
        "dashboard": {"port": 0, "source": "local"},
        "rubric": [RULES, STRICT],
        "monitor": {
            "apps": apps,
            "default": default,
            "durable": uid("durable"),
            # Only this test's apps: the session's stream holds every other test's traces too.
            "filter_subjects": [bus.monitor_subject(a) for a in apps] or ["rollmesh.monitor.>"],
            **monitor,
        },
    }
    return RubricServiceConfig.model_validate(data)


def chat(i: int, *, correct: bool = True) -> tuple[list[dict[str, str]], str]:
    answer = str(i + 1)
    said = answer if correct else str(i + 2)
    return [
        {"role": "user", "content": f"What is {i} + 1?"},
        {"role": "assistant", "content": f"Thanks for asking: {said}"},
    ], answer


def traces(app: str, n: int, *, start: int = 0) -> list[bus_pb2.MonitorTrace]:
    out = []
    for i in range(start, start + n):
        messages, answer = chat(i, correct=i % 2 == 0)
        out.append(make_trace(app, messages, answer=answer, trace_id=f"{app}-{i}", labels={"i": str(i)}))
    return out


async def publish(nats_url: str, items: Iterable[bus_pb2.MonitorTrace]) -> None:
    from rollmesh.monitor.publish import TracePublisher

    async with await TracePublisher.connect(nats_url) as publisher:
        for t in items:
            await publisher.publish_trace(t)


class Collector:
    """Every message published on `subject` (core NATS), decoded with `kind`."""

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.items: list[Any] = []
        self._changed = asyncio.Event()
        self.nc: Any = None

    async def start(self, nats_url: str, subject: str) -> Collector:
        self.nc = await bus.connect(nats_url, name="test-collector")

        async def on(msg: Any) -> None:
            self.items.append(self.kind.FromString(msg.data))
            self._changed.set()

        await self.nc.subscribe(subject, cb=on)
        await self.nc.flush()
        return self

    async def wait_for(self, n: int, timeout_s: float = 30.0) -> list[Any]:
        async with asyncio.timeout(timeout_s):
            while len(self.items) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.items

    async def close(self) -> None:
        await self.nc.close()
