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

On a JetStream cluster every stream and KV bucket is kept in `replicas` copies (BusSettings: the
mesh's `[nats] replicas`, or ROLLMESH_NATS_REPLICAS), so it survives the loss of a minority of nodes.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
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

from rollmesh.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError, UnavailableError
from rollmesh.proto.v1 import bus_pb2, trajectory_pb2
from rollmesh.security.tls import TlsConfig
from rollmesh.security.tls import current as current_tls
from rollmesh.telemetry import get_logger, inject_trace_headers, trace_headers

log = get_logger(__name__)

PREFIX = "rollmesh"
POLICY_BUCKET = "rollmesh-policy"
MSG_ID = "Nats-Msg-Id"
# A subject token: no '.', wildcards or whitespace.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-=]+$")

DAY_S = 24 * 3600.0
PING_INTERVAL_S = 5.0
MAX_OUTSTANDING_PINGS = 3
# How long a publish keeps retrying (same Nats-Msg-Id: JetStream drops a repeat) while the bus is in
# transition: a client reconnecting to another server, a stream electing a new leader (4-9 s of raft).
PUBLISH_RETRY_S = 30.0
PUBLISH_TIMEOUT_S = 10.0
_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)


def transient(error: BaseException) -> bool:
    """A NATS failure that another try, a moment later, may not meet."""
    return isinstance(error, _TRANSIENT)


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    storage: StorageType = StorageType.FILE
    max_age_s: float = 7 * DAY_S
    max_bytes: int = -1
    # Window in which a republished Nats-Msg-Id is dropped as a duplicate.
    duplicate_window_s: float = 2 * 60.0

    def config(self, replicas: int = 1) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            storage=self.storage,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_s,
            num_replicas=replicas,
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


# ---- bus settings (this process's) ----------------------------------------------------------------

ENV_REPLICAS = "ROLLMESH_NATS_REPLICAS"
MAX_REPLICAS = 5  # JetStream keeps at most 5 copies of a stream
# JetStream API error codes that mean "this many replicas cannot be placed here": not enough
# servers (10005), over the maximum (10052), a single server (10074).
_PLACEMENT_ERRORS = frozenset({10005, 10052, 10074})


def check_replicas(value: object, *, source: str) -> int:
    """`value` as a replica count, or an InvalidArgumentError that names `source` and the range."""
    try:
        n = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        n = 0
    if isinstance(value, bool) or not 1 <= n <= MAX_REPLICAS:
        raise InvalidArgumentError(
            f"{source} = {value!r}: replicas must be a whole number from 1 to {MAX_REPLICAS} (JetStream keeps at most "
            f"{MAX_REPLICAS} copies; 1 for a single nats-server, 3 or 5 for a cluster of at least that many)",
            reason="BAD_REPLICAS",
        )
    return n


@dataclass(frozen=True)
class BusSettings:
    """How this process sets up the bus. `replicas`: the copies JetStream keeps of every stream and KV
    bucket the mesh uses (R3 on a 3-node cluster survives the loss of one node). None = not set: new
    streams get R1 and existing ones keep theirs, so a process without the setting never scales down
    what a configured one set up (and publishers, which may not change streams, only look)."""

    replicas: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BusSettings:
        raw = (os.environ if env is None else env).get(ENV_REPLICAS, "").strip()
        return cls(replicas=check_replicas(raw, source=ENV_REPLICAS) if raw else None)

    def overridden(self, *, replicas: int | None = None) -> BusSettings:
        """These settings with the given (non-None) values taking precedence."""
        if replicas is None:
            return self
        return replace(self, replicas=check_replicas(replicas, source="replicas"))

    def env(self) -> dict[str, str]:
        """Environment variables that give a child process these settings."""
        return {ENV_REPLICAS: str(self.replicas)} if self.replicas is not None else {}


_settings: BusSettings | None = None


def settings() -> BusSettings:
    """This process's bus settings: what configure() set, else the environment (ROLLMESH_NATS_REPLICAS)."""
    global _settings
    if _settings is None:
        _settings = BusSettings.from_env()
    return _settings


