from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rollmesh import rpc
from rollmesh.proto.v1 import environment_pb2, environment_pb2_grpc
from rollmesh.telemetry import setup_tracing

ENV_SERVICE = "rollmesh.v1.EnvironmentService"


class _Env(environment_pb2_grpc.EnvironmentServiceServicer):
    def __init__(self, description: str = "tiny") -> None:
        self.description = description

    async def Describe(self, request, context):
        return environment_pb2.DescribeResponse(
            environments=[environment_pb2.EnvironmentInfo(name="e", description=self.description)]
        )

    async def ListTasks(self, request, context):
        # write()-style streaming (returns a coroutine, not an async generator).
        for token in ("a", "b"):
            await context.write(environment_pb2.ListTasksResponse(next_page_token=token))

    async def Score(self, request, context):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown env {request.env!r}")


def _server(servicer: _Env | None = None, **kw) -> rpc.RpcServer:
    add = environment_pb2_grpc.add_EnvironmentServiceServicer_to_server
    return rpc.create_server([(add, servicer or _Env(), ENV_SERVICE)], **kw)


async def test_health_and_reflection() -> None:
    server = _server()
    assert server.port > 0 and server.address == f"127.0.0.1:{server.port}"
    await server.start()
    try:
        await rpc.wait_for_ready(server.address, 5)
        async with rpc.create_channel(server.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for name in ("", ENV_SERVICE):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=ENV_SERVICE))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            server.set_serving(False)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", ENV_SERVICE):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            with pytest.raises(TimeoutError, match="not SERVING"):
                await rpc.wait_for_ready(server.address, 0.3)

            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            call = refl.ServerReflectionInfo()
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            resp = await call.read()
            await call.done_writing()
            names = {s.name for s in resp.list_services_response.service}
            assert names == {ENV_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    finally:
        await server.stop(0)


async def test_wait_for_ready_times_out_without_server() -> None:
    with pytest.raises(TimeoutError):
        await rpc.wait_for_ready("127.0.0.1:1", 0.3)


async def test_stop_is_prompt_with_open_watch() -> None:
    server = _server()
    await server.start()
    async with rpc.create_channel(server.address) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await server.stop(5.0)
        assert loop.time() - t0 < 2.0  # the Watch stream did not hold the grace period open
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_message_size_limits() -> None:
    small = rpc.RpcLimits(max_message_bytes=1024)
    server = _server(_Env(description="x" * 4096), limits=small)
    await server.start()
    try:
        async with rpc.create_channel(server.address) as ch:
            stub = environment_pb2_grpc.EnvironmentServiceStub(ch)
            # Request over the server's receive limit.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Score(environment_pb2.ScoreRequest(env="y" * 4096), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Response over the server's send limit.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Describe(environment_pb2.DescribeRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Client-side receive limit.
        server2 = _server(_Env(description="x" * 4096))
        await server2.start()
        async with rpc.create_channel(server2.address, limits=small) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await environment_pb2_grpc.EnvironmentServiceStub(ch).Describe(
                    environment_pb2.DescribeRequest(), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await server2.stop(0)
    finally:
        await server.stop(0)


async def test_failed_rpc_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    server = _server()
    await server.start()
    try:
        async with rpc.create_channel(server.address) as ch:
            with caplog.at_level(logging.WARNING, logger="rollmesh.rpc"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await environment_pb2_grpc.EnvironmentServiceStub(ch).Score(
                        environment_pb2.ScoreRequest(env="nope"), timeout=5
                    )
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                await environment_pb2_grpc.EnvironmentServiceStub(ch).Describe(
                    environment_pb2.DescribeRequest(), timeout=5
                )
        [rec] = [r for r in caplog.records if r.name == "rollmesh.rpc"]
        assert rec.rpc_method == f"/{ENV_SERVICE}/Score"
        assert rec.grpc_code == "INVALID_ARGUMENT"
        assert rec.grpc_message == "unknown env 'nope'"
    finally:
        await server.stop(0)


async def test_fixed_port_in_use_fails() -> None:
    server = _server()
    with pytest.raises(RuntimeError):
        _server(port=server.port)
    await server.stop(0)


async def test_trace_context_propagates() -> None:
    setup_tracing("rollmesh-test")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = _server()
    await server.start()
    try:
        async with rpc.create_channel(server.address) as ch:
            await environment_pb2_grpc.EnvironmentServiceStub(ch).Describe(environment_pb2.DescribeRequest(), timeout=5)
    finally:
        await server.stop(0)
    spans = [s for s in exporter.get_finished_spans() if s.name == f"/{ENV_SERVICE}/Describe"]
    client = next(s for s in spans if s.kind == trace.SpanKind.CLIENT)
    srv = next(s for s in spans if s.kind == trace.SpanKind.SERVER)
    assert srv.context.trace_id == client.context.trace_id
    assert srv.parent is not None and srv.parent.span_id == client.context.span_id


def test_tracing_is_on_by_default_only_where_spans_are_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROLLMESH_TRACING", raising=False)
    monkeypatch.delenv("ROLLMESH_OTEL_EXPORTER", raising=False)
    assert not rpc.tracing_enabled()
    monkeypatch.setenv("ROLLMESH_OTEL_EXPORTER", "otlp")
    assert rpc.tracing_enabled()
    monkeypatch.setenv("ROLLMESH_TRACING", "off")
    assert not rpc.tracing_enabled()
    monkeypatch.delenv("ROLLMESH_OTEL_EXPORTER")
    monkeypatch.setenv("ROLLMESH_TRACING", "1")  # propagation without exporting, e.g. for log trace ids
    assert rpc.tracing_enabled()


async def test_tracing_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLMESH_TRACING", "0")
    assert not rpc.tracing_enabled()
    server = _server()
    await server.start()
    try:
        async with rpc.create_channel(server.address) as ch:
            resp = await environment_pb2_grpc.EnvironmentServiceStub(ch).Describe(
                environment_pb2.DescribeRequest(), timeout=5
            )
            assert resp.environments[0].name == "e"
    finally:
        await server.stop(0)


@pytest.mark.parametrize("tracing", ["1", "0"])
async def test_write_style_streaming_handler(monkeypatch: pytest.MonkeyPatch, tracing: str) -> None:
    monkeypatch.setenv("ROLLMESH_TRACING", tracing)
    server = _server()
    await server.start()
    try:
        async with rpc.create_channel(server.address) as ch:
            stub = environment_pb2_grpc.EnvironmentServiceStub(ch)
            tokens = [r.next_page_token async for r in stub.ListTasks(environment_pb2.ListTasksRequest())]
            assert tokens == ["a", "b"]
    finally:
        await server.stop(0)


class _RaisingEnv(_Env):
    async def Score(self, request, context):
        from rollmesh.errors import NotFoundError, quoted

        raise NotFoundError(f"no environment {quoted(request.env)}", reason="UNKNOWN_ENVIRONMENT")


def _raw(channel: grpc.aio.Channel, method: str, *, streaming_response: bool = False, streaming_request: bool = False):
    """A callable that sends raw bytes (no serializer), as a broken or hostile client would."""
    path = f"/{ENV_SERVICE}/{method}"
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(streaming_request, streaming_response)]
    return kind(path, request_serializer=None, response_deserializer=None)


GARBAGE = b"\xff\xff\xff\xff\x0f\x01"  # a field header with a varint that never ends


@pytest.mark.parametrize(("method", "streaming_response"), [("Describe", False), ("Score", False), ("ListTasks", True)])
async def test_undecodable_requests_are_invalid_argument_without_a_traceback(
    method: str, streaming_response: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from rollmesh.rpc_errors import error_info

    server = _server()
    await server.start()
    try:
        async with rpc.create_channel(server.address) as ch:
            call = _raw(ch, method, streaming_response=streaming_response)
            with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError) as err:
                if streaming_response:
                    [_ async for _ in call(GARBAGE, timeout=5)]
                else:
                    await call(GARBAGE, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            info = error_info(err.value)
            assert info is not None and info.reason == "MALFORMED_REQUEST"
            # the server still serves
            await environment_pb2_grpc.EnvironmentServiceStub(ch).Describe(environment_pb2.DescribeRequest(), timeout=5)
    finally:
        await server.stop(0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], [
        r.getMessage() for r in caplog.records
    ]


async def test_a_domain_error_escaping_a_servicer_keeps_its_code_reason_and_a_bounded_message() -> None:
    from rollmesh.rpc_errors import error_info

    server = _server(_RaisingEnv())
    await server.start()
    try:
        async with rpc.create_channel(server.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await environment_pb2_grpc.EnvironmentServiceStub(ch).Score(
                    environment_pb2.ScoreRequest(env="x" * 1_000_000), timeout=5
                )
    finally:
        await server.stop(0)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err.value).reason == "UNKNOWN_ENVIRONMENT"
    assert len(err.value.details()) < 300 and "1000000 chars" in err.value.details()


def test_server_ping_policy_uses_an_option_grpc_knows() -> None:
    # A misspelt option is ignored silently: clients pinging every keepalive_time_s then got
    # GOAWAY too_many_pings from servers applying the 5-minute default.
    names = dict(rpc.RpcLimits().server_options())
    assert names["grpc.http2.min_ping_interval_without_data_ms"] <= rpc.RpcLimits().keepalive_time_s * 1000
    assert "grpc.http2.min_recv_ping_interval_without_data_ms" not in names


class _EndingEnv(_Env):
    async def Episode(self, request_iterator, context):
        await context.read()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")


def _request_pumps() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if not t.done() and "_consume_request_iterator" in repr(t.get_coro())]


async def test_end_call_stops_the_request_pump_of_a_stream_the_server_ended() -> None:
    """With tracing interceptors, a stream the server ended left grpc's request pump waiting
    forever ("Task was destroyed but it is pending" when the call was dropped)."""
    assert rpc.tracing_enabled()
    server = _server(_EndingEnv())
    await server.start()
    try:
        async with rpc.create_channel(server.address) as ch:
            call = environment_pb2_grpc.EnvironmentServiceStub(ch).Episode(timeout=5)
            await call.write(environment_pb2.EpisodeRequest())
            with pytest.raises(grpc.aio.AioRpcError):
                await call.read()
            assert _request_pumps()
            rpc.end_call(call)
            for _ in range(10):
                await asyncio.sleep(0.01)
            assert _request_pumps() == []
    finally:
        await server.stop(0)


def test_a_local_write_failure_is_unavailable_not_a_server_internal_error() -> None:
    from grpc.aio import AioRpcError, Metadata
    from rollmesh.errors import UnavailableError
    from rollmesh.rpc_errors import LOCAL_WRITE_FAILURE, error_from_rpc

    local = AioRpcError(grpc.StatusCode.INTERNAL, Metadata(), Metadata(), details=LOCAL_WRITE_FAILURE)
    err = error_from_rpc(local)
    assert isinstance(err, UnavailableError) and err.reason == "STREAM_BROKEN"
    served = AioRpcError(grpc.StatusCode.INTERNAL, Metadata(), Metadata(), details="environment raised KeyError")
    assert not isinstance(error_from_rpc(served), UnavailableError)
