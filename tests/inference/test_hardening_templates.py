"""Chat template arguments from clients (gRPC `chat_template_kwargs`, the OpenAI facade's field):
only allow-listed switches with scalar values; a template of the client's own only from an
operator, and even then rendered in a sandbox process with bounded memory and time. Real servers
on loopback with the tiny model; with certificates from a development CA where roles matter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rollmesh.inference.server import InferenceServer
from rollmesh.inference.templates import ALLOWED_TEMPLATE_KWARGS, MAX_CLIENT_TEMPLATE_CHARS
from rollmesh.proto.v1 import inference_pb2 as inf_pb
from rollmesh.proto.v1 import inference_pb2_grpc as inf_grpc
from rollmesh.proto.v1 import messages_pb2 as msg_pb
from rollmesh.rpc import create_channel
from rollmesh.rpc_errors import error_info
from rollmesh.security import pki
from rollmesh.security import tls as security_tls

pytest.importorskip("torch")
pytest.importorskip("transformers")

# The two templates that took a server down: one grew it by gigabytes, one spun for minutes.
HUGE = "{{ 'x' * 300000000 }}"
NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"
# Legal, if busy: a million loop steps, then the message.
BUSY = (
    "{% for i in range(1000) %}{% for j in range(1000) %}{% if (i * j) % 7 == 10 %}x{% endif %}{% endfor %}"
    "{% endfor %}{{ messages[0]['content'] }}"
)
PLAIN = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _chat(kwargs: dict[str, Any] | None = None, content: str = "hi") -> inf_pb.ChatInput:
    chat = inf_pb.ChatInput(messages=[msg_pb.Message(role="user", content=content)])
    if kwargs is not None:
        struct = struct_pb2.Struct()
        struct.update(kwargs)
        chat.chat_template_kwargs.CopyFrom(struct)
    return chat


async def _fails(call: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    info = error_info(err.value)
    assert info is not None and info.reason == reason, info
    assert len(err.value.details()) < 2500
    return err.value


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
async def served(tiny_model_dir: Path) -> AsyncIterator[tuple[InferenceServer, Any, Any]]:
    """A server that does not authenticate: every caller has every role, operator included."""
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend, openai_port=0)
    await server.start()
    channel = create_channel(server.address)
    yield server, inf_grpc.InferenceServiceStub(channel), health_pb2_grpc.HealthStub(channel)
    await channel.close()
    await server.stop(0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tokenize": True},  # an argument of apply_chat_template itself
        {"add_generation_prompt": False},  # set by the request, not by template arguments
        {"bos_token": "<evil>"},  # a variable the template gets from the tokenizer
        {"messages": "x"},
        {"enable_thinking": {"nested": True}},  # allowed name, value not a scalar
        {"enable_thinking": [1, 2]},
        {"reasoning_effort": "x" * 1000},  # allowed name, string too long
        {"enable_thinking": float("inf")},  # numbers JSON cannot hold, which a Struct can carry
        {"x": {"y": [float("nan")]}},
    ],
)
async def test_template_kwargs_off_the_allow_list_are_refused(served, kwargs: dict[str, Any]) -> None:
    _, stub, _ = served
    for call in (
        stub.Generate(inf_pb.GenerateRequest(chat=_chat(kwargs)), timeout=10),
        stub.Tokenize(inf_pb.TokenizeRequest(chat=_chat(kwargs)), timeout=10),
    ):
        err = await _fails(call, grpc.StatusCode.INVALID_ARGUMENT, "TEMPLATE_KWARG_NOT_ALLOWED")
        allowed = error_info(err).metadata["allowed"].split(",")
        assert set(ALLOWED_TEMPLATE_KWARGS) <= set(allowed)
    stream = stub.GenerateStream(
        inf_pb.GenerateStreamRequest(request=inf_pb.GenerateRequest(chat=_chat(kwargs))), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [_ async for _ in stream]
    assert error_info(err.value).reason == "TEMPLATE_KWARG_NOT_ALLOWED"


async def test_allowed_switches_render_with_the_models_template(served) -> None:
    _, stub, _ = served
    plain = await stub.Tokenize(inf_pb.TokenizeRequest(chat=_chat()), timeout=10)
    kwargs = {"enable_thinking": False, "reasoning_effort": "low", "date_string": "1 Jan 2026"}
    switched = await stub.Tokenize(inf_pb.TokenizeRequest(chat=_chat(kwargs)), timeout=10)
    assert list(switched.token_ids) == list(plain.token_ids)  # the tiny template reads none of them
    out = await stub.Generate(
        inf_pb.GenerateRequest(chat=_chat(kwargs), sampling=msg_pb.SamplingParams(max_tokens=2)), timeout=30
    )
    prompt = _chat()
    prompt.add_generation_prompt = True  # as Generate renders it
    assert list(out.prompt_ids) == list((await stub.Tokenize(inf_pb.TokenizeRequest(chat=prompt))).token_ids)


async def test_the_openai_facade_applies_the_same_allow_list(served) -> None:
    server, _, _ = served
    url = f"http://{server.openai_address}/v1/chat/completions"
    base = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={**base, "chat_template_kwargs": {"enable_thinking": True}}) as r:
            assert r.status == 200, await r.text()
        for bad in ({"tokenize": True}, {"enable_thinking": {"a": 1}}, "all", [1]):
            async with http.post(url, json={**base, "chat_template_kwargs": bad}) as r:
                assert r.status == 400, await r.text()
                assert (await r.json())["error"]["code"] == "TEMPLATE_KWARG_NOT_ALLOWED"


async def test_a_client_template_renders_as_the_model_renders_its_own(served) -> None:
    _, stub, _ = served
    own = (await stub.GetModelInfo(inf_pb.GetModelInfoRequest(), timeout=10)).chat_template
    assert "bos_token" in own and "tojson" in own  # the sandbox offers what transformers offers
    messages = [
        msg_pb.Message(role="user", content="What is 2 + 2?"),
        msg_pb.Message(
            role="assistant",
            content="",
            tool_calls=[msg_pb.ToolCall(id="c1", name="add", arguments_json='{"a": 2, "b": 2}')],
        ),
        msg_pb.Message(role="tool", content="4", tool_call_id="c1"),
    ]
    for add_generation_prompt in (True, False):
        chats = [inf_pb.ChatInput(messages=messages, add_generation_prompt=add_generation_prompt) for _ in range(2)]
        chats[1].chat_template_kwargs.update({"chat_template": own})
        model, client = [await stub.Tokenize(inf_pb.TokenizeRequest(chat=c), timeout=30) for c in chats]
        assert list(client.token_ids) == list(model.token_ids) and len(model.token_ids) > 10


async def test_exploit_templates_are_refused_quickly_even_from_an_operator(served) -> None:
    server, stub, _ = served
    rss = _rss_bytes()
    t0 = time.perf_counter()
    await _fails(
        stub.Tokenize(inf_pb.TokenizeRequest(chat=_chat({"chat_template": HUGE})), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PROMPT_TOO_LONG",
    )
    assert time.perf_counter() - t0 < 10
    t0 = time.perf_counter()
    err = await _fails(
        stub.Generate(inf_pb.GenerateRequest(chat=_chat({"chat_template": NESTED})), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert "did not render within" in err.details()
    assert time.perf_counter() - t0 < server.core.template_sandbox.timeout_s + 10
    too_big = "x" * (MAX_CLIENT_TEMPLATE_CHARS + 1)
    await _fails(
        stub.Tokenize(inf_pb.TokenizeRequest(chat=_chat({"chat_template": too_big})), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TEMPLATE_KWARG_NOT_ALLOWED",
    )
    assert _rss_bytes() - rss < 200 * 1024 * 1024  # the renderer's memory is not the server's
    # the sandbox recovers: a plain client template renders what the model's tokenizer makes of it
    rendered = await stub.Tokenize(inf_pb.TokenizeRequest(chat=_chat({"chat_template": PLAIN})), timeout=30)
    text = await stub.Tokenize(inf_pb.TokenizeRequest(text="hi"), timeout=10)
    assert list(rendered.token_ids) == list(text.token_ids)


async def test_health_answers_while_big_legal_prompts_render(served) -> None:
    server, stub, health = served
    # as many characters as the model's template is given: rendered and tokenised in full (off the
    # event loop), then refused, as that many tokens cannot fit the tiny model's context
    big = "word " * (server.core.max_prompt_chars // 5 - 100)
    t0 = time.perf_counter()
    renders = asyncio.gather(
        stub.Tokenize(inf_pb.TokenizeRequest(chat=_chat({"chat_template": BUSY}, content="hello")), timeout=60),
        stub.Tokenize(inf_pb.TokenizeRequest(chat=_chat({"chat_template": NESTED})), timeout=60),
        stub.Generate(
            inf_pb.GenerateRequest(chat=_chat(content=big), sampling=msg_pb.SamplingParams(max_tokens=1)), timeout=60
        ),
        return_exceptions=True,
    )
    slowest = 0.0
    checks = 0
    while not renders.done():
        t = time.perf_counter()
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        slowest = max(slowest, time.perf_counter() - t)
        checks += 1
        await asyncio.sleep(0.05)
    busy, nested, big_prompt = await renders
    assert not isinstance(busy, BaseException), busy
    assert list(busy.token_ids) == list((await stub.Tokenize(inf_pb.TokenizeRequest(text="hello"))).token_ids)
    assert isinstance(nested, grpc.aio.AioRpcError) and "did not render within" in nested.details()
    assert isinstance(big_prompt, grpc.aio.AioRpcError) and error_info(big_prompt).reason == "PROMPT_TOO_LONG"
    assert "tokens does not fit" in big_prompt.details()
    assert checks >= 5 and time.perf_counter() - t0 >= server.core.template_sandbox.timeout_s
    assert slowest < 1.0, f"a health check took {slowest:.2f} s"


# ---- with authentication: the role decides -------------------------------------------------------


@pytest.fixture(scope="module")
async def secured(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    """A server with mutual TLS, and channels of an orchestrator and of an operator."""
    from rollmesh.inference.backends.hf import HFBackend

    certs = pki.init(tmp_path_factory.mktemp("pki"))
    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    with security_tls.using(pki.member_config(certs, "inference")):
        server = await InferenceServer(backend).start()
    channels = {
        name: create_channel(server.address, kind="inference", tls=pki.member_config(certs, name))
        for name in ("orchestrator", "operator")
    }
    yield {"server": server, **{k: inf_grpc.InferenceServiceStub(c) for k, c in channels.items()}}
    for channel in channels.values():
        await channel.close()
    await server.stop(0)


async def test_only_an_operator_may_send_a_template(secured) -> None:
    orchestrator, operator = secured["orchestrator"], secured["operator"]
    for template in (HUGE, NESTED, PLAIN):
        t0 = time.perf_counter()
        err = await _fails(
            orchestrator.Tokenize(inf_pb.TokenizeRequest(chat=_chat({"chat_template": template})), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "TEMPLATE_KWARG_NOT_ALLOWED",
        )
        assert time.perf_counter() - t0 < 2  # refused before anything renders
        assert "operator" in err.details()
        assert "chat_template" not in error_info(err).metadata["allowed"].split(",")
    assert secured["server"].core._templates is None  # no renderer was ever started
    # the orchestrator's allowed switches work; the operator's template renders
    switched = await orchestrator.Tokenize(inf_pb.TokenizeRequest(chat=_chat({"enable_thinking": True})), timeout=10)
    assert len(switched.token_ids) > 0
    rendered = await operator.Tokenize(inf_pb.TokenizeRequest(chat=_chat({"chat_template": PLAIN})), timeout=30)
    assert list(rendered.token_ids) == list((await operator.Tokenize(inf_pb.TokenizeRequest(text="hi"))).token_ids)
