"""The `openai` inference backend: an InferenceService in front of an OpenAI-compatible endpoint.

The endpoint is rollmesh's own OpenAI facade on the tiny model (hf backend). A few-line aiohttp
server stands in for a hosted API where ours cannot act like one: it checks a plain-HTTP bearer
key (401 otherwise) and answers 429 before it answers 200."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from rollmesh.errors import FailedPreconditionError, ResourceExhaustedError, UnavailableError
from rollmesh.inference.backends import create_openai_backend
from rollmesh.inference.backends.openai import EndpointLimits, OpenAIBackend
from rollmesh.inference.client import InferenceClient
from rollmesh.inference.core import InferenceCore
from rollmesh.inference.openai_api import start_http
from rollmesh.inference.server import InferenceServer
from rollmesh.natsd import free_port
from rollmesh.proto.v1 import inference_pb2 as inf_pb
from rollmesh.security.tls import TlsConfig

pytest.importorskip("torch")

KEY = "sk-test-0123456789abcdef"  # what the stand-in API accepts
CHAT = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
async def facade(hf_backend: Any) -> AsyncIterator[str]:
    """Base URL of the OpenAI facade on the tiny model."""
    core = InferenceCore(hf_backend)
    site = await start_http(core, "127.0.0.1", 0, tls=TlsConfig())
    yield f"{site.url}/v1"
    await site.stop()
    core.close()


async def serve(backend: OpenAIBackend) -> InferenceServer:
    server = InferenceServer(backend)
    await server.start()
    return server


@pytest.fixture(scope="module")
async def api(facade: str) -> AsyncIterator[InferenceClient]:
    """A client of an openai-backend inference server in front of the facade, its key from the environment."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TEST_ENDPOINT_KEY", KEY)
    backend = await create_openai_backend(facade, None, api_key_env="TEST_ENDPOINT_KEY")
    mp.undo()
    server = await serve(backend)
    client = InferenceClient.open(server.address, timeout_s=60)
    yield client
    await client.close()
    await server.stop(0)


async def test_generate_answers_what_the_endpoint_answers(api: InferenceClient, facade: str, hf_backend) -> None:
    sampling = {"temperature": 0.0, "max_tokens": 12}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{facade}/chat/completions", json={"messages": CHAT, **sampling}) as r,
    ):
        direct = await r.json()
    out = await api.generate(CHAT, **sampling)
    sample = out.samples[0]
    assert out.model == hf_backend.model  # the endpoint's first (only) model, as --model was not given
    assert sample.text == direct["choices"][0]["message"]["content"] and sample.text
    assert sample.finish_reason == direct["choices"][0]["finish_reason"]
    assert not sample.completion_ids and not out.prompt_ids  # an endpoint gives no token ids
    assert out.usage.completion_tokens == direct["usage"]["completion_tokens"]
    streamed = [m async for m in api.generate_stream(CHAT, **sampling)]
    assert "".join(m.text_delta for m in streamed) == sample.text and streamed[-1].finish_reason


async def test_model_info_says_what_it_cannot_do(api: InferenceClient, facade: str) -> None:
    info = await api.model_info()
    assert info.backend == "openai" and info.endpoint == facade and info.HasField("capabilities")
    caps = info.capabilities
    assert not caps.token_ids and not caps.weight_updates
    # logprobs: once the endpoint has returned them (the facade does), samples carry them
    out = await api.generate(CHAT, temperature=0.0, max_tokens=4, logprobs=True)
    assert len(out.samples[0].logprobs) == out.usage.completion_tokens > 0
    assert (await api.model_info()).capabilities.logprobs


async def test_the_hf_backend_can_do_everything(hf_backend) -> None:
    from rollmesh.inference.server import InferenceServicer

    info = await InferenceServicer(InferenceCore(hf_backend)).GetModelInfo(None, None)
    assert (info.capabilities.token_ids, info.capabilities.logprobs, info.capabilities.weight_updates) == (
        True,
        True,
        True,
    )


async def test_token_ids_and_weights_are_refused_with_a_reason(api: InferenceClient, tmp_path: Path) -> None:
    import torch

    refusals = [
        ("token_ids", api.generate(prompt_ids=[1, 2, 3], max_tokens=2)),
        ("token_ids", api.generate_next(inf_pb.GenerateResponse(prompt_ids=[1], samples=[{}]), CHAT)),
        ("token_ids", api.tokenize(CHAT)),
        ("weight_updates", api.update_weights({"w": torch.zeros(2)})),
        ("weight_updates", api.load_weights(str(tmp_path))),
    ]
    for capability, call in refusals:
        with pytest.raises(FailedPreconditionError) as e:
            await call
        assert e.value.reason == "CAPABILITY_MISSING" and e.value.metadata["capability"] == capability


async def test_an_endpoint_that_is_down_is_unavailable() -> None:
    port = free_port()  # nothing listens there
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", limits=EndpointLimits(max_retries=1))
    server = await serve(backend)
    try:
        async with InferenceClient.open(server.address, timeout_s=30) as client:
            t0 = time.monotonic()
            with pytest.raises(UnavailableError) as e:
                await client.generate(CHAT)
    finally:
        await server.stop(0)
    assert e.value.reason == "INFERENCE_UNREACHABLE" and f"127.0.0.1:{port}" in str(e.value)
    assert time.monotonic() - t0 < 5  # one retry after a short backoff, not a hang


