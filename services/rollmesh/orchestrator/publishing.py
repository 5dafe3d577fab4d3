"""Publishing finished trajectories to JetStream (rollmesh.rollouts.<run>.<env>)."""

from __future__ import annotations

import contextlib

from opentelemetry import trace

from .. import bus
from ..errors import ResourceExhaustedError, UnavailableError
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..telemetry import start_span
from .episode_runner import error_pb
from .stats import RolloutStats


async def publish(publisher: bus.Publisher, t: traj_pb.Trajectory, stats: RolloutStats) -> None:
    """Publishes one trajectory (deduplicated by its id), retrying NATS hiccups. What cannot be
    stored becomes an errored trajectory with the reason (PAYLOAD_TOO_LARGE, PUBLISH_FAILED); one
    over max_payload is published without its bulk, so consumers still learn that it failed.
    Runs in a `publish` span, a child of the current one (the rollout's): the message's
    traceparent header is this span's."""
    with start_span(
        "publish",
        instrumentation="rollmesh.orchestrator",
        kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.message.id": t.trajectory_id},
    ) as span:
        result = await _publish(publisher, t, stats)
        span.set_attribute("rollmesh.publish_result", result)
        if result in ("too_large", "failed"):
            span.set_status(trace.Status(trace.StatusCode.ERROR, t.error.reason))


async def _publish(publisher: bus.Publisher, t: traj_pb.Trajectory, stats: RolloutStats) -> str:
    """What became of it: published, duplicate, too_large (published without its bulk) or failed
    (the publisher retries NATS hiccups, a reconnect or a leader election, for publisher.retry_s)."""
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
        return "too_large"
    except Exception as e:  # still failing after the publisher's retries
        stats.publish_failed += 1
        t.stop_reason = traj_pb.STOP_REASON_ERROR
        t.error.CopyFrom(
            error_pb(
                "orchestrator",
                UnavailableError(f"JetStream did not store the trajectory: {e!r}", reason="PUBLISH_FAILED"),
            )
        )
        t.advantage = 0.0
        return "failed"
    if fresh:
        stats.published += 1
    else:
        stats.duplicates += 1
    return "published" if fresh else "duplicate"
