"""The trainer's rollout consumer on a real nats-server: deliveries lost on the way (a pull answered
into a connection that was then cut) must not be skipped. Here another subscriber bound to the same
durable consumer takes two deliveries and never reports them, as a dead connection would; the
consumer notices the gap in consumer sequences, starts again after its cursor, and hands out every
rollout once, in stream order."""

from __future__ import annotations

import nats
from rollmesh import bus
from rollmesh.proto.v1 import messages_pb2, trajectory_pb2
from rollmesh.trainer.consumer import RolloutConsumer


async def test_deliveries_lost_on_the_way_come_again_in_order(nats_url: str) -> None:
    run = "lost-deliveries"
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js)
        publisher = bus.Publisher(nc, js)
        sent = []
        for i in range(6):
            t = trajectory_pb2.Trajectory(trajectory_id=f"{run}-{i}", run_id=run, task=messages_pb2.Task(env="digits"))
            await publisher.publish_trajectory(t)
            sent.append(t.trajectory_id)
        consumer = RolloutConsumer(js, run, f"trainer-{run}", ack_wait_s=3600)
        await consumer.start()
        first = await consumer.fetch(1)
        thief = await js.pull_subscribe_bind(f"trainer-{run}", stream="ROLLOUTS")
        assert len(await thief.fetch(2, timeout=5)) == 2  # delivered, never to arrive
        got = list(first)
        while len(got) < len(sent):
            batch = await consumer.fetch(10, timeout_s=2)
            assert batch or consumer.resets, "stalled"
            got += batch
        assert [d.msg_id for d in got] == sent
        assert [d.seq for d in got] == sorted(d.seq for d in got)
        assert consumer.resets == 1
        await consumer.close()
    finally:
        await nc.close()
