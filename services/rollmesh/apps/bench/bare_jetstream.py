"""The bus's limit for `bench rubric`: a bare JetStream pipeline that moves the same bytes as live
scoring, with nothing else.

    publish (in) -> durable pull consumer, batches -> publish a score-sized reply (out) -> ack

Two streams configured like MONITOR and SCORES (bus.py), the same durable pull, explicit acks and
Nats-Msg-Id deduplication on both publishes; no protobuf, no rubric, no spans, no metrics. The
consumer runs in its own process, like `rollmesh rubric serve`:

    python -m rollmesh.apps.bench.bare_jetstream NATS_URL REPLY_HEX [BATCH]
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace

import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig

from ... import bus
from ...rubric.config import MonitorConfig

IN = replace(bus.MONITOR, name="BENCH_BARE_IN", subjects=("rollmesh.bench.bare.in.>",))
OUT = replace(bus.SCORES, name="BENCH_BARE_OUT", subjects=("rollmesh.bench.bare.out.>",))
DURABLE = "bare"
PUBLISH_TIMEOUT_S = MonitorConfig().publish_timeout_s  # the service's
READY = "bare pipeline ready"


def in_subject(app: str) -> str:
    return f"rollmesh.bench.bare.in.{app}"


def out_subject(app: str) -> str:
    return f"rollmesh.bench.bare.out.{app}"


async def consume(nats_url: str, reply: bytes, batch: int, ready: asyncio.Event | None = None) -> None:
    """Until cancelled: fetch up to `batch` messages, publish `reply` for each (awaiting the acks
    together), then ack them."""
    nc = await nats.connect(nats_url, name="bench-bare-consumer")
    try:
        js = nc.jetstream()
        for spec in (IN, OUT):
            await js.add_stream(spec.config())  # as it is, if it exists already
        sub = await js.pull_subscribe(
            in_subject(">"),
            durable=DURABLE,
            stream=IN.name,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=max(1000, 32 * batch)),
        )
        if ready is not None:
            ready.set()
        print(READY, file=sys.stderr, flush=True)
        prefix = len(in_subject(""))

        async def one(msg: nats.aio.msg.Msg) -> None:
            headers = {bus.MSG_ID: msg.headers[bus.MSG_ID]} if msg.headers else None
            try:
                await js.publish(out_subject(msg.subject[prefix:]), reply, headers=headers, timeout=PUBLISH_TIMEOUT_S)
            except (TimeoutError, nats.errors.Error) as e:  # handed back, as the service does
                print(f"publish failed: {e!r}", file=sys.stderr, flush=True)
                await msg.nak()
                return
            await msg.ack()

        while True:
            try:
                msgs = await sub.fetch(batch, timeout=5)
            except TimeoutError:  # nothing to fetch (nats-py raises its own or asyncio's)
                continue
            except nats.errors.Error as e:  # e.g. a pull refused while busy: as the service, go on
                print(f"fetch failed: {e!r}", file=sys.stderr, flush=True)
                await asyncio.sleep(0.1)
                continue
            await asyncio.gather(*(one(m) for m in msgs))
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(consume(sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 128))
