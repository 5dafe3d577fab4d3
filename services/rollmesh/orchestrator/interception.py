"""The interception endpoint: an OpenAI-compatible `POST /v1/chat/completions` that the agents of
RunEpisode environments call instead of a model (docs/protocol.md section 7).

Each episode gets a session: a random key (32 bytes, the agent's API key), valid only while the
episode runs. A call is authenticated by that key (`Authorization: Bearer`), its sampling is the
run's (the agent may only narrow `max_tokens` and add `stop` strings), and it goes to the session's
`generate` (the rollout's sticky, rerouting model call) with the chat messages and tools; the
inference server renders the chat template and returns token ids and logprobs, which the session's
owner records as the trajectory's turn. The answer is an ordinary chat completion.

Bounds: request body size (413), calls per session (429), one model call's deadline (the run's
inference timeout, in `generate`). Client faults are 4xx with an OpenAI-style error body; streaming
is refused (400). What protects the endpoint: the session key, loopback by default, and TLS when
`tls` is on; it has no caller roles (an agent has no mesh identity)."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .. import convert
from ..errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RollmeshError,
    UnauthenticatedError,
    UnavailableError,
    clip,
    quoted,
)
from ..proto.v1 import inference_pb2 as inf_pb
from ..proto.v1 import messages_pb2 as msg_pb
from ..security import tls as security_tls
from ..security.http_auth import HttpSite, start_site
from ..security.tls import TlsConfig
from .config import InterceptConfig
from .toolcalls import assistant_message

log = logging.getLogger(__name__)

Generate = Callable[[inf_pb.GenerateRequest], Awaitable[inf_pb.GenerateResponse]]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_STOP_STRINGS = 8  # the agent's own, added to the run's
MAX_STOP_CHARS = 256
HTTP_STATUS: dict[type[RollmeshError], int] = {
    InvalidArgumentError: 400,
    FailedPreconditionError: 400,
    UnauthenticatedError: 401,
    NotFoundError: 404,
    ResourceExhaustedError: 429,
    UnavailableError: 503,
}


@dataclass(eq=False)
class Session:
    """One episode's right to call the model. `generate` records each call (the owner's job)."""

    key: str
    generate: Generate
    sampling: msg_pb.SamplingParams
    model: str = ""
    max_calls: int = 64
    calls: int = 0
    failure: RollmeshError | None = None  # the first model-call failure not caused by the agent


def http_status(error: RollmeshError) -> int:
    """4xx for what the agent did wrong; 502 for a model call that failed behind the endpoint."""
    return next((s for cls, s in HTTP_STATUS.items() if isinstance(error, cls)), 502)


def error_response(error: RollmeshError, status: int | None = None) -> web.Response:
    status = status or http_status(error)
    kind = "invalid_request_error" if status < 500 else "server_error"
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"error": {"message": clip(str(error), 2000), "type": kind, "code": error.reason}}
    return web.json_response(body, status=status, headers=headers)


def _content(message: dict[str, Any], index: int) -> str:
    """A message's text: a string, or the text parts of a content list (images are refused)."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidArgumentError(
                    f"messages[{index}].content: only text parts are supported",
                    reason="INVALID_FIELD",
                    metadata={"field": f"messages[{index}].content"},
                )
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidArgumentError(
        f"messages[{index}].content must be a string or a list of text parts",
        reason="INVALID_FIELD",
        metadata={"field": f"messages[{index}].content"},
    )


def chat_messages(body: dict[str, Any]) -> list[msg_pb.Message]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgumentError(
            "messages must be a non-empty list of message objects",
            reason="INVALID_FIELD",
            metadata={"field": "messages"},
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise InvalidArgumentError(
                f"messages[{i}] must be an object whose role is one of {sorted(ROLES)}",
                reason="INVALID_FIELD",
                metadata={"field": f"messages[{i}].role"},
            )
        calls = m.get("tool_calls") or []
        if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls
        ):
            raise InvalidArgumentError(
                f"messages[{i}].tool_calls must be a list of {{id, type, function: {{name, arguments}}}}",
                reason="INVALID_FIELD",
                metadata={"field": f"messages[{i}].tool_calls"},
            )
        role = "system" if m["role"] == "developer" else m["role"]
        out.append(convert.message_to_pb({**m, "role": role, "content": _content(m, i)}))
    return out


