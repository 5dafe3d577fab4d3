"""The one place that builds gRPC servers and channels, so transport concerns (limits, keepalive,
tracing, logging, TLS and authorization) change in one spot.

Every server speaks grpc.health.v1 and server reflection. Tracing interceptors (OpenTelemetry,
W3C traceparent in metadata) are on where the process exports spans or ROLLMESH_TRACING=1
(telemetry.tracing_enabled): a grpc.aio interceptor costs tens of microseconds per call and
message on both ends, a fifth of a rollout's CPU in the mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .errors import InvalidArgumentError, RollmeshError, clip
from .rpc_errors import abort
from .security import roles
from .security.authorize import Authorizer, set_caller
from .security.tls import TlsConfig, current, server_name
from .telemetry import tracing_enabled

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_SERVER_FAULTS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS})


@dataclass(frozen=True)
class RpcLimits:
    max_message_bytes: int = 16 * 1024 * 1024
    # Capacity belongs to the services (episode slots, inference queues), which refuse with
    # RESOURCE_EXHAUSTED and a reason. The transport's two caps only stop a flood and must sit far
    # above any service capacity, or they refuse first, with no reason, as UNAVAILABLE/CANCELLED
    # that a client blames on a healthy replica:
    # - HTTP/2 streams per connection: a server frees a stream a moment after the client saw it
    #   end, so near the cap new streams race and are refused (RST_STREAM REFUSED_STREAM);
    # - calls that arrived but that the server has not yet taken up: gRPC's default backlog of
    #   1,000 cancels part of any larger burst of new calls (1,100 episodes opened at once).
    max_concurrent_streams: int = 16384
    max_pending_calls: int = 16384
    # Pings keep idle connections alive through NATs/load balancers and detect dead peers.
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    # Servers refuse (GOAWAY) clients that ping more often than this; keep <= keepalive_time_s.
    min_ping_interval_s: float = 10.0

    def common_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
        ]

    def with_headroom_for(self, calls: int) -> RpcLimits:
        """These limits, with both transport caps raised (if needed) so that `calls` concurrent
        calls, all opened at once on one connection, fit with room to spare."""
        return replace(
            self,
            max_concurrent_streams=max(self.max_concurrent_streams, 2 * calls),
            max_pending_calls=max(self.max_pending_calls, 2 * calls),
        )

    def server_options(self) -> list[tuple[str, Any]]:
        return [
            *self.common_options(),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            # soft == hard: no random early rejection below the cap
            ("grpc.server.max_pending_requests", self.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", self.max_pending_calls),
            ("grpc.http2.min_ping_interval_without_data_ms", int(self.min_ping_interval_s * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
            # Without this a second server on the same fixed port binds silently (SO_REUSEPORT).
            ("grpc.so_reuseport", 0),
        ]

    def channel_options(self) -> list[tuple[str, Any]]:
        return [*self.common_options(), ("grpc.http2.max_pings_without_data", 0)]


# --- health -----------------------------------------------------------------------------------


class _HealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 with a synchronous `set` (grpc's aio servicer only has an async one)."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._watchers: dict[str, set[asyncio.Queue[int | None]]] = {}

    def set(self, service: str, status: int) -> None:
        self._status[service] = status
        for q in self._watchers.get(service, ()):
            _put_latest(q, status)

    def close_watches(self) -> None:
        """End Watch streams so they do not hold a graceful shutdown open for the whole grace."""
        for qs in self._watchers.values():
            for q in qs:
                _put_latest(q, None)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        q: asyncio.Queue[int | None] = asyncio.Queue(maxsize=2)
        self._watchers.setdefault(request.service, set()).add(q)
        try:
            last: int | None = self._status.get(request.service, _UNKNOWN)
            yield health_pb2.HealthCheckResponse(status=last)
            while (status := await q.get()) is not None:
                if status != last:
                    last = status
                    yield health_pb2.HealthCheckResponse(status=status)
        finally:
            self._watchers[request.service].discard(q)


def _put_latest(q: asyncio.Queue[int | None], item: int | None) -> None:
    # Watchers only need the latest status: drop the oldest entry instead of blocking.
    while q.full():
        q.get_nowait()
    q.put_nowait(item)


# --- server-side: statuses for what escapes a servicer, and failure logging -------------------------


class MalformedRequestError(InvalidArgumentError, DecodeError):
    """Request bytes that do not parse as the method's message. A DecodeError too, so servicers that
    read a stream with `context.read()` and catch DecodeError keep working."""

    reason = "MALFORMED_REQUEST"


class _Undecodable:
    """Stands for a unary request that did not parse: a deserializer that raises makes grpc answer
    UNKNOWN and log a traceback per call, so the interceptor answers INVALID_ARGUMENT instead."""

    __slots__ = ("error",)

    def __init__(self, error: MalformedRequestError) -> None:
        self.error = error


def _malformed(method: str, e: Exception) -> MalformedRequestError:
    return MalformedRequestError(f"the request is not a valid protobuf message for {method}: {clip(str(e), 200)}")


async def _authorize(authorizer: Authorizer, method: str, context: Any, request: Any, streaming: bool) -> None:
    """Identifies the caller and checks its roles before the servicer runs (raises the refusal)."""
    if not authorizer.enabled:
        return
    auth = context.auth_context() or {}
    metadata = dict(context.invocation_metadata() or ())
    try:
        identity = authorizer.check(
            method, auth.get("x509_pem_cert", ()), metadata.get("authorization"), context.peer()
        )
    except RollmeshError:
        if streaming:
            # A client that is still sending its first message when the refusal arrives gets a
            # local INTERNAL from grpc instead of our status: take that message (briefly) first.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_first_message(request), REFUSAL_READ_S)
        raise
    set_caller(identity)


REFUSAL_READ_S = 1.0


async def _first_message(request: Any) -> None:
    if hasattr(request, "__anext__"):
        await request.__anext__()


class _ServerInterceptor(grpc.aio.ServerInterceptor):
    """Around every servicer method: the caller is authorized first, undecodable requests become
    INVALID_ARGUMENT (MALFORMED_REQUEST), a RollmeshError that escapes a servicer becomes its status
    with ErrorInfo, and each RPC that ends with a non-OK status is logged as one structured line
    (client faults at WARNING, no traceback)."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        decode = handler.request_deserializer

        if handler.request_streaming:

            def deserializer(data: bytes) -> Any:
                try:
                    return decode(data) if decode else data
                except Exception as e:  # DecodeError, or whatever the parser raises on garbage
                    raise _malformed(method, e) from None
        else:

            def deserializer(data: bytes) -> Any:
                try:
                    return decode(data) if decode else data
                except Exception as e:
                    return _Undecodable(_malformed(method, e))

        def report(context: Any, start: float, exc: BaseException | None) -> None:
            code = context.code()
            if isinstance(code, int):  # aio contexts may hold the raw cygrpc int
                code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
            message = context.details() or ""
            if exc is not None and not isinstance(exc, asyncio.CancelledError) and code in (None, grpc.StatusCode.OK):
                code, message = grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"
            if code in (None, grpc.StatusCode.OK):
                return
            if isinstance(message, bytes):
                message = message.decode(errors="replace")
            message = clip(message, 500)
            # Server-side bugs at ERROR; client errors (bad input, not found, ...) at WARNING.
            # No traceback: grpc already logs one for exceptions escaping a servicer.
            level = logging.ERROR if code in _SERVER_FAULTS else logging.WARNING
            log.log(
                level,
                "rpc failed: %s %s %s",
                method,
                code.name,
                message,
                extra={
                    "rpc_method": method,
                    "grpc_code": code.name,
                    "grpc_message": message,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                },
            )

        # Streaming responses are always re-exposed as async generators. This also matters for
        # tracing: the OpenTelemetry aio interceptor (outside us) does `async for` over the
        # behaviour and breaks handlers that use `await context.write()` and return a coroutine.
        if handler.response_streaming:
            inner_stream = handler.unary_stream or handler.stream_stream

            async def stream_behavior(request: Any, context: Any) -> AsyncIterator[Any]:
                start = time.perf_counter()
                try:
                    try:
                        await _authorize(self.authorizer, method, context, request, handler.request_streaming)
                        if isinstance(request, _Undecodable):
                            raise request.error
                        result = inner_stream(request, context)
                        if hasattr(result, "__aiter__"):
                            async for item in result:
                                yield item
                        else:  # handler used context.write() and returned a coroutine
                            await result
                    except RollmeshError as e:
                        await abort(context, e)
                except BaseException as exc:
                    report(context, start, exc)
                    raise
                report(context, start, None)

            wrapped: Callable[..., Any] = stream_behavior
        else:
            inner_unary = handler.unary_unary or handler.stream_unary

            async def unary_behavior(request: Any, context: Any) -> Any:
                start = time.perf_counter()
                try:
                    try:
                        await _authorize(self.authorizer, method, context, request, handler.request_streaming)
                        if isinstance(request, _Undecodable):
                            raise request.error
                        response = await inner_unary(request, context)
                    except RollmeshError as e:
                        await abort(context, e)
                except BaseException as exc:
                    report(context, start, exc)
                    raise
                report(context, start, None)
                return response

            wrapped = unary_behavior
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return factory(
            wrapped,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )


