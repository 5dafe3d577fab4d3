"""In-process span capture for tracing tests: an InMemorySpanExporter on the global SDK tracer
provider (installed once per process by setup_tracing, as a service does), recording only inside
`captured_spans()` so other tests' spans do not pile up in memory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rollmesh.telemetry import setup_tracing


class _Switchable(SimpleSpanProcessor):
    def __init__(self, exporter: InMemorySpanExporter) -> None:
        super().__init__(exporter)
        self.recording = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.recording:
            super().on_end(span)


_capture: tuple[_Switchable, InMemorySpanExporter] | None = None


@contextlib.contextmanager
def captured_spans() -> Iterator[InMemorySpanExporter]:
    global _capture
    if _capture is None:
        setup_tracing("rollmesh-test")
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider)
        exporter = InMemorySpanExporter()
        processor = _Switchable(exporter)
        provider.add_span_processor(processor)
        _capture = (processor, exporter)
    processor, exporter = _capture
    exporter.clear()
    processor.recording = True
    try:
        yield exporter
    finally:
        processor.recording = False
        exporter.clear()


def trace_id_of(traceparent: str) -> int:
    """The trace id of a W3C traceparent header value (version-traceid-spanid-flags)."""
    return int(traceparent.split("-")[1], 16)


def span_id_of(traceparent: str) -> int:
    return int(traceparent.split("-")[2], 16)


async def spans_when(
    exporter: InMemorySpanExporter,
    ready: Callable[[Sequence[ReadableSpan]], bool],
    timeout_s: float = 20.0,
) -> Sequence[ReadableSpan]:
    """The finished spans once `ready(spans)`: a server or consumer ends its span a moment after
    the caller saw the reply, so tests wait for the spans rather than assume them."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = exporter.get_finished_spans()
        if ready(spans):
            return spans
        assert time.monotonic() < deadline, "spans never came: " + ", ".join(sorted({s.name for s in spans}))
        await asyncio.sleep(0.02)


def tree(spans: Sequence[ReadableSpan], trace_id: int) -> str:
    """The spans of one trace as an indented tree (name and kind), children in start order."""
    mine = sorted((s for s in spans if s.context.trace_id == trace_id), key=lambda s: s.start_time or 0)
    ids = {s.context.span_id for s in mine}
    children: dict[int | None, list[ReadableSpan]] = {}
    for s in mine:
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        children.setdefault(parent, []).append(s)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in children.get(parent, []):
            kind = s.kind.name.lower()
            lines.append(f"{'  ' * depth}{s.name} [{kind}]")
            walk(s.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)
