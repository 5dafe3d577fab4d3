"""The inference service end to end over real gRPC (and HTTP), with the hf backend on the tiny
model: generation, streaming, model info, weights while serving, bad input, the OpenAI facade."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp
import grpc
import pytest
from rollmesh.errors import DataLossError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from rollmesh.inference.client import InferenceClient
from rollmesh.inference.server import InferenceServer
from rollmesh.inference.weights import encode
from rollmesh.proto.v1 import inference_pb2 as inf_pb
from rollmesh.proto.v1 import inference_pb2_grpc as inf_grpc
from rollmesh.registry import Registry
from rollmesh.rpc_errors import error_info

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

CHAT = [{"role": "user", "content": "What is 2 + 2?"}]
GREEDY = {"temperature": 0.0, "max_tokens": 12}


@pytest.fixture(scope="module")
async def served(tiny_model_dir, nats_url):
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    server = InferenceServer(backend, openai_port=0, nats_url=nats_url)
    await server.start()
    client = await InferenceClient.connect(server.address, timeout_s=60)
    yield server, client
    await client.close()
    await server.stop(0)


async def _greedy_ids(client: InferenceClient) -> list[int]:
    out = await client.generate(CHAT, **GREEDY)
    return list(out.samples[0].completion_ids)


async def test_generate_from_chat_returns_exact_tokens(served) -> None:
    server, client = served
    out = await client.generate(CHAT, max_tokens=8, n=2, seed=7, logprobs=True)
    assert list(out.prompt_ids) == await client.tokenize(CHAT)
    assert len(out.samples) == 2 and out.model == "tiny"
    for s in out.samples:
        assert 1 <= len(s.completion_ids) <= 8
        assert len(s.logprobs) == len(s.completion_ids)
        assert all(lp <= 0.0 for lp in s.logprobs)
        assert s.finish_reason in ("stop", "length")
        assert s.policy_version == server.core.backend.policy_version
    assert out.usage.prompt_tokens == len(out.prompt_ids)


async def test_generate_from_token_ids_and_stream_agree(served) -> None:
    _, client = served
    ids = await client.tokenize(CHAT)
    whole = await client.generate(prompt_ids=ids, **GREEDY)
    streamed: list[int] = []
    text = ""
    async for d in client.generate_stream(prompt_ids=ids, **GREEDY):
        streamed += d.token_ids
        text += d.text_delta
    assert streamed == list(whole.samples[0].completion_ids)
    assert text == whole.samples[0].text


async def test_next_turn_continues_the_exact_tokens_of_the_previous_call(served) -> None:
    server, client = served
    first = await client.generate(CHAT, temperature=1.0, max_tokens=6, seed=3)
    reply = [{"role": "user", "content": "Are you sure?"}]
    nxt = await client.generate_next(first, reply, assistant={"role": "assistant", "content": "4"}, **GREEDY)
    done = list(first.prompt_ids) + list(first.samples[0].completion_ids)
    assert list(nxt.prompt_ids[: len(done)]) == done  # the sampled tokens, not a re-rendering of their text
    # the rest: the turn's end where the completion lacks it, then the reply as the template renders it
    tok = server.core.backend.tokenizer
    rendered = await client.tokenize([{"role": "user", "content": "."}, {"role": "assistant", "content": "."}, *reply])
    stub = await client.tokenize(
        [{"role": "user", "content": "."}, {"role": "assistant", "content": "."}], add_generation_prompt=False
    )
    eos = [] if done[-1] == tok.eos_token_id else [tok.eos_token_id]
    assert list(nxt.prompt_ids[len(done) :]) == eos + rendered[len(stub) :]
    assert nxt.usage.prompt_tokens == len(nxt.prompt_ids) and nxt.samples[0].completion_ids
    # bad input: a clear field, nothing echoed unbounded
    with pytest.raises(InvalidArgumentError, match="messages to append") as e:
        await client.generate_next(first, [], **GREEDY)
    assert e.value.metadata == {"field": "next_turn.messages"}
    first.prompt_ids.append(10**7)
    with pytest.raises(InvalidArgumentError, match="out of the vocabulary") as e:
        await client.generate_next(first, reply, **GREEDY)
    assert e.value.metadata == {"field": "next_turn.prompt_ids"}
    del first.prompt_ids[:]
    first.prompt_ids.extend([5] * server.core.backend.context_length)
    with pytest.raises(InvalidArgumentError, match="does not fit the model's context") as e:
        await client.generate_next(first, reply, **GREEDY)
    assert e.value.reason == "PROMPT_TOO_LONG"


async def test_model_info(served) -> None:
    _, client = served
    info = await client.model_info()
    assert info.model == "tiny" and info.backend == "hf"
    assert info.context_length > 0 and info.vocab_size > 0 and info.chat_template
    assert info.eos_token_ids


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"n": 1000}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_p": 2.0}, "min_p"),
    ],
)
async def test_invalid_sampling_is_invalid_argument(served, kwargs, field) -> None:
    _, client = served
    with pytest.raises(InvalidArgumentError, match=f"sampling.{field}") as e:
        await client.generate(CHAT, **kwargs)
    assert e.value.reason == "BAD_PARAMS" and e.value.metadata == {"field": f"sampling.{field}"}


async def test_bad_prompts(served) -> None:
    server, client = served
    with pytest.raises(NotFoundError, match="serves 'tiny'") as e:
        await client.generate(CHAT, model="gpt-9")
    assert e.value.reason == "UNKNOWN_MODEL"
    with pytest.raises(InvalidArgumentError, match="does not fit the model's context") as e:
        await client.generate(prompt_ids=[5] * server.core.backend.context_length)
    assert e.value.reason == "PROMPT_TOO_LONG"
    with pytest.raises(InvalidArgumentError, match="out of the vocabulary") as e:
        await client.generate(prompt_ids=[10**7])
    assert e.value.reason == "INVALID_FIELD" and e.value.metadata == {"field": "tokens.prompt_ids"}
    with pytest.raises(InvalidArgumentError, match="needs an input") as e:
        await client._unary(client.stub.Generate, inf_pb.GenerateRequest())
    assert e.value.reason == "MISSING_FIELD" and e.value.metadata == {"field": "input"}


async def test_weight_update_changes_outputs_and_bumps_the_version(served) -> None:
    server, client = served
    backend = server.core.backend
    before_version = backend.policy_version
    before = await _greedy_ids(client)
    name = "lm_head.weight"
    original = {name: _param(backend, name).detach().clone()}
    perturbed = {name: original[name] + torch.randn_like(original[name]) * 2.0}
    response = await client.update_weights(perturbed, chunk_bytes=4096)
    assert response.policy_version == before_version + 1 and response.tensors_updated == 1
    out = await client.generate(CHAT, **GREEDY)
    assert out.samples[0].policy_version == before_version + 1
    assert list(out.samples[0].completion_ids) != before
    restored = await client.update_weights(original)
    assert restored.policy_version == before_version + 2
    assert await _greedy_ids(client) == before


def _param(backend, name: str):
    return dict(backend.hf_model.named_parameters())[name]


async def _raw_update(client: InferenceClient, requests: list[inf_pb.UpdateWeightsRequest]):
    async def gen():
        for r in requests:
            yield r

    return await client._unary(client.stub.UpdateWeights, gen())


@pytest.mark.parametrize("defect", ["checksum", "partial", "shape", "unknown-name", "no-header", "not-safetensors"])
async def test_bad_weight_streams_change_nothing(served, defect) -> None:
    server, client = served
    backend = server.core.backend
    version = backend.policy_version
    before = await _greedy_ids(client)
    name = "lm_head.weight"
    tensor = _param(backend, name).detach().clone() * 3.0
    header, payload = encode({name: tensor})
    expected: type[Exception] = InvalidArgumentError
    reason = "CHECKPOINT_INVALID"
    if defect == "checksum":
        header.sha256 = hashlib.sha256(b"something else").hexdigest()
        expected, reason = DataLossError, "CHECKSUM_MISMATCH"
    elif defect == "partial":
        payload = payload[: len(payload) // 2]
        expected, reason = DataLossError, "CHECKSUM_MISMATCH"
    elif defect == "shape":
        header, payload = encode({name: tensor[:, :-1].contiguous()})
        reason = "CHECKPOINT_MISMATCH"
    elif defect == "unknown-name":
        header, payload = encode({"not.a.weight": tensor})
        reason = "CHECKPOINT_MISMATCH"
    elif defect == "not-safetensors":
        payload = b"x" * len(payload)
        header.sha256 = hashlib.sha256(payload).hexdigest()
    requests = [inf_pb.UpdateWeightsRequest(chunk=payload)]
    if defect != "no-header":
        requests.insert(0, inf_pb.UpdateWeightsRequest(header=header))
    with pytest.raises(expected) as e:
        await _raw_update(client, requests)
    assert e.value.reason == reason
    assert backend.policy_version == version
    assert await _greedy_ids(client) == before


async def test_load_weights_from_a_checkpoint(served, tiny_model_dir) -> None:
    server, client = served
    version = server.core.backend.policy_version
    before = await _greedy_ids(client)
    response = await client.load_weights(str(tiny_model_dir))
    assert response.policy_version == version + 1 and response.tensors_updated > 0
    assert await _greedy_ids(client) == before  # same weights as served
    with pytest.raises(PermissionDeniedError) as e:  # outside the weights roots, or missing: one answer
        await client.load_weights("/no/such/checkpoint")
    assert e.value.reason == "PATH_NOT_ALLOWED"
    with pytest.raises(InvalidArgumentError, match="not newer") as e:
        await client.load_weights(str(tiny_model_dir), policy_version=1)
    assert e.value.reason == "INVALID_FIELD" and e.value.metadata == {"field": "policy_version"}


async def test_pause_holds_new_requests_until_resume(served) -> None:
    _, client = served
    await client.pause()
    assert (await client.model_info()).paused
    pending = asyncio.ensure_future(client.generate(CHAT, **GREEDY))
    await asyncio.sleep(0.3)
    assert not pending.done()
    await client.resume()
    out = await asyncio.wait_for(pending, 30)
    assert out.samples[0].completion_ids


async def test_registered_and_found_by_model_name(served, nats_url) -> None:
    server, _ = served
    async with await Registry.connect(nats_url) as registry:
        records = await registry.list("inference", "tiny")
    assert [r.address for r in records] == [server.address]
    assert records[0].labels["backend"] == "hf"
    async with await InferenceClient.connect(model="tiny", nats_url=nats_url) as client:
        assert (await client.model_info()).model == "tiny"


async def test_health_and_reflection(served) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, client = served
    health = health_pb2_grpc.HealthStub(client.channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service="rollmesh.v1.InferenceService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_openai_chat_and_completions(served) -> None:
    server, client = served
    base = f"http://{server.openai_address}/v1"
    grpc_out = await client.generate(CHAT, **GREEDY)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/models") as r:
            assert (await r.json())["data"][0]["id"] == "tiny"
        body = {"model": "tiny", "messages": CHAT, "temperature": 0, "max_tokens": 12, "logprobs": True}
        async with http.post(f"{base}/chat/completions", json=body) as r:
            assert r.status == 200, await r.text()
            chat = await r.json()
        assert chat["choices"][0]["message"]["content"] == grpc_out.samples[0].text
        assert len(chat["choices"][0]["logprobs"]["content"]) == len(grpc_out.samples[0].completion_ids)
        async with http.post(f"{base}/chat/completions", json={**body, "stream": True}) as r:
            events = [line for line in (await r.text()).splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        streamed = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1])
        assert streamed == grpc_out.samples[0].text
        ids = await client.tokenize(CHAT)
        async with http.post(f"{base}/completions", json={"prompt": ids, "temperature": 0, "max_tokens": 12}) as r:
            completion = await r.json()
        assert completion["choices"][0]["token_ids"] == list(grpc_out.samples[0].completion_ids)
        async with http.post(f"{base}/chat/completions", data=b"{not json") as r:
            assert r.status == 400 and "not valid JSON" in (await r.json())["error"]["message"]
        async with http.post(f"{base}/chat/completions", json={**body, "model": "other"}) as r:
            assert r.status == 404
        async with http.post(f"{base}/chat/completions", json={**body, "temperature": -2}) as r:
            assert r.status == 400 and "temperature" in (await r.json())["error"]["message"]


async def test_concurrent_requests_share_forward_passes(served) -> None:
    """Dynamic batching is a property: 16 concurrent requests need far fewer forward passes than
    16 sequential ones."""
    server, client = served
    backend = server.core.backend
    start = backend.forward_passes
    await asyncio.gather(
        *(client.generate(CHAT, temperature=1.0, max_tokens=16, ignore_eos=True, seed=i) for i in range(16))
    )
    concurrent = backend.forward_passes - start
    assert concurrent < 16 * 16 / 2, concurrent


async def test_a_stopped_engine_answers_unavailable_engine_stopped(tiny_model_dir) -> None:
    from rollmesh.inference.backends.hf import HFBackend

    backend = await HFBackend.create(str(tiny_model_dir), dtype="float32", name="tiny")
    async with InferenceServer(backend) as server, await InferenceClient.connect(server.address, timeout_s=30) as c:
        ids = await c.tokenize(CHAT)
        await backend.close()  # the engine goes away under a running server
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.stub.Generate(inf_pb.GenerateRequest(tokens=inf_pb.TokenInput(prompt_ids=ids)), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    detail = error_info(info.value)
    assert detail is not None and detail.reason == "ENGINE_STOPPED" and detail.domain == "rollmesh.dev"


async def test_raw_request_without_sampling_uses_defaults(served) -> None:
    """A raw stub request without sampling still gets server defaults."""
    _, client = served
    stub = inf_grpc.InferenceServiceStub(client.channel)
    ids = await client.tokenize(CHAT)
    out = await stub.Generate(inf_pb.GenerateRequest(tokens=inf_pb.TokenInput(prompt_ids=ids)))
    assert out.samples and out.samples[0].completion_ids
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(inf_pb.GenerateRequest(tokens=inf_pb.TokenInput(prompt_ids=ids), model="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    detail = error_info(info.value)
    assert detail is not None and detail.reason == "UNKNOWN_MODEL" and detail.domain == "rollmesh.dev"
