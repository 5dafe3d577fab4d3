"""The Trainer refuses forged rollouts before they enter a batch, with a real nats-server and the real
consumer, batching and DeepSpeed step: each is dead-lettered with why, counted per reason in the
step's metrics, acknowledged with the step (never redelivered), never trained; the valid ones of the
same stream still train."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from rollmesh import bus  # noqa: E402
from rollmesh.advantages import group_advantages  # noqa: E402
from rollmesh.proto.v1 import bus_pb2  # noqa: E402
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb  # noqa: E402
from rollmesh.trainer.config import TrainerConfig  # noqa: E402
from rollmesh.trainer.loop import Trainer  # noqa: E402

from .rollouts import publish  # noqa: E402

ENV = "env"


def rollout(
    run_id: str, name: str, *, reward: float = 0.0, advantage: float = 0.0, group: str = ""
) -> traj_pb.Trajectory:
    t = traj_pb.Trajectory(
        trajectory_id=f"{run_id}-{name}", run_id=run_id, group_id=group, reward=reward, advantage=advantage
    )
    t.task.env = ENV
    t.turns.append(traj_pb.Turn(prompt_ids=[1, 5, 40, 6], completion_ids=[50, 51, 2], completion_logprobs=[-3, -4, -1]))
    return t


def group(run_id: str, name: str, rewards: list[float], **settings: bool) -> list[traj_pb.Trajectory]:
    """A group scored as the orchestrator and the rubric service score one."""
    return [
        rollout(run_id, f"{name}{i}", reward=r, advantage=a, group=name)
        for i, (r, a) in enumerate(zip(rewards, group_advantages(rewards, **settings), strict=True))
    ]


async def dead_letters(nats_url: str, run_id: str, expected: int) -> list[bus_pb2.DeadLetter]:
    """The run's dead letters; waits for `expected` of them (they are published before the step trains)."""
    nc = await bus.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(bus.deadletter_subject(bus.rollouts_subject(run_id, ENV)), ordered_consumer=True)
        out: list[bus_pb2.DeadLetter] = []
        try:
            while True:
                out.append(
                    bus_pb2.DeadLetter.FromString(
                        (await sub.next_msg(timeout=2.0 if len(out) < expected else 0.5)).data
                    )
                )
        except (TimeoutError, asyncio.TimeoutError):  # noqa: UP041 (nats raises its own subclass)
            return out
    finally:
        await nc.close()


async def consumer_state(nats_url: str, durable: str) -> Any:
    nc = await bus.connect(nats_url)
    try:
        return await nc.jetstream().consumer_info(bus.ROLLOUTS.name, durable)
    finally:
        await nc.close()


async def train(nats_url: str, model: Path, tmp_path: Path, run_id: str, steps: int, **batch: Any) -> list[dict]:
    cfg = TrainerConfig(
        run_id=run_id,
        model=str(model),
        nats_url=nats_url,
        batch=batch,
        checkpoint={"dir": str(tmp_path / "ck"), "export_hf": False},
        push={"enabled": False, "discover": False},
    )
    trainer = await Trainer.create(cfg)
    summary = await trainer.run(max_steps=steps)
    assert summary.steps == steps
    return [json.loads(line) for line in cfg.metrics_file.read_text().splitlines()]


async def test_forged_advantages_are_dead_lettered_counted_and_never_trained(
    nats_url, tiny_model_dir, tmp_path
) -> None:
    run_id = f"forged-{uuid.uuid4().hex[:8]}"
    forged = [rollout(run_id, f"forged{i}", reward=1.0, advantage=1e6) for i in range(64)]
    good = group(run_id, "a", [1.0, 0.0]) + group(run_id, "b", [0.0, 1.0])
    await publish(nats_url, forged[:32] + good[:2] + forged[32:] + good[2:])

    (record,) = await train(nats_url, tiny_model_dir, tmp_path, run_id, 1, rollouts_per_step=4)
    assert sorted(record["trajectory_ids"]) == sorted(t.trajectory_id for t in good)
    assert record["rollouts"] == 4 and record["loss"] is not None and record["advantage_mean"] == 0.0
    assert record["skipped_invalid"] == 64 and record["skipped_invalid_reasons"] == {"ADVANTAGE_OUT_OF_RANGE": 64}
    assert {record["skipped"][t.trajectory_id] for t in forged} == {"invalid"}
    letters = await dead_letters(nats_url, run_id, 64)
    assert len(letters) == 64 and {d.reason.split(":")[0] for d in letters} == {"ADVANTAGE_OUT_OF_RANGE"}
    assert "advantage 1e+06 is outside [-100, 100]" in letters[0].reason and letters[0].service == "trainer"
    assert sorted(traj_pb.Trajectory.FromString(d.payload).trajectory_id for d in letters) == sorted(
        t.trajectory_id for t in forged
    )
    # acknowledged with the step's checkpoint: nothing of the run is pending or will be redelivered
    state = await consumer_state(nats_url, f"trainer-{run_id}")
    assert state.num_ack_pending == 0 and state.num_pending == 0
    assert state.ack_floor.stream_seq == record["last_seq"]


