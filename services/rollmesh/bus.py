"""The NATS JetStream bus: subjects, streams, publishing with dedup, dead letters and
the policy-version KV bucket. Everything on the bus is a rollmesh.v1 protobuf message, so any
language can read it.

| subject                           | stream     |
|-----------------------------------|------------|
| rollmesh.rollouts.<run>.<env>     | ROLLOUTS   | (file storage, dedup by Nats-Msg-Id = trajectory_id)
| rollmesh.monitor.<app>            | MONITOR    |
| rollmesh.scores.<app>             | SCORES     |
| rollmesh.deadletter.<subject>     | DEADLETTER |
| policy versions                   | KV rollmesh-policy, key = run id |
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import Message as PbMessage
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from rollmesh.errors import InvalidArgumentError, ResourceExhaustedError, UnavailableError
from rollmesh.proto.v1 import bus_pb2, trajectory_pb2
from rollmesh.security.tls import TlsConfig
from rollmesh.security.tls import current as current_tls
from rollmesh.telemetry import get_logger

log = get_logger(__name__)

PREFIX = "rollmesh"
POLICY_BUCKET = "rollmesh-policy"
MSG_ID = "Nats-Msg-Id"
# A subject token: no '.', wildcards or whitespace.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-=]+$")

DAY_S = 24 * 3600.0


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    storage: StorageType = StorageType.FILE
    max_age_s: float = 7 * DAY_S
    max_bytes: int = -1
    # Window in which a republished Nats-Msg-Id is dropped as a duplicate.
    duplicate_window_s: float = 2 * 60.0

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            storage=self.storage,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_s,
        )


ROLLOUTS = StreamSpec("ROLLOUTS", (f"{PREFIX}.rollouts.>",), duplicate_window_s=DAY_S, max_age_s=30 * DAY_S)
MONITOR = StreamSpec("MONITOR", (f"{PREFIX}.monitor.>",), duplicate_window_s=10 * 60.0)
SCORES = StreamSpec("SCORES", (f"{PREFIX}.scores.>",))
DEADLETTER = StreamSpec("DEADLETTER", (f"{PREFIX}.deadletter.>",), max_age_s=30 * DAY_S)
STREAMS = (ROLLOUTS, MONITOR, SCORES, DEADLETTER)


def token(what: str, value: str) -> str:
    if not _TOKEN_RE.match(value):
        raise InvalidArgumentError(
            f"invalid {what} {value!r} for a NATS subject: use letters, digits, '-', '_' or '=' "
            "(no '.', spaces or wildcards)",
            reason="INVALID_SUBJECT_TOKEN",
        )
    return value


def rollouts_subject(run_id: str, env: str = "*") -> str:
    """`rollmesh.rollouts.<run>.<env>`; env "*" matches every environment of the run."""
    return f"{PREFIX}.rollouts.{token('run id', run_id)}.{env if env == '*' else token('environment', env)}"


def monitor_subject(app: str = "*") -> str:
    return f"{PREFIX}.monitor.{app if app in ('*', '>') else token('app', app)}"


def scores_subject(app: str = "*") -> str:
    return f"{PREFIX}.scores.{app if app in ('*', '>') else token('app', app)}"


def deadletter_subject(subject: str) -> str:
    """The dead-letter subject of a message that arrived on `subject`."""
    return f"{PREFIX}.deadletter.{subject.removeprefix(PREFIX + '.')}"


async def connect(
    nats_url: str, *, name: str = "rollmesh", connect_timeout_s: float = 5.0, tls: TlsConfig | None = None
) -> NATS:
    """A NATS connection that fails fast at start (a bus that is down is a clear error) and
    reconnects forever once it has connected. `nats_url` may list several servers, comma-separated.
    With TLS settings (default: the process's, security.tls.current()) it connects over TLS with
    this process's certificate, which the server maps to a user with its roles' permissions."""
    tls = current_tls() if tls is None else tls
    servers = [u.strip() for u in nats_url.split(",") if u.strip()]
    secure: dict[str, Any] = {"tls": tls.client_ssl_context()} if tls.enabled else {}

    connected = False

    async def _error(e: Exception) -> None:
        if connected:  # before the first connect, the one error raised below says it all
            log.warning("nats: %s", e)

    try:
        # nats-py retries the first connect too when reconnects are unlimited: bound the wait.
        nc = await asyncio.wait_for(
            nats.connect(
                servers,
                name=name,
                **secure,
                connect_timeout=connect_timeout_s,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=_error,
            ),
            timeout=connect_timeout_s * 2,
        )
    except (OSError, nats.errors.Error, TimeoutError) as e:
        raise UnavailableError(
            f"cannot reach NATS at {nats_url}: {e!r}; is nats-server running? (`rollmesh nats` starts one)",
            reason="NATS_DOWN",
        ) from e
    connected = True
    return nc


async def ensure_streams(js: JetStreamContext, specs: tuple[StreamSpec, ...] = STREAMS) -> None:
    """Creates the streams, or brings an existing one's config up to date. Idempotent. A stream
    that exists as configured is only looked at, so publishers and readers, whose NATS users may
    not create or change streams, can call this too."""
    for spec in specs:
        config = spec.config()
        try:
            have = (await js.stream_info(spec.name)).config.as_dict()
        except nats.js.errors.NotFoundError:
            have = None
        if have is not None and all(have.get(k) == v for k, v in config.as_dict().items()):
            continue
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Exists with a different config (err 10058): update what may be updated.
            await js.update_stream(config)


async def ensure_policy_bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(POLICY_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(KeyValueConfig(bucket=POLICY_BUCKET, history=16))
        except nats.js.errors.BadRequestError:  # created concurrently
            return await js.key_value(POLICY_BUCKET)


class Publisher:
    """Publishes protobuf messages to JetStream with acks awaited in batches (one ack round trip
    per message caps a client at a few hundred msgs/s). A message larger than the server's max
    payload is refused with RESOURCE_EXHAUSTED before anything is sent."""

    def __init__(self, nc: NATS, js: JetStreamContext, *, max_pending: int = 256) -> None:
        self.nc = nc
        self.js = js
        self._pending: list[asyncio.Future[object]] = []
        self._max_pending = max_pending

    def check_size(self, subject: str, data: bytes) -> None:
        limit = self.nc.max_payload
        if len(data) > limit:
            raise ResourceExhaustedError(
                f"message for {subject} is {len(data)} bytes, over the NATS server's max_payload of {limit} "
                "bytes; raise max_payload in nats-server.conf or shorten the episode",
                reason="PAYLOAD_TOO_LARGE",
                metadata={"size": str(len(data)), "max_payload": str(limit)},
            )

    async def publish(
        self, subject: str, message: PbMessage | bytes, *, msg_id: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        """Queues a publish; its ack is awaited by `flush()` (or when too many are pending)."""
        data = message if isinstance(message, bytes) else message.SerializeToString()
        self.check_size(subject, data)
        hdrs = dict(headers or {})
        if msg_id:
            hdrs[MSG_ID] = msg_id
        self._pending.append(asyncio.ensure_future(self.js.publish(subject, data, headers=hdrs or None, timeout=10.0)))
        if len(self._pending) >= self._max_pending:
            await self.flush()

    async def publish_now(
        self, subject: str, message: PbMessage | bytes, *, msg_id: str = "", headers: Mapping[str, str] | None = None
    ) -> bool:
        """Publishes and awaits the ack. Returns False when JetStream dropped it as a duplicate."""
        data = message if isinstance(message, bytes) else message.SerializeToString()
        self.check_size(subject, data)
        hdrs = dict(headers or {})
        if msg_id:
            hdrs[MSG_ID] = msg_id
        ack = await self.js.publish(subject, data, headers=hdrs or None, timeout=10.0)
        return not ack.duplicate

    async def flush(self) -> None:
        """Awaits every pending ack; raises the first failure after all have settled."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        results = await asyncio.gather(*pending, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise UnavailableError(
                    f"JetStream did not acknowledge a publish: {r!r}", reason="PUBLISH_FAILED"
                ) from r

    async def publish_trajectory(self, trajectory: trajectory_pb2.Trajectory, *, now: bool = True) -> bool:
        """Publishes to rollmesh.rollouts.<run>.<env>, deduplicated by trajectory id."""
        if not trajectory.trajectory_id or not trajectory.run_id:
            raise InvalidArgumentError("a published trajectory needs trajectory_id and run_id", reason="MISSING_FIELD")
        subject = rollouts_subject(trajectory.run_id, trajectory.task.env or trajectory.provenance.env_name)
        if now:
            return await self.publish_now(subject, trajectory, msg_id=trajectory.trajectory_id)
        await self.publish(subject, trajectory, msg_id=trajectory.trajectory_id)
        return True

    async def dead_letter(
        self,
        subject: str,
        reason: str,
        payload: bytes,
        *,
        service: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Parks a message that could not be processed on rollmesh.deadletter.<subject>, with why."""
        failed_at = Timestamp()
        failed_at.GetCurrentTime()
        letter = bus_pb2.DeadLetter(
            subject=subject,
            reason=reason,
            payload=payload[: max(0, self.nc.max_payload - 4096)],
            headers=dict(headers or {}),
            failed_at=failed_at,
            service=service,
        )
        log.warning("dead letter from %s on %s: %s", service, subject, reason)
        await self.publish_now(deadletter_subject(subject), letter)


class PolicyStore:
    """The trainer's current policy version per run, in KV bucket rollmesh-policy."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> PolicyStore:
        return cls(await ensure_policy_bucket(js))

    async def get(self, run_id: str) -> bus_pb2.PolicyVersion | None:
        try:
            entry = await self.kv.get(token("run id", run_id))
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return bus_pb2.PolicyVersion.FromString(entry.value)

    async def version(self, run_id: str) -> int:
        current = await self.get(run_id)
        return current.version if current else 0

    async def put(self, run_id: str, version: int, *, checkpoint: str = "") -> bus_pb2.PolicyVersion:
        updated = Timestamp()
        updated.GetCurrentTime()
        record = bus_pb2.PolicyVersion(run_id=run_id, version=version, updated_at=updated, checkpoint=checkpoint)
        await self.kv.put(token("run id", run_id), record.SerializeToString())
        return record
