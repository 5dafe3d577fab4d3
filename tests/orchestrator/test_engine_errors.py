"""Discovery through the registry and the clear errors of a run that cannot start or a rollout
that cannot be published: unknown environment or model, unreachable servers, no rewards,
trajectories larger than a NATS message."""

from __future__ import annotations

import uuid

import pytest
from rollmesh import bus
from rollmesh.env import MultiTurnEnv, SingleTurnEnv
from rollmesh.errors import InvalidArgumentError, NotFoundError, UnavailableError
from rollmesh.natsd import free_port
from rollmesh.orchestrator.config import RolloutConfig
from rollmesh.orchestrator.engine import RolloutEngine
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb

from .local_servers import env, env_server, scripted_inference


def _cfg(env_name: str, **kw) -> RolloutConfig:
    return RolloutConfig(run_id=f"x{uuid.uuid4().hex[:10]}", env=env_name, **kw)


async def test_servers_are_found_in_the_registry(nats_url: str) -> None:
    model = f"scripted-{uuid.uuid4().hex[:6]}"
    async with (
        env_server(env("arithmetic"), env("guess-number"), nats_url=nats_url),
        scripted_inference(["7"], name=model, nats_url=nats_url) as inference,
    ):
        async with RolloutEngine(_cfg("guess-number", model=model, rollouts_per_task=2), nats_url=nats_url) as engine:
            groups = [g async for g in engine.run(await engine.list_tasks(limit=2))]
            assert [r.address for r in engine.inference_pool.active] == [inference.address]
        assert len(groups) == 2 and engine.stats.finished == 4

        with pytest.raises(NotFoundError, match=r"no environment server for 'wiki-searh' \(known: .*arithmetic"):
            await RolloutEngine(_cfg("wiki-searh", model=model), nats_url=nats_url).start()
        with pytest.raises(NotFoundError, match=r"no inference server for model 'nope'.*serving: .*" + model):
            await RolloutEngine(_cfg("arithmetic", model="nope"), nats_url=nats_url).start()


async def test_wrong_or_unreachable_addresses_are_clear_errors() -> None:
    async with env_server(env("arithmetic")) as envs, scripted_inference(["7"]) as inference:
        with pytest.raises(NotFoundError, match=r"no environment server for 'guess-number' \(known: arithmetic\)"):
            await RolloutEngine(
                _cfg("guess-number"), env_addresses=[envs.address], inference_addresses=[inference.address]
            ).start()
        nowhere = f"127.0.0.1:{free_port()}"
        with pytest.raises(UnavailableError, match=f"cannot reach the environment server at {nowhere}"):
            await RolloutEngine(
                _cfg("arithmetic"), env_addresses=[nowhere], inference_addresses=[inference.address]
            ).start()
        with pytest.raises(UnavailableError, match=f"cannot reach the inference server at {nowhere}"):
            await RolloutEngine(_cfg("arithmetic"), env_addresses=[envs.address], inference_addresses=[nowhere]).start()
        with pytest.raises(NotFoundError, match="serves 'scripted', not 'other'"):
            await RolloutEngine(
                _cfg("arithmetic", model="other"), env_addresses=[envs.address], inference_addresses=[inference.address]
            ).start()
        with pytest.raises(InvalidArgumentError, match="no environment server addresses given and no NATS URL"):
            await RolloutEngine(_cfg("arithmetic")).start()
        engine = RolloutEngine(
            _cfg("arithmetic"), env_addresses=[envs.address], inference_addresses=[inference.address]
        )
        with pytest.raises(InvalidArgumentError, match="start the engine first"):
            [g async for g in engine.run([])]


class Unrewarded(MultiTurnEnv):
    """An environment without rewards."""


async def test_an_environment_without_rewards_needs_a_rubric() -> None:
    bare = Unrewarded(name="bare", tasks=[{"id": "t", "question": "hi"}])
    async with env_server(bare) as envs, scripted_inference(["7"]) as inference:
        with pytest.raises(InvalidArgumentError, match="reports no rewards and has no Score; name a rubric"):
            await RolloutEngine(
                _cfg("bare"), env_addresses=[envs.address], inference_addresses=[inference.address]
            ).start()


def _one(completion: list[dict]) -> float:
    return 1.0


class Bulky(SingleTurnEnv):
    """Returns a state larger than a NATS message for task "big"."""

    async def setup_state(self, task, state) -> None:
        if task.task_id == "big":
            state["blob"] = "x" * (1024 * 1024 + 1)


