"""`rollmesh train` across nine hosts, each piece started as a user starts it on its own machine:
a 3-node NATS cluster (R3 streams) on three hosts, the `digits` environment on two hosts (Python
and Go), an inference server on one, the trainer as two torchrun nodes (gloo) on two more, and the
orchestrator on the last; all with mutual TLS. Mid-run, the link of the NATS node that leads the
ROLLOUTS stream is cut, then restored: training goes on and the audit from the stream and the
trainer's metrics finds nothing lost and nothing trained twice. The reward rises."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from .conftest import full_only
from .mesh import GO_DIGITS, Mesh, start_training
from .netns import Network

pytestmark = [pytest.mark.usefixtures("namespaces_available"), pytest.mark.timeout(900), full_only]

HOSTS = ["nats1", "nats2", "nats3", "env1", "env2", "inference", "trainer0", "trainer1", "orchestrator"]
STEPS = 40


async def _stream_leader(mesh: Mesh) -> str:
    nc = await mesh.connect("operator")
    try:
        info = await nc.jetstream().stream_info("ROLLOUTS")
        assert info.config.num_replicas == 3 and info.cluster is not None, info
        return info.cluster.leader
    finally:
        await nc.close()


def test_training_across_hosts_survives_a_nats_node_cut(tmp_path: Path, tiny_model_dir: Path) -> None:
    if not GO_DIGITS.exists():
        pytest.skip("clients/go/bin/digits-server is not built (make setup builds it)")
    with Network(HOSTS) as net:
        mesh = Mesh.on(net, tmp_path)
        mesh.start_env(net["env1"])
        mesh.start_go_env(net["env2"])
        mesh.start_inference(net["inference"], tiny_model_dir)
        training = start_training(
            mesh, net["orchestrator"], [net["trainer0"], net["trainer1"]], tmp_path, tiny_model_dir, steps=STEPS
        )
        training.wait_for_step(4)
        leader = asyncio.run(_stream_leader(mesh))
        cut = net[leader]
        cut.link_down()
        step_at_cut = training.records()[-1]["step"]
        training.wait_for_step(step_at_cut + 3)  # training goes on without it
        cut.link_up()

        records = training.finish()
        audit = training.audit()
        audit.check(STEPS)
        assert {r["world_size"] for r in records} == {2}
        first = sum(r["reward_mean"] for r in records[:5]) / 5
        last = sum(r["reward_mean"] for r in records[-5:]) / 5
        stall = max(b["time"] - a["time"] for a, b in itertools.pairwise(records))
        print(
            f"multi-host train: {audit.published} published, {audit.trained} trained, skipped {audit.skipped}; "
            f"NATS node {leader} cut at step {step_at_cut}, longest gap between steps {stall:.0f} s; "
            f"reward {first:.3f} -> {last:.3f}: " + " ".join(f"{r['reward_mean']:.2f}" for r in records)
        )
        assert last > first + 0.15, [round(r["reward_mean"], 3) for r in records]
