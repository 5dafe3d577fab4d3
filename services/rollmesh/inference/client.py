"""InferenceClient: the async Python client of an inference server.

async with await InferenceClient.connect("localhost:50061") as llm:
    out = await llm.generate(messages=[{"role": "user", "content": "hi"}], max_tokens=32, logprobs=True)
    print(out.samples[0].text, out.samples[0].logprobs, out.samples[0].policy_version)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from .. import convert, registry
from ..errors import InvalidArgumentError
from ..proto.v1 import bus_pb2 as bus_pb
from ..proto.v1 import inference_pb2 as inf_pb
from ..proto.v1 import inference_pb2_grpc as inf_grpc
from ..proto.v1 import messages_pb2 as msg_pb
from ..rpc import RpcLimits
from ..rpc_errors import error_from_rpc
from ..service_client import ServiceClient
from . import same_host
from .weights import UPDATE_WEIGHTS_METHOD, chunk_frames, encode_payload, serialize_request

if TYPE_CHECKING:
    import torch

# Measured on loopback (rollmesh bench weights): 1 MiB chunks stream faster than larger ones, and
# stay far below the 16 MiB message limit of both sides.
WEIGHTS_CHUNK_BYTES = 1024 * 1024


def sampling_pb(**params: Any) -> msg_pb.SamplingParams:
    """SamplingParams from keyword arguments (temperature, top_p, top_k, max_tokens, stop, seed, n,
    logprobs, min_p, repetition_penalty, stop_token_ids, ignore_eos, min_tokens)."""
    unknown = set(params) - set(msg_pb.SamplingParams.DESCRIPTOR.fields_by_name)
    if unknown:
        raise InvalidArgumentError(f"unknown sampling parameters: {sorted(unknown)}")
    return msg_pb.SamplingParams(**{k: v for k, v in params.items() if v is not None})


class InferenceClient(ServiceClient):
    stub_class = inf_grpc.InferenceServiceStub
    kind = "inference"

    def __init__(self, channel: grpc.aio.Channel, address: str, *, timeout_s: float = 600.0) -> None:
        super().__init__(channel, address, timeout_s=timeout_s)

    @classmethod
    async def connect(
        cls,
        address: str | None = None,
        *,
        model: str | None = None,
        nats_url: str | None = None,
        timeout_s: float = 600.0,
        limits: RpcLimits = RpcLimits(),  # noqa: B008
    ) -> InferenceClient:
        """Connect by address, or to a random live server of `model` found in the registry."""
        if address is None:
            if not (model and nats_url):
                raise InvalidArgumentError("connect needs an address, or a model name and a NATS URL")
            address = await resolve(model, nats_url)
        return cls.open(address, limits=limits, timeout_s=timeout_s)

    @staticmethod
    def request(
        messages: Sequence[Mapping[str, Any]] | None = None,
        *,
        prompt_ids: Sequence[int] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        model: str = "",
        request_id: str = "",
        session_id: str = "",
        **sampling: Any,
    ) -> inf_pb.GenerateRequest:
        if (messages is None) == (prompt_ids is None):
            raise InvalidArgumentError("give either chat messages or prompt token ids")
        req = inf_pb.GenerateRequest(
            sampling=sampling_pb(**sampling), model=model, request_id=request_id, session_id=session_id
        )
        if messages is not None:
            req.chat.messages.extend(convert.messages_to_pb(messages))
            req.chat.tools.extend(convert.tool_spec_to_pb(t) for t in tools or ())
        else:
            req.tokens.prompt_ids.extend(prompt_ids or ())
        return req

    async def generate(
        self, messages: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any
    ) -> inf_pb.GenerateResponse:
        return await self._unary(self.stub.Generate, self.request(messages, **kwargs))

    async def generate_next(
        self,
        previous: inf_pb.GenerateResponse,
        messages: Sequence[Mapping[str, Any]],
        *,
        assistant: Mapping[str, Any] | None = None,
        sample: int = 0,
        **kwargs: Any,
    ) -> inf_pb.GenerateResponse:
        """The next turn after `previous` (its prompt and sample `sample`, token for token) with
        `messages` appended, rendered by the server's chat template (`next_turn`). `assistant`:
        the assistant message of that sample, for templates that render a reply depending on it."""
        req = self.request(prompt_ids=(), **kwargs)
        nt = req.next_turn
        nt.prompt_ids.extend(previous.prompt_ids)
        nt.completion_ids.extend(previous.samples[sample].completion_ids)
        if assistant is not None:
            nt.assistant.CopyFrom(convert.message_to_pb(assistant))
        nt.messages.extend(convert.messages_to_pb(messages))
        return await self._unary(self.stub.Generate, req)

    async def generate_stream(
        self, messages: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any
    ) -> AsyncIterator[inf_pb.GenerateStreamResponse]:
        call = self.stub.GenerateStream(
            inf_pb.GenerateStreamRequest(request=self.request(messages, **kwargs)), timeout=self.timeout_s
        )
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e

    async def model_info(self) -> inf_pb.GetModelInfoResponse:
        return await self._unary(self.stub.GetModelInfo, inf_pb.GetModelInfoRequest())

    async def tokenize(
        self,
        messages: Sequence[Mapping[str, Any]] | None = None,
        *,
        text: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        req = inf_pb.TokenizeRequest()
        if messages is not None:
            req.chat.messages.extend(convert.messages_to_pb(messages))
            req.chat.add_generation_prompt = add_generation_prompt
        else:
            req.text = text or ""
        return list((await self._unary(self.stub.Tokenize, req)).token_ids)

    async def update_weights(
        self,
        tensors: Mapping[str, torch.Tensor],
        *,
        policy_version: int = 0,
        chunk_bytes: int = WEIGHTS_CHUNK_BYTES,
        compression: grpc.Compression | None = None,
    ) -> inf_pb.UpdateWeightsResponse:
        """Streams `tensors` (any subset of the model's weights) as safetensors chunks, read
        straight from the tensors' memory. `compression` (off by default: weights barely compress
        and gzip runs far below the link's speed) is gRPC's per-call compression."""
        payload = await asyncio.to_thread(encode_payload, tensors, policy_version)

        async def requests() -> AsyncIterator[inf_pb.UpdateWeightsRequest | bytes]:
            yield inf_pb.UpdateWeightsRequest(header=payload.header)
            for frame in chunk_frames(payload, chunk_bytes):
                yield frame

        call = self.channel.stream_unary(
            UPDATE_WEIGHTS_METHOD,
            request_serializer=serialize_request,
            response_deserializer=inf_pb.UpdateWeightsResponse.FromString,
        )
        try:
            return await call(requests(), timeout=self.timeout_s, compression=compression)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e

    async def update_weights_same_host(
        self,
        tensors: Mapping[str, torch.Tensor],
        *,
        policy_version: int = 0,
        shared: same_host.SharedWeights | None = None,
    ) -> inf_pb.LoadWeightsResponse:
        """`tensors` through shared memory, for a server on this host run by the same user
        (same_host.py): written once, read by the server in place. `shared`: a buffer to reuse
        (and keep) across pushes; without one, a new one is freed when this returns. A server
        that cannot read it refuses with PERMISSION_DENIED (PATH_NOT_ALLOWED)."""
        own = shared is None
        buffer = same_host.SharedWeights() if shared is None else shared
        try:
            await asyncio.to_thread(buffer.write, tensors)
            return await self.load_weights(buffer.path, policy_version=policy_version)
        finally:
            if own:
                buffer.close()

    async def load_weights(self, path: str, *, policy_version: int = 0) -> inf_pb.LoadWeightsResponse:
        return await self._unary(
            self.stub.LoadWeights, inf_pb.LoadWeightsRequest(path=path, policy_version=policy_version)
        )

    async def pause(self) -> None:
        await self._unary(self.stub.Pause, inf_pb.PauseRequest())

    async def resume(self) -> None:
        await self._unary(self.stub.Resume, inf_pb.ResumeRequest())


async def resolve(model: str, nats_url: str) -> str:
    """Address of a random live inference server of `model`, from the registry."""
    from .server import registry_name

    return await registry.resolve(
        nats_url, bus_pb.SERVICE_KIND_INFERENCE, registry_name(model), f"inference server for model {model!r}"
    )
