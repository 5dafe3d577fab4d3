"""`rollmesh export`: SFT rows with the exact tokens (one sequence per episode, masks that separate
the model's tokens from the environment's), filters, jsonl and parquet, and reading a run from the
JetStream ROLLOUTS stream of a real nats-server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rollmesh import bus
from rollmesh.apps.export import export, merge_turns, read_bus, trajectory_rows
from rollmesh.apps.results import ResultsDir
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb

PROMPT = [1, 2, 3]
C1 = [10, 11, 12]  # first completion
BRIDGE = [4, 5]  # tokens the environment's reply added to the context
C2 = [13, 14]


def two_turn(tid: str = "t1", reward: float = 1.0, *, run: str = "run-x", error: bool = False) -> traj_pb.Trajectory:
    t = traj_pb.Trajectory(trajectory_id=tid, run_id=run, group_id=f"{run}/guess-number/test/g1", reward=reward)
    t.task.env, t.task.task_id, t.task.split, t.task.answer = "guess-number", "g1", "test", "42"
    t.rewards["solved"] = reward
    t.provenance.model = "tiny"
    t.provenance.policy_version = 5
    for role, content in (("user", "Guess."), ("assistant", "50"), ("user", "Lower."), ("assistant", "42")):
        t.messages.add(role=role, content=content)
    t.turns.add(prompt_ids=PROMPT, completion_ids=C1, completion_logprobs=[-0.1, -0.2, -0.3], completion_mask=[1, 1, 1])
    t.turns.add(prompt_ids=PROMPT + C1 + BRIDGE, completion_ids=C2, completion_logprobs=[-0.4, -0.5])
    t.stop_reason = traj_pb.STOP_REASON_ERROR if error else traj_pb.STOP_REASON_DONE
    if error:
        t.error.source, t.error.message = "environment", "gone"
    return t


def test_merge_turns_one_sequence_with_masks() -> None:
    t = two_turn()
    prompt, completion, mask, logprobs = merge_turns(t.turns)  # type: ignore[misc]
    assert prompt == PROMPT
    assert completion == C1 + BRIDGE + C2
    assert mask == [1, 1, 1, 0, 0, 1, 1]
    assert logprobs == pytest.approx([-0.1, -0.2, -0.3, 0.0, 0.0, -0.4, -0.5])
    # The last prompt + completion is the whole sequence the model saw.
    assert prompt + completion == list(t.turns[-1].prompt_ids) + list(t.turns[-1].completion_ids)


def test_merge_turns_refuses_inconsistent_prompts() -> None:
    t = two_turn()
    t.turns[1].prompt_ids[1] = 99  # the second prompt does not extend the first
    assert merge_turns(t.turns) is None
    row = next(trajectory_rows(t))
    assert row["completion_ids"] == [] and row["messages"][1]["content"] == "50"
    assert merge_turns([]) is None


def test_rows_in_chat_format() -> None:
    t = two_turn()
    t.messages[1].tool_calls.add(id="c1", name="guess", arguments_json='{"n": 50}')
    (row,) = trajectory_rows(t)
    assert row["id"] == "t1" and row["env"] == "guess-number" and row["task_id"] == "g1" and row["answer"] == "42"
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m["role"] for m in row["prompt"]] == ["user"]
    assert [m["content"] for m in row["completion"]] == ["50", "Lower.", "42"]
    assert row["messages"][1]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "guess", "arguments": '{"n": 50}'}}
    ]
    assert row["reward"] == 1.0 and row["rewards"] == {"solved": 1.0} and row["stop_reason"] == "done"
    assert row["model"] == "tiny" and row["policy_version"] == 5 and row["num_turns"] == 2
    per_turn = list(trajectory_rows(t, per_turn=True))
    assert [r["turn"] for r in per_turn] == [0, 1]
    assert per_turn[0]["prompt_ids"] == PROMPT and per_turn[0]["completion_ids"] == C1
    assert [m["content"] for m in per_turn[1]["messages"]] == ["Guess.", "50", "Lower.", "42"]
    assert [m["content"] for m in per_turn[1]["completion"]] == ["42"]
    assert per_turn[1]["completion_mask"] == [1, 1]  # an empty mask means every token was trained on


def test_jsonl_and_parquet_with_filters(tmp_path: Path) -> None:
    trajs = [
        two_turn("a", 1.0),
        two_turn("b", 0.2),
        two_turn("c", 0.0, error=True),  # a failure, never a sample
        two_turn("a", 1.0),  # the same rollout twice (a bus republish)
        two_turn("d", 0.5),
    ]
    counts = export(trajs, tmp_path / "out.jsonl", min_reward=0.5)
    assert (counts.read, counts.exported, counts.rows) == (5, 2, 2)
    assert (counts.errored, counts.below_min_reward, counts.duplicates) == (1, 1, 1)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "d"]
    assert rows[0]["messages"][0] == {"role": "user", "content": "Guess."}  # unset keys left out in jsonl
    assert rows[0]["completion_ids"] == C1 + BRIDGE + C2

    counts = export(trajs, tmp_path / "out.parquet", fmt="parquet", per_turn=True)
    assert counts.exported == 3 and counts.rows == 6
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 6
    assert str(table.schema.field("prompt_ids").type) == "list<element: int32>"
    assert str(table.schema.field("completion_mask").type) == "list<element: int8>"
    first = table.slice(0, 1).to_pylist()[0]
    assert first["id"] == "a" and first["turn"] == 0 and first["completion_ids"] == C1
    assert first["rewards"] == [("solved", 1.0)]
    assert first["messages"][0]["role"] == "user" and first["messages"][0]["tool_calls"] is None

    counts = export([], tmp_path / "empty.parquet", fmt="parquet")
    assert counts.rows == 0 and pq.read_table(tmp_path / "empty.parquet").num_rows == 0
    with pytest.raises(Exception, match="choose one of jsonl, parquet"):
        export(trajs, tmp_path / "x.csv", fmt="csv")


async def test_read_run_from_the_bus(nats_url: str, tmp_path: Path) -> None:
    nc = await bus.connect(nats_url)
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, (bus.ROLLOUTS,))
        publisher = bus.Publisher(nc, js)
        for i in range(5):
            await publisher.publish_trajectory(two_turn(f"bus-{i}", i / 4, run="bus-run"))
        await publisher.publish_trajectory(two_turn("other", 1.0, run="other-run"))  # another run
        await publisher.publish(bus.rollouts_subject("bus-run", "guess-number"), b"not a trajectory")
        await publisher.flush()
    finally:
        await nc.close()
    trajs = await read_bus(nats_url, "bus-run", idle_timeout_s=5.0)
    assert [t.trajectory_id for t in trajs] == [f"bus-{i}" for i in range(5)]

    # The command: `--run RUN` that is not a directory reads the bus.
    out = tmp_path / "bus-run.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollmesh.cli", "export", "--run", "bus-run", "--nats", nats_url,
        "--min-reward", "0.5", "--out", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["bus-2", "bus-3", "bus-4"]
    assert "3 rows from 3 of 5 trajectories" in err.decode() and "dropped 2 below reward 0.5" in err.decode()


async def test_unknown_run_is_a_clear_error(nats_url: str, tmp_path: Path) -> None:
    results = ResultsDir(tmp_path / "only-errors")
    results.append([two_turn("e", error=True)])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollmesh.cli", "export", "--run", "no-such-run", "--nats", nats_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "no-such-run" in err.decode() and "no trajectories on rollmesh.rollouts.no-such-run.*" in err.decode()
    # A results directory with nothing exportable: exit 1, saying why.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollmesh.cli", "export", "--run", str(results.path), "--out", str(tmp_path / "o.jsonl"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 1 and "0 rows from 0 of 1 trajectories" in err.decode() and "1 errored" in err.decode()
