"""InferenceService over a backend that takes chat messages and answers text (the `openai`
backend): Generate and GenerateStream from chat input, GetModelInfo with its capabilities; what
needs token ids or weights (token input, Tokenize, UpdateWeights, LoadWeights) is refused with
FAILED_PRECONDITION `CAPABILITY_MISSING`, naming the capability."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from .. import convert
from ..errors import (
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    RollmeshError,
    UnavailableError,
    quoted,
)
from ..proto.v1 import inference_pb2 as inf_pb
from ..proto.v1 import inference_pb2_grpc as inf_grpc
from ..proto.v1 import messages_pb2 as msg_pb
from ..rpc_errors import abort
from .backend import capabilities_of
from .backends.openai import ChatResult, OpenAIBackend
from .core import MAX_N

log = logging.getLogger(__name__)

# Sampling fields with a value only when the caller set them (proto3 optional).
_OPTIONAL = ("temperature", "top_p", "top_k", "max_tokens", "min_tokens", "min_p", "repetition_penalty", "seed")


def missing(capability: str, what: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"{what} needs {capability.replace('_', ' ')}, which this server's backend does not have "
        "(an OpenAI-compatible endpoint); GetModelInfo's capabilities say what it can do",
        reason="CAPABILITY_MISSING",
        metadata={"capability": capability},
    )


def _sampling(pb: msg_pb.SamplingParams, path: str) -> dict[str, Any]:
    def bad(name: str, rule: str) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"sampling.{name}: {rule}", reason="BAD_PARAMS", metadata={"field": f"{path}sampling.{name}"}
        )

    out: dict[str, Any] = {name: getattr(pb, name) for name in _OPTIONAL if pb.HasField(name)}
    if pb.stop_token_ids:
        raise missing("token_ids", "sampling.stop_token_ids")
    if pb.ignore_eos:
        raise bad("ignore_eos", "an OpenAI-compatible endpoint has no such setting")
    if not 0 <= pb.n <= MAX_N:
        raise bad("n", f"must be in [1, {MAX_N}]")
    if out.get("max_tokens", 1) < 1:
        raise bad("max_tokens", "must be >= 1")
    if not 0.0 <= out.get("temperature", 1.0) <= 100.0:
        raise bad("temperature", "must be in [0, 100] (0 = greedy)")
    if not 0.0 < out.get("top_p", 1.0) <= 1.0:
        raise bad("top_p", "must be in (0, 1]")
    out["stop"] = [s for s in pb.stop if s]
    out["n"] = pb.n or 1
    out["logprobs"] = pb.logprobs
    return out


class TextInferenceServicer(inf_grpc.InferenceServiceServicer):
    def __init__(self, backend: OpenAIBackend) -> None:
        self.backend = backend
        self.draining = False
        self.instance_id = uuid.uuid4().hex[:12]

    async def _chat(
        self, request: inf_pb.GenerateRequest, context: grpc.aio.ServicerContext, path: str = ""
    ) -> ChatResult:
        if self.draining:
            raise UnavailableError("server is shutting down; send the request to another replica", reason="DRAINING")
        b = self.backend
        if request.model and request.model != b.model:
            raise NotFoundError(f"this server serves {b.model!r}, not {quoted(request.model)}", reason="UNKNOWN_MODEL")
        kind = request.WhichOneof("input")
        if kind in ("tokens", "next_turn"):
            raise missing("token_ids", "a prompt of token ids")
        if kind != "chat" or not request.chat.messages:
            raise InvalidArgumentError(
                "a GenerateRequest needs chat messages",
                reason="MISSING_FIELD",
                metadata={"field": f"{path}chat.messages"},
            )
        chat = request.chat
        remaining = context.time_remaining()
        return await b.chat(
            convert.messages_from_pb(chat.messages),
            [convert.tool_spec_from_pb(t) for t in chat.tools],
            _sampling(request.sampling, path),
            template_kwargs=convert.from_struct(chat.chat_template_kwargs) or None,
            deadline_s=remaining,
        )

    def _samples(self, result: ChatResult) -> list[inf_pb.Sample]:
        return [
            inf_pb.Sample(
                index=s.index,
                text=s.text,
                logprobs=s.logprobs,
                finish_reason=s.finish_reason,
                policy_version=self.backend.policy_version,
                tool_calls=[
                    msg_pb.ToolCall(id=c["id"], name=c["name"], arguments_json=c["arguments"]) for c in s.tool_calls
                ],
            )
            for s in result.samples
        ]

    async def Generate(
        self, request: inf_pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> inf_pb.GenerateResponse:
        try:
            result = await self._chat(request, context)
        except RollmeshError as e:
            await abort(context, e)
        except Exception as e:
            await abort(context, _failed(e))
        return inf_pb.GenerateResponse(
            model=self.backend.model,
            samples=self._samples(result),
            usage=inf_pb.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        )

    async def GenerateStream(
        self, request: inf_pb.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inf_pb.GenerateStreamResponse]:
        """One message per sample, when it is complete (the endpoint is called without streaming)."""
        try:
            result = await self._chat(request.request, context, "request.")
        except RollmeshError as e:
            await abort(context, e)
        except Exception as e:
            await abort(context, _failed(e))
        for s in self._samples(result):
            yield inf_pb.GenerateStreamResponse(
                index=s.index,
                text_delta=s.text,
                logprobs=s.logprobs,
                finish_reason=s.finish_reason,
                policy_version=s.policy_version,
            )

    async def GetModelInfo(
        self, request: inf_pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> inf_pb.GetModelInfoResponse:
        b = self.backend
        caps = capabilities_of(b)
        return inf_pb.GetModelInfoResponse(
            model=b.model,
            backend=b.name,
            context_length=b.context_length,
            policy_version=b.policy_version,
            paused=b.paused,
            capabilities=inf_pb.ModelCapabilities(
                token_ids=caps.token_ids, logprobs=caps.logprobs, weight_updates=caps.weight_updates
            ),
            endpoint=b.endpoint,
        )

    async def Tokenize(
        self, request: inf_pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> inf_pb.TokenizeResponse:
        await abort(context, missing("token_ids", "Tokenize"))

    async def UpdateWeights(
        self, request_iterator: AsyncIterator[inf_pb.UpdateWeightsRequest], context: grpc.aio.ServicerContext
    ) -> inf_pb.UpdateWeightsResponse:
        await abort(context, missing("weight_updates", "UpdateWeights"))

    async def LoadWeights(
        self, request: inf_pb.LoadWeightsRequest, context: grpc.aio.ServicerContext
    ) -> inf_pb.LoadWeightsResponse:
        await abort(context, missing("weight_updates", "LoadWeights"))

    async def Pause(self, request: inf_pb.PauseRequest, context: grpc.aio.ServicerContext) -> inf_pb.PauseResponse:
        await self.backend.pause()
        return inf_pb.PauseResponse()

    async def Resume(self, request: inf_pb.ResumeRequest, context: grpc.aio.ServicerContext) -> inf_pb.ResumeResponse:
        await self.backend.resume()
        return inf_pb.ResumeResponse()


def _failed(e: Exception) -> InternalError:
    log.exception("chat completion failed")
    return InternalError(f"chat completion failed: {type(e).__name__}", reason="SERVER_FAILED")
