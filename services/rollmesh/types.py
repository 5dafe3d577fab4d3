"""Plain data types of the environment SDK. Messages are OpenAI-style dicts so that environment
code reads like the chat APIs people already know."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
"""{"role", "content", "tool_calls": [{"id", "type": "function", "function": {"name", "arguments"}}],
"tool_call_id", "name"}"""

State = dict[str, Any]
"""Per-episode scratch space of an environment. JSON-serialisable entries are returned to the
client with the final step; keys starting with "_" stay on the server."""


@dataclass
class Task:
    task_id: str
    prompt: list[Message]
    answer: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    split: str = "train"


@dataclass
class StepResult:
    """The environment's answer to one assistant message."""

    messages: list[Message]
    done: bool
    turn: int
    stop_reason: str = ""  # "done" | "max_turns" when done
    rewards: dict[str, float] = field(default_factory=dict)
    reward: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    state: State | None = None  # public state, set when done
