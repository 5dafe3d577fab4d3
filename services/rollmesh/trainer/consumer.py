"""Where the trainer's rollouts come from, with exactly-once training across crashes.

Rollouts: a durable JetStream pull consumer on rollmesh.rollouts.<run>.* (stream ROLLOUTS).

Exactly once, by stream sequence: each checkpoint records the stream sequence of the last rollout
whose effect it contains (the cursor). On start the trainer re-creates its durable consumer to
deliver from cursor + 1, so a trainer killed after checkpoint k replays exactly the rollouts that
came after it, in stream order, whatever happened to acknowledgements; rollouts at or below the
cursor that JetStream redelivers while running are dropped. Deliveries must arrive without a gap
(each delivery has the next consumer sequence): one lost on the way (a connection cut while a pull
was answered, a server lost) would come back only after ack_wait, behind the cursor, and be dropped;
so at a gap the consumer is re-created just after the cursor and everything after it comes again,
in order. Acknowledgements follow checkpoints
(AckPolicy.ALL up to the checkpoint's cursor): they tell JetStream and operators how far training
is durable, and are never trusted for correctness. One trainer (its rank 0) reads one run.

Tracing: each rollout's message carries its publisher's trace context (bus.Publisher); it is read
here, once per message, so the trainer step that trains on it can link to the rollout's trace.

Exported trajectories: JSONL files (`rollmesh eval`'s trajectories.jsonl or `rollmesh export`
rows), read in order, with the line number as the cursor; the same exactly-once rules hold.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from google.protobuf import json_format
from google.protobuf.message import Error as PbError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry.trace import SpanContext

from .. import bus
from ..errors import InvalidArgumentError
from ..proto.v1 import trajectory_pb2 as traj_pb
from ..telemetry import get_logger, remote_span_context

log = get_logger(__name__)


@dataclass
class Delivery:
    """One rollout as delivered: its cursor position and raw bytes (decoded by the trainer)."""

    seq: int
    msg_id: str
    subject: str
    data: bytes
    handle: Any = None  # the NATS message, for the acknowledgement
    trace: SpanContext | None = None  # the publisher's span (from traceparent), for span links

    @property
    def headers(self) -> dict[str, str]:
        """The message's NATS headers ({} for a line of a file)."""
        return dict(getattr(self.handle, "headers", None) or {})


class RolloutConsumer:
    """The durable pull consumer of one run's rollouts."""

    def __init__(
        self,
        js: JetStreamContext,
        run_id: str,
        durable: str,
        *,
        ack_wait_s: float = 3600.0,
        max_ack_pending: int = 100_000,
    ) -> None:
        self.js = js
        self.run_id = run_id
        self.durable = durable
        self.subject = bus.rollouts_subject(run_id)
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.cursor = 0  # stream sequence of the last rollout handed out
        self._delivered = 0  # consumer sequence of the last delivery received
        self.resets = 0  # times a gap in the deliveries made the consumer start again
        self._sub: Any = None
        self._newest: Delivery | None = None  # newest delivery not yet acknowledged

    async def start(self, after_seq: int = 0) -> None:
        """(Re)creates the durable consumer positioned just after stream sequence `after_seq`
        (0 = the run's first rollout)."""
        await bus.ensure_streams(self.js, (bus.ROLLOUTS,))
        try:
            await self.js.delete_consumer(bus.ROLLOUTS.name, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.subject,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after_seq else DeliverPolicy.ALL,
            opt_start_seq=after_seq + 1 if after_seq else None,
            description=f"rollmesh trainer of run {self.run_id}",
        )
        self._sub = await self.js.pull_subscribe(
            self.subject, durable=self.durable, stream=bus.ROLLOUTS.name, config=config
        )
        self.cursor = after_seq
        self._delivered = 0
        self._newest = None  # a message of the consumer just deleted cannot be acknowledged
        log.info("consuming %s from stream sequence %d", self.subject, after_seq + 1)

    async def fetch(self, n: int, timeout_s: float = 5.0) -> list[Delivery]:
        """Up to `n` rollouts after the cursor; [] when none arrived within `timeout_s`."""
        try:
            msgs = await self._sub.fetch(n, timeout=timeout_s)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error as e:  # NATS reconnecting: the client retries; so do we, after a pause
            log.warning("fetching rollouts failed: %r; retrying", e)
            await asyncio.sleep(timeout_s)
            return []
        out = []
        for m in msgs:
            if m.metadata.sequence.consumer != self._delivered + 1:
                lost = m.metadata.sequence.consumer - self._delivered - 1
                log.warning(
                    "%d deliveries of %s were lost on the way; reading again from stream sequence %d",
                    lost, self.subject, self.cursor + 1,
                )  # fmt: skip
                self.resets += 1
                await self.start(self.cursor)
                break
            self._delivered = m.metadata.sequence.consumer
            seq = m.metadata.sequence.stream
            if seq <= self.cursor:  # a redelivery of something already handed out
                continue
            self.cursor = seq
            headers = m.header or {}
            d = Delivery(
                seq=seq,
                msg_id=headers.get(bus.MSG_ID, ""),
                subject=m.subject,
                data=m.data,
                handle=m,
                trace=remote_span_context(headers),
            )
            out.append(d)
            self._newest = d
        return out

    async def commit(self, through_seq: int) -> None:
        """Acknowledges every rollout up to `through_seq` (its effect is in a durable checkpoint)."""
        newest = self._newest
        if newest is None or newest.seq > through_seq:
            # Only the newest delivery is kept; the next commit at or past it acknowledges all.
            return
        try:
            await newest.handle.ack()
            self._newest = None
        except Exception as e:  # NATS down: the cursor in the checkpoint is what counts
            log.warning("could not acknowledge rollouts through %d: %r", through_seq, e)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
            self._sub = None


