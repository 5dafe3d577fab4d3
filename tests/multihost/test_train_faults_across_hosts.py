"""Faults of a multi-host `rollmesh train` (NATS cluster, environment, inference and trainer hosts,
orchestrator; mutual TLS), each checked from the ROLLOUTS stream and the trainer's metrics:

- an inference host partitioned for longer than `inference_timeout_s`: model calls go to the other
  inference host or end as errors; when it is back, the trainer's weight push catches it up, and no
  trained sample is more than `max_off_policy_steps` behind;
- the trainer's rank-1 host lost: rank 0 stops at once with TRAINER_RANK_LOST naming the last
  complete checkpoint, and the same commands on both hosts resume from it; nothing is lost or
  trained twice over the whole run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from rollmesh.inference.client import InferenceClient
from rollmesh.security import pki
from rollmesh.security.tls import using

from .conftest import full_only
from .mesh import Mesh, start_training
from .netns import Network

pytestmark = [
    pytest.mark.usefixtures("namespaces_available"),
    pytest.mark.timeout(900),
    full_only,
]

MAX_OFF_POLICY = 2  # the run file's rollout.max_off_policy_steps


async def _served_version(mesh: Mesh, address: str) -> int:
    with using(pki.member_config(mesh.certs, "orchestrator")):
        client = InferenceClient.open(address, timeout_s=10.0)
        try:
            return int((await client.model_info()).policy_version)
        finally:
            await client.close()


def test_an_inference_host_partitioned_past_the_timeout(tmp_path: Path, tiny_model_dir: Path) -> None:
    steps = 60
    hosts = ["nats1", "nats2", "nats3", "env1", "inference1", "inference2", "trainer0", "trainer1", "orchestrator"]
    with Network(hosts) as net:
        mesh = Mesh.on(net, tmp_path)
        mesh.start_env(net["env1"])
        mesh.start_inference(net["inference1"], tiny_model_dir)
        _, partitioned = mesh.start_inference(net["inference2"], tiny_model_dir)
        training = start_training(
            mesh, net["orchestrator"], [net["trainer0"], net["trainer1"]], tmp_path, tiny_model_dir, steps=steps,
            extra="inference_timeout_s = 4\nreplica_wait_s = 5", trainer_extra="[trainer.push]\ntimeout_s = 5",
            max_policy_lag=MAX_OFF_POLICY,  # the trainer's own bound: what waited in the stream is checked again
        )  # fmt: skip
        training.wait_for_step(3)
        net["inference2"].link_down()
        cut_at = time.monotonic()
        step_at_cut = training.records()[-1]["step"]
        training.wait_for_step(step_at_cut + 2)  # on the other inference host
        time.sleep(max(0.0, 12 - (time.monotonic() - cut_at)))  # three timeouts' worth at least
        net["inference2"].link_up()
        back_at = time.monotonic()
        # While training goes on, the next pushes catch the returned host up.
        deadline = time.monotonic() + 90
        while (served := asyncio.run(_served_version(mesh, partitioned))) < training.records()[-1][
            "policy_version"
        ] - 1:
            assert training.train.poll() is None and time.monotonic() < deadline, (
                f"the returned host still serves version {served}; trainer:\n"
                + (mesh.logs / "trainer-trainer0-0.log").read_text(errors="replace")[-3000:]
            )
            time.sleep(0.5)
        caught_up_s = time.monotonic() - back_at

        records = training.finish()
        audit = training.audit()
        audit.check(steps)
        lags = [r["policy_lag_max"] for r in records if r["policy_lag_max"] is not None]
        assert max(lags) <= MAX_OFF_POLICY, lags
        failed_pushes = [r["step"] for r in records if r.get("push_failures")]
        print(
            f"inference host partitioned {back_at - cut_at:.0f} s from step {step_at_cut}: "
            f"{audit.published} published, {audit.trained} trained, {audit.errored_in_stream} errored, "
            f"skipped {audit.skipped}; pushes failed at steps {failed_pushes}; policy lag max {max(lags)}; "
            f"caught up {caught_up_s:.1f} s after it returned"
        )
        assert failed_pushes, "a push to the partitioned host failed while it was away"


def test_the_rank_1_trainer_host_lost_and_back(tmp_path: Path, tiny_model_dir: Path) -> None:
    steps = 12
    hosts = ["nats1", "nats2", "nats3", "env1", "inference", "trainer0", "trainer1", "orchestrator"]
    with Network(hosts) as net:
        mesh = Mesh.on(net, tmp_path)
        mesh.start_env(net["env1"])
        mesh.start_inference(net["inference"], tiny_model_dir)
        training = start_training(
            mesh, net["orchestrator"], [net["trainer0"], net["trainer1"]], tmp_path, tiny_model_dir, steps=steps
        )
        training.wait_for_step(6)  # past the checkpoint of step 4
        lost_at = time.monotonic()
        net["trainer1"].kill()
        rank0 = training.trainers[0]
        rank0_log = mesh.logs / "trainer-trainer0-0.log"
        deadline = time.monotonic() + 120
        while "TRAINER_RANK_LOST" not in rank0_log.read_text(errors="replace") and "lost contact" not in (
            rank0_log.read_text(errors="replace")
        ):
            assert time.monotonic() < deadline, rank0_log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        stopped_s = time.monotonic() - lost_at
        message = next(line for line in rank0_log.read_text().splitlines() if "lost contact" in line)
        assert "step-0000000" in message and "Start every rank again" in message, message
        step_at_loss = training.records()[-1]["step"]
        net["trainer0"].kill()  # torchrun's agent waits minutes for the lost node: a fresh start, as an operator would

        resumed_at = time.monotonic()
        training.start_trainer(attempt=1)
        training.finish()
        audit = training.audit()
        audit.check(steps)  # the metrics were cut back to the checkpoint and continue from it
        resumed = next(
            line for line in (mesh.logs / "trainer-trainer0-1.log").read_text().splitlines() if "resum" in line
        )
        print(
            f"rank-1 host lost at step {step_at_loss}: rank 0 stopped {stopped_s:.1f} s later; "
            f"resumed ({resumed.strip()}) "
            f"and finished {time.monotonic() - resumed_at:.0f} s after the restart; {audit.published} published, "
            f"{audit.trained} trained, skipped {audit.skipped}, trained twice {len(audit.trained_twice)}"
        )
        assert rank0.poll() is not None
