"""What a reward function sees of a trajectory.

- `completion`: the content of the final assistant message (empty when the model said nothing);
  built-ins compare it, after their optional `extract` step, with `answer`;
- `answer`: trajectory.task.answer (the reference answer);
- `prompt`: trajectory.task.prompt; `messages`: the whole conversation (trajectory.messages);
- `completion_messages`: the messages after the prompt (what the SDK calls `completion`);
- `state`, `info`: the environment's final public state and the task's metadata, as dicts.

Python reward functions loaded by import path get the environment SDK's context instead (see
`sdk_kwargs`), so the same function works inline in an environment and in the rubric service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import convert
from ..env.rubric import reward_context
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..types import Message, Task


@dataclass
class ScoreContext:
    trajectory: traj_pb.Trajectory
    env: str
    task: Task
    messages: list[Message]
    state: dict[str, Any]
    completion_messages: list[Message] = field(init=False)
    completion: str = field(init=False)

    def __post_init__(self) -> None:
        self.completion_messages = completion_messages(self.task.prompt, self.messages)
        self.completion = final_assistant_text(self.completion_messages)

    @property
    def answer(self) -> str:
        return self.task.answer

    @property
    def prompt(self) -> list[Message]:
        return self.task.prompt

    @property
    def info(self) -> dict[str, Any]:
        return self.task.info

    @property
    def question(self) -> str:
        """The last user message of the prompt (what a judge is asked about)."""
        for m in reversed(self.task.prompt):
            if m.get("role") == "user":
                return m.get("content") or ""
        return ""

    def sdk_kwargs(self) -> dict[str, Any]:
        """The environment SDK's reward context (completion = messages after the prompt)."""
        return reward_context(self.task, self.messages, self.state)

    @classmethod
    def of(cls, trajectory: traj_pb.Trajectory) -> ScoreContext:
        return cls(
            trajectory=trajectory,
            env=trajectory.task.env,
            task=convert.task_from_pb(trajectory.task),
            messages=convert.messages_from_pb(trajectory.messages),
            state=convert.from_struct(trajectory.state),
        )


def completion_messages(prompt: list[Message], messages: list[Message]) -> list[Message]:
    """Messages after the prompt. When the conversation does not start with the prompt (a client
    that sent only the completion), everything from the first assistant message on."""
    n = len(prompt)
    if len(messages) >= n and all(m.get("role") == p.get("role") for m, p in zip(messages, prompt, strict=False)):
        return messages[n:]
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            return messages[i:]
    return []


def final_assistant_text(messages: list[Message]) -> str:
    for m in reversed(messages):
        if m.get("role") == "assistant":
            return m.get("content") or ""
    return ""


def render_messages(messages: list[Message]) -> str:
    """A plain-text transcript (for judge prompts)."""
    lines = []
    for m in messages:
        text = m.get("content") or ""
        for c in m.get("tool_calls") or ():
            fn = c.get("function", {})
            text += f"\n[tool call {fn.get('name', '')}({fn.get('arguments', '')})]"
        lines.append(f"{m.get('role', '')}: {text.strip()}")
    return "\n".join(lines)