def chat_tools(body: dict[str, Any]) -> list[msg_pb.ToolSpec]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise InvalidArgumentError("tools must be a list", reason="INVALID_FIELD", metadata={"field": "tools"})
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidArgumentError(
                f"tools[{i}] must be {{type: function, function: {{name, description, parameters}}}}",
                reason="INVALID_FIELD",
                metadata={"field": f"tools[{i}]"},
            )
        out.append(convert.tool_spec_to_pb({**fn, "parameters": fn.get("parameters") or {}}))
    return out


def narrowed_sampling(run: msg_pb.SamplingParams, body: dict[str, Any]) -> msg_pb.SamplingParams:
    """The run's sampling for this call: the agent may lower max_tokens and add stop strings; its
    temperature, top_p, seed and the like are ignored (the run's policy is what is trained)."""
    sampling = msg_pb.SamplingParams()
    sampling.CopyFrom(run)
    sampling.n, sampling.logprobs = 1, True
    n = body.get("n")
    if n not in (None, 1):
        raise InvalidArgumentError("n must be 1: one completion per call", reason="BAD_PARAMS", metadata={"field": "n"})
    for field in ("max_completion_tokens", "max_tokens"):
        asked = body.get(field)
        if asked is None:
            continue
        if not isinstance(asked, int) or isinstance(asked, bool) or asked < 1:
            raise InvalidArgumentError(
                f"{field} must be a positive integer, got {quoted(asked, 40)}",
                reason="BAD_PARAMS",
                metadata={"field": field},
            )
        sampling.max_tokens = min(sampling.max_tokens or asked, asked)
        break
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)
    ):
        raise InvalidArgumentError(
            f"stop must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings "
            f"of at most {MAX_STOP_CHARS} characters",
            reason="BAD_PARAMS",
            metadata={"field": "stop"},
        )
    sampling.stop.extend(s for s in stops if s not in sampling.stop)
    return sampling


def completion_body(response: inf_pb.GenerateResponse, call_index: int) -> dict[str, Any]:
    """The OpenAI chat completion of one Generate answer (its first sample)."""
    sample = response.samples[0]
    message = convert.message_from_pb(
        assistant_message(sample.text, list(sample.tool_calls), call_prefix=f"call_{call_index}")
    )
    if message.get("tool_calls"):
        finish = "tool_calls"
    else:
        finish = sample.finish_reason if sample.finish_reason in ("stop", "length") else "stop"
        message["content"] = sample.text  # as generated: what the recorded completion ids decode to
    prompt_tokens, completion_tokens = len(response.prompt_ids), len(sample.completion_ids)
    return {
        "id": f"chatcmpl-{secrets.token_hex(8)}-{call_index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "policy_version": sample.policy_version,
    }


