"""A wire fuzzer for rollmesh gRPC servers in any language: every method of the given services gets
random bytes, truncated and oversized frames, and well-formed messages with hostile field values
(huge strings, extreme and non-finite numbers, unknown enum values, bad JSON, unknown ids). The
tally counts status codes per method; a client fault must never be UNKNOWN or INTERNAL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from rollmesh.proto.v1 import environment_pb2, inference_pb2, rubric_pb2  # noqa: F401 (fills the pool)

# Server faults: a hostile client must never get these.
FORBIDDEN = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
HUGE = 256 * 1024
NAMES = ["", "arithmetic", "guess-number", "maze", "wordle", "tiny", "train", "test", "../../etc/passwd", "t0"]
JSONISH = ["not json", "{", "[1,2]", '{"type": "object", "properties": 5}', "null", "[" * 5000, '{"a": 1e999}']
INTS = [0, 1, -1, 7, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 2**32, 10**12]
FLOATS = [0.0, -0.0, 1.0, -1.0, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), 5e-324]
UINT_TYPES = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED32,
              FieldDescriptor.TYPE_FIXED64}  # fmt: skip
INT32_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32,
               FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_ENUM}  # fmt: skip


def _string(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        return rng.choice(NAMES)
    if kind < 0.45:
        return rng.choice(JSONISH)
    if kind < 0.55:
        return rng.choice("xé€\x00\ud7ff") * rng.choice([HUGE, 4096])
    return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(0, 40)))


def _int(rng: random.Random, f: FieldDescriptor) -> int:
    v = rng.choice(INTS)
    if f.type in UINT_TYPES:
        v = abs(v)
    if f.type in INT32_TYPES:
        v = max(-(2**31), min(2**31 - 1, v))
        if f.type in UINT_TYPES:
            v = min(v, 2**32 - 1)
    else:
        v = max(-(2**63), min(2**64 - 1 if f.type in UINT_TYPES else 2**63 - 1, v))
    return v


def _scalar(rng: random.Random, f: FieldDescriptor):
    t = f.type
    if t == FieldDescriptor.TYPE_STRING:
        return _string(rng)
    if t == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 7, 4096, HUGE]))
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        v = rng.choice(FLOATS)
        return v if t == FieldDescriptor.TYPE_DOUBLE or abs(v) < 3e38 or v != v or abs(v) == float("inf") else 1.0
    if t == FieldDescriptor.TYPE_ENUM:
        return rng.choice([*(v.number for v in f.enum_type.values), 999, -5])
    return _int(rng, f)


def hostile(desc: Descriptor, rng: random.Random, depth: int = 0) -> Message:
    msg = message_factory.GetMessageClass(desc)()
    for f in desc.fields:
        if rng.random() < 0.35 or (depth > 2 and f.type == FieldDescriptor.TYPE_MESSAGE):
            continue
        if f.containing_oneof is not None and msg.WhichOneof(f.containing_oneof.name) is not None:
            continue
        is_map = f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry
        if is_map:
            key_f, value_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            target = getattr(msg, f.name)
            for _ in range(rng.randrange(1, 4)):
                key = _scalar(rng, key_f)
                if isinstance(key, str):
                    key = key[:64]
                if value_f.type == FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(hostile(value_f.message_type, rng, depth + 1))
                else:
                    target[key] = _scalar(rng, value_f)
        elif f.is_repeated:
            target = getattr(msg, f.name)
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                for _ in range(rng.randrange(1, 4)):
                    target.add().CopyFrom(hostile(f.message_type, rng, depth + 1))
            elif f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                target.extend(_scalar(rng, f) for _ in range(rng.randrange(1, 4)))
            else:  # a few values, or one value many times (a long list of token ids)
                target.extend([_scalar(rng, f)] * rng.choice([1, 3, 10_000]))
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, f.name).CopyFrom(hostile(f.message_type, rng, depth + 1))
        else:
            setattr(msg, f.name, _scalar(rng, f))
    return msg


def frames(method: MethodDescriptor, rng: random.Random, max_message_bytes: int) -> Iterator[bytes]:
    """An endless mix of hostile frames for `method`'s request type."""
    while True:
        kind = rng.random()
        if kind < 0.15:
            yield rng.randbytes(rng.randrange(1, 200))
        elif kind < 0.25:
            data = hostile(method.input_type, rng).SerializeToString()
            yield data[: rng.randrange(0, max(1, len(data)))]  # truncated
        elif kind < 0.28:
            yield b"\x0a" + b"\xff" * 5 + rng.randbytes(max_message_bytes)  # over the size limit
        else:
            yield hostile(method.input_type, rng).SerializeToString()


