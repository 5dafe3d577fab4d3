"""The assistant message of a model call: its text, and the tool calls written in it.

Models trained on the Hermes/Qwen format (and rollmesh's tiny model) write each call as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. A block that is not valid JSON with a
name stays in the text: the environment sees what the model wrote, and a tool environment ends the
episode on a message without calls, which its rewards judge. Calls the inference server already
parsed (Sample.tool_calls) are used as they are.
"""

from __future__ import annotations

import json
import re

from ..proto.v1 import messages_pb2 as msg_pb

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def assistant_message(
    text: str, parsed: list[msg_pb.ToolCall] | None = None, *, call_prefix: str = "call"
) -> msg_pb.Message:
    """An assistant message from a completion's text. An empty completion becomes a single space:
    the environment then judges an empty answer (a valid, reward-bearing outcome) instead of
    rejecting a message with neither content nor calls."""
    message = msg_pb.Message(role="assistant")
    if parsed:
        message.content = text
        message.tool_calls.extend(parsed)
        return message
    calls: list[msg_pb.ToolCall] = []
    kept: list[str] = []
    last = 0
    if "<tool_call>" in text:
        for m in _BLOCK.finditer(text):
            call = _parse_block(m.group(1), f"{call_prefix}_{len(calls)}")
            if call is None:
                continue
            kept.append(text[last : m.start()])
            last = m.end()
            calls.append(call)
    kept.append(text[last:])
    content = "".join(kept).strip() if calls else text
    message.content = content if content or calls else " "
    message.tool_calls.extend(calls)
    return message


def _parse_block(raw: str, call_id: str) -> msg_pb.ToolCall | None:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    arguments = args if isinstance(args, str) else json.dumps(args)
    return msg_pb.ToolCall(id=call_id, name=obj["name"], arguments_json=arguments)