class FileSource:
    """Exported trajectories (JSONL of Trajectory JSON) as a rollout source; the cursor is the
    global line number across `files`, in order. Exhausted when every line was handed out."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = [Path(f) for f in files]
        for f in self.files:
            if not f.is_file():
                raise InvalidArgumentError(f"trajectory file {str(f)!r} does not exist", reason="FILE_NOT_FOUND")
        self.cursor = 0
        self._lines: list[tuple[str, str]] | None = None

    def _load(self) -> list[tuple[str, str]]:
        if self._lines is None:
            self._lines = [(str(f), line) for f in self.files for line in f.read_text().splitlines() if line.strip()]
        return self._lines

    async def start(self, after_seq: int = 0) -> None:
        self.cursor = after_seq

    @property
    def exhausted(self) -> bool:
        return self.cursor >= len(self._load())

    async def fetch(self, n: int, timeout_s: float = 0.0) -> list[Delivery]:
        lines = self._load()
        out = []
        for seq in range(self.cursor + 1, min(len(lines), self.cursor + n) + 1):
            path, line = lines[seq - 1]
            out.append(Delivery(seq=seq, msg_id="", subject=path, data=line.encode()))
        if out:
            self.cursor = out[-1].seq
        return out

    async def commit(self, through_seq: int) -> None:
        return None

    async def close(self) -> None:
        return None


def trajectory_from_row(row: dict[str, Any]) -> traj_pb.Trajectory:
    """A one-turn Trajectory from a `rollmesh export` row (prompt_ids, completion_ids,
    completion_mask, completion_logprobs, id, reward, advantage; per-turn rows carry `turn`)."""
    tid = str(row.get("id") or "")
    if row.get("turn") is not None:
        tid = f"{tid}#{row['turn']}"
    traj = traj_pb.Trajectory(
        trajectory_id=tid,
        run_id=str(row.get("run_id") or ""),
        reward=float(row.get("reward") or 0.0),
        advantage=float(row.get("advantage") or 0.0),
    )
    traj.turns.append(
        traj_pb.Turn(
            prompt_ids=row["prompt_ids"],
            completion_ids=row["completion_ids"],
            completion_mask=row.get("completion_mask") or [],
            completion_logprobs=row.get("completion_logprobs") or [],
            policy_version=int(row.get("policy_version") or 0),
        )
    )
    return traj


def decode(delivery: Delivery) -> traj_pb.Trajectory:
    """The Trajectory of a delivery: binary protobuf on the bus; in files, a Trajectory in proto
    JSON (`rollmesh eval`'s trajectories.jsonl) or a `rollmesh export` row. Raises ValueError."""
    traj = traj_pb.Trajectory()
    try:
        if delivery.handle is None and delivery.data.lstrip().startswith(b"{"):
            obj = json.loads(delivery.data)
            if "prompt_ids" in obj and "completion_ids" in obj:
                traj = trajectory_from_row(obj)
            else:
                json_format.ParseDict(obj, traj, ignore_unknown_fields=True)
        else:
            traj.ParseFromString(delivery.data)
    except (PbError, json_format.Error, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(str(e) or type(e).__name__) from e
    if not traj.trajectory_id and delivery.msg_id:
        traj.trajectory_id = delivery.msg_id
    return traj