def configure(new: BusSettings | None) -> BusSettings | None:
    """Sets this process's bus settings (None: read the environment again); returns the previous ones."""
    global _settings
    previous, _settings = _settings, new
    return previous


def _placement_error(what: str, replicas: int, e: nats.js.errors.APIError) -> Exception:
    """A JetStream refusal to place `replicas` copies as an error that says why and what to do; other
    errors unchanged."""
    code = e.err_code or 0
    if code not in _PLACEMENT_ERRORS and "replica" not in (e.description or "").lower():
        return e
    if code == 10074:
        hint = "this NATS server is not a cluster: use replicas = 1, or a cluster (`rollmesh nats --cluster 3`)"
    elif code == 10052:
        hint = f"JetStream keeps at most {MAX_REPLICAS} copies"
    else:
        hint = f"the cluster has fewer than {replicas} JetStream servers up (replicas may not exceed the cluster size)"
    return FailedPreconditionError(
        f"cannot keep {replicas} replicas of {what}: {hint}; the server said: {e.description} (err_code {code})",
        reason="BAD_REPLICAS",
        metadata={"replicas": str(replicas), "err_code": str(code)},
    )


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
                # nats-py's default (2 min x 2 pings) leaves a client on a server that vanished
                # without a TCP reset (a cut link, a lost host) for minutes: notice it in seconds.
                ping_interval=PING_INTERVAL_S,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
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


_STREAM_NAME_IN_USE = 10058  # a stream of that name exists with another config


async def ensure_streams(
    js: JetStreamContext, specs: tuple[StreamSpec, ...] = STREAMS, *, replicas: int | None = None
) -> None:
    """Creates the streams, or brings an existing one's config up to date. Idempotent. A stream
    that exists as configured is only looked at, so publishers and readers, whose NATS users may
    not create or change streams, can call this too. `replicas` (default: settings().replicas):
    copies of each stream; unset, new streams get one and existing ones keep theirs."""
    replicas = settings().replicas if replicas is None else check_replicas(replicas, source="replicas")
    for spec in specs:
        try:
            have = (await js.stream_info(spec.name)).config
        except nats.js.errors.NotFoundError:
            have = None
        wanted = replicas or (have.num_replicas if have is not None and have.num_replicas else 1)
        config = spec.config(wanted)
        if have is not None:
            current = have.as_dict()
            if all(current.get(k) == v for k, v in config.as_dict().items()):
                continue
            if have.num_replicas != wanted:
                log.info("scaling stream %s from %s to %s replicas", spec.name, have.num_replicas, wanted)
        try:
            try:
                await (js.add_stream(config) if have is None else js.update_stream(config))
            except nats.js.errors.BadRequestError as e:
                if have is not None or e.err_code != _STREAM_NAME_IN_USE:
                    raise
                await js.update_stream(config)  # created concurrently with another config
        except nats.js.errors.APIError as e:
            raise _placement_error(f"stream {spec.name}", wanted, e) from e


async def ensure_key_value(js: JetStreamContext, config: KeyValueConfig, *, replicas: int | None = None) -> KeyValue:
    """The KV bucket `config.bucket`, created with `config` when missing. `replicas` (default:
    settings().replicas): copies of the bucket, also applied to an existing bucket; unset, a new
    bucket gets one and an existing one keeps its own."""
    replicas = settings().replicas if replicas is None else check_replicas(replicas, source="replicas")
    try:
        kv = await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        config = replace(config, replicas=replicas or 1)
        try:
            try:
                return await js.create_key_value(config)
            except nats.js.errors.BadRequestError as e:
                if e.err_code != _STREAM_NAME_IN_USE:
                    raise
                kv = await js.key_value(config.bucket)  # created concurrently with another config
        except nats.js.errors.APIError as e:
            raise _placement_error(f"KV bucket {config.bucket}", config.replicas, e) from e
    if replicas is not None:
        stream = f"KV_{config.bucket}"
        have = (await js.stream_info(stream)).config
        if have.num_replicas != replicas:
            log.info("scaling KV bucket %s from %s to %s replicas", config.bucket, have.num_replicas, replicas)
            try:
                await js.update_stream(replace(have, num_replicas=replicas))
            except nats.js.errors.APIError as e:
                raise _placement_error(f"KV bucket {config.bucket}", replicas, e) from e
    return kv


