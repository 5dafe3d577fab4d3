"""IdleWatch: the Episode stream's bound on client silence, one timer per stream. Only waits for
the client count; a read that waits longer than the bound ends the stream with IDLE_TIMEOUT."""

from __future__ import annotations

import asyncio

import pytest
from rollmesh.env.idle import IdleWatch
from rollmesh.errors import DeadlineExceededError

IDLE_S = 0.2


async def _read(idle: IdleWatch, wait_s: float) -> None:
    idle.waiting()
    try:
        await asyncio.sleep(wait_s)  # the client's next message arrives after wait_s
    finally:
        idle.heard()


async def test_a_silent_client_is_cut_off_after_the_bound() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(DeadlineExceededError, match=r"no message from the client for 0\.2 s") as caught:
        async with IdleWatch(IDLE_S) as idle:
            await _read(idle, 0.05)
            await _read(idle, 10)
    assert caught.value.reason == "IDLE_TIMEOUT"
    assert IDLE_S + 0.05 <= loop.time() - t0 < IDLE_S + 0.05 + 1.0


async def test_many_short_waits_add_up_to_more_than_the_bound() -> None:
    # Each wait is shorter than the bound; the timer armed at the first read fires during a later
    # one and must re-arm for that read instead of expiring it.
    async with IdleWatch(IDLE_S) as idle:
        for _ in range(6):
            await _read(idle, 0.5 * IDLE_S)


async def test_the_servers_own_work_is_not_client_silence() -> None:
    async with IdleWatch(IDLE_S) as idle:
        await _read(idle, 0.01)
        await asyncio.sleep(3 * IDLE_S)  # a slow environment step, no read in progress
        await _read(idle, 0.01)


async def test_other_errors_pass_through_and_no_timer_is_left() -> None:
    with pytest.raises(TimeoutError):  # the environment's own time-out, not the client's silence
        async with IdleWatch(IDLE_S) as idle:
            idle.waiting()
            raise TimeoutError
    assert idle._timer is None
    async with IdleWatch(0) as unbounded:  # 0: no bound
        await _read(unbounded, 0.01)
    assert unbounded._timer is None