class InterceptionEndpoint:
    """The HTTP server and its live sessions. `ensure_started()` (or `start()`), then `open()` a
    session per episode and `close()` it when the episode ends; `stop()` at the end of the run."""

    def __init__(self, config: InterceptConfig) -> None:
        self.config = config
        self.sessions: dict[str, Session] = {}
        self._site: HttpSite | None = None
        self._lock = asyncio.Lock()

    async def ensure_started(self) -> InterceptionEndpoint:
        """Starts it on first use (a run without RunEpisode episodes never opens the port)."""
        async with self._lock:
            if self._site is None:
                await self.start()
        return self

    @property
    def started(self) -> bool:
        return self._site is not None

    @property
    def base_url(self) -> str:
        """What environments are told to call: the configured URL, else this server's own."""
        if self._site is None:
            raise RuntimeError("the interception endpoint has not started")
        return (self.config.url or f"{self._site.url}").rstrip("/") + ("" if self.config.url else "/v1")

    async def start(self) -> InterceptionEndpoint:
        cfg = self.config
        tls = security_tls.current() if cfg.tls else TlsConfig()
        if cfg.tls and not tls.cert:
            raise FailedPreconditionError(
                "rollout.intercept.tls needs this process's TLS certificate (--tls-cert/--tls-key)",
                reason="MISSING_FIELD",
            )
        if not cfg.tls and not security_tls.is_loopback(cfg.host) and not cfg.insecure:
            raise FailedPreconditionError(
                f"refusing to serve the interception endpoint on {cfg.host} without TLS: session keys would travel "
                "in clear. Set rollout.intercept.tls = true (with a server certificate), or insecure = true",
                reason="INSECURE_BIND",
            )
        app = web.Application(client_max_size=cfg.max_body_bytes, middlewares=[_errors])
        app.add_routes([web.post("/v1/chat/completions", self.chat), web.get("/v1/models", self.models)])
        self._site = await start_site(app, cfg.host, cfg.port, tls, what="the interception endpoint")
        log.info("interception endpoint on %s", self.base_url)
        return self

    async def stop(self) -> None:
        self.sessions.clear()
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def open(self, generate: Generate, sampling: msg_pb.SamplingParams, *, model: str = "", max_calls: int) -> Session:
        key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        session = Session(key, generate, sampling, model=model, max_calls=max_calls)
        self.sessions[key] = session
        return session

    def close(self, session: Session) -> None:
        self.sessions.pop(session.key, None)

    def _session(self, request: web.Request) -> Session:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        session = self.sessions.get(key.strip()) if scheme.lower() == "bearer" else None
        if session is None:
            raise UnauthenticatedError(
                "no valid session key: use the API key given with the episode (OPENAI_API_KEY); "
                "it is valid only while its episode runs",
            )
        return session

    async def models(self, request: web.Request) -> web.Response:
        session = self._session(request)
        name = session.model or "rollmesh"
        return web.json_response({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "rollmesh"}]})

    async def chat(self, request: web.Request) -> web.Response:
        session = self._session(request)  # before reading the body: strangers cost nothing
        body = await _json_body(request)
        if body.get("stream"):
            raise InvalidArgumentError(
                "stream: true is not supported by rollmesh's interception endpoint; send stream: false",
                reason="NOT_SUPPORTED",
                metadata={"field": "stream"},
            )
        generate = inf_pb.GenerateRequest(sampling=narrowed_sampling(session.sampling, body))
        generate.chat.messages.extend(chat_messages(body))
        generate.chat.tools.extend(chat_tools(body))
        if session.model:
            generate.model = session.model
        if session.calls >= session.max_calls:
            raise ResourceExhaustedError(
                f"this episode made its limit of {session.max_calls} model calls",
                reason="RPC_LIMIT",
                metadata={"limit": str(session.max_calls)},
            )
        session.calls += 1
        index = session.calls
        try:
            response = await session.generate(generate)
        except RollmeshError as e:
            if http_status(e) >= 500 and session.failure is None:
                session.failure = e  # the episode cannot be trusted to have had its model: an error
            raise
        return web.json_response(completion_body(response, index))


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgumentError("the request body is not valid JSON", reason="MALFORMED_REQUEST") from None
    if not isinstance(body, dict):
        raise InvalidArgumentError("the request body must be a JSON object", reason="MALFORMED_REQUEST")
    return body


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Client faults are 4xx with an OpenAI-style error body; only our own bugs are 500 (logged)."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as e:
        error = ResourceExhaustedError(
            "the request body is over the endpoint's limit (rollout.intercept.max_body_bytes)",
            reason="MESSAGE_TOO_LARGE",
        )
        return error_response(error, e.status)
    except web.HTTPException:
        raise  # 404, 405
    except RollmeshError as e:
        return error_response(e)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        body = {"error": {"message": "internal error", "type": "server_error", "code": "SERVER_FAILED"}}
        return web.json_response(body, status=500)
