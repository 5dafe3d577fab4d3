"""Python reward functions loaded by import path ("rubric.reward_functions:NAME") in the tests."""

from __future__ import annotations

import asyncio


def contains_answer(completion: list[dict], answer: str) -> float:
    """The SDK convention: `completion` is the list of messages after the prompt."""
    return float(any(answer in (m.get("content") or "") for m in completion))


async def async_length(completion: list[dict], scale: float = 1.0) -> float:
    await asyncio.sleep(0)
    return scale * sum(len(m.get("content") or "") for m in completion)


def uses_state(state: dict, info: dict, task) -> float:
    return float(state.get("solved", 0)) + float(info.get("bonus", 0)) + float(task.task_id == "t1")


def not_a_number(completion: list[dict]) -> float:
    return float("nan")


def infinite(completion: list[dict]) -> float:
    return float("inf")


def raises(completion: list[dict]) -> float:
    raise RuntimeError("reward code bug")


def returns_text(completion: list[dict]) -> str:
    return "high"


def slow(completion: list[dict]) -> float:
    import time

    time.sleep(1.0)
    return 1.0


def needs_unknown(completion: list[dict], gold_label) -> float:
    return 1.0


NOT_CALLABLE = 3


# ---- concurrency probes: they finish only when `parties` calls are in flight at once -------------

_waiting: dict[str, tuple[int, asyncio.Event]] = {}


async def meet(completion: list[dict], key: str = "k", parties: float = 2) -> float:
    count, event = _waiting.get(key, (0, asyncio.Event()))
    count += 1
    _waiting[key] = (count, event)
    if count >= int(parties):
        event.set()
    await event.wait()
    return 1.0


class _AsyncScorer:
    async def __call__(self, completion: list[dict]) -> float:
        return 0.5


async_scorer = _AsyncScorer()
