"""Structured logging and OpenTelemetry tracing setup, shared by every rollmesh process.

Environment variables:
  ROLLMESH_LOG_FORMAT     "text" (default) or "json" (one object per line, for log collectors)
  ROLLMESH_LOG_LEVEL      default INFO
  ROLLMESH_OTEL_EXPORTER  "console" | "otlp" | unset (spans are created and propagated, not exported)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from opentelemetry import trace

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_HANDLER_MARK = "_rollmesh_handler"
_tracing_provider: Any = None


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
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    current = trace.get_tracer_provider()
    if _tracing_provider is not None or isinstance(current, TracerProvider):
        # Someone (maybe a test, maybe us) already installed an SDK provider: reuse it.
        _tracing_provider = current
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
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
