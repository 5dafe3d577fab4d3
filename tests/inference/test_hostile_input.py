"""Bad and hostile input to the inference server (gRPC and the OpenAI facade): every client fault
is a 4xx-class status with a reason and a bounded message, and none of it stalls the server."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import grpc
import pytest
from rollmesh.inference.server import InferenceServer
from rollmesh.proto.v1 import inference_pb2 as inf_pb
from rollmesh.proto.v1 import inference_pb2_grpc as inf_grpc
from rollmesh.proto.v1 import messages_pb2 as msg_pb
from rollmesh.rpc import create_channel
from rollmesh.rpc_errors import error_info

pytest.importorskip("torch")
pytest.importorskip("transformers")

SERVICE = "/rollmesh.v1.InferenceService"


@pytest.fixture(scope="module")
async def served(tiny_model_dir):
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend, openai_port=0)
    await server.start()
    channel = create_channel(server.address)
    yield server, inf_grpc.InferenceServiceStub(channel), channel
    await channel.close()
    await server.stop(0)


async def _fails(call, code: grpc.StatusCode, reason: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    if reason is not None:
        info = error_info(err.value)
        assert info is not None and info.reason == reason and info.domain == "rollmesh.dev"
    assert len(err.value.details()) < 2500
    return err.value


def _chat(content: str = "hi", **tool: str) -> inf_pb.ChatInput:
    chat = inf_pb.ChatInput(messages=[msg_pb.Message(role="user", content=content)])
    if tool:
        chat.tools.add(**tool)
    return chat


async def test_a_huge_tokenize_is_refused_at_once_and_the_server_keeps_serving(served) -> None:
    server, stub, _ = served
    huge = "word " * (8 * 1024 * 1024 // 5)  # 8 MB: once a minute of a frozen event loop
    t0 = time.perf_counter()
    await _fails(
        stub.Tokenize(inf_pb.TokenizeRequest(text=huge), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PROMPT_TOO_LONG",
    )
    await _fails(
        stub.Generate(inf_pb.GenerateRequest(chat=_chat(huge)), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PROMPT_TOO_LONG",
    )
    assert time.perf_counter() - t0 < 10
    # the largest text allowed tokenizes off the event loop while other calls are answered
    allowed = "word " * (server.core.max_prompt_chars // 5)
    big = asyncio.ensure_future(stub.Tokenize(inf_pb.TokenizeRequest(text=allowed), timeout=60))
    info = await stub.GetModelInfo(inf_pb.GetModelInfoRequest(), timeout=10)
    assert info.model == "tiny"
    assert len((await big).token_ids) > 1000


async def test_a_tool_schema_that_is_not_json_is_invalid_argument(served) -> None:
    _, stub, _ = served
    for schema in ("not json", "[1, 2]", "[" * 100_000):
        chat = _chat(name="t", parameters_json_schema=schema)
        await _fails(
            stub.Generate(inf_pb.GenerateRequest(chat=chat), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_TOOL_SCHEMA",
        )
        await _fails(
            stub.Tokenize(inf_pb.TokenizeRequest(chat=chat), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_TOOL_SCHEMA",
        )


async def test_megabyte_names_and_paths_are_not_echoed(served) -> None:
    _, stub, _ = served
    name = "m" * 1_000_000
    err = await _fails(
        stub.Generate(inf_pb.GenerateRequest(model=name, tokens=inf_pb.TokenInput(prompt_ids=[1])), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_MODEL",
    )
    assert "1000000 chars" in err.details()
    err = await _fails(
        stub.LoadWeights(inf_pb.LoadWeightsRequest(path="/" + "p" * 1_000_000), timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "PATH_NOT_ALLOWED",
    )
    assert "chars" in err.details()


async def test_stream_and_weights_faults_name_their_field_or_reason(served) -> None:
    _, stub, _ = served
    err = await _fails(
        _drain(stub.GenerateStream(inf_pb.GenerateStreamRequest(request=inf_pb.GenerateRequest()), timeout=10)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MISSING_FIELD",
    )
    assert dict(error_info(err).metadata) == {"field": "request.input"}
    bad_sampling = inf_pb.GenerateRequest(chat=_chat(), sampling=msg_pb.SamplingParams(top_p=0.0))
    err = await _fails(
        _drain(stub.GenerateStream(inf_pb.GenerateStreamRequest(request=bad_sampling), timeout=10)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BAD_PARAMS",
    )
    assert dict(error_info(err).metadata) == {"field": "sampling.top_p"}
    err = await _fails(
        stub.LoadWeights(inf_pb.LoadWeightsRequest(), timeout=10), grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD"
    )
    assert dict(error_info(err).metadata) == {"field": "path"}
    huge = inf_pb.WeightsHeader(
        total_bytes=1 << 50, sha256="0" * 64, tensors=[inf_pb.TensorInfo(name="lm_head.weight")]
    )
    err = await _fails(
        stub.UpdateWeights(iter([inf_pb.UpdateWeightsRequest(header=huge)]), timeout=10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "WEIGHTS_TOO_LARGE",
    )
    assert int(error_info(err).metadata["limit_bytes"]) < 1 << 50
    await _fails(
        stub.UpdateWeights(iter([inf_pb.UpdateWeightsRequest(chunk=b"x")]), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CHECKPOINT_INVALID",
    )


async def _drain(call) -> None:
    async for _ in call:
        pass


async def test_undecodable_bytes_on_every_kind_of_method(served) -> None:
    _, _, channel = served
    garbage = b"\xff\xff\xff\xff\x0f\x01"
    for method in ("Generate", "Tokenize", "GetModelInfo", "LoadWeights", "Pause"):
        call = channel.unary_unary(f"{SERVICE}/{method}")
        await _fails(call(garbage, timeout=10), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    stream = channel.unary_stream(f"{SERVICE}/GenerateStream")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [_ async for _ in stream(garbage, timeout=10)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    upload = channel.stream_unary(f"{SERVICE}/UpdateWeights")
    await _fails(upload(iter([garbage]), timeout=10), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


@pytest.mark.parametrize(
    "body",
    [
        b'{"messages": [{"role": "user", "content": "hi"}], "n": "abc"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}',
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.5}',
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1e30}',
        b'{"messages": [{"role": "user", "content": "hi"}], "stop": 5}',
        b'{"messages": [{"role": "user", "content": "hi"}], "stop_token_ids": ["a"]}',
        b'{"messages": [{"role": "user", "content": "hi"}], "tools": "all"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"function": 3}]}',
        b'{"messages": "hi"}',
        b"[1, 2]",
    ],
)
async def test_openai_facade_answers_bad_types_with_400(served, body: bytes) -> None:
    server, _, _ = served
    async with aiohttp.ClientSession() as http:
        url = f"http://{server.openai_address}/v1/chat/completions"
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400, await r.text()
            assert (await r.json())["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "hi", "n": "abc"}',
        b'{"prompt": {"x": 1}}',
        b'{"prompt": [1, "a"]}',
        b'{"prompt": "hi", "max_tokens": 1e400}',
    ],
)
async def test_openai_completions_answers_bad_types_with_400(served, body: bytes) -> None:
    server, _, _ = served
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://{server.openai_address}/v1/completions", data=body) as r:
            assert r.status == 400, await r.text()