# ---- a third-party API stand-in: 429 with Retry-After, then an answer --------------------------------


@pytest.fixture
async def busy_api() -> AsyncIterator[tuple[str, list[float]]]:
    """401 without the bearer key KEY; then the first request 429 (Retry-After: 0.3 s), the later ones
    200. Records when each keyed request arrived."""
    seen: list[float] = []

    async def chat(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)
        seen.append(time.monotonic())
        if len(seen) == 1:
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "0.3"})
        body = await request.json()
        message = {"role": "assistant", "content": f"echo {body['messages'][-1]['content']}"}
        return web.json_response({"model": body["model"], "choices": [{"message": message, "finish_reason": "stop"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", seen
    await runner.cleanup()


async def test_a_refused_key_is_a_clear_error_that_never_shows_the_key(
    busy_api: tuple[str, list[float]], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = busy_api
    wrong = "sk-wrong-key-do-not-print"
    server = await serve(OpenAIBackend(url, "hosted-model", api_key=wrong))
    try:
        async with InferenceClient.open(server.address, timeout_s=30) as client:
            with caplog.at_level(logging.DEBUG), pytest.raises(FailedPreconditionError) as e:
                await client.generate(CHAT, max_tokens=2)
    finally:
        await server.stop(0)
    assert e.value.reason == "UPSTREAM_AUTH_FAILED" and e.value.metadata["status"] == "401"
    assert "Incorrect API key" in str(e.value) and "--api-key-env" in str(e.value)
    assert wrong not in str(e.value) and wrong not in caplog.text


async def test_429_is_retried_after_retry_after(
    busy_api: tuple[str, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = busy_api
    monkeypatch.setenv("HOSTED_KEY", KEY)  # the key comes from the variable --api-key-env names
    backend = await create_openai_backend(url, "hosted-model", api_key_env="HOSTED_KEY")
    try:
        out = await backend.chat(CHAT, [], {"max_tokens": 4})
    finally:
        await backend.close()
    assert out.samples[0].text == "echo What is 2 + 3?" and len(seen) == 2
    assert seen[1] - seen[0] >= 0.29  # Retry-After honoured, not the default backoff


async def test_429_that_persists_is_resource_exhausted_and_the_rate_limit_paces(
    busy_api: tuple[str, list[float]],
) -> None:
    url, seen = busy_api
    limits = EndpointLimits(max_retries=0, max_rps=10.0)
    backend = OpenAIBackend(url, "hosted-model", api_key=KEY, limits=limits)
    try:
        with pytest.raises(ResourceExhaustedError) as e:
            await backend.chat(CHAT, [], {})
        assert e.value.reason == "UPSTREAM_RATE_LIMITED" and "slow down" in str(e.value)
        await asyncio.gather(*(backend.chat(CHAT, [], {}) for _ in range(4)))
    finally:
        await backend.close()
    # 10 requests/s: the five start 0.1 s apart (unpaced, the four concurrent ones would arrive at
    # once); arrivals jitter by the scheduling of each request, so the span is what is checked
    assert len(seen) == 5 and seen[-1] - seen[0] >= 0.3


# ---- an LLM judge through an openai-backend server -----------------------------------------------------


async def test_a_judge_scores_through_an_api_model() -> None:
    """The rubric service's judge calls an InferenceService address; behind it, an OpenAI-compatible
    endpoint (our facade on a scripted model that always says "Yes", so the verdict is known)."""
    from rollmesh.inference.backends.scripted import ScriptedBackend
    from rollmesh.rubric.config import RewardFunctionConfig, RubricConfig, to_spec
    from rollmesh.rubric.scoring import RubricBook
    from rubric.conftest import trajectory

    core = InferenceCore(ScriptedBackend(["Yes."], model="grader"))
    site = await start_http(core, "127.0.0.1", 0, tls=TlsConfig())
    server = await serve(OpenAIBackend(f"{site.url}/v1", "grader"))
    book = RubricBook()
    try:
        judge = RewardFunctionConfig(name="judge", function="judge", params={"address": server.address})
        rubric = book.compile(to_spec(RubricConfig(name="judged", functions=[judge])))
        result = await rubric.score(trajectory("It is 4", "4", question="What is 2 + 2?"))
    finally:
        await book.close()
        await server.stop(0)
        await site.stop()
        await core.aclose()
    assert not result.errors and result.rewards["judge"] == 1.0 and result.reward == 1.0


# ---- the wire format, without a server ---------------------------------------------------------------


def test_the_request_carries_only_what_was_set_and_answers_of_the_wrong_shape_are_refused() -> None:
    from rollmesh.inference.backends.openai import parse_response, request_body, retry_after_s

    body = request_body("m", CHAT, [], {"temperature": 0.5, "stop": [], "n": 1, "logprobs": False})
    assert body == {"model": "m", "messages": CHAT, "temperature": 0.5}  # no top_k etc.: hosted APIs refuse them
    with pytest.raises(UnavailableError) as e:
        parse_response({"choices": []})
    assert e.value.reason == "BACKEND_FAILED"
    assert retry_after_s("2") == 2.0 and retry_after_s("soon") is None
    assert 0 < retry_after_s(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 60
