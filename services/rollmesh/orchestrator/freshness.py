"""Policy freshness (bounded staleness) of asynchronous RL.

A trajectory's lag is how many trainer steps its OLDEST model call is behind the trainer's current
policy version (bus.PolicyStore). Beyond `max_off_policy_steps` the importance ratios the trainer
computes are no longer trustworthy, so such a trajectory is dropped (counted, never published),
or kept with a smaller weight (metrics "sample_weight"), per `stale_policy`. The scheduler also
holds new episodes while the inference servers themselves lag the trainer by more than the bound
(everything they would generate is stale on arrival).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from ..bus import PolicyStore
from ..proto.v1 import trajectory_pb2 as traj_pb

log = logging.getLogger(__name__)

OFF_POLICY_STEPS = "off_policy_steps"
SAMPLE_WEIGHT = "sample_weight"

Verdict = Literal["keep", "drop", "downweight"]


def off_policy_steps(trajectory: traj_pb.Trajectory, current: int) -> int:
    """Trainer steps between the trajectory's oldest model call and `current` (0 without turns)."""
    if not trajectory.turns:
        return 0
    return max(0, current - min(t.policy_version for t in trajectory.turns))


def sample_weight(lag: int, max_off_policy_steps: int) -> float:
    """1 within the bound; beyond it, shrinking with the lag ((bound + 1) / (lag + 1))."""
    if lag <= max_off_policy_steps:
        return 1.0
    return (max_off_policy_steps + 1) / (lag + 1)


def judge(
    trajectory: traj_pb.Trajectory, current: int, max_off_policy_steps: int, policy: Literal["drop", "downweight"]
) -> Verdict:
    """Stamps metrics off_policy_steps and sample_weight; says what to do with the trajectory."""
    lag = off_policy_steps(trajectory, current)
    weight = sample_weight(lag, max_off_policy_steps)
    trajectory.metrics[OFF_POLICY_STEPS] = float(lag)
    trajectory.metrics[SAMPLE_WEIGHT] = weight
    if lag <= max_off_policy_steps:
        return "keep"
    return "drop" if policy == "drop" else "downweight"


class PolicyClock:
    """The trainer's current version of one run, read from the policy KV with a short cache (one KV
    read per `refresh_s`, not one per trajectory). None until the trainer has announced a version:
    eval runs have none, and nothing is judged stale."""

    def __init__(self, store: PolicyStore | None, run_id: str, *, refresh_s: float = 0.5) -> None:
        self.store = store
        self.run_id = run_id
        self.refresh_s = refresh_s
        self._value: int | None = None
        self._read_at = -1e18
        self._lock = asyncio.Lock()

    async def current(self) -> int | None:
        if self.store is None:
            return None
        if time.monotonic() - self._read_at < self.refresh_s:
            return self._value
        async with self._lock:
            if time.monotonic() - self._read_at >= self.refresh_s:
                try:
                    record = await self.store.get(self.run_id)
                    self._value = record.version if record is not None else None
                except Exception as e:  # NATS reconnecting: keep the last value
                    log.warning("cannot read the policy version of run %s: %r", self.run_id, e)
                self._read_at = time.monotonic()
        return self._value

    async def wait_for_inference(
        self, max_off_policy_steps: int, served_version: Callable[[bool], Awaitable[int]], *, poll_s: float = 0.25
    ) -> float:
        """Waits while the inference servers lag the trainer by more than the bound. Returns the
        seconds waited. `served_version(refresh)` is the newest version the inference servers serve
        (refresh=True: ask them, not the last version seen in a sample)."""
        t0 = time.monotonic()
        warned = t0
        refresh = False
        while True:
            current = await self.current()
            if current is None:
                return time.monotonic() - t0
            served = await served_version(refresh)
            refresh = True
            if current - served <= max_off_policy_steps:
                return time.monotonic() - t0
            now = time.monotonic()
            if now - warned > 30:
                warned = now
                log.warning(
                    "run %s: inference serves policy %d, the trainer is at %d (bound %d); waiting for new weights",
                    self.run_id,
                    served,
                    current,
                    max_off_policy_steps,
                )
            await asyncio.sleep(poll_s)
