"""OpenAI-compatible HTTP facade (`/v1/chat/completions`, `/v1/completions`, `/v1/models`) on the
same InferenceCore as the gRPC service, so off-the-shelf agents and eval tools work unchanged.

It serves HTTPS when TLS is on (security.tls) and, when it can tell who calls (a CA or a tokens
file), /v1/ needs the orchestrator role, like Generate over gRPC; /health stays open."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RollmeshError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from ..security.http_auth import HttpSite, auth_middleware, start_site
from ..security.tls import TlsConfig, current
from .backend import Sampling
from .core import InferenceCore

log = logging.getLogger(__name__)

HTTP_STATUS = {
    InvalidArgumentError: 400,
    FailedPreconditionError: 400,
    UnimplementedError: 400,  # e.g. chat input to a model without a chat template: send token ids
    UnauthenticatedError: 401,
    PermissionDeniedError: 403,
    NotFoundError: 404,
    ResourceExhaustedError: 429,
    UnavailableError: 503,
}
MAX_BODY_BYTES = 32 * 1024 * 1024


def _error(exc: Exception) -> web.Response:
    status = next((s for cls, s in HTTP_STATUS.items() if isinstance(exc, cls)), 500)
    kind = "invalid_request_error" if status < 500 else "server_error"
    reason = getattr(exc, "reason", None)
    return web.json_response({"error": {"message": str(exc), "type": kind, "code": reason}}, status=status)


def _sampling_params(body: dict[str, Any], default_max_tokens: int | None) -> dict[str, Any]:
    stop = body.get("stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max_tokens))
    logprobs = body.get("logprobs")
    return {
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "top_k": body.get("top_k"),
        "min_p": body.get("min_p"),
        "repetition_penalty": body.get("repetition_penalty"),
        "max_tokens": max_tokens,
        "min_tokens": body.get("min_tokens"),
        "stop": [stop] if isinstance(stop, str) else stop,
        "stop_token_ids": body.get("stop_token_ids"),
        "ignore_eos": body.get("ignore_eos", False),
        "seed": body.get("seed"),
        "n": body.get("n") or 1,
        "logprobs": bool(logprobs) or logprobs == 0,
    }


class OpenAIApp:
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/models", self.models),
            web.post("/v1/chat/completions", self.chat),
            web.post("/v1/completions", self.completions),
            web.get("/health", self.health),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "policy_version": self.core.backend.policy_version})

    async def models(self, request: web.Request) -> web.Response:
        b = self.core.backend
        return web.json_response(
            {"object": "list", "data": [{"id": b.model, "object": "model", "owned_by": "rollmesh", "created": 0}]}
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidArgumentError("the request body is not valid JSON", reason="MALFORMED_REQUEST") from None
        if not isinstance(body, dict):
            raise InvalidArgumentError("the request body must be a JSON object", reason="MALFORMED_REQUEST")
        self.core.check_model(body.get("model") or "")
        return body

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise InvalidArgumentError(
                    "messages must be a list of message objects", reason="INVALID_FIELD", metadata={"field": "messages"}
                )
            tools = body.get("tools") or []
            if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
                raise InvalidArgumentError(
                    "tools must be a list of tool objects", reason="INVALID_FIELD", metadata={"field": "tools"}
                )
            tools = [t.get("function", t) for t in tools]
            if not all(isinstance(t, dict) for t in tools):
                raise InvalidArgumentError(
                    "each tool's function must be an object", reason="INVALID_FIELD", metadata={"field": "tools"}
                )
            continues = bool(messages) and messages[-1].get("role") == "assistant"
            ids = await self.core.render_chat(
                messages,
                tools,
                add_generation_prompt=not continues,
                template_kwargs=body.get("chat_template_kwargs"),  # allow-listed in InferenceCore
            )
            sampling = self.core.sampling(len(ids), **_sampling_params(body, None))
        except RollmeshError as e:
            return _error(e)
        if body.get("stream"):
            return await self._sse(request, self._chat_chunks(ids, sampling))
        samples = await self.core.generate(ids, sampling)
        tok = self.core.backend.tokenizer
        choices = []
        for s in samples:
            choice: dict[str, Any] = {
                "index": s.index,
                "message": {"role": "assistant", "content": s.text},
                "finish_reason": s.finish_reason,
            }
            if sampling.logprobs:
                choice["logprobs"] = {
                    "content": [
                        {"token": tok.decode([t]), "logprob": lp, "top_logprobs": []}
                        for t, lp in zip(s.completion_ids, s.logprobs, strict=False)
                    ]
                }
            choices.append(choice)
        return web.json_response(self._envelope("chat.completion", choices, len(ids), samples))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                ids = await self.core.tokenize_text(prompt, add_special_tokens=True)
                self.core.check_prompt(ids)
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                ids = list(prompt)
                self.core.check_prompt(ids)
            else:
                raise InvalidArgumentError(
                    "prompt must be a string or a list of token ids",
                    reason="INVALID_FIELD",
                    metadata={"field": "prompt"},
                )
            sampling = self.core.sampling(len(ids), **_sampling_params(body, 16))
        except RollmeshError as e:
            return _error(e)
        if body.get("stream"):
            return await self._sse(request, self._completion_chunks(ids, sampling))
        samples = await self.core.generate(ids, sampling)
        tok = self.core.backend.tokenizer
        choices = []
        for s in samples:
            choice: dict[str, Any] = {"index": s.index, "text": s.text, "finish_reason": s.finish_reason}
            choice["logprobs"] = (
                {"tokens": [tok.decode([t]) for t in s.completion_ids], "token_logprobs": s.logprobs}
                if sampling.logprobs
                else None
            )
            choice["token_ids"] = s.completion_ids
            choices.append(choice)
        return web.json_response(self._envelope("text_completion", choices, len(ids), samples))

    def _envelope(self, kind: str, choices: list[dict[str, Any]], prompt_tokens: int, samples: list[Any]) -> dict:
        completion_tokens = sum(len(s.completion_ids) for s in samples)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.core.backend.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "policy_version": max((s.policy_version for s in samples), default=self.core.backend.policy_version),
        }

    async def _chat_chunks(self, ids: list[int], sampling: Sampling) -> AsyncIterator[dict[str, Any]]:
        started: set[int] = set()
        async for d in self.core.stream(ids, sampling):
            delta: dict[str, Any] = {"content": d.text}
            if d.index not in started:
                started.add(d.index)
                delta["role"] = "assistant"
            yield {
                "object": "chat.completion.chunk",
                "choices": [{"index": d.index, "delta": delta, "finish_reason": d.finish_reason}],
            }

    async def _completion_chunks(self, ids: list[int], sampling: Sampling) -> AsyncIterator[dict[str, Any]]:
        async for d in self.core.stream(ids, sampling):
            yield {
                "object": "text_completion",
                "choices": [
                    {"index": d.index, "text": d.text, "token_ids": d.token_ids, "finish_reason": d.finish_reason}
                ],
            }

    async def _sse(self, request: web.Request, chunks: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        common = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.core.backend.model}
        async for chunk in chunks:
            await response.write(f"data: {json.dumps({**common, **chunk})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Client faults are 4xx with a JSON error body; only our own bugs are 500 (and logged)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except RollmeshError as e:
        return _error(e)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response(
            {"error": {"message": "internal server error", "type": "server_error", "code": "INTERNAL"}}, status=500
        )


def make_app(core: InferenceCore, tls: TlsConfig) -> web.Application:
    # Callers are checked first (outermost), before a handler reads a body or touches the model.
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[auth_middleware(tls), _errors])
    app.add_routes(OpenAIApp(core).routes())
    return app


async def start_http(core: InferenceCore, host: str, port: int, *, tls: TlsConfig | None = None) -> HttpSite:
    """Serves the facade on host:port (0 = a free port). `tls` (default: the process's settings,
    security.tls.current()) turns on HTTPS and, with a CA or a tokens file, the role check."""
    tls = current() if tls is None else tls
    return await start_site(make_app(core, tls), host, port, tls, what="the OpenAI API")
