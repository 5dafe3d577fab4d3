"""What clients may pass to a chat template, and where a client's own template is rendered.

Template keyword arguments reach Jinja, so they are allow-listed: a few switches that models'
templates read, with scalar values. A whole template (`chat_template`) is code: only callers
with the operator role may send one, it is size-bounded, and it renders in a separate process
(template_worker) with bounded memory and time, killed when it overruns, so no template can grow
or stall the server. The model's own template is trusted and renders in the server."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, quoted
from ..security import roles
from ..security.authorize import caller

log = logging.getLogger(__name__)

# Switches of models' chat templates that clients may set: Qwen3 / SmolLM3 (enable_thinking),
# Granite / DeepSeek (thinking), gpt-oss (reasoning_effort, model_identity), Llama 3
# (date_string, tools_in_user_message). Arguments of apply_chat_template itself (tokenize,
# add_generation_prompt, continue_final_message, ...) and the template's own variables
# (messages, tools, bos_token, ...) are not among them.
ALLOWED_TEMPLATE_KWARGS = (
    "enable_thinking",
    "thinking",
    "reasoning_effort",
    "model_identity",
    "date_string",
    "tools_in_user_message",
)
CHAT_TEMPLATE = "chat_template"
TEMPLATE_FIELD = "chat.chat_template_kwargs.chat_template"
MAX_KWARG_STRING_CHARS = 256
# Real chat templates are a few KiB (the largest common ones ~20 KiB).
MAX_CLIENT_TEMPLATE_CHARS = 64 * 1024

# The renderer of client templates: its memory (address space; the process itself takes ~25 MB),
# at least the floor and more for models whose prompts may be longer (a render holds its input,
# its output and a few copies of each), and the time one render may take before it is killed.
RENDER_MEMORY_BYTES = 256 * 1024 * 1024
RENDER_MEMORY_PER_PROMPT_CHAR = 48
RENDER_TIMEOUT_S = 3.0
RENDER_WORKERS = 2
WORKER_START_TIMEOUT_S = 60.0
WORKER_SCRIPT = Path(__file__).with_name("template_worker.py")
_LENGTH = struct.Struct(">Q")


def _refuse(message: str, allowed: tuple[str, ...]) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{message}; clients may set only {', '.join(allowed)}",
        reason="TEMPLATE_KWARG_NOT_ALLOWED",
        metadata={"allowed": ",".join(allowed)},
    )


def _scalar(value: Any) -> Any:
    """The value if it is one a template switch takes (bool, finite number, short string), else
    None. JSON numbers arrive as floats; whole ones become ints as a template expects."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > 2**53:
            return None
        return int(value) if isinstance(value, float) and value.is_integer() else value
    if isinstance(value, str) and len(value) <= MAX_KWARG_STRING_CHARS:
        return value
    return None


def check_template_kwargs(kwargs: Any, *, operator: bool | None = None) -> tuple[dict[str, Any], str | None]:
    """The allowed template switches of a request, and its own template (None if it has none).
    `operator`: whether the caller may send a template (default: the calling identity has the
    operator role; every caller has it on a server that does not authenticate). Raises
    INVALID_ARGUMENT TEMPLATE_KWARG_NOT_ALLOWED for anything else."""
    if operator is None:
        operator = roles.OPERATOR in caller().roles
    allowed = (*ALLOWED_TEMPLATE_KWARGS, CHAT_TEMPLATE) if operator else ALLOWED_TEMPLATE_KWARGS
    if kwargs is None:
        return {}, None
    if not isinstance(kwargs, Mapping):
        raise _refuse("chat_template_kwargs must be an object of template switches", allowed)
    switches: dict[str, Any] = {}
    template: str | None = None
    for name, value in kwargs.items():
        if name == CHAT_TEMPLATE:
            if not operator:
                raise _refuse("a chat template of the client's own (chat_template) needs the operator role", allowed)
            if not isinstance(value, str) or not value:
                raise _refuse("chat_template must be the template's text", allowed)
            if len(value) > MAX_CLIENT_TEMPLATE_CHARS:
                raise _refuse(
                    f"chat_template of {len(value)} characters is over the limit of {MAX_CLIENT_TEMPLATE_CHARS}",
                    allowed,
                )
            template = value
        elif name not in ALLOWED_TEMPLATE_KWARGS:
            raise _refuse(f"chat template argument {quoted(name, 64)} is not allowed", allowed)
        else:
            scalar = _scalar(value)
            if scalar is None:
                raise _refuse(
                    f"chat template argument {name} must be a boolean, a number or a string of at most "
                    f"{MAX_KWARG_STRING_CHARS} characters, not {quoted(value, 64)}",
                    allowed,
                )
            switches[name] = scalar
    return switches, template


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass


