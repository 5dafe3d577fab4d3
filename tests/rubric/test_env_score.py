"""Reward functions that call a real environment server: env_score (its Score RPC) and
tool_call_validity with tool specs from the environment's Describe."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from rollmesh import convert
from rollmesh.env import SingleTurnEnv, ToolEnv
from rollmesh.env.client import EnvClient
from rollmesh.env.server import EnvironmentServer
from rollmesh.examples import arithmetic
from rollmesh.natsd import free_port
from rollmesh.proto.v1 import trajectory_pb2 as traj_pb
from rollmesh.rubric.config import RewardFunctionConfig as Fn
from rollmesh.rubric.config import RubricConfig, to_spec
from rollmesh.rubric.scoring import CompiledRubric, RubricBook


async def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


@pytest.fixture(scope="module")
async def env_server(nats_url: str) -> AsyncIterator[EnvironmentServer]:
    envs = [
        arithmetic.load_environment(num_train=20, num_test=5),
        ToolEnv(name="calc", tasks=[{"id": "c1", "question": "What is 2 + 3?", "answer": "5"}], tools=[add]),
        SingleTurnEnv(name="unscored", tasks=[{"id": "u1", "question": "hi"}]),
    ]
    async with EnvironmentServer(envs, nats_url=nats_url) as server:
        yield server


@pytest.fixture(scope="module")
async def book(nats_url: str) -> AsyncIterator[RubricBook]:
    b = RubricBook(nats_url=nats_url)
    yield b
    await b.close()


def rubric(book: RubricBook, *functions: Fn) -> CompiledRubric:
    return book.compile(to_spec(RubricConfig(name="env", functions=list(functions))))


async def episode(server: EnvironmentServer, reply: str) -> traj_pb.Trajectory:
    """A real arithmetic episode over gRPC, recorded as a Trajectory."""
    async with await EnvClient.connect(server.address) as client, client.episode("arithmetic", "a00003") as ep:
        step = await ep.step(reply)
        task = ep.task
        messages = [*ep.messages, {"role": "assistant", "content": reply}, *step.messages]
    return traj_pb.Trajectory(
        task=convert.task_to_pb(task, "arithmetic"),
        messages=convert.messages_to_pb(messages),
        state=convert.to_struct(step.state),
        stop_reason=traj_pb.STOP_REASON_DONE,
    )


async def test_env_score_by_address_and_by_registry(env_server: EnvironmentServer, book: RubricBook) -> None:
    answer = env_server.servicer.envs["arithmetic"].get_task("a00003").answer
    right, wrong = await episode(env_server, answer), await episode(env_server, "I think 99999")
    by_address = rubric(
        book,
        Fn(name="total", function="env_score", params={"address": env_server.address}),
        Fn(name="format", function="env_score", weight=0.0, params={"address": env_server.address, "key": "format"}),
    )
    result = await by_address.score(right)
    assert dict(result.rewards) == {"total": 1.0} and result.metrics["format"] == 1.0 and not result.errors
    result = await by_address.score(wrong)
    assert dict(result.rewards) == {"total": 0.0} and result.metrics["format"] == 0.0
    # no address: the environment is found in the registry by trajectory.task.env
    by_name = rubric(book, Fn(name="correct", function="env_score", params={"key": "correct"}))
    results, adv = await by_name.score_group([right, wrong])
    assert [r.rewards["correct"] for r in results] == [1.0, 0.0] and adv == [0.5, -0.5]


async def test_env_score_failures_are_errors(env_server: EnvironmentServer, book: RubricBook) -> None:
    t = await episode(env_server, "1")
    unknown_key = rubric(book, Fn(name="x", function="env_score", params={"key": "nope"}))
    assert "returned rewards ['correct', 'format'], not 'nope'" in (await unknown_key.score(t)).errors["x"]

    unscored = traj_pb.Trajectory()
    unscored.CopyFrom(t)
    unscored.task.env = "unscored"
    message = (await rubric(book, Fn(name="x", function="env_score")).score(unscored)).errors["x"]
    assert "does not implement Score" in message

    missing = traj_pb.Trajectory()
    missing.CopyFrom(t)
    missing.task.env = "no-such-env"
    message = (await rubric(book, Fn(name="x", function="env_score")).score(missing)).errors["x"]
    assert "NotFoundError" in message and "no-such-env" in message

    dead = rubric(book, Fn(name="x", function="env_score", params={"address": f"127.0.0.1:{free_port()}"}))
    result = await dead.score(t)
    assert "UnavailableError" in result.errors["x"] and not result.rewards and result.metrics["rubric/partial"] == 1


async def test_tool_call_validity_with_specs_from_the_environment(
    env_server: EnvironmentServer, book: RubricBook
) -> None:
    def calling(arguments: dict) -> traj_pb.Trajectory:
        call = {"id": "1", "type": "function", "function": {"name": "add", "arguments": json.dumps(arguments)}}
        messages = [
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "5", "tool_call_id": "1"},
            {"role": "assistant", "content": "5"},
        ]
        task = convert.task_to_pb(env_server.servicer.envs["calc"].get_task("c1"), "calc")
        return traj_pb.Trajectory(task=task, messages=convert.messages_to_pb(messages))

    validity = rubric(book, Fn(name="valid", function="tool_call_validity", params={"address": env_server.address}))
    assert (await validity.score(calling({"a": 2, "b": 3}))).rewards["valid"] == 1.0
    assert (await validity.score(calling({"a": "2", "b": 3}))).rewards["valid"] == 0.0
    assert (await validity.score(calling({"a": 2}))).rewards["valid"] == 0.0
    via_registry = rubric(book, Fn(name="valid", function="tool_call_validity"))
    assert (await via_registry.score(calling({"a": 1, "b": 1}))).rewards["valid"] == 1.0
