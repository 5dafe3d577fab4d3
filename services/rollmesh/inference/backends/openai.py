"""The `openai` backend: any OpenAI-compatible chat-completions endpoint (vLLM's server, a hosted
API) behind the InferenceService, free of gRPC.

It takes chat messages and answers text: an endpoint gives no token ids (OpenAI's `logprobs`
gives per-token logprobs of text tokens, without ids), takes no weight updates and has no
tokenizer here, and its capabilities say so. Calls are rate-limited on this side (requests per
second, concurrent requests), retried with backoff on 408/409/429/5xx and connection errors
(honouring Retry-After) within the call's deadline, and every failure becomes a domain error
with a reason. The API key comes from the environment and is never logged nor put in an error.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ...errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    RollmeshError,
    UnavailableError,
    clip,
    quoted,
)
from ..backend import Capabilities

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 20.0
MAX_ERROR_CHARS = 300  # of an endpoint's error text quoted back
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
STARTUP_TIMEOUT_S = 30.0  # listing the endpoint's models at start


@dataclass(frozen=True)
class EndpointLimits:
    """How this server treats the endpoint: a client-side rate limit, retries and a deadline."""

    max_rps: float = 0.0  # requests per second; 0 = unlimited
    max_concurrency: int = 64
    max_retries: int = 4
    timeout_s: float = 600.0  # one call, retries included, when the caller sets no shorter deadline


@dataclass
class ChatSample:
    index: int
    text: str
    finish_reason: str
    logprobs: list[float] = field(default_factory=list)
    tool_calls: list[dict[str, str]] = field(default_factory=list)  # {id, name, arguments}


@dataclass
class ChatResult:
    model: str
    samples: list[ChatSample]
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RateLimiter:
    """At most `max_concurrency` requests in flight, started at most `rps` per second."""

    def __init__(self, rps: float, max_concurrency: int) -> None:
        self._interval = 1.0 / rps if rps > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(max_concurrency)

    async def pace(self) -> None:
        if not self._interval:
            return
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            await asyncio.sleep(wait)


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _endpoint_message(status: int, body: bytes) -> str:
    """The endpoint's own error message, bounded."""
    try:
        data = json.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        text = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
        if text is None and isinstance(data, dict):
            text = data.get("message") or data.get("detail")
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace")
    return clip(str(text or f"HTTP {status}").strip(), MAX_ERROR_CHARS)


