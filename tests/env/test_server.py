"""The environment gRPC server end to end: a real server on loopback, EnvClient, the real NATS
registry and a real `rollmesh env serve` subprocess."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from rollmesh.env import MultiTurnEnv, SingleTurnEnv, Task, ToolEnv
from rollmesh.env.client import EnvClient
from rollmesh.env.server import EnvironmentServer, EpisodeLimits, page_token
from rollmesh.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RollmeshError,
    UnavailableError,
    UnimplementedError,
)
from rollmesh.examples import arithmetic, guess_number
from rollmesh.proto.v1 import bus_pb2
from rollmesh.proto.v1 import environment_pb2 as env_pb
from rollmesh.registry import Registry
from rollmesh.rpc import RpcLimits
from rollmesh.rpc_errors import error_info

ROLLMESH = Path(sys.executable).parent / "rollmesh"
TIMEOUT = 10.0  # generous upper bound for anything that should happen "soon"


# ---- environments used by these tests ------------------------------------------------------------


def _solve(question: str) -> int:
    m = re.search(r"What is (\d+) ([-+*]) (\d+)\?", question)
    assert m, question
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return {"+": a + b, "-": a - b, "*": a * b}[op]


class TrackedEnv(MultiTurnEnv):
    """Echoes each message; counts cleanups; can be told to fail or to stall."""

    def __init__(self, name: str = "tracked", *, fail_in: str = "", stall_s: float = 0.0, **kwargs) -> None:
        kwargs.setdefault("tasks", [{"id": "t", "question": "talk to me"}])
        kwargs.setdefault("max_turns", 50)
        super().__init__(name=name, **kwargs)
        self.fail_in = fail_in
        self.stall_s = stall_s
        self.setups = 0
        self.cleanups = 0

    async def setup_state(self, task, state) -> None:
        self.setups += 1
        if self.fail_in == "setup_state":
            raise KeyError("missing-sandbox")

    async def env_response(self, messages, state):
        if self.fail_in == "env_response":
            raise RuntimeError("disk on fire")
        if self.fail_in == "timeout":
            raise TimeoutError("upstream search timed out")
        if messages[-1]["content"] == "flood":
            return [{"role": "user", "content": "z" * 64 * 1024}]
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        if messages[-1]["content"] == "bye":
            state["done"] = True
        return [{"role": "user", "content": f"echo: {messages[-1]['content']}"}]

    async def cleanup(self, state) -> None:
        self.cleanups += 1


async def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


def _calc() -> ToolEnv:
    return ToolEnv(name="calc", tasks=[{"id": "c1", "question": "What is 2 + 3?", "answer": "5"}], tools=[add])


class ScoredEnv(SingleTurnEnv):
    """No rubric, but its own score()."""

    async def score(self, task, messages, state):
        return float(len(messages[-1]["content"]))


async def _eventually(predicate: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _active(client: EnvClient) -> int:
    return (await client.describe()).active_episodes


def _code(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, grpc.aio.AioRpcError), repr(exc)
    return exc.code()


@pytest.fixture
async def served() -> AsyncIterator[tuple[EnvironmentServer, EnvClient]]:
    envs = [
        arithmetic.load_environment(num_train=150, num_test=10),
        guess_number.load_environment(num_tasks=50),
        _calc(),
        TrackedEnv(),
        TrackedEnv("bare", max_turns=3),
        ScoredEnv(name="scored", tasks=[{"question": "q"}]),
    ]
    async with (
        EnvironmentServer(envs) as srv,
        await EnvClient.connect(srv.address, timeout_s=TIMEOUT) as client,
    ):
        yield srv, client


def _env(srv: EnvironmentServer, name: str):
    return srv.servicer.envs[name]


# ---- Describe / ListTasks ------------------------------------------------------------------------


async def test_describe() -> None:
    envs = [
        arithmetic.load_environment(num_train=20, num_test=5),
        guess_number.load_environment(num_tasks=50),
        _calc(),
    ]
    async with (
        EnvironmentServer(
            envs,
            limits=EpisodeLimits(max_concurrent_episodes=7, idle_timeout_s=12.5),
            rpc_limits=RpcLimits(max_message_bytes=1 << 20),
        ) as srv,
        await EnvClient.connect(srv.address) as client,
    ):
        d = await client.describe()
    assert d.server.protocol_version == "v1" and d.server.language == "python"
    assert d.server.sdk_version.startswith("rollmesh-python ")
    assert d.server.instance_id == srv.servicer.instance_id != ""
    assert (
        d.limits.max_concurrent_episodes,
        d.limits.max_message_bytes,
        d.limits.episode_idle_timeout_s,
    ) == (
        7,
        1 << 20,
        12.5,
    )
    assert d.active_episodes == 0
    info = {e.name: e for e in d.environments}
    assert list(info) == ["arithmetic", "guess-number", "calc"]
    assert info["arithmetic"].kind == env_pb.ENVIRONMENT_KIND_SINGLE_TURN
    assert info["guess-number"].kind == env_pb.ENVIRONMENT_KIND_MULTI_TURN
    assert info["calc"].kind == env_pb.ENVIRONMENT_KIND_TOOL
    assert dict(info["arithmetic"].splits) == {"train": 20, "test": 5}
    assert dict(info["guess-number"].splits) == {"train": 40, "test": 10}
    assert list(info["arithmetic"].reward_names) == ["correct", "format"]
    assert info["arithmetic"].has_score and not info["calc"].has_score
    assert info["arithmetic"].max_turns == 1 and info["guess-number"].max_turns == 10
    assert info["arithmetic"].default_sampling.max_tokens == 32
    assert info["arithmetic"].version == "0.1.0" and info["arithmetic"].description
    for env in envs:
        assert info[env.name].digest == env.digest and len(env.digest) == 64
    assert not info["arithmetic"].tools
    [tool] = info["calc"].tools
    assert tool.name == "add" and tool.description == "Add two integers."
    assert json.loads(tool.parameters_json_schema) == {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "The first."},
            "b": {"type": "integer", "description": "The second."},
        },
        "required": ["a", "b"],
    }


async def _pages(client: EnvClient, **request) -> list[env_pb.ListTasksResponse]:
    call = client.stub.ListTasks(env_pb.ListTasksRequest(**request), timeout=TIMEOUT)
    return [r async for r in call]


async def test_list_tasks_paging(served) -> None:
    srv, client = served
    expected = [t.task_id for t in _env(srv, "arithmetic").tasks("train")]
    assert len(expected) == 150
    tasks = await client.tasks("arithmetic")  # default split, all of it
    assert [t.task_id for t in tasks] == expected
    assert tasks[0].prompt == _env(srv, "arithmetic").tasks("train")[0].prompt
    assert tasks[0].split == "train" and tasks[0].answer
    assert [t.task_id for t in await client.tasks("arithmetic", "test", limit=3)] == [
        t.task_id for t in _env(srv, "arithmetic").tasks("test")[:3]
    ]

    everything = await _pages(client, env="arithmetic")  # streamed in batches of 64
    assert [len(r.tasks) for r in everything] == [64, 64, 22]
    assert all(r.total == 150 and r.next_page_token == "" for r in everything)

    first = await _pages(client, env="arithmetic", page_size=100)
    assert [len(r.tasks) for r in first] == [64, 36]
    assert first[0].next_page_token == "" and first[1].next_page_token  # on the last message of the call
    rest = await _pages(client, env="arithmetic", page_size=100, page_token=first[-1].next_page_token)
    assert [len(r.tasks) for r in rest] == [50] and rest[-1].next_page_token == ""
    got = [t.task_id for r in first + rest for t in r.tasks]
    assert got == expected

    small = await _pages(client, env="arithmetic", page_size=10, page_token=page_token("arithmetic", "train", 140))
    assert [len(r.tasks) for r in small] == [10] and small[0].next_page_token == ""
    end = await _pages(client, env="arithmetic", page_token=page_token("arithmetic", "train", 150))
    assert [(len(r.tasks), r.total, r.next_page_token) for r in end] == [(0, 150, "")]
    [empty] = await _pages(
        client, env="tracked", split="train", page_size=5, page_token=page_token("tracked", "train", 1)
    )
    assert (len(empty.tasks), empty.total) == (0, 1)


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "100",  # a decimal offset is not a token (spec 5: page tokens are opaque)
        page_token("arithmetic", "train", 151),  # past the end
        page_token("arithmetic", "test", 10),  # another split's token
        page_token("tracked", "train", 0),  # another environment's token
    ],
)
async def test_list_tasks_bad_page_token(served, token: str) -> None:
    _, client = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _pages(client, env="arithmetic", page_token=token)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in info.value.details()
    assert error_info(info.value).reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgumentError, match="page_token") as raised:  # the same through EnvClient
        [t async for t in client.list_tasks("arithmetic", page_token=token)]
    assert raised.value.reason == "INVALID_PAGE_TOKEN"


async def test_list_tasks_errors(served) -> None:
    _, client = served
    with pytest.raises(NotFoundError, match=r"no split 'dev'.*\['test', 'train'\]"):
        await client.tasks("arithmetic", "dev")
    with pytest.raises(NotFoundError, match=r"no environment 'nope'.*arithmetic"):
        await client.tasks("nope")
    with pytest.raises(InvalidArgumentError, match="no environment named"):
        await client.tasks("")
    with pytest.raises(InvalidArgumentError, match="page_size"):
        [t async for t in client.list_tasks("arithmetic", page_size=-1)]


# ---- episodes ------------------------------------------------------------------------------------


async def test_arithmetic_episode(served) -> None:
    srv, client = served
    env = _env(srv, "arithmetic")
    for task in env.tasks("test")[:3]:
        async with client.episode("arithmetic", task.task_id, split="test", seed=1) as ep:
            assert ep.episode_id and ep.max_turns == 1 and ep.tools == []
            assert ep.task is not None and (ep.task.task_id, ep.task.answer) == (task.task_id, task.answer)
            assert ep.messages == task.prompt
            step = await ep.step(f"\\boxed{{{_solve(ep.messages[-1]['content'])}}}")
            assert step.done and step.stop_reason == "done" and step.turn == 1
            assert step.rewards == {"correct": 1.0, "format": 1.0} and step.reward == 1.0
            assert step.metrics == {"turns": 1.0}
            assert step.state == {"seed": 1, "options": {}, "turn": 1}
            with pytest.raises(FailedPreconditionError, match="is done"):
                await ep.step("again")
    async with client.episode("arithmetic", env.tasks()[0].task_id) as ep:
        step = await ep.step("definitely not a number")
        assert step.done and step.reward == 0.0
    assert await _active(client) == 0


async def test_guess_number_episode(served) -> None:
    srv, client = served
    env = _env(srv, "guess-number")
    for task in env.tasks("test")[:5]:
        low, high = 1, 100
        async with client.episode("guess-number", task.task_id, split="test", options={"note": "x"}) as ep:
            assert ep.max_turns == 10
            assert await _active(client) == 1
            while not ep.done:
                guess = (low + high) // 2
                step = await ep.step(str(guess))
                reply = step.messages[-1]["content"]
                if reply == "Higher.":
                    low = guess + 1
                elif reply == "Lower.":
                    high = guess - 1
            assert step.stop_reason == "done" and reply.startswith("Correct!")
            assert step.rewards["solved"] == 1.0
            assert step.reward == pytest.approx(1 + 0.2 / step.turn)
            assert step.state["secret"] == int(task.answer) and step.state["options"] == {"note": "x"}
            # the client keeps the whole conversation
            assert len(ep.messages) == len(task.prompt) + 2 * step.turn
        await _eventually(lambda: srv.servicer.active == 0, "the episode to be released")


async def test_tool_episode(served) -> None:
    _, client = served
    async with client.episode("calc", "c1") as ep:
        assert [t["name"] for t in ep.tools] == ["add"]
        assert ep.tools[0]["parameters"]["required"] == ["a", "b"]
        call = {"id": "k1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
        step = await ep.step({"role": "assistant", "content": "", "tool_calls": [call]})
        assert not step.done
        assert step.messages == [{"role": "tool", "content": "5", "tool_call_id": "k1", "name": "add"}]
        assert ep.messages[-2]["tool_calls"][0]["function"]["name"] == "add"
        step = await ep.step("It is 5.")
        assert step.done and step.stop_reason == "done" and step.reward is None


async def test_invalid_episode_starts(served) -> None:
    srv, client = served
    with pytest.raises(NotFoundError, match=r"no task 'zz' in split 'test'"):
        async with client.episode("arithmetic", "zz", split="test"):
            pass
    with pytest.raises(NotFoundError, match="no environment 'nope'"):
        async with client.episode("nope", "t"):
            pass
    with pytest.raises(InvalidArgumentError, match="task_id"):
        async with client.episode("arithmetic"):
            pass
    with pytest.raises(InvalidArgumentError, match="inline task needs a prompt"):
        async with client.episode("arithmetic", task=Task(task_id="x", prompt=[], answer="1")):
            pass
    async with client.episode("tracked", "t") as ep:  # an invalid action ends the episode
        with pytest.raises(InvalidArgumentError, match="role 'user'"):
            await ep.step({"role": "user", "content": "hi"})
    await _eventually(lambda: srv.servicer.active == 0, "episodes to be released")
    await _eventually(lambda: _env(srv, "tracked").cleanups == 1, "cleanup of the failed episode")
    assert _env(srv, "tracked").setups == 1


async def test_inline_task(served) -> None:
    _, client = served
    task = Task(task_id="inline-1", prompt=[{"role": "user", "content": "What is 40 + 2?"}], answer="42")
    async with client.episode("arithmetic", task=task) as ep:
        assert ep.task is not None and ep.task.task_id == "inline-1"
        assert ep.messages == task.prompt
        step = await ep.step("42")
        assert step.done and step.reward == 1.0


async def test_score(served) -> None:
    srv, client = served
    task = _env(srv, "arithmetic").tasks()[0]
    messages = [*task.prompt, {"role": "assistant", "content": task.answer}]
    assert await client.score("arithmetic", task, messages) == ({"correct": 1.0, "format": 1.0}, 1.0)
    wrong = [*task.prompt, {"role": "assistant", "content": "The answer is 100000"}]
    assert await client.score("arithmetic", task, wrong) == ({"correct": 0.0, "format": 0.0}, 0.0)
    # by task_id only: the server looks the task up
    ref = Task(task_id=task.task_id, prompt=[], split="train")
    assert (await client.score("arithmetic", ref, messages))[1] == 1.0
    # the state of the final step feeds state-based rewards
    g = _env(srv, "guess-number").tasks()[0]
    rewards, reward = await client.score("guess-number", g, g.prompt, {"solved": True, "guesses": 4})
    assert rewards == {"solved": 1.0, "efficiency": 0.25} and reward == pytest.approx(1.05)
    # an environment with its own score() and no rubric
    s = _env(srv, "scored").tasks()[0]
    assert await client.score("scored", s, [*s.prompt, {"role": "assistant", "content": "abcd"}]) == (
        {"score": 4.0},
        4.0,
    )
    with pytest.raises(NotFoundError, match="no task 'zz'"):
        await client.score("arithmetic", Task(task_id="zz", prompt=[]), messages)


async def test_score_unimplemented(served) -> None:
    srv, client = served
    task = _env(srv, "tracked").tasks()[0]
    with pytest.raises(UnimplementedError, match="'tracked' does not implement Score") as info:
        await client.score("tracked", task, task.prompt)
    assert info.value.reason == "NOT_SUPPORTED"


@pytest.mark.parametrize("fail_in", ["env_response", "setup_state"])
async def test_environment_exception_is_internal_and_server_survives(served, caplog, fail_in: str) -> None:
    srv, client = served
    broken = TrackedEnv("broken", fail_in=fail_in)
    srv.servicer.envs["broken"] = broken  # hosted next to the healthy ones
    caplog.set_level(logging.ERROR, logger="rollmesh.env.server")
    with pytest.raises(InternalError) as info:
        async with client.episode("broken", "t") as ep:
            await ep.step("hello")
    assert info.value.reason == "ENVIRONMENT_FAILED"
    details = str(info.value)
    assert "'broken'" in details
    expected = "KeyError: 'missing-sandbox'" if fail_in == "setup_state" else "RuntimeError: disk on fire"
    assert expected in details
    records = [r for r in caplog.records if r.name == "rollmesh.env.server" and "broken" in r.getMessage()]
    assert records and records[0].levelno == logging.ERROR and records[0].exc_info
    await _eventually(lambda: broken.cleanups == 1, "cleanup of the failed episode")
    await _eventually(lambda: srv.servicer.active == 0, "the failed episode to be released")
    # the server keeps serving
    async with client.episode("tracked", "t") as ep:
        assert (await ep.step("bye")).done
    assert (await client.describe()).active_episodes == 0


async def test_timeout_error_inside_the_environment_is_internal(served) -> None:
    srv, client = served
    srv.servicer.envs["times-out"] = TrackedEnv("times-out", fail_in="timeout")
    with pytest.raises(InternalError) as info:
        async with client.episode("times-out", "t") as ep:
            await ep.step("hello")
    assert "'times-out'" in str(info.value) and "upstream search timed out" in str(info.value)


async def test_score_unimplemented_is_not_logged_as_a_failure(served, caplog) -> None:
    srv, client = served
    task = _env(srv, "tracked").tasks()[0]
    caplog.set_level(logging.ERROR)
    with pytest.raises(UnimplementedError):
        await client.score("tracked", task, task.prompt)
    # rollmesh's own loggers only: asyncio may report garbage of earlier tests at any moment.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("rollmesh")]
    assert errors == []


# ---- limits --------------------------------------------------------------------------------------


async def test_concurrent_episode_limit() -> None:
    env = TrackedEnv()
    async with (
        EnvironmentServer([env], limits=EpisodeLimits(max_concurrent_episodes=2)) as srv,
        await EnvClient.connect(srv.address, timeout_s=TIMEOUT) as client,
    ):
        async with client.episode("tracked", "t") as a, client.episode("tracked", "t") as b:
            assert await _active(client) == 2
            with pytest.raises(ResourceExhaustedError, match="limit of 2 concurrent episodes"):
                async with client.episode("tracked", "t"):
                    pass
            assert (await a.step("still fine")).messages[0]["content"] == "echo: still fine"
            await b.close()  # frees a slot
            await _eventually(lambda: srv.servicer.active == 1, "the slot to be released")
            async with client.episode("tracked", "t") as c:
                assert not (await c.step("x")).done
        await _eventually(lambda: srv.servicer.active == 0, "all slots to be released")
        await _eventually(lambda: env.cleanups == 3, "cleanups")
        assert env.setups == 3  # the refused episode never started


async def test_episode_capacity_not_the_transport_bounds_one_connection() -> None:
    # A client sharing one channel across many episodes must reach the server's episode limit
    # (RESOURCE_EXHAUSTED, a clear reason) and never the HTTP/2 stream cap first: streams over
    # the cap wait in the client, and near it they race and are refused as UNAVAILABLE.
    capacity = 1100
    env = TrackedEnv()
    async with (
        EnvironmentServer([env], limits=EpisodeLimits(max_concurrent_episodes=capacity)) as srv,
        await EnvClient.connect(srv.address, timeout_s=TIMEOUT) as client,
    ):
        held = [client.episode("tracked", "t") for _ in range(capacity)]
        try:
            await asyncio.wait_for(asyncio.gather(*(ep.__aenter__() for ep in held)), 60)
            assert await _active(client) == capacity
            with pytest.raises(ResourceExhaustedError, match=f"limit of {capacity} concurrent episodes"):
                async with client.episode("tracked", "t"):
                    pass
        finally:
            await asyncio.gather(*(ep.close() for ep in held), return_exceptions=True)
        await _eventually(lambda: srv.servicer.active == 0, "all slots to be released")


async def test_idle_timeout() -> None:
    env = TrackedEnv()
    async with (
        EnvironmentServer([env], limits=EpisodeLimits(idle_timeout_s=0.3)) as srv,
        await EnvClient.connect(srv.address, timeout_s=TIMEOUT) as client,
    ):
        async with client.episode("tracked", "t") as ep:
            await ep.step("one")
            await _eventually(lambda: srv.servicer.active == 0, "the idle episode to be closed")
            await _eventually(lambda: ep._stream.call.done(), "the client to receive the server's status")
            with pytest.raises(DeadlineExceededError, match=r"no message from the client for 0\.3 s"):
                await ep.step("two")
        await _eventually(lambda: env.cleanups == 1, "cleanup of the episode")
        assert await _active(client) == 0


async def test_client_cancel_frees_the_episode(served) -> None:
    srv, client = served
    env = _env(srv, "tracked")
    async with client.episode("tracked", "t") as ep:
        await ep.step("hello")
        assert await _active(client) == 1
    # left the block before done: the stream is cancelled
    await _eventually(lambda: srv.servicer.active == 0, "the cancelled episode to be released")
    await _eventually(lambda: env.cleanups == 1, "cleanup of the cancelled episode")
    assert await _active(client) == 0


async def test_client_deadline(served) -> None:
    srv, client = served
    slow = TrackedEnv("slow", stall_s=60)
    srv.servicer.envs["slow"] = slow
    async with client.episode("slow", "t", timeout_s=0.5) as ep:
        with pytest.raises(DeadlineExceededError):
            await asyncio.wait_for(ep.step("hello"), TIMEOUT)
    await _eventually(lambda: srv.servicer.active == 0, "the expired episode to be released")
    await _eventually(lambda: slow.cleanups == 1, "cleanup of the expired episode")


async def test_oversized_message() -> None:
    env = TrackedEnv()
    async with (
        EnvironmentServer([env], rpc_limits=RpcLimits(max_message_bytes=16 * 1024)) as srv,
        await EnvClient.connect(srv.address, timeout_s=TIMEOUT) as client,
    ):
        async with client.episode("tracked", "t") as ep:
            assert not (await ep.step("x" * 1000)).done  # below the limit: fine
            with pytest.raises(ResourceExhaustedError):
                await ep.step("x" * 64 * 1024)
        await _eventually(lambda: srv.servicer.active == 0, "the episode to be released")
        await _eventually(lambda: env.cleanups == 1, "cleanup of the episode")
        # an oversized start (inline task) is refused the same way
        big = Task(task_id="big", prompt=[{"role": "user", "content": "y" * 64 * 1024}])
        with pytest.raises(ResourceExhaustedError):
            async with client.episode("tracked", task=big):
                pass
        assert (await client.describe()).limits.max_message_bytes == 16 * 1024
        # an oversized reply from the environment
        async with client.episode("tracked", "t") as ep:
            with pytest.raises(ResourceExhaustedError):
                await ep.step("flood")
        await _eventually(lambda: srv.servicer.active == 0, "the episode to be released")
        await _eventually(lambda: env.cleanups == 2, "cleanup (the refused start never made an episode)")
        assert env.setups == 2


# ---- shutdown ------------------------------------------------------------------------------------


async def test_graceful_shutdown_lets_in_flight_episodes_finish() -> None:
    env = TrackedEnv()
    srv = await EnvironmentServer([env]).start()
    async with await EnvClient.connect(srv.address, timeout_s=TIMEOUT) as client:
        async with client.episode("tracked", "t") as ep:
            await ep.step("before")
            stopping = asyncio.create_task(srv.stop(grace_s=5))
            await _eventually(lambda: srv.servicer.draining, "the server to start draining")
            with pytest.raises((UnavailableError, grpc.aio.AioRpcError)) as info:
                async with client.episode("tracked", "t"):
                    pass
            if isinstance(info.value, grpc.aio.AioRpcError):
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not stopping.done()  # waiting for our episode
            assert (await ep.step("during")).messages[0]["content"] == "echo: during"
            final = await ep.step("bye")
            assert final.done
        await asyncio.wait_for(stopping, TIMEOUT)
    assert env.setups == env.cleanups == 1
    assert srv.servicer.active == 0


async def test_shutdown_cancels_episodes_open_after_the_grace() -> None:
    env = TrackedEnv()
    srv = await EnvironmentServer([env]).start()
    async with await EnvClient.connect(srv.address, timeout_s=TIMEOUT) as client:
        async with client.episode("tracked", "t") as ep:
            await ep.step("before")
            await asyncio.wait_for(srv.stop(grace_s=0.3), TIMEOUT)
            await _eventually(lambda: env.cleanups == 1, "cleanup of the cancelled episode")
            assert srv.servicer.active == 0
            # the connection is gone: UNAVAILABLE, or INTERNAL from the client's core under load
            with pytest.raises((RollmeshError, grpc.aio.AioRpcError)):
                await ep.step("after")


# ---- registry ------------------------------------------------------------------------------------


async def _registered(nats_url: str, address: str) -> list[bus_pb2.ServiceRecord]:
    async with await Registry.connect(nats_url) as reg:
        return [r for r in await reg.list("environment") if r.address == address]


async def test_registers_in_nats(nats_url: str) -> None:
    envs = [arithmetic.load_environment(num_train=5, num_test=5), guess_number.load_environment(num_tasks=10)]
    srv = EnvironmentServer(envs, limits=EpisodeLimits(max_concurrent_episodes=9), nats_url=nats_url)
    async with srv:
        records = await _registered(nats_url, srv.advertised_address)
        assert sorted(r.name for r in records) == ["arithmetic", "guess-number"]
        for r in records:
            assert r.kind == bus_pb2.SERVICE_KIND_ENVIRONMENT
            assert r.address == srv.address == f"127.0.0.1:{srv.rpc.port}"
            assert (r.version, r.capacity, r.instance_id) == ("0.1.0", 9, srv.servicer.instance_id)
        async with await EnvClient.connect(name="guess-number", nats_url=nats_url) as client:
            assert client.address == srv.address
            task = envs[1].tasks("test")[0]
            async with client.episode("guess-number", task.task_id, split="test") as ep:
                assert (await ep.step(task.answer)).done
    assert await _registered(nats_url, srv.advertised_address) == []
    with pytest.raises(NotFoundError, match="no live server for environment 'no-such-env'"):
        await EnvClient.connect(name="no-such-env", nats_url=nats_url)
    with pytest.raises(InvalidArgumentError):
        await EnvClient.connect()


async def _gone(nats_url: str, address: str) -> bool:
    return await _registered(nats_url, address) == []


async def _read_address(stderr: asyncio.StreamReader) -> str:
    seen = []
    while True:
        line = (await asyncio.wait_for(stderr.readline(), TIMEOUT)).decode()
        assert line, f"env server exited early: {''.join(seen)}"
        seen.append(line)
        if m := re.search(r"rollmesh env server on (\S+:\d+): (.*)", line):
            assert m.group(2).strip() == "arithmetic"
            return m.group(1)


async def test_cli_serve_sigterm(nats_url: str) -> None:
    env = {**os.environ, "COLUMNS": "200", "ROLLMESH_TRACING": "0"}
    proc = await asyncio.create_subprocess_exec(
        str(ROLLMESH),
        *("env", "serve", "rollmesh.examples.arithmetic", "--port", "0", "--nats", nats_url, "--grace", "5"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    try:
        address = await _read_address(proc.stderr)
        rest = asyncio.create_task(proc.stderr.read())  # keep draining: a full pipe would block it
        [record] = await _registered(nats_url, address)
        assert record.name == "arithmetic" and record.kind == bus_pb2.SERVICE_KIND_ENVIRONMENT
        ls = await asyncio.create_subprocess_exec(
            str(ROLLMESH), "ls", "--nats", nats_url, stdout=asyncio.subprocess.PIPE, env=env
        )
        out, _ = await asyncio.wait_for(ls.communicate(), TIMEOUT)
        assert ls.returncode == 0
        listing = out.decode()
        assert any("arithmetic" in line and address in line for line in listing.splitlines()), listing
        async with await EnvClient.connect(address, timeout_s=TIMEOUT) as client:
            [info] = (await client.describe()).environments
            assert info.name == "arithmetic"
            task = (await client.tasks("arithmetic", "test", limit=1))[0]
            async with client.episode("arithmetic", task.task_id, split="test") as ep:
                proc.send_signal(signal.SIGTERM)
                # deregistration comes first; the open episode still gets its grace period
                await _eventually(lambda: _gone(nats_url, address), "deregistration after SIGTERM")
                step = await ep.step(str(_solve(ep.messages[-1]["content"])))
                assert step.done and step.reward == 1.0
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0, (await rest).decode()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert await _registered(nats_url, address) == []


async def test_episode_session_without_server_is_unavailable() -> None:
    # nothing listens on this port (we bound and released it)
    srv = EnvironmentServer([TrackedEnv()])
    address = srv.address
    await srv.start()
    await srv.stop(0)
    async with await EnvClient.connect(address, timeout_s=TIMEOUT) as client:
        with pytest.raises(UnavailableError):
            async with client.episode("tracked", "t"):
                pass


async def test_client_step_timeout_cancels_a_stalled_episode(served) -> None:
    srv, _ = served
    slow = TrackedEnv("stalls", stall_s=60)
    srv.servicer.envs["stalls"] = slow
    async with await EnvClient.connect(srv.address, step_timeout_s=0.3) as client:
        async with client.episode("stalls", "t") as ep:
            with pytest.raises(DeadlineExceededError, match=r"no answer from the environment server within 0\.3 s"):
                await ep.step("hello")
    await _eventually(lambda: srv.servicer.active == 0, "the stalled episode to be released")
    await _eventually(lambda: slow.cleanups == 1, "cleanup of the stalled episode")


async def test_errors_carry_a_machine_readable_reason(served) -> None:
    """Statuses carry google.rpc.ErrorInfo, so clients can act on a reason instead of parsing text."""
    _, client = served
    with pytest.raises(NotFoundError) as info:
        async with client.episode("no-such-env", "t"):
            pass
    assert info.value.reason == "UNKNOWN_ENVIRONMENT"
    assert "tracked" in info.value.metadata["environments"].split(",")
    with pytest.raises(NotFoundError) as info:
        async with client.episode("tracked", "no-such-task"):
            pass
    assert info.value.reason == "UNKNOWN_TASK"
    async with client.episode("tracked", "t") as ep:
        while not ep.done:
            await ep.step("hello")
        with pytest.raises(FailedPreconditionError) as done_info:
            await ep.step("again")
    assert done_info.value.reason == "EPISODE_DONE"