class TemplateSandbox:
    """Renders templates in worker processes (template_worker), at most `workers` at a time; a
    render that overruns `timeout_s` or dies takes its worker with it, the next one starts fresh."""

    def __init__(
        self,
        *,
        timeout_s: float = RENDER_TIMEOUT_S,
        memory_bytes: int = RENDER_MEMORY_BYTES,
        workers: int = RENDER_WORKERS,
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self.started = 0  # worker processes started (a killed one is replaced)

    async def _start(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",  # no user site, no PYTHON* variables, no current directory on sys.path
            str(WORKER_SCRIPT),
            str(self.memory_bytes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        worker = _Worker(proc)
        try:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(proc.stdout.readexactly(1), WORKER_START_TIMEOUT_S)
            if ready != b"R":
                raise RuntimeError(f"unexpected greeting {ready!r}")
        except BaseException:
            worker.kill()
            raise
        self.started += 1
        return worker

    async def render(self, template: str, context: Mapping[str, Any], max_chars: int) -> str:
        """The rendered text, at most `max_chars` characters. Raises INVALID_ARGUMENT:
        PROMPT_TOO_LONG when the output or the memory it takes is too large, INVALID_FIELD when
        the template fails or runs longer than `timeout_s`."""
        request = json.dumps(
            {"template": template, "context": dict(context), "max_chars": max_chars}, ensure_ascii=False, default=str
        ).encode()
        # A reply is at most max_chars characters of up to 4 UTF-8 bytes, plus its JSON framing.
        max_reply = 6 * max_chars + 4096
        async with self._slots:
            while self._idle and self._idle[-1].proc.returncode is not None:
                self._idle.pop()  # exited while idle (killed from outside)
            worker = self._idle.pop() if self._idle else await self._start()
            self._busy.add(worker)
            keep = False
            try:
                reply = await asyncio.wait_for(self._exchange(worker, request, max_reply), self.timeout_s)
                keep = True
            except TimeoutError:
                # a template's own loops, not the server's load: real templates render in milliseconds
                raise InvalidArgumentError(
                    f"the chat template did not render within {self.timeout_s:g} s",
                    reason="INVALID_FIELD",
                    metadata={"field": TEMPLATE_FIELD},
                ) from None
            except (OSError, EOFError, asyncio.IncompleteReadError, ValueError) as e:
                log.warning("template renderer failed: %r", e)
                raise InvalidArgumentError(
                    "the chat template made its renderer fail",
                    reason="INVALID_FIELD",
                    metadata={"field": TEMPLATE_FIELD},
                ) from None
            finally:
                self._busy.discard(worker)
                if keep:
                    self._idle.append(worker)
                else:  # overran, died or was cancelled mid-render: it may still be spinning
                    worker.kill()
        error = reply.get("error")
        if error in ("too_long", "memory"):
            raise InvalidArgumentError(
                f"the chat template renders a prompt longer than the model's context can hold "
                f"(limit {max_chars} characters): {reply.get('message', '')}",
                reason="PROMPT_TOO_LONG",
            )
        if error is not None or not isinstance(reply.get("text"), str):
            raise InvalidArgumentError(
                f"the chat template failed: {reply.get('message', 'no text')}",
                reason="INVALID_FIELD",
                metadata={"field": TEMPLATE_FIELD},
            )
        return reply["text"]

    @staticmethod
    async def _exchange(worker: _Worker, request: bytes, max_reply: int) -> dict[str, Any]:
        stdin, stdout = worker.proc.stdin, worker.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(_LENGTH.pack(len(request)) + request)
        await stdin.drain()
        (size,) = _LENGTH.unpack(await stdout.readexactly(_LENGTH.size))
        if size > max_reply:
            raise ValueError(f"a reply of {size} bytes")
        reply = json.loads(await stdout.readexactly(size))
        if not isinstance(reply, dict):
            raise ValueError("a reply that is not an object")
        return reply

    def close(self) -> list[asyncio.subprocess.Process]:
        """Stops every worker (a render in progress fails); returns their processes to wait for."""
        procs = []
        for worker in [*self._idle, *self._busy]:
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
            worker.kill()
            procs.append(worker.proc)
        self._idle.clear()
        self._busy.clear()
        return procs

    async def aclose(self) -> None:
        for proc in self.close():
            await proc.wait()
