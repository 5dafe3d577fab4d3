"""The interception endpoint (`POST /v1/chat/completions` for RunEpisode agents) over real HTTP, in
front of a real inference server (scripted backend): session keys, the run's sampling, OpenAI
answers (read back with the `openai` package), and every client fault a 4xx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from rollmesh.errors import FailedPreconditionError
from rollmesh.orchestrator.config import InterceptConfig
from rollmesh.orchestrator.interception import InterceptionEndpoint, Session
from rollmesh.proto.v1 import inference_pb2 as inf_pb
from rollmesh.proto.v1 import inference_pb2_grpc as inf_grpc
from rollmesh.proto.v1 import messages_pb2 as msg_pb
from rollmesh.rpc import create_channel
from rollmesh.rpc_errors import error_from_rpc

from .local_servers import scripted_inference

TOOL_REPLY = '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
HELLO = [{"role": "user", "content": "hello"}]


@dataclass
class Setup:
    endpoint: InterceptionEndpoint
    http: aiohttp.ClientSession
    stub: inf_grpc.InferenceServiceStub
    sent: list[inf_pb.GenerateRequest] = field(default_factory=list)

    def open(self, max_calls: int = 4) -> Session:
        async def generate(request: inf_pb.GenerateRequest) -> inf_pb.GenerateResponse:
            self.sent.append(request)
            try:
                return await self.stub.Generate(request, timeout=10)
            except Exception as e:
                raise error_from_rpc(e) from e

        run = msg_pb.SamplingParams(temperature=0.7, top_p=0.9, max_tokens=80, stop=["END"], n=1, logprobs=True)
        return self.endpoint.open(generate, run, model="scripted", max_calls=max_calls)

    async def post(self, key: str | None, body: object, *, raw: bytes | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        data = raw if raw is not None else json.dumps(body).encode()
        url = f"{self.endpoint.base_url}/chat/completions"
        async with self.http.post(url, data=data, headers={**headers, "Content-Type": "application/json"}) as r:
            return r.status, await r.json(content_type=None)


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    async with scripted_inference(["hello there", TOOL_REPLY]) as inference:
        channel = create_channel(inference.address)
        endpoint = await InterceptionEndpoint(InterceptConfig(max_body_bytes=256 * 1024)).start()
        async with aiohttp.ClientSession() as http:
            yield Setup(endpoint, http, inf_grpc.InferenceServiceStub(channel))
        await endpoint.stop()
        await channel.close()


async def test_an_openai_client_gets_answers_with_the_runs_sampling(setup: Setup) -> None:
    openai = pytest.importorskip("openai")
    session = setup.open()
    client = openai.AsyncOpenAI(base_url=setup.endpoint.base_url, api_key=session.key, max_retries=0)
    first = await client.chat.completions.create(
        model="gpt-whatever", messages=HELLO, temperature=2.0, top_p=0.1, max_tokens=100, stop="STOP", seed=9
    )
    assert first.choices[0].message.content == "hello there" and first.choices[0].finish_reason == "stop"
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    messages = [*HELLO, {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "add"}]
    second = await client.chat.completions.create(model="m", messages=messages, tools=tools, max_tokens=70)
    call = second.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 1})
    assert second.choices[0].finish_reason == "tool_calls"
    await client.close()
    # what the inference server was asked: the run's sampling; the agent only narrowed it
    a, b = setup.sent
    assert (a.sampling.temperature, a.sampling.top_p, a.sampling.max_tokens) == pytest.approx((0.7, 0.9, 80))
    assert list(a.sampling.stop) == ["END", "STOP"] and a.sampling.logprobs and a.model == "scripted"
    assert not a.sampling.HasField("seed")
    assert b.sampling.max_tokens == 70 and [t.name for t in b.chat.tools] == ["add"]
    assert [m.role for m in b.chat.messages] == ["user", "assistant", "user"]
    assert session.calls == 2 and session.failure is None


async def test_only_a_live_session_key_may_call(setup: Setup) -> None:
    session = setup.open()
    body = {"model": "m", "messages": HELLO}
    for key in (None, "", "not-a-key", session.key[:-1]):
        status, answer = await setup.post(key, body)
        assert status == 401 and answer["error"]["code"] == "NO_CREDENTIALS", (key, answer)
    assert (await setup.post(session.key, body))[0] == 200
    setup.endpoint.close(session)  # the episode ended: its key is dead
    status, _ = await setup.post(session.key, body)
    assert status == 401 and len(setup.sent) == 1
    assert len(session.key) >= 43  # 32 random bytes


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"messages": HELLO, "stream": True}, "NOT_SUPPORTED"),
        ({"messages": "hello"}, "INVALID_FIELD"),
        ({"messages": []}, "INVALID_FIELD"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "INVALID_FIELD"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "INVALID_FIELD"),
        ({"messages": HELLO, "tools": [{"type": "function", "function": {}}]}, "INVALID_FIELD"),
        ({"messages": HELLO, "n": 2}, "BAD_PARAMS"),
        ({"messages": HELLO, "max_tokens": 0}, "BAD_PARAMS"),
        ({"messages": HELLO, "stop": ["x" * 1000]}, "BAD_PARAMS"),
        ([1, 2], "MALFORMED_REQUEST"),
    ],
)
async def test_client_faults_are_4xx_with_a_reason(setup: Setup, body: object, code: str) -> None:
    status, answer = await setup.post(setup.open().key, body)
    assert status == 400 and answer["error"]["code"] == code, answer
    assert setup.sent == []


async def test_bounds_body_size_and_calls_per_episode(setup: Setup) -> None:
    session = setup.open(max_calls=2)
    status, answer = await setup.post(session.key, None, raw=b"{" + b" " * 300_000 + b"}")
    assert status == 413 and answer["error"]["code"] == "MESSAGE_TOO_LARGE"
    status, answer = await setup.post(session.key, None, raw=b"{not json")
    assert status == 400 and answer["error"]["code"] == "MALFORMED_REQUEST"
    for _ in range(2):
        assert (await setup.post(session.key, {"messages": HELLO}))[0] == 200
    status, answer = await setup.post(session.key, {"messages": HELLO})
    assert status == 429 and "limit of 2 model calls" in answer["error"]["message"]
    assert len(setup.sent) == 2


async def test_a_model_that_fails_behind_the_endpoint_is_recorded_as_the_episodes_failure(setup: Setup) -> None:
    session = setup.open()
    prompt = [{"role": "user", "content": "word " * 20000}]  # over the model's context: the agent's fault
    status, answer = await setup.post(session.key, {"messages": prompt})
    assert status == 400 and answer["error"]["code"] == "PROMPT_TOO_LONG" and session.failure is None
    setup.stub = inf_grpc.InferenceServiceStub(create_channel("127.0.0.1:9"))  # the replica is gone
    status, answer = await setup.post(session.key, {"messages": HELLO})
    assert status == 503 and session.failure is not None and session.failure.reason == answer["error"]["code"]


async def test_a_non_loopback_address_needs_tls_or_an_explicit_insecure() -> None:
    with pytest.raises(FailedPreconditionError, match="without TLS"):
        await InterceptionEndpoint(InterceptConfig(host="0.0.0.0")).start()
    endpoint = await InterceptionEndpoint(InterceptConfig(host="0.0.0.0", insecure=True)).start()
    assert endpoint.base_url.endswith("/v1")
    await endpoint.stop()
    endpoint = await InterceptionEndpoint(InterceptConfig(url="http://envs-see-me:8080/v1")).start()
    assert endpoint.base_url == "http://envs-see-me:8080/v1"
    await endpoint.stop()
