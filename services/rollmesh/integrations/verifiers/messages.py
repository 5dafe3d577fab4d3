"""rollmesh messages (OpenAI-style dicts) ↔ verifiers messages (pydantic models whose tool calls
are flat `{id, name, arguments}`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from verifiers.legacy.types import Response, ResponseMessage, ToolCall
from verifiers.legacy.utils.message_utils import normalize_messages

from ...errors import InvalidArgumentError, quoted
from ...types import Message


def to_verifiers(messages: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Drops empty optional fields first: proto3 sends "" for an unset tool_call_id or name."""
    cleaned = [
        {k: v for k, v in m.items() if v not in (None, "", [])} | {"content": m.get("content") or ""} for m in messages
    ]
    return normalize_messages(cleaned)


def from_verifiers(messages: Iterable[Any]) -> list[Message]:
    return [_from_verifiers(m) for m in messages]


def _from_verifiers(message: Any) -> Message:
    raw = message if isinstance(message, Mapping) else message.model_dump(exclude_none=True)
    role = raw.get("role")
    if role not in ("system", "user", "assistant", "tool"):
        raise InvalidArgumentError(
            f"verifiers message role {quoted(role)} is not supported (chat messages only)",
            reason="INVALID_FIELD",
            metadata={"field": "message.role"},
        )
    out: Message = {"role": role, "content": _text(raw.get("content"))}
    calls = raw.get("tool_calls") or []
    if calls:
        out["tool_calls"] = [
            c
            if "function" in c
            else {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls
        ]
    for key in ("tool_call_id", "name"):
        if raw.get(key):
            out[key] = raw[key]
    return out


def _text(content: Any) -> str:
    """Text of a message; content parts (images, audio) have no place in a token-exact text
    episode, so only their text parts are kept."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")


def response_of(action: Message, model: str) -> Any:
    """The policy's assistant message as the `Response` a verifiers client would have returned."""
    calls = [
        ToolCall(
            id=c.get("id") or f"call_{i}", name=c["function"]["name"], arguments=c["function"].get("arguments") or "{}"
        )
        for i, c in enumerate(action.get("tool_calls") or ())
    ]
    message = ResponseMessage(
        content=action.get("content") or "",
        tool_calls=calls or None,
        finish_reason="tool_calls" if calls else "stop",
        is_truncated=False,
    )
    return Response(id=f"rollmesh-{time.time_ns()}", created=int(time.time()), model=model, message=message)
