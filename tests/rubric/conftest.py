"""Helpers of the rubric tests: trajectories built in code (the tiny model fixture is in
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rollmesh import convert
from rollmesh.proto.v1 import messages_pb2 as msg_pb
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb


def trajectory(
    completion: str | Sequence[dict[str, Any]],
    answer: str = "",
    *,
    question: str = "What is the answer?",
    env: str = "",
    info: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    error: str = "",
    completion_ids: Sequence[int] = (),
) -> traj_pb.Trajectory:
    """A finished trajectory: a user prompt, then `completion` (text of one assistant message, or messages)."""
    prompt = [{"role": "user", "content": question}]
    tail = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
    t = traj_pb.Trajectory(
        task=msg_pb.Task(
            env=env, task_id="t1", prompt=convert.messages_to_pb(prompt), answer=answer, info=convert.to_struct(info)
        ),
        messages=convert.messages_to_pb(prompt + tail),
        state=convert.to_struct(state),
        stop_reason=traj_pb.STOP_REASON_DONE,
    )
    if completion_ids:
        t.turns.add(completion_ids=completion_ids)
    if error:
        t.stop_reason = traj_pb.STOP_REASON_ERROR
        t.error.CopyFrom(traj_pb.Error(code=14, message=error, source="inference", retryable=True))
    return t
