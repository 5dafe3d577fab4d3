"""Failures mid-run: an environment server SIGKILLed or stalling while episodes are in flight, an
inference server going away. Every rollout must come back, finished or errored with a reason,
with its attempts counted; infrastructure failures never become rewards."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest
from rollmesh.apps.bench.harness import start_env_server, stop
from rollmesh.env import MultiTurnEnv
from rollmesh.inference.backends.scripted import ScriptedBackend, load_script
from rollmesh.inference.server import InferenceServer
from rollmesh.orchestrator.config import RolloutConfig
from rollmesh.orchestrator.engine import RolloutEngine
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb

from .local_servers import env_server, scripted_inference, wait_until

TARGET = "rollmesh.examples.guess_number"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def _run_id() -> str:
    return f"f{uuid.uuid4().hex[:10]}"


async def _slow_inference(delay_s: float) -> InferenceServer:
    """Guess-number replies, each model call taking `delay_s`: episodes of several turns overlap."""
    server = InferenceServer(ScriptedBackend(load_script("guess-number"), model="scripted", delay_s=delay_s))
    return await server.start()


async def test_killed_replica_episodes_rerun_on_the_other() -> None:
    victim, victim_address = start_env_server(TARGET)
    survivor, survivor_address = start_env_server(TARGET)
    inference = await _slow_inference(0.05)
    try:
        cfg = RolloutConfig(run_id=_run_id(), env="guess-number", rollouts_per_task=2, max_concurrency=16)
        async with RolloutEngine(
            cfg, env_addresses=[victim_address, survivor_address], inference_addresses=[inference.address]
        ) as engine:
            tasks = await engine.list_tasks(limit=8)
            on_victim = engine.env_pool.replicas[victim_address]

            async def kill_when_busy() -> None:
                await wait_until(lambda: on_victim.inflight >= 3)
                victim.send_signal(signal.SIGKILL)

            killer = asyncio.create_task(kill_when_busy())
            trajectories = [t async for g in engine.run(tasks) for t in g]
            await killer
    finally:
        stop(victim)
        stop(survivor)
        await inference.stop(0)
    assert len(trajectories) == 16
    assert len({t.trajectory_id for t in trajectories}) == 16
    errors = [t for t in trajectories if t.stop_reason == traj_pb.STOP_REASON_ERROR]
    assert errors == [], [t.error for t in errors]
    rerun = [t for t in trajectories if t.attempts > 1]
    assert len(rerun) >= 3  # at least the episodes in flight on the victim
    assert all(t.provenance.env_address == survivor_address for t in rerun)
    s = engine.stats
    assert s.retried == sum(t.attempts - 1 for t in trajectories)
    assert (s.started, s.finished, s.errored) == (16, 16, 0)


async def test_when_every_replica_is_gone_rollouts_are_errors_not_rewards() -> None:
    only, address = start_env_server(TARGET)
    inference = await _slow_inference(0.05)
    try:
        cfg = RolloutConfig(
            run_id=_run_id(),
            env="guess-number",
            rollouts_per_task=4,
            max_concurrency=4,
            max_attempts=2,
            replica_wait_s=0.5,
        )
        async with RolloutEngine(cfg, env_addresses=[address], inference_addresses=[inference.address]) as engine:
            tasks = await engine.list_tasks(limit=3)
            replica = engine.env_pool.replicas[address]

            async def kill() -> None:
                await wait_until(lambda: engine.stats.finished >= 4 and replica.inflight >= 2)
                only.send_signal(signal.SIGKILL)

            killer = asyncio.create_task(kill())
            groups = [g async for g in engine.run(tasks)]
            await killer
    finally:
        stop(only)
        await inference.stop(0)
    trajectories = [t for g in groups for t in g]
    assert len(trajectories) == 12, "every rollout is accounted for"
    errors = [t for t in trajectories if t.stop_reason == traj_pb.STOP_REASON_ERROR]
    assert errors, "episodes in flight on the killed server cannot finish"
    for t in errors:
        assert t.error.source == "environment" and t.error.code == UNAVAILABLE and t.error.retryable
        assert t.error.message
        assert 1 <= t.attempts <= 2
        assert t.advantage == 0.0 and t.reward == 0.0 and not t.rewards
    for g in groups:  # errored rollouts are left out of their group's baseline
        fine = [t for t in g if t.stop_reason != traj_pb.STOP_REASON_ERROR]
        if len(fine) >= 2:
            mean = sum(t.reward for t in fine) / len(fine)
            assert [t.advantage for t in fine] == pytest.approx([t.reward - mean for t in fine])
    s = engine.stats
    assert s.finished + s.errored == 12 and s.errored == len(errors)
    assert sum(s.errors_by_reason.values()) == len(errors)


async def test_rollouts_wait_for_a_replacement_inference_replica_instead_of_erroring(nats_url: str) -> None:
    """The only inference server goes away and another registers a second later (a restart): the
    model calls of the rollouts in flight and of those started meanwhile wait for it."""
    async with env_server(StallingEnv(), nats_url=nats_url):
        first = await InferenceServer(ScriptedBackend(["hi"], delay_s=0.02), nats_url=nats_url).start()
        replacement: list[InferenceServer] = []
        cfg = RolloutConfig(
            run_id=_run_id(),
            env="echo",
            split="train",
            rollouts_per_task=4,
            max_concurrency=16,
            discovery_interval_s=0.2,
            replica_wait_s=30.0,
        )
        try:
            async with RolloutEngine(cfg, nats_url=nats_url) as engine:
                tasks = await engine.list_tasks()

                async def restart() -> None:
                    await wait_until(lambda: first.core.backend.calls >= 6)
                    await first.stop(0)
                    await asyncio.sleep(1.0)
                    replacement.append(
                        await InferenceServer(ScriptedBackend(["hi"], delay_s=0.02), nats_url=nats_url).start()
                    )

                restarter = asyncio.create_task(restart())
                trajectories = [t async for g in engine.run(tasks) for t in g]
                await restarter
        finally:
            for server in [first, *replacement]:
                await server.stop(0)
    assert len(trajectories) == 16
    assert [t.error for t in trajectories if t.stop_reason != traj_pb.STOP_REASON_MAX_TURNS] == []
    assert any(t.provenance.inference_address == replacement[0].address for t in trajectories)


def _turns(completion: list[dict]) -> float:
    return float(len(completion))


class StallingEnv(MultiTurnEnv):
    """Echo; when `stall_s` is set, hangs on the second turn (a wedged sandbox)."""

    def __init__(self, stall_s: float = 0.0) -> None:
        super().__init__(
            name="echo",
            tasks=[{"id": f"t{i}", "question": "say something"} for i in range(4)],
            max_turns=3,
            reward=_turns,
        )
        self.stall_s = stall_s

    async def env_response(self, messages, state):
        if self.stall_s and state["turn"] == 2:
            await asyncio.sleep(self.stall_s)
        return [{"role": "user", "content": "go on"}]


async def test_stalled_replica_times_out_and_the_episode_reruns_elsewhere() -> None:
    async with (
        env_server(StallingEnv(stall_s=60)) as stalling,
        env_server(StallingEnv()) as healthy,
        scripted_inference(["hi"]) as inference,
    ):
        cfg = RolloutConfig(
            run_id=_run_id(), env="echo", split="train", rollouts_per_task=2, step_timeout_s=2.0, max_concurrency=8
        )
        async with RolloutEngine(
            cfg, env_addresses=[stalling.address, healthy.address], inference_addresses=[inference.address]
        ) as engine:
            trajectories = [t async for g in engine.run(await engine.list_tasks()) for t in g]
    assert len(trajectories) == 8
    assert all(t.stop_reason == traj_pb.STOP_REASON_MAX_TURNS for t in trajectories), [t.error for t in trajectories]
    assert all(t.provenance.env_address == healthy.address for t in trajectories)
    assert engine.stats.retried >= 1 and max(t.attempts for t in trajectories) == 2


async def test_model_calls_reroute_when_an_inference_replica_goes_away() -> None:
    async with (
        env_server(StallingEnv()) as envs,
        scripted_inference(["hi"], delay_s=0.02) as first,
        scripted_inference(["hi"], delay_s=0.02) as second,
    ):
        cfg = RolloutConfig(run_id=_run_id(), env="echo", split="train", rollouts_per_task=4, max_concurrency=16)
        async with RolloutEngine(
            cfg, env_addresses=[envs.address], inference_addresses=[first.address, second.address]
        ) as engine:
            tasks = await engine.list_tasks()

            async def stop_first() -> None:
                await wait_until(lambda: first.core.backend.calls >= 6)
                await first.stop(0)

            stopper = asyncio.create_task(stop_first())
            trajectories = [t async for g in engine.run(tasks) for t in g]
            await stopper
    assert len(trajectories) == 16
    assert all(t.stop_reason == traj_pb.STOP_REASON_MAX_TURNS for t in trajectories), [t.error for t in trajectories]
    assert engine.stats.rerouted >= 1
    assert any(t.provenance.inference_address == second.address for t in trajectories)


class EchoWithHook(StallingEnv):
    """Echo that runs `hook` once, while it answers the first model reply."""

    def __init__(self, hook: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self.hook: Callable[[], Awaitable[None]] | None = hook

    async def env_response(self, messages, state):
        if self.hook is not None:
            hook, self.hook = self.hook, None
            await hook()
        return await super().env_response(messages, state)


async def test_an_inference_replica_lost_before_turn_two_is_rerouted_not_blamed_on_the_environment() -> None:
    """The second turn's prompt needs the model's turn template, learned by Tokenize calls; the replica
    that served turn one is gone by then. Those calls must reroute like Generate does."""
    replicas: list[InferenceServer] = []

    async def stop_the_replica_that_answered() -> None:
        served = [r for r in replicas if r.core.backend.calls]
        assert len(served) == 1
        await served[0].stop(0)

    async with (
        env_server(EchoWithHook(stop_the_replica_that_answered)) as envs,
        scripted_inference(["hi"]) as first,
        scripted_inference(["hi"]) as second,
    ):
        replicas += [first, second]
        cfg = RolloutConfig(run_id=_run_id(), env="echo", split="train", rollouts_per_task=1)
        async with RolloutEngine(
            cfg, env_addresses=[envs.address], inference_addresses=[first.address, second.address]
        ) as engine:
            tasks = (await engine.list_tasks())[:1]
            trajectories = [t async for g in engine.run(tasks) for t in g]
    [t] = trajectories
    assert t.stop_reason == traj_pb.STOP_REASON_MAX_TURNS, t.error
    assert t.attempts == 1  # the environment was not blamed: no rerun
    assert engine.stats.rerouted >= 1


async def test_a_replica_at_capacity_is_waited_for_not_failed() -> None:
    from rollmesh.env.server import EpisodeLimits

    async with (
        env_server(StallingEnv(), limits=EpisodeLimits(max_concurrent_episodes=2)) as envs,
        scripted_inference(["hi"], delay_s=0.01) as inference,
    ):
        cfg = RolloutConfig(run_id=_run_id(), env="echo", split="train", rollouts_per_task=4, max_concurrency=16)
        async with RolloutEngine(cfg, env_addresses=[envs.address], inference_addresses=[inference.address]) as engine:
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, envs.servicer.active)
                    await asyncio.sleep(0.002)

            watcher = asyncio.create_task(watch())
            trajectories = [t async for g in engine.run(await engine.list_tasks()) for t in g]
            watcher.cancel()
    assert len(trajectories) == 16 and engine.stats.errored == 0 and engine.stats.retried == 0
    assert peak == 2