async def ensure_policy_bucket(js: JetStreamContext) -> KeyValue:
    return await ensure_key_value(js, KeyValueConfig(bucket=POLICY_BUCKET, history=16))


class Publisher:
    """Publishes protobuf messages to JetStream with acks awaited in batches (one ack round trip
    per message caps a client at a few hundred msgs/s). A message larger than the server's max
    payload is refused with RESOURCE_EXHAUSTED before anything is sent. Every message carries the
    W3C trace context of the span current at the call (headers traceparent/tracestate), unless
    the caller's headers name one."""

    def __init__(
        self, nc: NATS, js: JetStreamContext, *, max_pending: int = 256, retry_s: float = PUBLISH_RETRY_S
    ) -> None:
        """`retry_s`: how long one publish retries transient failures before it raises."""
        self.nc = nc
        self.js = js
        self._pending: list[tuple[asyncio.Future[Any], str, bytes, dict[str, str] | None]] = []
        self._max_pending = max_pending
        self.retry_s = retry_s

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
        hdrs = self._headers(msg_id, headers)
        sent = asyncio.ensure_future(self.js.publish(subject, data, headers=hdrs, timeout=PUBLISH_TIMEOUT_S))
        self._pending.append((sent, subject, data, hdrs))
        if len(self._pending) >= self._max_pending:
            await self.flush()

    async def publish_now(
        self, subject: str, message: PbMessage | bytes, *, msg_id: str = "", headers: Mapping[str, str] | None = None
    ) -> bool:
        """Publishes and awaits the ack. Returns False when JetStream dropped it as a duplicate."""
        data = message if isinstance(message, bytes) else message.SerializeToString()
        self.check_size(subject, data)
        ack = await self._send(subject, data, self._headers(msg_id, headers))
        return not ack.duplicate

    async def _send(
        self, subject: str, data: bytes, headers: dict[str, str] | None, *, first: BaseException | None = None
    ) -> Any:
        """One publish, retried with back-off while its failures are transient, for up to retry_s.
        Safe to repeat: a message with a Nats-Msg-Id that did get stored is dropped as a duplicate."""
        deadline = asyncio.get_running_loop().time() + self.retry_s
        delay, error = 0.1, first
        while True:
            if error is not None:
                if not transient(error) or asyncio.get_running_loop().time() + delay > deadline:
                    raise error
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            try:
                return await self.js.publish(subject, data, headers=headers, timeout=PUBLISH_TIMEOUT_S)
            except Exception as e:
                error = e

    @staticmethod
    def _headers(msg_id: str, headers: Mapping[str, str] | None) -> dict[str, str] | None:
        hdrs = dict(headers or {})
        if msg_id:
            hdrs[MSG_ID] = msg_id
        inject_trace_headers(hdrs)  # taken now: a queued publish is sent later, from another task
        return hdrs or None

    async def flush(self) -> None:
        """Awaits every pending ack; raises the first failure after all have settled."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        results = await asyncio.gather(*(sent for sent, *_ in pending), return_exceptions=True)
        # What failed is sent again, one at a time (most often the bus was between servers or leaders).
        retries = [
            self._send(subject, data, hdrs, first=r)
            for r, (_, subject, data, hdrs) in zip(results, pending, strict=True)
            if isinstance(r, BaseException)
        ]
        for r in await asyncio.gather(*retries, return_exceptions=True):
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
        """Parks a message that could not be processed on rollmesh.deadletter.<subject>, with why.
        `headers`: the message's own, kept in the letter; its trace context (else the current
        span's) goes on the letter's headers, so the letter shows in the failed message's trace."""
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
        await self.publish_now(deadletter_subject(subject), letter, headers=trace_headers(headers))


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