# --- server -------------------------------------------------------------------------------------

AddServicerFn = Callable[[Any, grpc.aio.Server], None]


class RpcServer:
    """A grpc.aio.Server plus its health servicer; build with create_server()."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health: _HealthServicer,
        services: list[str],
        host: str,
        port: int,
        tls: TlsConfig = TlsConfig(),  # noqa: B008
    ):
        self.server = server
        self.tls = tls
        self.services = services
        self.host = host
        self.port = port
        self._health = health

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        await self.server.start()

    def set_serving(self, serving: bool) -> None:
        """Health status for "" and every registered service. Call from the event loop thread."""
        status = _SERVING if serving else _NOT_SERVING
        for name in ("", *self.services):
            self._health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING first (so balancers drain us), then reject new RPCs and cancel the rest
        after `grace_s`."""
        self.set_serving(False)
        self._health.close_watches()
        await self.server.stop(grace_s)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()

    async def __aenter__(self) -> RpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(0)


def create_server(
    services: Sequence[tuple[AddServicerFn, Any, str]],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: RpcLimits = RpcLimits(),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tls: TlsConfig | None = None,
) -> RpcServer:
    """Build (not start) a server hosting `services` = [(add_XServicer_to_server, servicer,
    "rollmesh.v1.XService")], plus health and reflection. Port 0 binds a free port. `tls` (default:
    the process's settings, security.tls.current()) turns on TLS, mutual TLS with a CA, and the
    role check of security.roles for every method when the server can tell who calls."""
    tls = current() if tls is None else tls
    chain: list[grpc.aio.ServerInterceptor] = []
    if tracing_enabled():  # outermost, so the failure log line carries the trace id
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        chain.append(aio_server_interceptor())
    chain += [_ServerInterceptor(Authorizer(tls, roles.required_roles)), *interceptors]
    server = grpc.aio.server(interceptors=chain, options=limits.server_options())
    names = []
    for add_fn, servicer, name in services:
        add_fn(servicer, server)
        names.append(name)
    health = _HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([*names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    if tls.enabled:
        bound = server.add_secure_port(f"{host}:{port}", tls.grpc_server_credentials())
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:  # older grpc versions return 0 instead of raising
        raise RuntimeError(f"could not bind gRPC server to {host}:{port}")
    rpc_server = RpcServer(server, health, names, host, bound, tls)
    rpc_server.set_serving(True)
    return rpc_server


# --- client -------------------------------------------------------------------------------------


class _BearerToken(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback(self._metadata, None)


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    creds = tls.grpc_channel_credentials()
    if tls.token:
        creds = grpc.composite_channel_credentials(creds, grpc.metadata_call_credentials(_BearerToken(tls.token)))
    return creds


def create_channel(
    address: str,
    *,
    kind: str | None = None,
    limits: RpcLimits = RpcLimits(),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    tls: TlsConfig | None = None,
) -> grpc.aio.Channel:
    """A channel to a server of `kind` ("env", "inference", "rubric") at `address`. With TLS (default:
    the process's settings) the server must present a certificate issued for that kind
    (security.tls.server_name), whatever the address: a registered address is trusted only if it
    holds such a certificate. Without a kind, the certificate must name the address's host."""
    tls = current() if tls is None else tls
    options = limits.channel_options()
    chain: list[grpc.aio.ClientInterceptor] = []
    if tracing_enabled():
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        chain += aio_client_interceptors()
    chain += interceptors
    if not tls.enabled:
        return grpc.aio.insecure_channel(address, options=options, interceptors=chain)
    if kind:
        options.append(("grpc.ssl_target_name_override", server_name(kind)))
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=options, interceptors=chain)


def end_call(call: Any) -> None:
    """Cancels a client streaming call and ends its request pump.

    With client interceptors (tracing), a reader/writer-style stream is fed to the real call by
    a grpc task reading an internal queue; grpc stops that task only when the cancel is what ends
    the call. After the server has ended it (an error, a dead replica) the task waits on the queue
    forever, and when the call is dropped asyncio reports "Task was destroyed but it is pending"
    and "aclose(): asynchronous generator is already running". The end-of-requests sentinel lets
    it finish."""
    call.cancel()
    queue = getattr(call, "_write_to_iterator_queue", None)
    if queue is None:
        return
    from grpc.aio._interceptor import _InterceptedStreamRequestMixin

    while not queue.empty():  # requests nobody will send any more
        queue.get_nowait()
    queue.put_nowait(_InterceptedStreamRequestMixin._FINISH_ITERATOR_SENTINEL)


async def wait_for_ready(
    address: str, timeout_s: float, service: str = "", *, kind: str | None = None, tls: TlsConfig | None = None
) -> None:
    """Poll grpc.health.v1 Check until SERVING; raise TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with create_channel(address, kind=kind, tls=tls, limits=RpcLimits()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while (left := deadline - time.monotonic()) > 0:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=min(left, 1.0))
                if resp.status == _SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.aio.AioRpcError as e:
                last = f"{e.code().name}: {e.details()}"
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    raise TimeoutError(f"gRPC server at {address} not SERVING after {timeout_s:g}s (last: {last})")
