"""Service discovery: live servers in the NATS KV bucket "rollmesh-registry".

Each server puts a `bus_pb2.ServiceRecord` under "<kind>.<name>.<instance_id>" and re-puts it on a
heartbeat. The bucket's max_age (TTL) expires the record of a server that died without
deregistering, so `list()` only sees live servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import uuid
from collections.abc import Mapping

import nats
import nats.errors
import nats.js.errors
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from rollmesh import bus
from rollmesh.errors import NotFoundError
from rollmesh.proto.v1 import bus_pb2
from rollmesh.telemetry import get_logger

log = get_logger(__name__)

REGISTRY_BUCKET = "rollmesh-registry"
PROTOCOL_VERSION = "v1"
_KIND_PREFIX = "SERVICE_KIND_"
# A KV key token: no '.', no wildcards or spaces ('/' and '-' are fine, e.g. model or env names).
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-=/]+$")


def kind_token(kind: int | str) -> str:
    """ServiceKind (enum value, "SERVICE_KIND_ENVIRONMENT" or "environment") -> "environment"."""
    if isinstance(kind, str):
        name = kind.upper()
        kind = bus_pb2.ServiceKind.Value(name if name.startswith(_KIND_PREFIX) else _KIND_PREFIX + name)
    if kind == bus_pb2.SERVICE_KIND_UNSPECIFIED:
        raise ValueError("service kind must be set (e.g. SERVICE_KIND_ENVIRONMENT)")
    return bus_pb2.ServiceKind.Name(kind).removeprefix(_KIND_PREFIX).lower()


def _check_token(what: str, value: str) -> str:
    if not _TOKEN_RE.match(value):
        raise ValueError(
            f"invalid registry {what} {value!r}: use letters, digits, '-', '_', '=' or '/' "
            "(no '.', spaces or wildcards; it is a token of a NATS KV key)"
        )
    return value


def record_key(record: bus_pb2.ServiceRecord) -> str:
    return ".".join(
        (
            kind_token(record.kind),
            _check_token("name", record.name),
            _check_token("instance_id", record.instance_id),
        )
    )


def record_for(
    kind: int | str,
    name: str,
    version: str,
    address: str,
    capacity: int,
    instance_id: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> bus_pb2.ServiceRecord:
    """A ServiceRecord; `instance_id` defaults to a random id unique to this call."""
    rec = bus_pb2.ServiceRecord(
        kind=bus_pb2.ServiceKind.Value(_KIND_PREFIX + kind_token(kind).upper()),
        name=name,
        version=version,
        address=address,
        capacity=capacity,
        instance_id=instance_id or uuid.uuid4().hex[:12],
        protocol_version=PROTOCOL_VERSION,
        labels=dict(labels or {}),
    )
    record_key(rec)  # validate early
    return rec


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class Registration:
    """One registered record, kept alive by a heartbeat task until close()."""

    def __init__(self, kv: KeyValue, key: str, record: bus_pb2.ServiceRecord, heartbeat_s: float):
        self.key = key
        self.record = record
        self._kv = kv
        self._heartbeat_s = heartbeat_s
        self._task: asyncio.Task[None] | None = None

    async def _put(self) -> None:
        self.record.heartbeat_at.CopyFrom(_now())
        await self._kv.put(self.key, self.record.SerializeToString())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._put()
            except Exception as e:  # NATS down or reconnecting: keep trying, the TTL is the judge
                log.warning("registry heartbeat failed", extra={"key": self.key, "error": repr(e)})

    async def close(self) -> None:
        """Stop the heartbeat and delete the record (deregister)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self._kv.delete(self.key)
        except Exception as e:  # connection gone: the TTL will expire the record anyway
            log.warning("registry deregister failed", extra={"key": self.key, "error": repr(e)})

    async def __aenter__(self) -> Registration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Registry:
    def __init__(self, nc: NATS, kv: KeyValue, ttl_s: float, own_connection: bool, bucket: str = REGISTRY_BUCKET):
        self.nc = nc
        self.kv = kv
        self.bucket = bucket
        self.ttl_s = ttl_s
        self._own = own_connection

    @classmethod
    async def connect(cls, nats_url: str, *, ttl_s: float = 15.0, bucket: str = REGISTRY_BUCKET) -> Registry:
        nc = await bus.connect(nats_url, name="rollmesh-registry")
        try:
            return await cls.from_client(nc, ttl_s=ttl_s, bucket=bucket, _own=True)
        except BaseException:
            await nc.close()
            raise

    @classmethod
    async def from_client(
        cls, nc: NATS, *, ttl_s: float = 15.0, bucket: str = REGISTRY_BUCKET, _own: bool = False
    ) -> Registry:
        """Use an existing NATS connection (left open by close())."""
        # Created on first use (a creation race lost to a different config keeps the winner's), with
        # the bus's replicas.
        kv = await bus.ensure_key_value(nc.jetstream(), KeyValueConfig(bucket=bucket, ttl=ttl_s, history=1))
        # The bucket's TTL wins over ours: the first creator picked it, and heartbeats must beat it.
        bucket_ttl = (await kv.status()).ttl
        return cls(nc, kv, bucket_ttl or ttl_s, _own, bucket)

    async def register(self, record: bus_pb2.ServiceRecord, *, heartbeat_s: float | None = None) -> Registration:
        """Put `record` now and every `heartbeat_s` (default ttl/3) until the Registration closes."""
        key = record_key(record)
        rec = bus_pb2.ServiceRecord()
        rec.CopyFrom(record)
        if not rec.protocol_version:
            rec.protocol_version = PROTOCOL_VERSION
        if not rec.HasField("started_at"):
            rec.started_at.CopyFrom(_now())
        reg = Registration(self.kv, key, rec, heartbeat_s or self.ttl_s / 3)
        await reg._put()
        reg._task = asyncio.create_task(reg._heartbeat(), name=f"registry-heartbeat:{key}")
        return reg

    async def list(self, kind: int | str | None = None, name: str | None = None) -> list[bus_pb2.ServiceRecord]:
        """Live records, optionally only of one kind and/or name, sorted by key."""
        subject = ".".join(
            (
                kind_token(kind) if kind is not None else "*",
                _check_token("name", name) if name is not None else "*",
                "*",
            )
        )
        # The KV stream lists its live subjects (expired records are gone from it), then one get
        # per key. Not a KV watch: nats-py's watch may signal "no more entries" before it has
        # counted entries already on their way, and report an empty registry.
        js = self.nc.jetstream()
        info = await js.stream_info(f"KV_{self.bucket}", subjects_filter=f"$KV.{self.bucket}.{subject}")
        prefix = f"$KV.{self.bucket}."
        out: dict[str, bus_pb2.ServiceRecord] = {}
        for key in sorted(s.removeprefix(prefix) for s in (info.state.subjects or {})):
            try:
                entry = await self.kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                continue  # deregistered (a delete marker) or expired since the listing
            if not entry.value:
                continue
            try:
                out[key] = bus_pb2.ServiceRecord.FromString(entry.value)
            except Exception:
                log.warning("skipping undecodable registry record", extra={"key": key})
        return [out[k] for k in sorted(out)]

    async def close(self) -> None:
        if self._own and not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def resolve(nats_url: str, kind: int, name: str, what: str) -> str:
    """The address of a random live server of `kind` registered as `name` (random, so that many
    clients spread over the replicas); NotFoundError naming `what` when there is none."""
    async with await Registry.connect(nats_url) as registry:
        records = await registry.list(kind, name)
    if not records:
        raise NotFoundError(f"no live {what} in the registry at {nats_url}")
    return random.choice(records).address


def _age(ts: Timestamp, now: float) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return f"{max(0.0, now - ts.ToNanoseconds() / 1e9):.1f}s"


async def print_services(nats_url: str) -> None:
    """`rollmesh ls`: a table of the live servers."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    async with await Registry.connect(nats_url) as reg:
        records = await reg.list()
    table = Table(title=f"rollmesh services ({nats_url})", box=box.SIMPLE)
    for col in ("kind", "name", "version", "address", "capacity", "instance", "seen"):
        table.add_column(col, justify="right" if col in ("capacity", "seen") else "left", no_wrap=True)
    now = time.time()
    for r in records:
        table.add_row(
            kind_token(r.kind),
            r.name,
            r.version,
            r.address,
            str(r.capacity),
            r.instance_id[:8],
            _age(r.heartbeat_at, now),
        )
    console = Console()
    if records:
        console.print(table)
    else:
        console.print(f"no live services registered in {REGISTRY_BUCKET!r} at {nats_url}")
