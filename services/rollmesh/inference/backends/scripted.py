"""The `scripted` backend: answers instantly with scripted replies, no model.

For benchmarks and tests of everything around inference (orchestrator, environments, the bus):
the mesh does all its real work (chat templates, token ids, streams, routing) while generation
costs nothing. Reply k of the script answers the k-th assistant turn of a conversation (counted
as the assistant role tokens in the prompt; the last reply repeats). Replies are tokenized once
with rollmesh's tiny tokenizer (built locally) and end with EOS, like a model that stopped; each
token gets the same logprob. Weight updates only bump the policy version.

Script sources (`--model` of `rollmesh inference serve --backend scripted`): a built-in script
name (see SCRIPTS), a JSON file holding a list of replies or {"replies": [...]}, or inline JSON.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InvalidArgumentError, UnavailableError
from ..backend import GenerationRequest, ParamSpec, TokenDelta

if TYPE_CHECKING:
    import torch


def _call(name: str, **arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


SCRIPTS: dict[str, list[str]] = {
    # A search-read-answer agent for wiki-search (three model calls, two tool calls).
    "wiki-search": [
        _call("search_pages", query="White Nile Blue Nile meet city"),
        _call("read_page", page_id="nile"),
        "The rivers meet in Sudan.\nANSWER: Khartoum",
    ],
    # Fixed guesses for guess-number (up to seven turns).
    "guess-number": ["50", "25", "75", "12", "37", "62", "87"],
    "arithmetic": ["42"],
    "echo": ["hello"],
}
LOGPROB = -0.25


def load_script(spec: str) -> list[str]:
    if spec in SCRIPTS:
        return list(SCRIPTS[spec])
    text = spec
    path = Path(spec)
    if not spec.lstrip().startswith(("[", "{")):
        if not path.is_file():
            raise InvalidArgumentError(
                f"scripted backend: {spec!r} is neither a built-in script ({', '.join(SCRIPTS)}) nor a JSON file"
            )
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgumentError(f"scripted backend: invalid JSON script: {e}") from None
    replies = data.get("replies") if isinstance(data, dict) else data
    if not isinstance(replies, list) or not replies or not all(isinstance(r, str) for r in replies):
        raise InvalidArgumentError('scripted backend: a script is a non-empty list of strings, or {"replies": [...]}')
    return replies


class ScriptedBackend:
    name = "scripted"

    def __init__(
        self,
        replies: Sequence[str],
        *,
        model: str = "scripted",
        context_length: int = 8192,
        tokenizer: Any = None,
        delay_s: float = 0.0,
    ) -> None:
        if not replies:
            raise InvalidArgumentError("scripted backend: the script needs at least one reply")
        if tokenizer is None:
            from ..tiny import build_tokenizer

            tokenizer = build_tokenizer(model_max_length=context_length)
        self.tokenizer = tokenizer
        self.model = model
        self.context_length = context_length
        self.policy_version = 0
        self.delay_s = delay_s  # per call: makes episodes overlap in tests
        self.calls = 0
        self.replies = list(replies)
        eos = tokenizer.eos_token_id
        self._reply_ids = [[*tokenizer(r, add_special_tokens=False)["input_ids"], eos] for r in self.replies]
        self._assistant_id = tokenizer.convert_tokens_to_ids("<|assistant|>")
        self._running = asyncio.Event()
        self._running.set()
        self._closed = False

    @classmethod
    def from_spec(cls, spec: str, *, name: str | None = None) -> ScriptedBackend:
        return cls(load_script(spec), model=name or f"scripted-{Path(spec).stem if Path(spec).is_file() else spec}")

    def turn_of(self, prompt_ids: list[int]) -> int:
        """1-based assistant turn the prompt asks for."""
        return max(1, prompt_ids.count(self._assistant_id))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        if self._closed:
            raise UnavailableError("the scripted backend is closed", reason="ENGINE_STOPPED")
        await self._running.wait()  # paused: hold new generations until resume
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        s = request.sampling
        k = self.turn_of(request.prompt_ids)
        text = self.replies[min(k, len(self.replies)) - 1]
        ids = self._reply_ids[min(k, len(self.replies)) - 1]
        room = min(s.max_tokens, self.context_length - len(request.prompt_ids))
        reason = "stop"
        if len(ids) > room:
            ids, reason = ids[:room], "length"
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for i in range(s.n):
            yield TokenDelta(
                index=i,
                token_ids=list(ids),
                logprobs=[LOGPROB] * len(ids) if s.logprobs else [],
                text=text,
                finish_reason=reason,
                policy_version=self.policy_version,
            )

    def param_specs(self) -> Mapping[str, ParamSpec]:
        return {}

    async def update_weights(self, tensors: Mapping[str, torch.Tensor], version: int) -> int:
        self.policy_version = version
        return len(tensors)

    async def load_weights(self, path: str, version: int) -> int:
        self.policy_version = version
        return 0

    async def pause(self) -> None:
        self._running.clear()

    async def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    async def close(self) -> None:
        self._closed = True