async def test_a_trajectory_over_max_payload_is_an_unpublished_error(nats_url: str) -> None:
    bulky = Bulky(name="bulky", tasks=[{"id": "big", "question": "q"}, {"id": "small", "question": "q"}], reward=_one)
    nc = await bus.connect(nats_url)
    publisher = bus.Publisher(nc, nc.jetstream())
    cfg = _cfg("bulky", split="train", rollouts_per_task=2)
    try:
        async with env_server(bulky) as envs, scripted_inference(["7"]) as inference:
            async with RolloutEngine(
                cfg, env_addresses=[envs.address], inference_addresses=[inference.address], publisher=publisher
            ) as engine:
                groups = {g[0].task.task_id: g async for g in engine.run(await engine.list_tasks())}
        for t in groups["big"]:
            assert t.stop_reason == traj_pb.STOP_REASON_ERROR
            assert t.error.source == "orchestrator" and t.error.message.startswith("PAYLOAD_TOO_LARGE:")
            assert "max_payload" in t.error.message and t.advantage == 0.0
        assert all(t.stop_reason == traj_pb.STOP_REASON_DONE and t.reward == 1.0 for t in groups["small"])
        assert engine.stats.errors_by_reason == {"PAYLOAD_TOO_LARGE": 2} and engine.stats.finished == 2
        # the errors are on the bus too, without their bulk, so consumers know the rollout failed
        sub = await publisher.js.pull_subscribe(bus.rollouts_subject(cfg.run_id), durable=None)
        stored = [traj_pb.Trajectory.FromString(m.data) for m in await sub.fetch(10, timeout=2)]
        assert len(stored) == 4 and engine.stats.published == 4
        errored = [t for t in stored if t.stop_reason == traj_pb.STOP_REASON_ERROR]
        assert len(errored) == 2 and all(not t.turns and not t.state.fields for t in errored)
    finally:
        await nc.close()


async def test_pools_follow_the_registry(nats_url: str) -> None:
    from .local_servers import wait_until

    model = f"scripted-{uuid.uuid4().hex[:6]}"
    name = f"guess-{uuid.uuid4().hex[:6]}"  # an environment name no other test registers

    def guess():
        e = env("guess-number")
        e.name = name
        return e

    async with (
        env_server(guess(), nats_url=nats_url) as first,
        scripted_inference(["7"], name=model, nats_url=nats_url),
    ):
        cfg = _cfg(name, model=model, split="train", discovery_interval_s=0.1)
        async with RolloutEngine(cfg, nats_url=nats_url) as engine:
            assert [r.address for r in engine.env_pool.active] == [first.address]
            assert engine.env_info.name == name and engine.model == model
            async with env_server(guess(), nats_url=nats_url) as second:
                await wait_until(lambda: len(engine.env_pool.active) == 2, 10)
                await first.stop(0)  # deregisters
                await wait_until(lambda: [r.address for r in engine.env_pool.active] == [second.address], 10)
                groups = [g async for g in engine.run(await engine.list_tasks(limit=2))]
    assert all(t.provenance.env_address == second.address for g in groups for t in g)
    assert engine.stats.finished == 2


async def test_rubric_service_unknown_rubric_and_outage() -> None:
    from rollmesh.rubric.config import RewardFunctionConfig, RubricConfig, RubricServiceConfig, ServerConfig
    from rollmesh.rubric.server import RubricServer

    exact = RubricConfig(name="exact", functions=[RewardFunctionConfig(name="match", function="exact_match")])
    rubric = RubricServer.from_config(RubricServiceConfig(server=ServerConfig(port=0), rubric=[exact]))
    await rubric.start()
    try:
        async with env_server(env("arithmetic")) as envs, scripted_inference(["7"]) as inference:
            kwargs = {
                "env_addresses": [envs.address],
                "inference_addresses": [inference.address],
                "rubric_address": rubric.address,
            }
            with pytest.raises(NotFoundError, match=r"no rubric 'exakt' on the rubric server .*\(known: exact\)"):
                await RolloutEngine(_cfg("arithmetic", rubric="exakt"), **kwargs).start()
            async with RolloutEngine(_cfg("arithmetic", rubric="exact", rollouts_per_task=2), **kwargs) as engine:
                tasks = await engine.list_tasks(limit=4)
                scored = [t async for g in engine.run(tasks[:2]) for t in g]
                assert all(set(t.rewards) == {"match"} for t in scored)
                assert {t.reward for t in scored} <= {0.0, 1.0}
                await rubric.stop(0)
                failed = [t async for g in engine.run(tasks[2:]) for t in g]
    finally:
        await rubric.stop(0)
    assert len(failed) == 4
    for t in failed:
        assert t.stop_reason == traj_pb.STOP_REASON_ERROR and t.error.source == "rubric"
        assert t.turns and t.advantage == 0.0  # the rollout itself ran; only its scoring failed
    assert engine.stats.errors_by_reason == {"UNAVAILABLE": 4}
