"""Environments: tasks + a harness + rewards, free of any transport.

Subclass `MultiTurnEnv` (override `env_response`), use `SingleTurnEnv` for one-shot tasks or
`ToolEnv` to expose async Python functions as tools. Servers and the in-process runner drive
them through `Episode`.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import NotFoundError, UnimplementedError, quoted
from ..types import Message, State, Task
from .datasets import TaskSource, load_tasks
from .episode import Episode
from .rubric import RewardFn, Rubric, reward_context
from .tools import ToolFn, call_tool, tool_spec

if TYPE_CHECKING:
    from .agent import AgentContext, EpisodeResult


class Environment:
    """Base class. Hooks to override: `setup_state`, `env_response`, `is_done`, `score`, `cleanup`."""

    kind: ClassVar[str] = "multi_turn"  # "single_turn" | "multi_turn" | "tool"

    def __init__(
        self,
        *,
        name: str,
        tasks: TaskSource | Mapping[str, TaskSource] = (),
        version: str = "0.1.0",
        description: str = "",
        system_prompt: str | None = None,
        max_turns: int = 10,
        reward: Rubric | RewardFn | Sequence[RewardFn] | None = None,
        default_split: str | None = None,
        sampling: Mapping[str, Any] | None = None,
    ) -> None:
        if not name:
            raise ValueError("an environment needs a name")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.name = name
        self.version = version
        self.description = description or (inspect.getdoc(type(self)) or "").split("\n\n")[0]
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.rubric = Rubric.of(reward)
        self.sampling = dict(sampling or {})
        sources = tasks if isinstance(tasks, Mapping) else {default_split or "train": tasks}
        self.splits: dict[str, list[Task]] = {
            split: load_tasks(src, split, system_prompt) for split, src in sources.items()
        }
        self.default_split = default_split or next(iter(self.splits), "train")
        self._by_id = {split: {t.task_id: t for t in ts} for split, ts in self.splits.items()}

    # ---- hooks -------------------------------------------------------------------------------

    async def setup_state(self, task: Task, state: State) -> None:
        """Prepares per-episode state (sandboxes, hidden values). `state["_rng"]` is seeded."""

    async def env_response(self, messages: list[Message], state: State) -> list[Message]:
        """The environment's reply to the latest assistant message. Set `state["done"] = True`
        to end the episode after this reply."""
        return []

    async def is_done(self, messages: list[Message], state: State) -> bool:
        """Stop condition, checked after each assistant message and after each reply."""
        return bool(state.get("done"))

    async def score(self, task: Task, messages: list[Message], state: State) -> dict[str, float] | float:
        """Environment-specific reward of a finished conversation (the Score RPC). The default
        applies the environment's rubric."""
        if self.rubric is None:
            raise NotImplementedError(f"environment {self.name!r} has no rubric and does not implement score()")
        rewards, _ = await self.rubric.score(reward_context(task, messages, state))
        return rewards

    async def cleanup(self, state: State) -> None:
        """Frees per-episode resources; runs however the episode ends."""

    async def run_episode(self, task: Task, agent: AgentContext) -> EpisodeResult:
        """The environment's own agent loop (RunEpisode): play the whole episode, calling the model
        only through `agent` (its OpenAI-compatible endpoint, or `agent.run_program` for an external
        agent), and return the conversation. Overriding it sets has_run_episode; setup_state has run
        on `agent.state` and cleanup runs after."""
        raise UnimplementedError(f"environment {self.name!r} does not run episodes itself (has_run_episode is false)")

    # ---- engine ------------------------------------------------------------------------------

    @property
    def tools(self) -> list[ToolFn]:
        return []

    def tool_specs(self) -> list[dict[str, Any]]:
        return []

    @property
    def has_score(self) -> bool:
        return self.rubric is not None or type(self).score is not Environment.score

    @property
    def has_run_episode(self) -> bool:
        return type(self).run_episode is not Environment.run_episode

    @property
    def reward_names(self) -> list[str]:
        return list(self.rubric.names) if self.rubric else []

    def tasks(self, split: str | None = None) -> list[Task]:
        split = split or self.default_split
        if split not in self.splits:
            raise NotFoundError(
                f"environment {self.name!r} has no split {quoted(split)}; splits: {sorted(self.splits)}",
                reason="UNKNOWN_SPLIT",
            )
        return self.splits[split]

    def get_task(self, task_id: str, split: str | None = None) -> Task:
        split = split or self.default_split
        by_id = self._by_id.get(split)
        if by_id is None:
            self.tasks(split)  # raises the NotFoundError for the split
        task = by_id.get(task_id) if by_id is not None else None
        if task is None:
            raise NotFoundError(
                f"environment {self.name!r} has no task {quoted(task_id)} in split {quoted(split)} "
                f"({len(by_id or ())} tasks; list them with ListTasks)",
                reason="UNKNOWN_TASK",
            )
        return task

    def episode(
        self, task: Task, *, seed: int = 0, options: Mapping[str, Any] | None = None, episode_id: str = ""
    ) -> Episode:
        return Episode(self, task, seed=seed, options=options, episode_id=episode_id)

    @cached_property
    def digest(self) -> str:
        """sha256 of the environment's code and tasks: changes whenever either does."""
        h = hashlib.sha256()
        code: list[Any] = [cls for cls in type(self).__mro__ if cls is not object]
        code += [*self.tools, *(self.rubric.funcs if self.rubric else ())]  # rewards and tools are code too
        for obj in code:
            try:
                h.update(inspect.getsource(obj).encode())
            except (OSError, TypeError):
                h.update(getattr(obj, "__qualname__", type(obj).__qualname__).encode())
        h.update(json.dumps([self.max_turns, self.rubric.weights if self.rubric else []]).encode())
        for split in sorted(self.splits):
            for t in self.splits[split]:
                row = [split, t.task_id, t.prompt, t.answer, t.info]
                h.update(json.dumps(row, sort_keys=True, default=str).encode())
        return h.hexdigest()


