"""Async RL end to end on the tiny random model: the orchestrator's RolloutEngine runs episodes of
the built-in `digits` environment (a real environment server) against a real inference server and
publishes scored trajectories; the Trainer consumes them, steps, and pushes weights back to the
server while sampling goes on, with the engine holding staleness to max_off_policy_steps. The
reward (share of digits in the reply) must rise from the babbling start to nearly all digits."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from rollmesh import bus  # noqa: E402
from rollmesh.env.server import EnvironmentServer  # noqa: E402
from rollmesh.envs.digits import load_environment  # noqa: E402
from rollmesh.orchestrator.config import RolloutConfig, SamplingConfig  # noqa: E402
from rollmesh.orchestrator.engine import RolloutEngine  # noqa: E402
from rollmesh.proto.v1 import messages_pb2 as msg_pb  # noqa: E402
from rollmesh.trainer.config import TrainerConfig  # noqa: E402
from rollmesh.trainer.loop import Trainer  # noqa: E402

MAX_STEPS = 150
GROUPS_PER_STEP, GROUP_SIZE = 4, 8
MAX_OFF_POLICY_STEPS, BACKLOG_STEPS = 2, 1


async def _forever(tasks: list[msg_pb.Task]) -> AsyncIterator[msg_pb.Task]:
    while True:
        for t in tasks:
            yield t


def _rewards(path) -> list[float]:
    if not path.is_file():
        return []
    return [json.loads(line)["reward_mean"] for line in path.read_text().splitlines() if line.strip()]


async def test_digits_reward_rises_with_async_rl(served, nats_url, tiny_model_dir, tmp_path) -> None:
    name, backend, client = served
    run_id = f"digits-{uuid.uuid4().hex[:8]}"
    env_server = EnvironmentServer([load_environment()])
    await env_server.start()
    nc = await bus.connect(nats_url)
    js = nc.jetstream()
    publisher, store = bus.Publisher(nc, js), await bus.PolicyStore.open(js)
    cfg = TrainerConfig(
        run_id=run_id,
        model=str(tiny_model_dir),
        lr=5e-4,
        nats_url=nats_url,
        batch={"rollouts_per_step": GROUPS_PER_STEP * GROUP_SIZE},
        checkpoint={"dir": str(tmp_path / "ck"), "every_n_steps": 50, "export_hf": False},
        push={"model": name},
    )
    trainer = await Trainer.create(cfg)
    rollout = RolloutConfig(
        run_id=run_id,
        env="digits",
        split="train",
        rollouts_per_task=GROUP_SIZE,
        sampling=SamplingConfig(temperature=1.0, max_tokens=8),
        max_concurrency=GROUPS_PER_STEP * GROUP_SIZE,
        max_off_policy_steps=MAX_OFF_POLICY_STEPS,
    )
    training = asyncio.create_task(trainer.run(max_steps=MAX_STEPS))
    yielded, per_step = 0, GROUPS_PER_STEP * GROUP_SIZE
    try:
        async with RolloutEngine(
            rollout,
            env_addresses=[env_server.address],
            inference_addresses=[client.address],
            publisher=publisher,
            policy=store,
        ) as engine:
            tasks = await engine.list_tasks()
            async for group in engine.run(_forever(tasks)):
                yielded += len(group)
                # Backpressure: at most BACKLOG_STEPS steps of rollouts wait for the trainer, or the
                # samples it trains on grow older than the engine's staleness bound.
                while yielded - trainer.step * per_step > BACKLOG_STEPS * per_step and not training.done():  # noqa: ASYNC110 (polls the trainer's step count)
                    await asyncio.sleep(0.02)
                rewards = _rewards(cfg.metrics_file)
                if training.done() or (len(rewards) >= 10 and sum(rewards[-5:]) / 5 > 0.9):
                    break
        trainer.stop()
        await asyncio.wait_for(training, 60)
    finally:
        if not training.done():
            training.cancel()
        await nc.close()
        await env_server.stop(0)
    rewards = _rewards(cfg.metrics_file)
    records = [json.loads(line) for line in cfg.metrics_file.read_text().splitlines()]
    start, end = sum(rewards[:3]) / 3, sum(rewards[-5:]) / 5
    assert start < 0.35, rewards[:10]
    assert end > 0.8, rewards
    assert backend.policy_version >= len(records) - 1  # sampling followed the trainer
    # Staleness stayed bounded: the engine's bound plus the backlog the trainer had to catch up on.
    assert max(r["policy_lag_max"] for r in records) <= MAX_OFF_POLICY_STEPS + BACKLOG_STEPS + 1
    assert all(r["skipped_error"] == 0 for r in records)


def test_digits_environment_rewards() -> None:
    from rollmesh.envs.digits import digits, number

    def reply(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    assert digits(reply(" 18 18")) == 1.0 and number(reply(" 18 18")) == 0.0
    assert digits(reply("a1b2")) == 0.5 and digits(reply("")) == 0.0
    assert number(reply(" -42 ")) == 1.0
    env = load_environment(num_train=5, num_test=2)
    assert {k: len(v) for k, v in env.splits.items()} == {"train": 5, "test": 2}
    assert env.reward_names == ["digits", "number"] and env.sampling == {"max_tokens": 8}
