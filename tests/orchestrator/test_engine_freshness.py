"""Bounded staleness with a real PolicyStore (NATS KV) and real inference servers whose policy
version moves: stale rollouts dropped or down-weighted, scheduling held while inference lags."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from rollmesh import bus
from rollmesh.inference.client import InferenceClient
from rollmesh.orchestrator.config import RolloutConfig
from rollmesh.orchestrator.engine import RolloutEngine

from .local_servers import env, env_server, scripted_inference, wait_until


@pytest.fixture
async def nats(nats_url: str):
    nc = await bus.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    yield bus.Publisher(nc, js), await bus.PolicyStore.open(js)
    await nc.close()


async def _stored(js, run_id: str) -> int:
    info = await js.stream_info("ROLLOUTS", subjects_filter=bus.rollouts_subject(run_id))
    return sum((info.state.subjects or {}).values())


@pytest.mark.parametrize("policy", ["drop", "downweight"])
async def test_rollouts_that_went_stale_in_flight(nats, policy: str) -> None:
    publisher, store = nats
    run_id = f"s{uuid.uuid4().hex[:10]}"
    await store.put(run_id, 0)
    async with env_server(env("arithmetic")) as envs, scripted_inference(["7"], delay_s=0.3) as inference:
        cfg = RolloutConfig(run_id=run_id, env="arithmetic", rollouts_per_task=2, stale_policy=policy)
        async with RolloutEngine(
            cfg,
            env_addresses=[envs.address],
            inference_addresses=[inference.address],
            publisher=publisher,
            policy=store,
        ) as engine:
            engine.clock.refresh_s = 0.0
            tasks = await engine.list_tasks(limit=2)

            async def trainer_steps_ahead() -> None:
                await wait_until(lambda: engine.stats.started == 4)
                await store.put(run_id, 10)  # while the model calls (policy 0) are in flight

            trainer = asyncio.create_task(trainer_steps_ahead())
            trajectories = [t async for g in engine.run(tasks) for t in g]
            await trainer
    s = engine.stats
    if policy == "drop":
        assert trajectories == [] and s.stale_dropped == 4 and s.published == 0
        assert await _stored(publisher.js, run_id) == 0
    else:
        assert len(trajectories) == 4 and s.downweighted == 4 and s.published == 4
        for t in trajectories:
            assert t.metrics["off_policy_steps"] == 10.0
            assert t.metrics["sample_weight"] == pytest.approx(9 / 11)
        assert await _stored(publisher.js, run_id) == 4


async def test_scheduling_waits_for_fresh_weights(nats, tmp_path) -> None:
    _, store = nats
    run_id = f"w{uuid.uuid4().hex[:10]}"
    await store.put(run_id, 20)  # the trainer is 20 steps ahead of the inference server (version 0)
    async with (
        env_server(env("arithmetic")) as envs,
        scripted_inference(["7"], weights_roots=[str(tmp_path)]) as inference,
    ):
        cfg = RolloutConfig(run_id=run_id, env="arithmetic", rollouts_per_task=2, max_off_policy_steps=8)
        async with RolloutEngine(
            cfg, env_addresses=[envs.address], inference_addresses=[inference.address], policy=store
        ) as engine:
            tasks = await engine.list_tasks(limit=2)
            run = asyncio.create_task(_collect(engine, tasks))
            await asyncio.sleep(0.6)
            assert engine.stats.started == 0 and not run.done()
            async with await InferenceClient.connect(inference.address) as client:
                await client.load_weights(str(tmp_path), policy_version=15)  # 5 behind: within the bound
            trajectories = await asyncio.wait_for(run, 20)
    assert len(trajectories) == 4
    for t in trajectories:
        assert [turn.policy_version for turn in t.turns] == [15]
        assert t.provenance.policy_version == 15
        assert t.metrics["off_policy_steps"] == 5.0 and t.metrics["sample_weight"] == 1.0


async def test_eval_runs_have_no_policy_and_are_never_stale(nats) -> None:
    _, store = nats
    async with (
        env_server(env("arithmetic")) as envs,
        scripted_inference(["7"]) as inference,
    ):
        cfg = RolloutConfig(run_id=f"e{uuid.uuid4().hex[:10]}", env="arithmetic", max_off_policy_steps=0)
        async with RolloutEngine(
            cfg, env_addresses=[envs.address], inference_addresses=[inference.address], policy=store
        ) as engine:
            trajectories = await _collect(engine, await engine.list_tasks(limit=3))
    assert len(trajectories) == 3 and "off_policy_steps" not in trajectories[0].metrics


async def _collect(engine: RolloutEngine, tasks) -> list:
    return [t async for g in engine.run(tasks) for t in g]
