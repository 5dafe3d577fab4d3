"""InferenceCore: what the gRPC service and the OpenAI facade share, free of any transport.
Prompts (chat templates, token ids), sampling validation, generation, weight updates."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError, NotFoundError, PermissionDeniedError, UnimplementedError, quoted
from .backend import Backend, GenerationRequest, Sampling, TokenDelta
from .templates import RENDER_MEMORY_BYTES, RENDER_MEMORY_PER_PROMPT_CHAR, TemplateSandbox, check_template_kwargs
from .turns import TurnTemplate

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_N = 64
DEFAULT_MAX_TOKENS = 256
# A prompt longer than this many characters per token of context cannot fit the context (tokens
# average ~4 characters), so it is refused before any tokenisation: an 8 MB Tokenize once held
# the event loop for a minute and grew the server by 1.4 GB.
MAX_CHARS_PER_CONTEXT_TOKEN = 32
# Rendering and tokenising smaller inputs inline costs less than a thread hop; larger ones (and
# any client template arguments) run on the prompt threads so the event loop keeps serving.
INLINE_PROMPT_CHARS = 4096
PROMPT_THREADS = 2
# LoadWeights: the longest path considered (Linux's PATH_MAX), and the files of a checkpoint
# directory that the backends read, each of which must also resolve inside a weights root.
MAX_WEIGHTS_PATH_CHARS = 4096
CHECKPOINT_FILE_SUFFIXES = (".safetensors", ".bin", ".json")


@dataclass
class SampleResult:
    index: int
    text: str = ""
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = ""
    policy_version: int = 0


def _template_message(m: Mapping[str, Any]) -> dict[str, Any]:
    """Chat templates expect tool-call arguments as objects; the wire carries JSON text."""
    out = dict(m)
    calls = []
    for c in m.get("tool_calls") or ():
        fn = dict(c.get("function", {}))
        try:
            fn["arguments"] = json.loads(fn.get("arguments") or "{}")
        except (TypeError, json.JSONDecodeError):
            pass
        calls.append({**c, "function": fn})
    if calls:
        out["tool_calls"] = calls
    return out


def _prompt_chars(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> int:
    n = 0
    for m in messages:
        n += len(str(m.get("content") or "")) + len(str(m.get("reasoning_content") or ""))
        for c in m.get("tool_calls") or ():
            n += len(str(c.get("function", {}).get("arguments") or ""))
    if tools:
        n += len(json.dumps(list(tools), default=str))
    return n


# Sampling fields that are numbers: name -> must be an integer.
_NUMBER_FIELDS = {
    "temperature": False,
    "top_p": False,
    "min_p": False,
    "repetition_penalty": False,
    "top_k": True,
    "max_tokens": True,
    "min_tokens": True,
    "n": True,
    "seed": True,
}


def default_weights_roots(backend: Backend) -> list[str]:
    """Where LoadWeights may read when the server is given no roots: the served model's own
    directory (reloading the base weights), when the backend was loaded from one."""
    path = getattr(backend, "model_path", None)
    return [str(path)] if path else []


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class InferenceCore:
    def __init__(self, backend: Backend, *, weights_roots: Sequence[str | os.PathLike[str]] | None = None) -> None:
        self.backend = backend
        self._prompt_pool: ThreadPoolExecutor | None = None
        self._templates: TemplateSandbox | None = None
        self._turn_template: TurnTemplate | None = None
        self._vocab_size: int | None = None
        roots = default_weights_roots(backend) if weights_roots is None else weights_roots
        # absolute now (relative to the directory the server started in); symlinks are resolved
        # at each check, so a root may be created or moved after the start
        self.weights_roots: tuple[str, ...] = tuple(os.path.abspath(os.path.expanduser(os.fspath(r))) for r in roots)

    @property
    def max_prompt_chars(self) -> int:
        return max(64 * 1024, self.backend.context_length * MAX_CHARS_PER_CONTEXT_TOKEN)

    def check_prompt_chars(self, chars: int) -> None:
        if chars > self.max_prompt_chars:
            raise InvalidArgumentError(
                f"the prompt is {chars} characters, more than the model's context of "
                f"{self.backend.context_length} tokens can hold (limit {self.max_prompt_chars} characters)",
                reason="PROMPT_TOO_LONG",
            )

    async def _off_loop(self, chars: int, fn: Callable[..., list[int]], *args: Any, **kwargs: Any) -> list[int]:
        if chars <= INLINE_PROMPT_CHARS and not kwargs.get("template_kwargs"):
            return fn(*args, **kwargs)
        if self._prompt_pool is None:
            self._prompt_pool = ThreadPoolExecutor(PROMPT_THREADS, thread_name_prefix="rollmesh-prompt")
        return await asyncio.get_running_loop().run_in_executor(self._prompt_pool, lambda: fn(*args, **kwargs))

    async def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Any = None,
    ) -> list[int]:
        """Token ids of a chat prompt as the model's chat template renders it; bounded in size, and
        off the event loop when it is large. `template_kwargs` come from the client: only the
        allow-listed switches (templates.ALLOWED_TEMPLATE_KWARGS), and a template of its own
        (`chat_template`) from a caller with the operator role, rendered in the sandbox."""
        switches, template = check_template_kwargs(template_kwargs)
        chars = _prompt_chars(messages, tools)
        self.check_prompt_chars(chars)
        if template is not None:
            text = await self._render_client_template(template, messages, tools, add_generation_prompt, switches)
            return await self._off_loop(len(text), self._text_ids, text)
        return await self._off_loop(
            chars, self._chat_ids, messages, tools, add_generation_prompt, template_kwargs=switches
        )

    @property
    def template_sandbox(self) -> TemplateSandbox:
        if self._templates is None:
            memory = max(RENDER_MEMORY_BYTES, RENDER_MEMORY_PER_PROMPT_CHAR * self.max_prompt_chars)
            self._templates = TemplateSandbox(memory_bytes=memory)
        return self._templates

    async def _render_client_template(
        self,
        template: str,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        add_generation_prompt: bool,
        switches: Mapping[str, Any],
    ) -> str:
        if not messages:
            raise InvalidArgumentError(
                "a chat prompt needs at least one message", reason="MISSING_FIELD", metadata={"field": "chat.messages"}
            )
        tok = self.backend.tokenizer
        context = {
            # as transformers renders templates: the special tokens, which the switches override
            **dict(getattr(tok, "special_tokens_map", None) or {}),
            **switches,
            "messages": [_template_message(m) for m in messages],
            "tools": [{"type": "function", "function": t} for t in tools] if tools else None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        return await self.template_sandbox.render(template, context, self.max_prompt_chars)

    async def continue_chat(
        self,
        prompt_ids: Sequence[int],
        completion_ids: Sequence[int],
        assistant: Mapping[str, Any] | None,
        messages: Sequence[Mapping[str, Any]],
    ) -> list[int]:
        """The next turn's prompt: the previous prompt and completion as they were, the template's
        turn end, then `messages` and the generation prompt as the chat template renders them after
        an assistant turn (turns.py). Bounded like any prompt."""
        if not messages:
            raise InvalidArgumentError(
                "next_turn needs the messages to append",
                reason="MISSING_FIELD",
                metadata={"field": "next_turn.messages"},
            )
        chars = _prompt_chars(messages, None) + (_prompt_chars([assistant], None) if assistant else 0)
        self.check_prompt_chars(chars)
        template = self.turn_template()
        rendered = await self._off_loop(chars, template.render, self._render_ids, assistant, messages)
        ids = template.next_prompt(prompt_ids, completion_ids, rendered)
        self.check_prompt(ids, "next_turn.prompt_ids")
        return ids

    def turn_template(self) -> TurnTemplate:
        """What the model's chat template puts around turns, learned on first use (three small
        renderings; the template never changes while serving)."""
        if self._turn_template is None:
            self._turn_template = TurnTemplate.learn(self._render_ids, self._encode("."))
        return self._turn_template

    def _render_ids(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> list[int]:
        return self._chat_ids(messages, None, add_generation_prompt, None)

    async def tokenize_text(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of plain text, bounded in size and off the event loop when it is large."""
        self.check_prompt_chars(len(text))
        if not add_special_tokens:
            return await self._off_loop(len(text), self._encode, text)
        tok = self.backend.tokenizer
        return await self._off_loop(len(text), lambda: list(tok(text, add_special_tokens=True)["input_ids"]))

    def _encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens added. A fast tokenizer's Rust core is called
        directly when the transformers wrapper would add nothing (no truncation or padding set, the
        same special-token splitting): for prompt-sized texts the wrapper costs more than encoding."""
        tok = self.backend.tokenizer
        rust = getattr(tok, "_tokenizer", None)
        if (
            rust is not None
            and rust.truncation is None
            and rust.padding is None
            and rust.encode_special_tokens == bool(getattr(tok, "split_special_tokens", False))
        ):
            return rust.encode(text, add_special_tokens=False).ids
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        if self._prompt_pool is not None:
            self._prompt_pool.shutdown(wait=False, cancel_futures=True)
            self._prompt_pool = None
        if self._templates is not None:
            self._templates.close()
            self._templates = None

    async def aclose(self) -> None:
        """close(), and waits for the template renderers to exit."""
        templates, self._templates = self._templates, None
        self.close()
        if templates is not None:
            await templates.aclose()

    @property
    def vocab_size(self) -> int:
        # len() of a transformers tokenizer counts its added tokens on each call; none are added
        # while serving
        if self._vocab_size is None:
            self._vocab_size = len(self.backend.tokenizer)
        return self._vocab_size

    # ---- prompts -------------------------------------------------------------------------------

    def _chat_ids(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        add_generation_prompt: bool,
        template_kwargs: Mapping[str, Any] | None,
    ) -> list[int]:
        if not messages:
            raise InvalidArgumentError(
                "a chat prompt needs at least one message", reason="MISSING_FIELD", metadata={"field": "chat.messages"}
            )
        tok = self.backend.tokenizer
        if not getattr(tok, "chat_template", None):
            raise UnimplementedError(
                f"model {self.backend.model!r} has no chat template; send token ids instead", reason="NOT_SUPPORTED"
            )
        try:
            text = tok.apply_chat_template(
                [_template_message(m) for m in messages],
                tools=[{"type": "function", "function": t} for t in tools] if tools else None,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **dict(template_kwargs or {}),
            )
        except Exception as e:  # jinja errors: the messages do not fit the template
            raise InvalidArgumentError(
                f"the chat template rejected these messages: {e}",
                reason="INVALID_FIELD",
                metadata={"field": "chat.messages"},
            ) from None
        return self._text_ids(text)

    def _text_ids(self, text: str) -> list[int]:
        """Token ids of a rendered prompt, refused before tokenising when it cannot fit."""
        if len(text) > self.max_prompt_chars:
            raise InvalidArgumentError(
                f"the chat template renders a prompt of {len(text)} characters, more than the model's context "
                f"of {self.backend.context_length} tokens can hold (limit {self.max_prompt_chars} characters)",
                reason="PROMPT_TOO_LONG",
            )
        ids = self._encode(text)
        self.check_prompt(ids)
        return ids

    def check_prompt(self, ids: Sequence[int], field: str = "tokens.prompt_ids") -> None:
        if not ids:
            raise InvalidArgumentError("the prompt is empty", reason="MISSING_FIELD", metadata={"field": field})
        vocab = self.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            bad = [i for i in ids if not 0 <= i < vocab]
            raise InvalidArgumentError(
                f"token ids out of the vocabulary [0, {vocab}): {bad[:5]}",
                reason="INVALID_FIELD",
                metadata={"field": field},
            )
        if len(ids) >= self.backend.context_length:
            raise InvalidArgumentError(
                f"prompt of {len(ids)} tokens does not fit the model's context of {self.backend.context_length} "
                "(leave room for at least one generated token)",
                reason="PROMPT_TOO_LONG",
            )

    def check_model(self, requested: str) -> None:
        if requested and requested != self.backend.model:
            raise NotFoundError(
                f"this server serves {self.backend.model!r}, not {quoted(requested)}", reason="UNKNOWN_MODEL"
            )

    # ---- sampling ------------------------------------------------------------------------------

    def sampling(self, prompt_len: int, **p: Any) -> Sampling:
        """Validated sampling parameters; unset values take defaults. Raises InvalidArgumentError
        naming the field."""

        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise InvalidArgumentError(
                    f"sampling.{name}={quoted(p.get(name))}: {rule}",
                    reason="BAD_PARAMS",
                    metadata={"field": f"sampling.{name}"},
                )

        # JSON callers (the OpenAI facade) can send any type: refuse what is not a number here,
        # with the field's name, instead of failing later in int()/float().
        for name, integer in _NUMBER_FIELDS.items():
            v = p.get(name)
            if v is None:
                continue
            check(name, isinstance(v, int | float) and not isinstance(v, bool), "must be a number")
            check(name, math.isfinite(v), "must be a finite number")
            check(name, not integer or v == int(v), "must be an integer")
            p[name] = int(v) if integer else float(v)
        check("seed", p.get("seed") is None or -(2**63) <= p["seed"] < 2**64, "must fit in 64 bits")
        for name, kind in (("stop", str), ("stop_token_ids", int)):
            v = p.get(name)
            check(
                name,
                v is None or (isinstance(v, list | tuple) and all(isinstance(x, kind) for x in v)),
                f"must be a list of {'strings' if kind is str else 'token ids'}",
            )
        room = self.backend.context_length - prompt_len
        temperature = 1.0 if p.get("temperature") is None else float(p["temperature"])
        top_p = 1.0 if p.get("top_p") is None else float(p["top_p"])
        top_k = int(p.get("top_k") or 0)
        min_p = float(p.get("min_p") or 0.0)
        rep = 1.0 if p.get("repetition_penalty") is None else float(p["repetition_penalty"])
        max_tokens = min(DEFAULT_MAX_TOKENS, room) if p.get("max_tokens") is None else int(p["max_tokens"])
        min_tokens = int(p.get("min_tokens") or 0)
        n = int(p.get("n") or 1)
        check("temperature", 0.0 <= temperature <= 100.0, "must be in [0, 100] (0 = greedy)")
        check("top_p", 0.0 < top_p <= 1.0, "must be in (0, 1]")
        check("top_k", top_k >= 0, "must be >= 0 (0 = off)")
        check("min_p", 0.0 <= min_p <= 1.0, "must be in [0, 1]")
        check("repetition_penalty", rep > 0.0, "must be > 0")
        check("max_tokens", max_tokens >= 1, "must be >= 1")
        check("min_tokens", 0 <= min_tokens <= max_tokens, "must be in [0, max_tokens]")
        check("n", 1 <= n <= MAX_N, f"must be in [1, {MAX_N}]")
        stop_ids = tuple(int(t) for t in p.get("stop_token_ids") or ())
        check("stop_token_ids", all(0 <= t < self.vocab_size for t in stop_ids), "ids must be in the vocabulary")
        return Sampling(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repetition_penalty=rep,
            max_tokens=min(max_tokens, room),  # the context bounds every sample ("length")
            min_tokens=min_tokens,
            stop=tuple(s for s in p.get("stop") or () if s),
            stop_token_ids=stop_ids,
            ignore_eos=bool(p.get("ignore_eos")),
            seed=None if p.get("seed") is None else int(p["seed"]),
            n=n,
            logprobs=bool(p.get("logprobs")),
        )

    # ---- generation ----------------------------------------------------------------------------

    def stream(
        self, prompt_ids: list[int], sampling: Sampling, request_id: str = "", *, per_token: bool = True
    ) -> AsyncIterator[TokenDelta]:
        request = GenerationRequest(request_id or uuid.uuid4().hex, prompt_ids, sampling, stream=per_token)
        return self.backend.generate(request)

    async def generate(self, prompt_ids: list[int], sampling: Sampling, request_id: str = "") -> list[SampleResult]:
        samples = [SampleResult(index=i) for i in range(sampling.n)]
        async for d in self.stream(prompt_ids, sampling, request_id, per_token=False):
            s = samples[d.index]
            s.completion_ids += d.token_ids
            s.logprobs += d.logprobs
            s.text += d.text
            s.policy_version = d.policy_version
            if d.finish_reason:
                s.finish_reason = d.finish_reason
        return samples

    # ---- weights -------------------------------------------------------------------------------

    def next_version(self, requested: int, field: str = "policy_version") -> int:
        current = self.backend.policy_version
        if requested and requested <= current:
            raise InvalidArgumentError(
                f"policy_version {requested} is not newer than the served {current}",
                reason="INVALID_FIELD",
                metadata={"field": field},
            )
        return requested or current + 1

    async def update_weights(self, tensors: Mapping[str, torch.Tensor], requested_version: int) -> tuple[int, int]:
        version = self.next_version(requested_version, "header.policy_version")
        applied = await self.backend.update_weights(tensors, version)
        return version, applied

    async def load_weights(self, path: str, requested_version: int) -> tuple[int, int]:
        resolved = await asyncio.to_thread(self.allowed_checkpoint, path)
        if resolved is None:
            # One answer for a path outside the roots and a path that does not exist, so that the
            # server tells nothing about its file system.
            log.warning("LoadWeights refused %s (weights roots: %s)", quoted(path), ", ".join(self.weights_roots))
            raise PermissionDeniedError(
                f"no checkpoint this server may load at {quoted(path)}: LoadWeights reads existing paths under "
                "the server's weights roots only (rollmesh inference serve --weights-root)",
                reason="PATH_NOT_ALLOWED",
            )
        version = self.next_version(requested_version)
        applied = await self.backend.load_weights(resolved, version)
        return version, applied

    def allowed_checkpoint(self, path: str) -> str | None:
        """The real path of `path` (symlinks resolved) if it exists inside a weights root, and, for
        a directory, so does every checkpoint file in it; else None. Blocking (file system)."""
        if not path or len(path) > MAX_WEIGHTS_PATH_CHARS or "\0" in path:
            return None
        try:
            roots = [os.path.realpath(r) for r in self.weights_roots]
            real = os.path.realpath(path)
            if not any(_within(real, r) for r in roots):
                return None
            if os.path.isdir(real):
                with os.scandir(real) as entries:
                    for entry in entries:
                        if entry.name.endswith(CHECKPOINT_FILE_SUFFIXES) and entry.is_symlink():
                            target = os.path.realpath(entry.path)
                            if not any(_within(target, r) for r in roots):
                                return None
            elif not os.path.isfile(real):
                return None
        except (OSError, ValueError):
            return None
        return real
