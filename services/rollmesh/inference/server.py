"""The inference server: a thin gRPC adapter over InferenceCore and a backend."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from .. import convert
from ..errors import (
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    RollmeshError,
    UnavailableError,
    quoted,
)
from ..hosting import HostedServer
from ..proto.v1 import bus_pb2 as bus_pb
from ..proto.v1 import inference_pb2 as inf_pb
from ..proto.v1 import inference_pb2_grpc as inf_grpc
from ..registry import record_for
from ..rpc import RpcLimits, create_server
from ..rpc_errors import abort
from . import same_host
from .backend import Backend, Sampling, capabilities_of
from .core import InferenceCore
from .weights import ReceiveBuffer, WeightsAssembler, parse_request

log = logging.getLogger(__name__)

SERVICE_NAME = inf_pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
DEFAULT_MAX_WEIGHTS_BYTES = 64 * 1024**3


def _sampling_kwargs(pb: Any) -> dict[str, Any]:
    return {
        "temperature": pb.temperature if pb.HasField("temperature") else None,
        "top_p": pb.top_p if pb.HasField("top_p") else None,
        "top_k": pb.top_k if pb.HasField("top_k") else None,
        "max_tokens": pb.max_tokens if pb.HasField("max_tokens") else None,
        "min_tokens": pb.min_tokens if pb.HasField("min_tokens") else None,
        "min_p": pb.min_p if pb.HasField("min_p") else None,
        "repetition_penalty": pb.repetition_penalty if pb.HasField("repetition_penalty") else None,
        "seed": pb.seed if pb.HasField("seed") else None,
        "stop": list(pb.stop),
        "stop_token_ids": list(pb.stop_token_ids),
        "ignore_eos": pb.ignore_eos,
        "n": pb.n,
        "logprobs": pb.logprobs,
    }


def _echo_prompt(out: Any, request: inf_pb.GenerateRequest, ids: list[int]) -> None:
    """Sets `out` (a response's prompt_ids) to `ids`, copying the request's own id fields where
    `ids` starts with them: container to container is a copy in C, a Python list costs ~40 ns an id
    (~0.1 ms for a multi-turn prompt)."""
    kind = request.WhichOneof("input")
    if kind == "tokens":
        out.extend(request.tokens.prompt_ids)
    elif kind == "next_turn":
        out.extend(request.next_turn.prompt_ids)
        out.extend(request.next_turn.completion_ids)
        out.extend(ids[len(out) :])
    else:
        out.extend(ids)


class InferenceServicer(inf_grpc.InferenceServiceServicer):
    def __init__(self, core: InferenceCore, *, max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES) -> None:
        self.core = core
        self.max_weights_bytes = max_weights_bytes
        self._receive_buffer = ReceiveBuffer()
        self.instance_id = uuid.uuid4().hex[:12]
        self.draining = False

    @property
    def backend(self) -> Backend:
        return self.core.backend

    async def _prepare(self, request: inf_pb.GenerateRequest, path: str = "") -> tuple[list[int], Sampling]:
        """Prompt ids and validated sampling; `path` prefixes field names in errors (GenerateStream
        nests the request)."""
        if self.draining:
            raise UnavailableError("server is shutting down; send the request to another replica", reason="DRAINING")
        self.core.check_model(request.model)
        kind = request.WhichOneof("input")
        if kind == "chat":
            chat = request.chat
            messages = convert.messages_from_pb(chat.messages)
            ids = await self.core.render_chat(
                messages,
                [convert.tool_spec_from_pb(t) for t in chat.tools],
                add_generation_prompt=not (messages and messages[-1]["role"] == "assistant"),
                template_kwargs=convert.from_struct(chat.chat_template_kwargs),
            )
        elif kind == "tokens":
            ids = list(request.tokens.prompt_ids)
            self.core.check_prompt(ids)
        elif kind == "next_turn":
            turn = request.next_turn
            ids = await self.core.continue_chat(
                turn.prompt_ids,
                turn.completion_ids,
                convert.message_from_pb(turn.assistant) if turn.HasField("assistant") else None,
                convert.messages_from_pb(turn.messages),
            )
        else:
            raise InvalidArgumentError(
                "a GenerateRequest needs an input: chat messages, token ids or the next turn",
                reason="MISSING_FIELD",
                metadata={"field": f"{path}input"},
            )
        return ids, self.core.sampling(len(ids), **_sampling_kwargs(request.sampling))

    async def Generate(
        self, request: inf_pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> inf_pb.GenerateResponse:
        try:
            ids, sampling = await self._prepare(request)
            samples = await self.core.generate(ids, sampling, request.request_id)
        except RollmeshError as e:
            await abort(context, e)
        except Exception as e:
            await abort(context, _backend_failed(e))
        response = inf_pb.GenerateResponse(
            model=self.backend.model,
            samples=[
                inf_pb.Sample(
                    index=s.index,
                    text=s.text,
                    completion_ids=s.completion_ids,
                    logprobs=s.logprobs,
                    finish_reason=s.finish_reason,
                    policy_version=s.policy_version,
                )
                for s in samples
            ],
            usage=inf_pb.Usage(prompt_tokens=len(ids), completion_tokens=sum(len(s.completion_ids) for s in samples)),
        )
        _echo_prompt(response.prompt_ids, request, ids)
        return response

    async def GenerateStream(
        self, request: inf_pb.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inf_pb.GenerateStreamResponse]:
        try:
            ids, sampling = await self._prepare(request.request, "request.")
            first = True
            async for d in self.core.stream(ids, sampling, request.request.request_id):
                yield inf_pb.GenerateStreamResponse(
                    prompt_ids=ids if first else (),
                    index=d.index,
                    text_delta=d.text,
                    token_ids=d.token_ids,
                    logprobs=d.logprobs,
                    finish_reason=d.finish_reason or "",
                    policy_version=d.policy_version,
                )
                first = False
        except RollmeshError as e:
            await abort(context, e)
        except Exception as e:
            await abort(context, _backend_failed(e))

    async def GetModelInfo(
        self, request: inf_pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> inf_pb.GetModelInfoResponse:
        b = self.backend
        tok = b.tokenizer
        eos = tok.eos_token_id
        return inf_pb.GetModelInfoResponse(
            model=b.model,
            backend=b.name,
            context_length=b.context_length,
            tokenizer=getattr(tok, "name_or_path", "") or type(tok).__name__,
            chat_template=getattr(tok, "chat_template", None) or "",
            policy_version=b.policy_version,
            vocab_size=len(tok),
            eos_token_ids=[eos] if isinstance(eos, int) else list(eos or ()),
            paused=b.paused,
            capabilities=inf_pb.ModelCapabilities(token_ids=True, logprobs=True, weight_updates=True),
        )

    async def Tokenize(
        self, request: inf_pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> inf_pb.TokenizeResponse:
        try:
            if request.WhichOneof("input") == "chat":
                chat = request.chat
                ids = await self.core.render_chat(
                    convert.messages_from_pb(chat.messages),
                    [convert.tool_spec_from_pb(t) for t in chat.tools],
                    add_generation_prompt=chat.add_generation_prompt,
                    template_kwargs=convert.from_struct(chat.chat_template_kwargs),
                )
            else:
                ids = await self.core.tokenize_text(request.text)
        except RollmeshError as e:
            await abort(context, e)
        return inf_pb.TokenizeResponse(token_ids=ids, text=self.backend.tokenizer.decode(ids))

    async def UpdateWeights(
        self,
        request_iterator: AsyncIterator[inf_pb.UpdateWeightsRequest | memoryview],
        context: grpc.aio.ServicerContext,
    ) -> inf_pb.UpdateWeightsResponse:
        t0 = time.perf_counter()
        assembler: WeightsAssembler | None = None
        try:
            async for request in request_iterator:
                # a chunk arrives as a view of the received bytes (weights.parse_request)
                kind = "chunk" if isinstance(request, memoryview) else request.WhichOneof("kind")
                if kind == "header":
                    if assembler is not None:
                        raise InvalidArgumentError(
                            "a weights stream has exactly one header, first", reason="CHECKPOINT_INVALID"
                        )
                    assembler = WeightsAssembler(
                        request.header, self.backend.param_specs(), self.max_weights_bytes, self._receive_buffer
                    )
                elif kind == "chunk":
                    if assembler is None:
                        raise InvalidArgumentError(
                            "a weights stream starts with its header", reason="CHECKPOINT_INVALID"
                        )
                    assembler.add(request if isinstance(request, memoryview) else request.chunk)
                else:
                    raise InvalidArgumentError(
                        "an UpdateWeightsRequest needs a header or a chunk",
                        reason="MISSING_FIELD",
                        metadata={"field": "kind"},
                    )
            if assembler is None:
                raise InvalidArgumentError(
                    "empty weights stream: send a header, then the safetensors chunks", reason="CHECKPOINT_INVALID"
                )
            tensors = assembler.finish()
            version, applied = await self.core.update_weights(tensors, assembler.header.policy_version)
            del tensors  # views of the assembler's buffer, which goes back for the next update
            assembler.discard()
        except RollmeshError as e:
            if assembler is not None:
                assembler.discard()  # the refusal (and its traceback) must not keep the bytes alive
            await abort(context, e)
        log.info("weights updated: %d tensors, policy version %d", applied, version)
        return inf_pb.UpdateWeightsResponse(
            policy_version=version, tensors_updated=applied, apply_s=time.perf_counter() - t0
        )

    async def LoadWeights(
        self, request: inf_pb.LoadWeightsRequest, context: grpc.aio.ServicerContext
    ) -> inf_pb.LoadWeightsResponse:
        t0 = time.perf_counter()
        try:
            if not request.path:
                raise InvalidArgumentError(
                    "LoadWeights needs a path", reason="MISSING_FIELD", metadata={"field": "path"}
                )
            if same_host.is_handle(request.path):
                version, applied = await self._load_same_host(request.path, request.policy_version)
            else:
                version, applied = await self.core.load_weights(request.path, request.policy_version)
        except RollmeshError as e:
            await abort(context, e)
        except Exception as e:  # the checkpoint's own reader failed on it (corrupt or foreign files)
            await abort(
                context,
                InvalidArgumentError(f"could not load {quoted(request.path)}: {e}", reason="CHECKPOINT_INVALID"),
            )
        return inf_pb.LoadWeightsResponse(
            policy_version=version, tensors_updated=applied, apply_s=time.perf_counter() - t0
        )

    async def _load_same_host(self, path: str, requested_version: int) -> tuple[int, int]:
        """Weights a sender on this host wrote into shared memory (same_host.py): its own checks
        stand in for the weights roots, which hold checkpoints, not another process's memory."""
        with same_host.open_handle(path, self.max_weights_bytes) as readable:
            version = self.core.next_version(requested_version)
            return version, await self.backend.load_weights(readable, version)

    async def Pause(self, request: inf_pb.PauseRequest, context: grpc.aio.ServicerContext) -> inf_pb.PauseResponse:
        await self.backend.pause()
        return inf_pb.PauseResponse()

    async def Resume(self, request: inf_pb.ResumeRequest, context: grpc.aio.ServicerContext) -> inf_pb.ResumeResponse:
        await self.backend.resume()
        return inf_pb.ResumeResponse()


def _backend_failed(e: Exception) -> InternalError:
    """An exception the backend did not turn into a domain error: a fault of the server, not the request."""
    log.exception("generation failed")
    return InternalError(f"generation failed: {type(e).__name__}: {e}", reason="SERVER_FAILED")


class _ChunkViews:
    """Stands for the grpc server while the generated code registers the InferenceService: hands
    UpdateWeights chunks to the servicer as views of the received bytes (weights.parse_request)
    instead of parsed messages, which saves two copies of every byte of a weights push."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server
        self.generic: Any = None
        self.patched = False

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic = handlers  # replaced by the patched handlers below

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        handlers = dict(handlers)
        handlers["UpdateWeights"] = handlers["UpdateWeights"]._replace(request_deserializer=parse_request)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        self.server.add_registered_method_handlers(service, handlers)
        self.patched = True


def _add_inference_servicer(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    views = _ChunkViews(server)
    inf_grpc.add_InferenceServiceServicer_to_server(servicer, views)  # type: ignore[arg-type]
    if not views.patched:  # generated code of another shape: the plain handlers, parsed chunks
        server.add_generic_rpc_handlers(views.generic)


def registry_name(model: str) -> str:
    """Registry keys allow [A-Za-z0-9_-=/]; model names often have dots."""
    return re.sub(r"[^A-Za-z0-9_\-=/]", "-", model) or "model"


class InferenceServer(HostedServer):
    """Serves a backend over gRPC (and, optionally, the OpenAI-compatible HTTP facade)."""

    def __init__(
        self,
        backend: Backend,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rpc_limits: RpcLimits = RpcLimits(),  # noqa: B008
        nats_url: str | None = None,
        advertise_host: str | None = None,
        openai_port: int | None = None,
        max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES,
        capacity: int = 64,
        weights_roots: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        """`weights_roots`: the directories LoadWeights may read from (None = the served model's
        own directory, see core.default_weights_roots; [] = none: LoadWeights refuses every path)."""
        self.core = InferenceCore(backend, weights_roots=weights_roots)
        self.servicer: Any
        add_servicer: Any = inf_grpc.add_InferenceServiceServicer_to_server
        if capabilities_of(backend).token_ids:
            self.servicer = InferenceServicer(self.core, max_weights_bytes=max_weights_bytes)
            add_servicer = _add_inference_servicer
        else:  # a chat-only backend (an OpenAI-compatible endpoint): text in, text out
            from .text_servicer import TextInferenceServicer

            self.servicer = TextInferenceServicer(backend)  # type: ignore[arg-type]
        rpc = create_server(
            [(add_servicer, self.servicer, SERVICE_NAME)],
            host=host,
            port=port,
            limits=rpc_limits,
        )
        self._host(rpc, nats_url=nats_url, advertise_host=advertise_host)
        self.openai_port = openai_port
        self.capacity = capacity
        self._http: Any = None

    def drain(self) -> None:
        self.servicer.draining = True

    def records(self) -> list[bus_pb.ServiceRecord]:
        b = self.core.backend
        return [
            record_for(
                bus_pb.SERVICE_KIND_INFERENCE,
                registry_name(b.model),
                str(b.policy_version),
                self.advertised_address,
                self.capacity,
                self.servicer.instance_id,
                labels={"backend": b.name, "model": b.model},
            )
        ]

    async def started(self) -> None:
        if self.openai_port is not None:
            from .openai_api import start_http

            if not capabilities_of(self.core.backend).token_ids:
                raise FailedPreconditionError(
                    "the OpenAI facade serves token-level backends; call the endpoint behind this one directly",
                    reason="CAPABILITY_MISSING",
                    metadata={"capability": "token_ids"},
                )

            self._http = await start_http(self.core, self.rpc.host, self.openai_port, tls=self.rpc.tls)

    @property
    def openai_address(self) -> str | None:
        return self._http.address if self._http else None

    @property
    def openai_url(self) -> str | None:
        """The facade's base URL (https when TLS is on)."""
        return self._http.url if self._http else None

    async def release(self) -> None:
        if self._http:
            await self._http.stop()
            self._http = None
        await self.core.backend.close()
        await self.core.aclose()
