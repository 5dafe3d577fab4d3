"""One episode of an environment: the state machine both the gRPC server and in-process runners
drive. Start, then one `step` per assistant message until done."""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from ..errors import FailedPreconditionError, InvalidArgumentError, quoted
from ..types import Message, State, StepResult, Task
from .rubric import Rubric, reward_context


class EpisodeHooks(Protocol):
    """What an episode needs of its environment (an `Environment` has all of it)."""

    max_turns: int
    rubric: Rubric | None

    async def setup_state(self, task: Task, state: State) -> None: ...
    async def env_response(self, messages: list[Message], state: State) -> list[Message]: ...
    async def is_done(self, messages: list[Message], state: State) -> bool: ...
    async def cleanup(self, state: State) -> None: ...


def validate_action(action: Message) -> Message:
    """An action is one assistant message. Empty content with no tool calls is a valid move (a model
    that said nothing): the environment answers it like any other reply (spec 3.3)."""
    role = action.get("role") or "assistant"
    if role != "assistant":
        raise InvalidArgumentError(
            f"an action is an assistant message, got role {quoted(role)}",
            reason="INVALID_FIELD",
            metadata={"field": "action.message.role"},
        )
    content = action.get("content")
    if content is not None and not isinstance(content, str):
        raise InvalidArgumentError(
            "action content must be a string", reason="INVALID_FIELD", metadata={"field": "action.message.content"}
        )
    for call in action.get("tool_calls") or ():
        if not call.get("function", {}).get("name"):
            raise InvalidArgumentError(
                "every tool call needs a function name",
                reason="INVALID_FIELD",
                metadata={"field": "action.message.tool_calls.name"},
            )
    return {**action, "role": "assistant", "content": content or ""}


class Episode:
    def __init__(
        self,
        env: EpisodeHooks,
        task: Task,
        *,
        seed: int = 0,
        options: Mapping[str, Any] | None = None,
        episode_id: str = "",
    ) -> None:
        self.env = env
        self.task = task
        self.episode_id = episode_id or uuid.uuid4().hex
        self.messages: list[Message] = [dict(m) for m in task.prompt]
        self.state: State = {"seed": seed, "options": dict(options or {}), "_rng": random.Random(seed)}
        self.turn = 0
        self.done = False
        self.started = False
        self.closed = False

    async def start(self) -> list[Message]:
        """Runs the environment's setup; returns the messages the policy sees first."""
        await self.env.setup_state(self.task, self.state)
        self.started = True
        return list(self.messages)

    async def step(self, action: Message) -> StepResult:
        if not self.started:
            raise InvalidArgumentError("the episode has not started", reason="NOT_STARTED")
        if self.done:
            raise FailedPreconditionError(
                f"episode {self.episode_id} is done (turn {self.turn}); start a new episode", reason="EPISODE_DONE"
            )
        env = self.env
        self.messages.append(validate_action(action))
        self.turn += 1
        self.state["turn"] = self.turn
        new: list[Message] = []
        stop_reason = ""
        if await env.is_done(self.messages, self.state):
            stop_reason = "done"
        else:
            new = list(await env.env_response(self.messages, self.state))
            self.messages.extend(new)
            if await env.is_done(self.messages, self.state):
                stop_reason = "done"
            elif self.turn >= env.max_turns:
                stop_reason = "max_turns"
        result = StepResult(messages=new, done=bool(stop_reason), turn=self.turn, stop_reason=stop_reason)
        if result.done:
            self.done = True
            await self._finish(result)
        return result

    async def _finish(self, result: StepResult) -> None:
        if self.env.rubric is not None:
            ctx = reward_context(self.task, self.messages, self.state)
            result.rewards, result.reward = await self.env.rubric.score(ctx)
        result.metrics = {"turns": float(self.turn), **self.state.get("metrics", {})}
        result.state = self.public_state()

    def public_state(self) -> State:
        return {k: v for k, v in self.state.items() if not k.startswith("_")}

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.env.cleanup(self.state)
