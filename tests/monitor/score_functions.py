"""Reward functions loaded by import path ("monitor.score_functions:NAME") in the live scoring tests."""

from __future__ import annotations

import asyncio


async def slow_one(completion: list[dict], delay_s: float = 0.3) -> float:
    """1 after a pause: keeps traces in flight long enough to kill the replica holding them."""
    await asyncio.sleep(delay_s)
    return 1.0


def long_failure(completion: list[dict]) -> float:
    """Fails with a long message (scores carry errors, truncated)."""
    raise ValueError("x" * 5000)