async def test_tokens_logprobs_and_lengths_are_checked(nats_url, tiny_model_dir, tmp_path) -> None:
    run_id = f"shape-{uuid.uuid4().hex[:8]}"
    out_of_vocab = rollout(run_id, "vocab", advantage=0.5)
    out_of_vocab.turns[0].completion_ids[1] = 1_000_000  # the tiny model has 512
    positive = rollout(run_id, "positive", advantage=0.5)
    positive.turns[0].completion_logprobs[0] = 2.0
    nan = rollout(run_id, "nan", advantage=0.5)
    nan.turns[0].completion_logprobs[2] = math.nan
    huge = rollout(run_id, "huge", advantage=-0.5)
    huge.turns[0].completion_logprobs[1] = -1e30  # finite, but exp(logprob - old) is not
    short = rollout(run_id, "short", advantage=0.5)
    del short.turns[0].completion_logprobs[-1]
    mask = rollout(run_id, "mask", advantage=0.5)
    mask.turns[0].completion_mask.extend([1, 1])
    bad = [out_of_vocab, positive, nan, huge, short, mask]
    good = group(run_id, "g", [1.0, 0.0, 0.5], normalize_std=True)
    await publish(nats_url, [bad[0], good[0], *bad[1:], *good[1:]])

    (record,) = await train(nats_url, tiny_model_dir, tmp_path, run_id, 1, rollouts_per_step=3)
    assert sorted(record["trajectory_ids"]) == sorted(t.trajectory_id for t in good)
    assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
    assert record["skipped_invalid_reasons"] == {
        "BAD_LOGPROB": 3,
        "BAD_TOKEN_ID": 1,
        "LOGPROBS_LENGTH_MISMATCH": 1,
        "MASK_LENGTH_MISMATCH": 1,
    }
    letters = await dead_letters(nats_url, run_id, len(bad))
    by_id = {traj_pb.Trajectory.FromString(d.payload).trajectory_id: d.reason for d in letters}
    assert (
        by_id[out_of_vocab.trajectory_id].startswith("BAD_TOKEN_ID:")
        and "vocabulary of 512" in by_id[out_of_vocab.trajectory_id]
    )
    assert {by_id[t.trajectory_id].split(":")[0] for t in (positive, nan, huge)} == {"BAD_LOGPROB"}


async def test_groups_whose_advantages_do_not_come_from_their_rewards_are_refused(
    nats_url, tiny_model_dir, tmp_path
) -> None:
    run_id = f"groups-{uuid.uuid4().hex[:8]}"
    # a legit group with one more, forged member (within the bound, but not what its reward gives)
    joined = group(run_id, "joined", [1.0, 0.0, 0.0, 1.0])
    joined_forged = rollout(run_id, "joined-forged", reward=0.0, advantage=50.0, group="joined")
    # a whole forged group: affine in its rewards, but not against their mean
    whole = [
        rollout(run_id, f"whole{i}", reward=r, advantage=10.0 + 20.0 * r, group="whole")
        for i, r in enumerate([1.0, 0.0, 0.0, 1.0])
    ]
    # a member the rubric left out (scored in part) must have advantage 0
    partial = group(run_id, "partial", [1.0, 0.0])
    left_out = rollout(run_id, "partial-x", reward=0.0, advantage=-40.0, group="partial")
    left_out.metrics["rubric/partial"] = 1.0
    good = group(run_id, "ok1", [1.0, 0.0]) + group(run_id, "ok2", [0.2, 0.8], normalize_std=True, leave_one_out=True)
    # step 1 holds the first three groups; in step 2 a late member of the refused group "joined" is
    # refused too, and one of the trained group "ok1" that disagrees with it
    late = [
        rollout(run_id, "joined-late", reward=1.0, advantage=0.5, group="joined"),
        rollout(run_id, "ok1-late", reward=1.0, advantage=-2.0, group="ok1"),
    ]
    step1 = [*joined[:2], joined_forged, *whole, *joined[2:], *partial, left_out, *good]
    more_good = group(run_id, "ok3", [3.0, 1.0]) + group(run_id, "ok4", [0.0, 0.5, 1.0])[:2]
    await publish(nats_url, step1 + late + more_good)

    records = await train(nats_url, tiny_model_dir, tmp_path, run_id, 2, rollouts_per_step=4, group_size=4)
    refused = [*joined, joined_forged, *whole, *partial, left_out]
    assert sorted(records[0]["trajectory_ids"]) == sorted(t.trajectory_id for t in good)
    # joined[2:] arrive after their group was refused (the step is filled in stream order)
    assert records[0]["skipped_invalid_reasons"] == {"ADVANTAGE_MISMATCH": len(refused) - 2, "GROUP_REFUSED": 2}
    assert sorted(records[1]["trajectory_ids"]) == sorted(t.trajectory_id for t in more_good)
    assert records[1]["skipped_invalid_reasons"] == {"ADVANTAGE_MISMATCH": 1, "GROUP_REFUSED": 1}
    letters = await dead_letters(nats_url, run_id, len(refused) + 2)
    by_id = {traj_pb.Trajectory.FromString(d.payload).trajectory_id: d.reason for d in letters}
    assert set(by_id) == {t.trajectory_id for t in refused + late}
    assert "group 'whole': " in by_id[whole[0].trajectory_id] and "baseline" in by_id[whole[0].trajectory_id]
    assert "left out of the baseline" in by_id[left_out.trajectory_id]
    assert by_id[late[0].trajectory_id].startswith("GROUP_REFUSED: group 'joined'")