@dataclass
class Tally:
    codes: Counter = field(default_factory=Counter)  # (method, code name) -> calls
    forbidden: list[str] = field(default_factory=list)

    def by_code(self) -> Counter:
        out: Counter = Counter()
        for (_, code), n in self.codes.items():
            out[code] += n
        return out

    @property
    def calls(self) -> int:
        return sum(self.codes.values())


async def _one(
    channel: grpc.aio.Channel, m: MethodDescriptor, frame: bytes, rng: random.Random
) -> tuple[grpc.StatusCode, str]:
    path = f"/{m.containing_service.full_name}/{m.name}"
    timeout = 10.0
    try:
        if not m.client_streaming and not m.server_streaming:
            await channel.unary_unary(path)(frame, timeout=timeout)
        elif not m.client_streaming:
            async for _ in channel.unary_stream(path)(frame, timeout=timeout):
                pass
        elif not m.server_streaming:
            try:
                await channel.stream_unary(path)(iter([frame] * rng.randrange(1, 3)), timeout=timeout)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.INTERNAL and e.details() == "Internal error from Core":
                    # a later frame's write raced the server's end of the call, as below
                    return grpc.StatusCode.CANCELLED, e.details()
                raise
        else:
            call = channel.stream_stream(path)(timeout=timeout)
            # writes after the server ended the call fail locally ("Internal error from Core"):
            # not the server's answer, so write only while the call is open and read its status
            for _ in range(rng.randrange(1, 3)):
                if not call.done():
                    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                        await call.write(frame)
            if not call.done():
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await call.done_writing()
            async with asyncio.timeout(3.0):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    async for _ in call:
                        pass
                code, details = await call.code(), (await call.details()) or ""
            if code == grpc.StatusCode.INTERNAL and details == "Internal error from Core":
                # the local status of a write that raced the server's end of the call
                return grpc.StatusCode.CANCELLED, details
            return code, details
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    except (TimeoutError, asyncio.InvalidStateError):
        return grpc.StatusCode.CANCELLED, ""  # our own bound on a stream the server keeps open: fine
    return grpc.StatusCode.OK, ""


async def fuzz(
    address: str,
    services: list[str],
    *,
    calls_per_method: int,
    seconds: float,
    seed: int = 0,
    skip: frozenset[str] = frozenset(),
    concurrency: int = 16,
    max_message_bytes: int = 16 * 1024 * 1024,
    allowed: dict[str, frozenset[grpc.StatusCode]] | None = None,
) -> Tally:
    """Sends `calls_per_method` hostile calls to every method (but `skip`), within `seconds`."""
    pool = descriptor_pool.Default()
    methods = [m for name in services for m in pool.FindServiceByName(name).methods if m.name not in skip]
    rng = random.Random(seed)
    tally = Tally()
    deadline = time.monotonic() + seconds
    gate = asyncio.Semaphore(concurrency)
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:

        async def call(m: MethodDescriptor, frame: bytes, sub_seed: int) -> None:
            async with gate:
                if time.monotonic() > deadline:
                    return
                code, details = await _one(channel, m, frame, random.Random(sub_seed))
            tally.codes[(m.name, code.name)] += 1
            if code in FORBIDDEN and code not in (allowed or {}).get(m.name, frozenset()):
                tally.forbidden.append(f"{m.name}: {code.name} ({details[:120]}) for a {len(frame)}-byte frame")

        work = []
        for m in methods:
            gen = frames(m, rng, max_message_bytes)
            work += [call(m, next(gen), rng.randrange(2**32)) for _ in range(calls_per_method)]
        rng.shuffle(work)
        await asyncio.gather(*work)
    return tally


def dumps(tallies: dict[str, Tally]) -> str:
    return json.dumps({k: {"calls": t.calls, "codes": dict(t.by_code())} for k, t in tallies.items()}, indent=1)
