"""LLM judge: asks a model served by any rollmesh inference server to grade a completion.

Params of the `judge` function (all optional except a target: `model` or `address`):
    prompt         str.format template with {question} {answer} {completion} {messages}
                   (literal braces doubled: {{ }}); default: DEFAULT_PROMPT. Inline specs (sent by a
                   client) use the fields plain; configured rubrics may add a conversion or a format
                   spec (width at most MAX_FORMAT_WIDTH). Attribute and index access ({x.y}, {x[0]})
                   are refused everywhere
    system         system message (default none)
    model          inference server registry name (needs a NATS URL), or
    address        host:port of an inference server
    temperature    default 0.0; max_tokens default 8; seed (optional)
    parse          "number" (first number in the reply), "yes_no" (yes = 1, no = 0), or a regular
                   expression whose first group is the number; default "yes_no" with the
                   default prompt, else "number"
    min, max       range of the parsed number, mapped to [0, 1]; a value outside it is unparseable
    retries        attempts after the first, on UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED
                   (and on unparseable output when temperature > 0: greedy output would not change);
                   default 3, backoff doubling from `backoff_s` (0.5) up to `max_backoff_s` (8), jittered
    call_timeout_s per request, default 30
    requests_per_s token-bucket rate limit per judge endpoint, 0 = none (default 0)
    max_concurrent requests in flight per judge endpoint, default 8
    cache_size     LRU entries of judge replies per endpoint, keyed by (model, rendered prompt,
                   sampling); 0 = no cache; default 4096

Output that stays unparseable is an error (a JudgeError in RewardResult.errors), never a 0. Over
gRPC, a failed judge is told in a fixed text with a reason (see upstream.py), never in the judge's
own words.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import string
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import DeadlineExceededError, InvalidArgumentError, ResourceExhaustedError, UnavailableError, quoted
from ..inference.client import InferenceClient
from .context import ScoreContext, render_messages
from .matching import compile_pattern, search
from .upstream import LOG_HINT, UpstreamError, reason_of

DEFAULT_PROMPT = (
    "You grade answers. Question:\n{question}\n\nReference answer:\n{answer}\n\n"
    "Answer to grade:\n{completion}\n\nIs the answer correct? Reply with yes or no."
)
TEMPLATE_FIELDS = frozenset({"question", "answer", "completion", "messages"})
# A width pads the field to that many characters on every rendering: "{question:>100000000}" would
# cost 100 MB per call. Precision only cuts, so it needs no bound.
MAX_FORMAT_WIDTH = 1000
_FORMAT_SPEC = re.compile(r"(?:.?[<>^])?(?P<width>\d+)?(?:\.\d+)?s?", re.DOTALL)
RETRYABLE = (UnavailableError, DeadlineExceededError, ResourceExhaustedError)
_FIRST_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


class JudgeError(UpstreamError):
    """The judge could not give a score (unreachable after retries, or unparseable output)."""

    def __init__(self, message: str, *, public: str) -> None:
        super().__init__(f"JudgeError: {message}", public=public)


# ---- parsing ---------------------------------------------------------------------------------


def parse_number(text: str) -> float | None:
    m = _FIRST_NUMBER.search(text)
    return float(m.group(0)) if m else None


def parse_yes_no(text: str) -> float | None:
    m = _YES_NO.search(text)
    return None if m is None else float(m.group(1).lower() == "yes")


def make_parser(
    parse: str, *, lo: float | None = None, hi: float | None = None, where: str = "judge"
) -> Callable[[str], float | None]:
    """Text -> score in the judge's scale (mapped to [0, 1] when a range is given), or None."""
    if parse == "number":
        base = parse_number
    elif parse == "yes_no":
        base = parse_yes_no
    else:
        pattern = compile_pattern(parse, f"{where}: parse", groups=1)

        def base(text: str) -> float | None:
            m = search(pattern, text)
            return None if m is None else parse_number(m.group(1) or "")

    if (lo is None) != (hi is None) or (lo is not None and hi is not None and not lo < hi):
        raise InvalidArgumentError(f"{where}: give both min and max, with min < max", reason="BAD_PARAMS")

    def parser(text: str) -> float | None:
        value = base(text)
        if value is None or not math.isfinite(value):
            return None
        if lo is not None and hi is not None:
            if not lo <= value <= hi:
                return None  # off the scale the judge was asked for: it did not follow the prompt
            return (value - lo) / (hi - lo)
        return value

    return parser