class SingleTurnEnv(Environment):
    """One assistant message, then done."""

    kind: ClassVar[str] = "single_turn"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_turns", 1)
        super().__init__(**kwargs)

    async def is_done(self, messages: list[Message], state: State) -> bool:
        return True


class MultiTurnEnv(Environment):
    """The environment answers each assistant message (`env_response`) until a stop condition."""

    kind: ClassVar[str] = "multi_turn"


class ToolEnv(MultiTurnEnv):
    """The policy calls tools (plain async functions); the episode ends with a message that calls
    no tool, or at max_turns."""

    kind: ClassVar[str] = "tool"

    def __init__(self, *, tools: Sequence[ToolFn], tool_timeout_s: float = 30.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tools = {fn.__name__: fn for fn in tools}
        if len(self._tools) != len(tools):
            raise ValueError("tool names must be unique")
        self._specs = [tool_spec(fn) for fn in tools]
        self.tool_timeout_s = tool_timeout_s

    @property
    def tools(self) -> list[ToolFn]:
        return list(self._tools.values())

    def tool_specs(self) -> list[dict[str, Any]]:
        return self._specs

    async def is_done(self, messages: list[Message], state: State) -> bool:
        last = messages[-1]
        return bool(state.get("done")) or (last.get("role") == "assistant" and not last.get("tool_calls"))

    async def env_response(self, messages: list[Message], state: State) -> list[Message]:
        calls = messages[-1].get("tool_calls") or []
        results = await asyncio.gather(*(self._run_call(c) for c in calls))
        return [
            {"role": "tool", "tool_call_id": c.get("id", ""), "name": _call_name(c), "content": r}
            for c, r in zip(calls, results, strict=True)
        ]

    async def _run_call(self, call: Mapping[str, Any]) -> str:
        name = _call_name(call)
        fn = self._tools.get(name)
        if fn is None:
            return f"Error: unknown tool {name!r}. Available tools: {', '.join(self._tools)}."
        arguments = call.get("function", {}).get("arguments", "") or ""
        if not isinstance(arguments, str):  # tolerate already-parsed arguments
            arguments = json.dumps(arguments)
        return await call_tool(fn, arguments, timeout_s=self.tool_timeout_s)


def _call_name(call: Mapping[str, Any]) -> str:
    return str(call.get("function", {}).get("name", ""))