def request_body(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
    sampling: Mapping[str, Any],
    template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The chat-completions body. Only what the caller set is sent (hosted APIs refuse parameters
    they do not know, e.g. top_k); `n` and logprobs as asked."""
    body: dict[str, Any] = {"model": model, "messages": [_wire_message(m) for m in messages]}
    if tools:
        body["tools"] = [{"type": "function", "function": dict(t)} for t in tools]
    for name in ("temperature", "top_p", "max_tokens", "seed", "top_k", "min_p", "repetition_penalty", "min_tokens"):
        if sampling.get(name) is not None:
            body[name] = sampling[name]
    if sampling.get("stop"):
        body["stop"] = list(sampling["stop"])
    if (sampling.get("n") or 1) > 1:
        body["n"] = sampling["n"]
    if sampling.get("logprobs"):
        body["logprobs"] = True
    if template_kwargs:
        body["chat_template_kwargs"] = dict(template_kwargs)  # vLLM's extension
    return body


def _wire_message(m: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
    calls = [
        {
            "id": c.get("id") or f"call_{i}",
            "type": "function",
            "function": {"name": c["function"]["name"], "arguments": c["function"].get("arguments") or "{}"},
        }
        for i, c in enumerate(m.get("tool_calls") or ())
    ]
    if calls:
        out["tool_calls"] = calls
    if m.get("tool_call_id"):
        out["tool_call_id"] = m["tool_call_id"]
    if m.get("name"):
        out["name"] = m["name"]
    return out


def parse_response(data: Any) -> ChatResult:
    """A ChatResult from a chat-completions answer; UnavailableError for one that is not."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        raise UnavailableError("the endpoint's answer has no choices", reason="BACKEND_FAILED")
    samples = []
    for i, choice in enumerate(data["choices"]):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise UnavailableError("the endpoint's answer has a choice without a message", reason="BACKEND_FAILED")
        content = message.get("content")
        logprobs = (choice.get("logprobs") or {}).get("content") or []
        calls = [
            {
                "id": str(c.get("id") or ""),
                "name": str((c.get("function") or {}).get("name") or ""),
                "arguments": str((c.get("function") or {}).get("arguments") or "{}"),
            }
            for c in message.get("tool_calls") or ()
            if isinstance(c, dict)
        ]
        finish = choice.get("finish_reason") or "stop"
        samples.append(
            ChatSample(
                index=int(choice.get("index", i)),
                text=content if isinstance(content, str) else "",
                # "tool_calls" and "content_filter" end a sample like a stop does
                finish_reason="length" if finish == "length" else "stop",
                logprobs=[float(t.get("logprob", 0.0)) for t in logprobs if isinstance(t, dict)],
                tool_calls=calls,
            )
        )
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return ChatResult(
        model=str(data.get("model") or ""),
        samples=sorted(samples, key=lambda s: s.index),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible endpoint. `base_url` is the API root that
    `/chat/completions` and `/models` hang off (e.g. http://host:8000/v1)."""

    name = "openai"
    tokenizer = None
    model_path = None
    policy_version = 0  # no weight updates: always the endpoint's weights

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        limits: EndpointLimits = EndpointLimits(),
        context_length: int = 0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.limits = limits
        self.context_length = context_length  # 0 = not known here
        self.capabilities = Capabilities(token_ids=False, logprobs=False, weight_updates=False)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limiter = RateLimiter(limits.max_rps, limits.max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._running = asyncio.Event()
        self._running.set()
        self._closed = False

    def __repr__(self) -> str:  # never the key
        return f"OpenAIBackend({self.base_url!r}, {self.model!r})"

    @classmethod
    async def create(
        cls,
        base_url: str,
        model: str | None,
        *,
        api_key: str | None = None,
        limits: EndpointLimits = EndpointLimits(),
        context_length: int = 0,
    ) -> OpenAIBackend:
        """Without `model`, the first model the endpoint lists (GET /models) is served."""
        if not base_url.startswith(("http://", "https://")):
            raise InvalidArgumentError(
                f"--base-url must be an http(s) URL, not {quoted(base_url)}",
                reason="INVALID_FIELD",
                metadata={"field": "base_url"},
            )
        backend = cls(base_url, model or "", api_key=api_key, limits=limits, context_length=context_length)
        if not model:
            try:
                backend.model = await backend.first_model()
            except BaseException:
                await backend.close()
                raise
        return backend

    @property
    def endpoint(self) -> str:
        return self.base_url

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, read_bufsize=2**16)
        return self._session

    async def first_model(self) -> str:
        data = await self._call("GET", "/models", None, min(self.limits.timeout_s, STARTUP_TIMEOUT_S))
        models = data.get("data") if isinstance(data, dict) else None
        ids = [m.get("id") for m in models or () if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if not ids:
            raise InvalidArgumentError(
                f"{self.base_url}/models lists no model; pass --model", reason="UPSTREAM_REJECTED"
            )
        return ids[0]

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        sampling: Mapping[str, Any],
        *,
        template_kwargs: Mapping[str, Any] | None = None,
        deadline_s: float | None = None,
    ) -> ChatResult:
        """One chat completion (n samples). `deadline_s`: seconds the caller still waits."""
        if self._closed:
            raise UnavailableError("the openai backend is closed", reason="ENGINE_STOPPED")
        await self._running.wait()
        body = request_body(self.model, messages, tools, sampling, template_kwargs)
        budget = self.limits.timeout_s if deadline_s is None else min(deadline_s, self.limits.timeout_s)
        data = await self._call("POST", "/chat/completions", body, budget)
        try:
            result = parse_response(data)
        except (TypeError, ValueError, AttributeError) as e:  # an answer of the wrong shape
            raise UnavailableError(
                f"the endpoint's answer is not a chat completion: {type(e).__name__}", reason="BACKEND_FAILED"
            ) from None
        if any(s.logprobs for s in result.samples):
            self.capabilities = Capabilities(token_ids=False, logprobs=True, weight_updates=False)
        return result

    async def _call(self, method: str, path: str, body: Any, budget_s: float) -> Any:
        """One request with retries within `budget_s` seconds; the parsed JSON answer."""
        url = self.base_url + path
        deadline = time.monotonic() + budget_s
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(
                    f"{url} did not answer within {budget_s:g} s",
                    reason="TIMEOUT",
                    metadata={"timeout_s": f"{budget_s:g}"},
                )
            wait: float | None = None
            try:
                async with self._limiter.slots:
                    await self._limiter.pace()
                    async with self._http().request(
                        method,
                        url,
                        json=body,
                        timeout=aiohttp.ClientTimeout(total=max(0.001, deadline - time.monotonic())),
                    ) as response:
                        raw = await response.content.read(MAX_RESPONSE_BYTES + 1)
                        status = response.status
                        retry_after = response.headers.get("Retry-After")
                if status < 300:
                    if len(raw) > MAX_RESPONSE_BYTES:
                        raise UnavailableError(
                            f"{url} answered more than {MAX_RESPONSE_BYTES} bytes", reason="BACKEND_FAILED"
                        )
                    try:
                        return json.loads(raw)
                    except (ValueError, UnicodeDecodeError):
                        raise UnavailableError(
                            f"{url} answered something that is not JSON", reason="BACKEND_FAILED"
                        ) from None
                error = self._status_error(url, status, raw)
                if status not in RETRY_STATUSES:
                    raise error
                wait = retry_after_s(retry_after)
            except TimeoutError:  # first: TimeoutError is an OSError, and so are aiohttp's timeouts
                error = DeadlineExceededError(
                    f"{url} did not answer within {budget_s:g} s",
                    reason="TIMEOUT",
                    metadata={"timeout_s": f"{budget_s:g}"},
                )
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
                error = UnavailableError(
                    f"cannot reach the model endpoint {url}: {type(e).__name__}: {clip(str(e), MAX_ERROR_CHARS)}",
                    reason="INFERENCE_UNREACHABLE",
                )
            attempt += 1
            if attempt > self.limits.max_retries:
                raise error
            if wait is None:
                wait = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            if wait >= deadline - time.monotonic():
                raise error  # no time left to try again
            log.warning(
                "%s %s: %s; retry %d/%d in %.2f s", method, url, error.reason, attempt, self.limits.max_retries, wait
            )
            await asyncio.sleep(wait)

    def _status_error(self, url: str, status: int, raw: bytes) -> RollmeshError:
        text = _endpoint_message(status, raw)
        meta = {"status": str(status)}
        if status in (401, 403):
            return FailedPreconditionError(
                f"the model endpoint {url} refused this server's API key (HTTP {status}: {text}); "
                "set the key in the variable named by --api-key-env",
                reason="UPSTREAM_AUTH_FAILED",
                metadata=meta,
            )
        if status == 429:
            return ResourceExhaustedError(
                f"the model endpoint {url} is rate-limiting (HTTP 429: {text}); retry later or lower --max-rps",
                reason="UPSTREAM_RATE_LIMITED",
                metadata=meta,
            )
        if status >= 500 or status in RETRY_STATUSES:
            return UnavailableError(f"the model endpoint {url} failed (HTTP {status}: {text})", reason="BACKEND_FAILED")
        hint = (
            " (is --base-url the API root, e.g. http://host:8000/v1, and --model a model it serves?)"
            if status == 404
            else ""
        )
        return InvalidArgumentError(
            f"the model endpoint {url} refused the request (HTTP {status}: {text}){hint}",
            reason="UPSTREAM_REJECTED",
            metadata=meta,
        )

    async def pause(self) -> None:
        self._running.clear()

    async def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