def check_template(template: str, where: str, *, inline: bool = False) -> None:
    """InvalidArgumentError unless `template` only uses TEMPLATE_FIELDS, without attribute or index
    access; in an `inline` spec (a client's) without conversions or format specs either, in a
    configured one with a width of at most MAX_FORMAT_WIDTH."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise InvalidArgumentError(
            f"{where}: bad prompt template: {e} (double literal braces: {{{{ }}}})", reason="BAD_PARAMS"
        ) from e
    fields = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if "." in name or "[" in name:
            raise InvalidArgumentError(
                f"{where}: prompt template field {quoted(name)} uses attribute or index access; "
                f"use the fields {sorted(TEMPLATE_FIELDS)} as they are",
                reason="BAD_RUBRIC",
            )
        if inline and (spec or conversion):
            raise InvalidArgumentError(
                f"{where}: prompt template field {quoted(name)} has a "
                f"{'format spec' if spec else 'conversion'}; an inline spec's prompt uses its fields plain, "
                "e.g. {completion}",
                reason="BAD_RUBRIC",
            )
        if spec:
            check_format_spec(name, spec, where)
        fields.add(name)
    bad = sorted(f for f in fields if f not in TEMPLATE_FIELDS)
    if bad:
        raise InvalidArgumentError(
            f"{where}: prompt template uses {quoted(bad)}; it may use {sorted(TEMPLATE_FIELDS)} "
            "(double literal braces)",
            reason="BAD_PARAMS",
        )


def check_format_spec(name: str, spec: str, where: str) -> None:
    # Nested fields ({completion:{answer}}) would take the width from the trajectory: refused.
    m = None if "{" in spec or "}" in spec else _FORMAT_SPEC.fullmatch(spec)
    if m is None:
        raise InvalidArgumentError(
            f"{where}: prompt template field {quoted(name)}: format spec {quoted(spec)} is not "
            "[[fill]align][width][.precision] of a string",
            reason="BAD_RUBRIC",
        )
    if m.group("width") and int(m.group("width")) > MAX_FORMAT_WIDTH:
        raise InvalidArgumentError(
            f"{where}: prompt template field {quoted(name)}: width {m.group('width')[:20]} is over the limit of "
            f"{MAX_FORMAT_WIDTH}",
            reason="BAD_RUBRIC",
        )


def render(template: str, ctx: ScoreContext) -> str:
    return template.format(
        question=ctx.question, answer=ctx.answer, completion=ctx.completion, messages=render_messages(ctx.messages)
    )


# ---- endpoint: client, rate limit, cache -------------------------------------------------------


class TokenBucket:
    """`rate` requests per second on average, bursts up to `burst` (0 = no limit)."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, burst if burst is not None else rate)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self._lock = asyncio.Lock()

    def take(self) -> float:
        """Takes a token if one is there (returns 0), else returns how long to wait for one."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    async def acquire(self) -> None:
        async with self._lock:  # one waiter at a time keeps the order fair
            wait = self.take()
            while wait > 0:
                await asyncio.sleep(wait)
                wait = self.take()


@dataclass
class JudgeStats:
    requests: int = 0  # sent to the inference server
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0


@dataclass
class JudgeEndpoint:
    """One judge target (a model or an address) shared by every judge function that uses it."""

    connect: Callable[[], Any]  # async () -> InferenceClient
    limiter: TokenBucket
    max_concurrent: int
    cache_size: int
    stats: JudgeStats = field(default_factory=JudgeStats)
    _client: InferenceClient | None = None
    _semaphore: asyncio.Semaphore | None = None
    _cache: OrderedDict[tuple, str] = field(default_factory=OrderedDict)
    _inflight: dict[tuple, asyncio.Future[str]] = field(default_factory=dict)

    async def client(self) -> InferenceClient:
        if self._client is None:
            self._client = await self.connect()
        return self._client

    async def drop_client(self) -> None:
        """After UNAVAILABLE: reconnect (and re-resolve a registry name) on the next call."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def ask(
        self, messages: list[dict[str, str]], sampling: Mapping[str, Any], *, timeout_s: float, fresh: bool = False
    ) -> str:
        """The judge's reply; identical (messages, sampling) are asked once while cached or in flight."""
        key = (tuple((m["role"], m["content"]) for m in messages), tuple(sorted(sampling.items())))
        if not fresh:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                return self._cache[key]
            if key in self._inflight:
                self.stats.cache_hits += 1
                return await asyncio.shield(self._inflight[key])
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            text = await self._generate(messages, sampling, timeout_s)
        except BaseException as e:
            if not fut.done():
                # the callers sharing a cancelled request see a judge that did not answer (and retry)
                shared = e if isinstance(e, Exception) else None
                fut.set_exception(shared or UnavailableError("judge call cancelled", reason="INFERENCE_UNREACHABLE"))
                fut.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            if self._inflight.get(key) is fut:
                del self._inflight[key]
        fut.set_result(text)
        if self.cache_size > 0:
            self._cache[key] = text
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return text

    async def _generate(self, messages: list[dict[str, str]], sampling: Mapping[str, Any], timeout_s: float) -> str:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrent)
        async with self._semaphore:
            await self.limiter.acquire()
            client = await self.client()
            self.stats.requests += 1
            try:
                async with asyncio.timeout(timeout_s):
                    out = await client.generate(messages, **sampling)
            except TimeoutError:
                raise DeadlineExceededError(
                    f"judge at {client.address} did not answer within {timeout_s:g} s",
                    reason="TIMEOUT",
                    metadata={"timeout_s": f"{timeout_s:g}"},
                ) from None
        return out.samples[0].text if out.samples else ""

    async def close(self) -> None:
        await self.drop_client()


