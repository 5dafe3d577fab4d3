"""Structured logging and OpenTelemetry tracing setup, shared by every rollmesh process.

Environment variables:
  ROLLMESH_LOG_FORMAT     "text" (default) or "json" (one object per line, for log collectors)
  ROLLMESH_LOG_LEVEL      default INFO
  ROLLMESH_OTEL_EXPORTER  "console" | "otlp" | unset (no spans are exported)
  ROLLMESH_TRACING        "1" / "0": spans and trace propagation (gRPC interceptors, bus headers) on
                          or off; unset: on when ROLLMESH_OTEL_EXPORTER is set. Tracing costs CPU
                          on every RPC and bus message (about a fifth of a rollout's mesh CPU), so
                          a process that exports nothing does not pay for it unless asked to.

Trace context crosses the bus as W3C headers on the NATS message (`traceparent`, `tracestate`), so
a rollout's trace runs from the orchestrator through JetStream to the trainer step that used it,
and a production trace's from its publisher to the score published for it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import cache
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_HANDLER_MARK = "_rollmesh_handler"
_tracing_provider: Any = None

# W3C trace context header names on bus messages (lower case, as the W3C spec writes them).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# Always W3C, whatever OTEL_PROPAGATORS says: the bus contract is the same for every language.
_W3C = TraceContextTextMapPropagator()
# Span links kept per span (the SDK's default is 128): a trainer step links to each rollout it
# consumed, often hundreds. OTEL_SPAN_LINK_COUNT_LIMIT, when set, decides instead.
MAX_SPAN_LINKS = 4096


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")}


def _span_ids() -> tuple[str, str] | None:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self.service,
        }
        if ids := _span_ids():
            out["trace_id"], out["span_id"] = ids
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """`HH:MM:SS.mmm LEVEL logger: msg key=value ... trace=<id>`: readable, no colours."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"]
        parts += [f"{k}={v}" for k, v in _extras(record).items()]
        if ids := _span_ids():
            parts.append(f"trace={ids[0]}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _drop_ssl_eof_noise(record: logging.LogRecord) -> bool:
    # asyncio warns on every TLS connection that nats-py closes ("returning true from
    # eof_received() has no effect when using ssl"): nothing to act on, one line per connection.
    return not (record.name == "asyncio" and "eof_received()" in record.getMessage())


def setup_logging(service: str, level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger once per process; calling again replaces rollmesh's handler."""
    level = (level or os.environ.get("ROLLMESH_LOG_LEVEL") or "INFO").upper()
    fmt = (fmt or os.environ.get("ROLLMESH_LOG_FORMAT") or "text").lower()
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', got {fmt!r}")
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(_drop_ssl_eof_noise)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root.addHandler(handler)
    root.setLevel(level)


def setup_tracing(service: str) -> trace.TracerProvider:
    """Install an SDK TracerProvider as the global one (idempotent: the first call wins).

    The gRPC interceptors in rollmesh.rpc use the global provider, so this also turns on real
    trace/span ids (and W3C traceparent propagation) for every server and channel.
    """
    global _tracing_provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    current = trace.get_tracer_provider()
    if _tracing_provider is not None or isinstance(current, TracerProvider):
        # Someone (maybe a test, maybe us) already installed an SDK provider: reuse it.
        _tracing_provider = current
        return current
    limits = SpanLimits(max_links=None if "OTEL_SPAN_LINK_COUNT_LIMIT" in os.environ else MAX_SPAN_LINKS)
    provider = TracerProvider(resource=Resource.create({"service.name": service}), span_limits=limits)
    exporter_name = os.environ.get("ROLLMESH_OTEL_EXPORTER", "").lower()
    exporter: SpanExporter | None = None
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            logging.getLogger(__name__).warning(
                "ROLLMESH_OTEL_EXPORTER=otlp but opentelemetry-exporter-otlp is not installed; "
                "spans will not be exported (pip install opentelemetry-exporter-otlp)"
            )
        else:
            exporter = OTLPSpanExporter()  # endpoint from OTEL_EXPORTER_OTLP_ENDPOINT
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracing_provider = provider
    return provider


# --- trace context on bus messages ------------------------------------------------------------


def tracing_enabled() -> bool:
    """ROLLMESH_TRACING when set (0/false/no/off is off); unset, whether this process exports spans
    (ROLLMESH_OTEL_EXPORTER). The switch rpc.py reads for its interceptors and the bus for headers."""
    value = os.environ.get("ROLLMESH_TRACING", "").strip().lower()
    if value:
        return value not in ("0", "false", "no", "off")
    return bool(os.environ.get("ROLLMESH_OTEL_EXPORTER", "").strip())


def _trace_entries(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The traceparent/tracestate entries of `headers` under their lower-case names, None without a
    traceparent. Names are matched in any case: not every NATS client keeps them lower case."""
    if TRACEPARENT in headers:
        out = {TRACEPARENT: headers[TRACEPARENT]}
        if TRACESTATE in headers:
            out[TRACESTATE] = headers[TRACESTATE]
        return out
    out = {low: v for k, v in headers.items() if (low := k.lower()) in (TRACEPARENT, TRACESTATE)}
    return out if TRACEPARENT in out else None


_Headers = TypeVar("_Headers", bound=MutableMapping[str, str])


def inject_trace_headers(headers: _Headers) -> _Headers:
    """Adds the current span's W3C trace context to a NATS message's `headers` (in place; also
    returned). Headers that already carry a traceparent are left as they are (the caller chose the
    parent). Nothing is added with tracing off or without a current span."""
    if not tracing_enabled() or not trace.get_current_span().get_span_context().is_valid:
        return headers
    if _trace_entries(headers) is None:
        _W3C.inject(headers)
    return headers


def trace_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Only the trace context entries of a message's headers ({} without one), e.g. to publish
    something about that message (a dead letter) in its trace."""
    return (_trace_entries(headers) if headers else None) or {}


def extract_trace_context(headers: Mapping[str, str] | None) -> Context | None:
    """The context of the span that published a message, from its headers, to parent a span on:
    `tracer.start_as_current_span(name, context=...)`. None when tracing is off or the message
    carries no valid traceparent."""
    if not headers or not tracing_enabled():
        return None
    entries = _trace_entries(headers)
    if entries is None:
        return None
    ctx = _W3C.extract(entries)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def remote_span_context(headers: Mapping[str, str] | None) -> trace.SpanContext | None:
    """The publisher's SpanContext from a message's headers, to link a span to (a batch that joins
    many traces); None when tracing is off or there is none."""
    ctx = extract_trace_context(headers)
    return None if ctx is None else trace.get_current_span(ctx).get_span_context()


@cache
def tracer(name: str) -> trace.Tracer:
    # The global proxy resolves to the provider installed later (setup_tracing, a test's), so
    # caching is safe; it saves building a Tracer per span.
    return trace.get_tracer(name)


def start_span(
    name: str,
    *,
    instrumentation: str = "rollmesh",
    context: Context | None = None,
    links: Sequence[trace.SpanContext] = (),
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[trace.Span]:
    """`with start_span(...) as span:` a current span (a child of `context` when given, else of
    the current span), linked to `links`. With tracing off: a no-op span, nothing is created."""
    if not tracing_enabled():
        return nullcontext(trace.INVALID_SPAN)
    return tracer(instrumentation).start_as_current_span(
        name, context=context, kind=kind, attributes=attributes, links=[trace.Link(c) for c in links]
    )
