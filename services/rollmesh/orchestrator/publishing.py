"""Publishing finished trajectories to JetStream (rollmesh.rollouts.<run>.<env>)."""

from __future__ import annotations

import asyncio
import contextlib

from .. import bus
from ..errors import ResourceExhaustedError, UnavailableError
from ..proto.v1 import trajectory_pb2 as traj_pb
from .episode_runner import error_pb
from .stats import RolloutStats

PUBLISH_ATTEMPTS = 3


async def publish(publisher: bus.Publisher, t: traj_pb.Trajectory, stats: RolloutStats) -> None:
    """Publishes one trajectory (deduplicated by its id), retrying NATS hiccups. What cannot be
    stored becomes an errored trajectory with the reason (PAYLOAD_TOO_LARGE, PUBLISH_FAILED); one
    over max_payload is published without its bulk, so consumers still learn that it failed."""
    last: BaseException | None = None
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            fresh = await publisher.publish_trajectory(t)
        except ResourceExhaustedError as e:
            # Too large even so: record it as an error and publish the record without its bulk.
            t.stop_reason = traj_pb.STOP_REASON_ERROR
            t.error.CopyFrom(error_pb("orchestrator", e, retryable=False))
            t.advantage = 0.0
            slim = traj_pb.Trajectory()
            slim.CopyFrom(t)
            del slim.turns[:], slim.messages[:]
            slim.ClearField("state")
            with contextlib.suppress(Exception):
                if await publisher.publish_trajectory(slim):
                    stats.published += 1
            return
        except Exception as e:  # NATS timeouts, reconnects
            last = e
            await asyncio.sleep(0.2 * 2**attempt)
            continue
        if fresh:
            stats.published += 1
        else:
            stats.duplicates += 1
        return
    stats.publish_failed += 1
    t.stop_reason = traj_pb.STOP_REASON_ERROR
    t.error.CopyFrom(
        error_pb(
            "orchestrator",
            UnavailableError(f"JetStream did not store the trajectory: {last!r}", reason="PUBLISH_FAILED"),
        )
    )
    t.advantage = 0.0
