"""Inline rewards: weighted reward functions, verifiers-style. A function declares the context it
needs by parameter name (completion, answer, prompt, messages, state, info, task) and returns a
number. Weight 0 = reported as a metric, not rewarded."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..types import Message, State, Task

RewardFn = Callable[..., Any]

CONTEXT_KEYS = frozenset({"completion", "answer", "prompt", "messages", "state", "info", "task"})


def reward_context(task: Task, messages: list[Message], state: State) -> dict[str, Any]:
    return {
        "completion": messages[len(task.prompt) :],
        "answer": task.answer,
        "prompt": task.prompt,
        "messages": messages,
        "state": state,
        "info": task.info,
        "task": task,
    }


def _wanted(fn: RewardFn) -> tuple[frozenset[str], bool]:
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [
        n
        for n, p in params.items()
        if n not in CONTEXT_KEYS and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if unknown:  # fail when the rubric is built, not with a TypeError in the middle of an episode
        raise ValueError(
            f"reward function {getattr(fn, '__name__', fn)!r} has parameters {unknown} that the rubric "
            f"cannot fill; use any of {sorted(CONTEXT_KEYS)} (or give them defaults)"
        )
    return frozenset(params) & CONTEXT_KEYS, takes_all


class Rubric:
    def __init__(self, funcs: Sequence[RewardFn], weights: Sequence[float] | None = None) -> None:
        weights = list(weights) if weights is not None else [1.0] * len(funcs)
        if len(weights) != len(funcs):
            raise ValueError(f"Rubric got {len(funcs)} functions but {len(weights)} weights")
        names = [getattr(f, "__name__", f"reward_{i}") for i, f in enumerate(funcs)]
        if len(set(names)) != len(names):
            raise ValueError(f"Rubric function names must be unique, got {names}")
        self.funcs = list(funcs)
        self.weights = weights
        self.names = names
        self._signatures = [_wanted(f) for f in funcs]

    @classmethod
    def of(cls, reward: Rubric | RewardFn | Sequence[RewardFn] | None) -> Rubric | None:
        if reward is None or isinstance(reward, Rubric):
            return reward
        if callable(reward):
            return cls([reward])
        return cls(list(reward))

    async def score(self, context: dict[str, Any]) -> tuple[dict[str, float], float]:
        """Returns ({name: value}, weighted total). A non-finite value is an error, not a reward."""
        rewards: dict[str, float] = {}
        total = 0.0
        for fn, name, weight, (wanted, takes_all) in zip(
            self.funcs, self.names, self.weights, self._signatures, strict=True
        ):
            kwargs = context if takes_all else {k: context[k] for k in wanted}
            value = fn(**kwargs)
            if inspect.isawaitable(value):
                value = await value
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"reward function {name!r} returned {value}")
            rewards[name] = value
            total += weight * value
        return rewards, total
