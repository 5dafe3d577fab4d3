"""Conversions between protobuf messages and the SDK's plain dicts/dataclasses. Hand-written
(not json_format) because they run on every episode step."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import struct_pb2

from .errors import InvalidArgumentError, clip, quoted
from .proto.v1 import environment_pb2 as env_pb
from .proto.v1 import messages_pb2 as msg_pb
from .proto.v1 import trajectory_pb2 as traj_pb
from .types import Message, StepResult, Task

STOP_REASONS = {
    "": traj_pb.STOP_REASON_UNSPECIFIED,
    "done": traj_pb.STOP_REASON_DONE,
    "max_turns": traj_pb.STOP_REASON_MAX_TURNS,
    "length": traj_pb.STOP_REASON_LENGTH,
    "error": traj_pb.STOP_REASON_ERROR,
    "cancelled": traj_pb.STOP_REASON_CANCELLED,
}
STOP_REASON_NAMES = {v: k for k, v in STOP_REASONS.items()}


def message_to_pb(m: Mapping[str, Any]) -> msg_pb.Message:
    pb = msg_pb.Message(role=m.get("role") or "", content=m.get("content") or "")
    if m.get("tool_call_id"):
        pb.tool_call_id = m["tool_call_id"]
    if m.get("name"):
        pb.name = m["name"]
    if m.get("reasoning_content"):
        pb.reasoning_content = m["reasoning_content"]
    for c in m.get("tool_calls") or ():
        fn = c.get("function", {})
        args = fn.get("arguments", "")
        pb.tool_calls.add(
            id=c.get("id") or "",
            name=fn.get("name") or "",
            arguments_json=args if isinstance(args, str) else json.dumps(args),
        )
    return pb


def message_from_pb(pb: msg_pb.Message) -> Message:
    m: Message = {"role": pb.role, "content": pb.content}
    if pb.tool_calls:
        m["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
            for c in pb.tool_calls
        ]
    if pb.tool_call_id:
        m["tool_call_id"] = pb.tool_call_id
    if pb.name:
        m["name"] = pb.name
    if pb.reasoning_content:
        m["reasoning_content"] = pb.reasoning_content
    return m


def messages_to_pb(ms: Iterable[Mapping[str, Any]]) -> list[msg_pb.Message]:
    return [message_to_pb(m) for m in ms]


def messages_from_pb(pbs: Iterable[msg_pb.Message]) -> list[Message]:
    return [message_from_pb(p) for p in pbs]


def to_struct(d: Mapping[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        # round trip through JSON so that any value (sets, dataclasses, ...) becomes plain data
        s.update(json.loads(json.dumps(d, default=str)))
    return s


def from_struct(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python, as json_format.MessageToDict gives it (numbers as floats), also
    for the numbers JSON cannot hold: a double may be inf or nan on the wire, which MessageToDict
    refuses with a bare ValueError (a peer's bad value would become an UNKNOWN status)."""
    return {k: _from_value(v) for k, v in s.fields.items()} if s.fields else {}


def _from_value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return from_struct(v.struct_value)
    if kind == "list_value":
        return [_from_value(x) for x in v.list_value.values]
    if kind is None or kind == "null_value":
        return None
    return getattr(v, kind)


def tool_spec_to_pb(spec: Mapping[str, Any]) -> msg_pb.ToolSpec:
    return msg_pb.ToolSpec(
        name=spec["name"],
        description=spec.get("description", ""),
        parameters_json_schema=json.dumps(spec.get("parameters", {})),
    )


def tool_spec_from_pb(pb: msg_pb.ToolSpec) -> dict[str, Any]:
    parameters: Any = {}
    if pb.parameters_json_schema:
        try:
            parameters = json.loads(pb.parameters_json_schema)
        except (ValueError, RecursionError) as e:
            raise InvalidArgumentError(
                f"tool {quoted(pb.name)}: parameters_json_schema is not JSON ({clip(str(e), 200)})",
                reason="BAD_TOOL_SCHEMA",
            ) from None
        if not isinstance(parameters, dict):
            raise InvalidArgumentError(
                f"tool {quoted(pb.name)}: parameters_json_schema must be a JSON object (a JSON Schema)",
                reason="BAD_TOOL_SCHEMA",
            )
    return {"name": pb.name, "description": pb.description, "parameters": parameters}


def task_to_pb(t: Task, env: str) -> msg_pb.Task:
    return msg_pb.Task(
        env=env,
        task_id=t.task_id,
        prompt=messages_to_pb(t.prompt),
        answer=t.answer,
        info=to_struct(t.info),
        split=t.split,
    )


def task_from_pb(pb: msg_pb.Task) -> Task:
    return Task(
        task_id=pb.task_id,
        prompt=messages_from_pb(pb.prompt),
        answer=pb.answer,
        info=from_struct(pb.info),
        split=pb.split or "train",
    )


def step_to_pb(r: StepResult) -> env_pb.Step:
    pb = env_pb.Step(
        messages=messages_to_pb(r.messages), done=r.done, stop_reason=STOP_REASONS[r.stop_reason], turn=r.turn
    )
    if r.rewards:
        pb.rewards.update(r.rewards)
    if r.reward is not None:
        pb.reward, pb.has_reward = r.reward, True
    if r.metrics:
        pb.metrics.update(r.metrics)
    if r.state is not None:
        pb.state.CopyFrom(to_struct(r.state))
    return pb


def step_from_pb(pb: env_pb.Step) -> StepResult:
    return StepResult(
        messages=messages_from_pb(pb.messages),
        done=pb.done,
        turn=pb.turn,
        stop_reason=STOP_REASON_NAMES.get(pb.stop_reason, ""),
        rewards=dict(pb.rewards) if pb.rewards else {},  # an empty map's dict() costs more than the test
        reward=pb.reward if pb.has_reward else None,
        metrics=dict(pb.metrics) if pb.metrics else {},
        state=from_struct(pb.state) if pb.done else None,
    )