# ---- the reward function -------------------------------------------------------------------------


@dataclass(frozen=True)
class Judge:
    endpoint: JudgeEndpoint
    target: str
    template: str
    system: str
    sampling: Mapping[str, Any]
    parser: Callable[[str], float | None]
    call_timeout_s: float
    retries: int
    retry_parse: bool
    backoff_s: float
    max_backoff_s: float

    async def __call__(self, ctx: ScoreContext) -> float:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": render(self.template, ctx)})
        last_problem = ""
        public = ""
        fresh = False
        for attempt in range(self.retries + 1):
            if attempt:
                self.endpoint.stats.retries += 1
                cap = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(cap * (0.5 + random.random() / 2))
            try:
                text = await self.endpoint.ask(messages, self.sampling, timeout_s=self.call_timeout_s, fresh=fresh)
            except RETRYABLE as e:
                last_problem = f"{type(e).__name__}: {e}"
                public = f"the judge failed ({reason_of(e)}) after {attempt + 1} attempts; {LOG_HINT}"
                if isinstance(e, UnavailableError):
                    await self.endpoint.drop_client()
                continue
            except Exception as e:  # not worth a retry (e.g. PROMPT_TOO_LONG, no such model)
                self.endpoint.stats.failures += 1
                raise JudgeError(
                    f"judge {self.target}: {type(e).__name__}: {e}",
                    public=f"the judge failed ({reason_of(e)}); {LOG_HINT}",
                ) from e
            score = self.parser(text)
            if score is not None:
                return score
            last_problem = f"unparseable judge output {text[:200]!r}"
            public = f"unparseable judge output: the reply did not give a score in the form asked; {LOG_HINT}"
            if not self.retry_parse:
                break
            fresh = True  # a new sample, not the cached reply
        self.endpoint.stats.failures += 1
        raise JudgeError(f"judge {self.target}: {last_problem}", public=public)
