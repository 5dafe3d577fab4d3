"""EnvClient: the async Python client of an environment server.

async with await EnvClient.connect("localhost:50051") as client:
    async with client.episode("arithmetic", task_id="a00001") as ep:
        print(ep.messages)                      # the prompt
        step = await ep.step("42")              # or a full assistant message dict
        print(step.done, step.reward)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from .. import convert, registry
from ..errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    RollmeshError,
)
from ..proto.v1 import bus_pb2 as bus_pb
from ..proto.v1 import environment_pb2 as env_pb
from ..proto.v1 import environment_pb2_grpc as env_grpc
from ..rpc import RpcLimits
from ..rpc_errors import error_from_rpc
from ..service_client import ServiceClient
from ..types import Message, StepResult, Task
from .stream import EpisodeStream


class EnvClient(ServiceClient):
    stub_class = env_grpc.EnvironmentServiceStub
    kind = "env"

    def __init__(
        self, channel: grpc.aio.Channel, address: str, *, timeout_s: float = 30.0, step_timeout_s: float = 300.0
    ) -> None:
        super().__init__(channel, address, timeout_s=timeout_s)  # unary calls and ListTasks
        self.step_timeout_s = step_timeout_s  # one episode start or step: a stalled server cannot hold us

    @classmethod
    async def connect(
        cls,
        address: str | None = None,
        *,
        name: str | None = None,
        nats_url: str | None = None,
        timeout_s: float = 30.0,
        step_timeout_s: float = 300.0,
        limits: RpcLimits = RpcLimits(),  # noqa: B008
    ) -> EnvClient:
        """Connect by address, or by environment name through the registry (a random live
        replica, so that many clients spread over the replicas)."""
        if address is None:
            if not (name and nats_url):
                raise InvalidArgumentError("connect needs an address, or an environment name and a NATS URL")
            address = await resolve(name, nats_url)
        return cls.open(address, limits=limits, timeout_s=timeout_s, step_timeout_s=step_timeout_s)

    async def describe(self) -> env_pb.DescribeResponse:
        return await self._unary(self.stub.Describe, env_pb.DescribeRequest())

    async def list_tasks(
        self, env: str, split: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> AsyncIterator[Task]:
        """Tasks of a split, streamed."""
        call = self.stub.ListTasks(
            env_pb.ListTasksRequest(env=env, split=split, page_size=page_size, page_token=page_token),
            timeout=self.timeout_s,
        )
        try:
            async for response in call:
                for t in response.tasks:
                    yield convert.task_from_pb(t)
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from e

    async def tasks(self, env: str, split: str = "", limit: int = 0) -> list[Task]:
        return [t async for t in self.list_tasks(env, split, page_size=limit)]

    async def score(
        self, env: str, task: Task, messages: list[Message], state: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, float], float]:
        response = await self._unary(
            self.stub.Score,
            env_pb.ScoreRequest(
                env=env,
                task=convert.task_to_pb(task, env),
                messages=convert.messages_to_pb(messages),
                state=convert.to_struct(state),
            ),
        )
        return dict(response.rewards), response.reward

    def episode(
        self,
        env: str,
        task_id: str = "",
        *,
        split: str = "",
        task: Task | None = None,
        seed: int = 0,
        options: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> EpisodeSession:
        start = env_pb.StartEpisode(
            env=env, task_id=task_id, split=split, seed=seed, options=convert.to_struct(options)
        )
        if task is not None:
            start.task.CopyFrom(convert.task_to_pb(task, env))
        return EpisodeSession(self.stub, start, timeout_s, self.step_timeout_s)


class EpisodeSession:
    """One episode over one stream. Use as an async context manager; leaving the block ends the
    episode (cancelling it on the server when it is not done)."""

    def __init__(
        self,
        stub: env_grpc.EnvironmentServiceStub,
        start: env_pb.StartEpisode,
        timeout_s: float | None,
        step_timeout_s: float = 300.0,
    ):
        self._stub = stub
        self._start = start
        self._timeout_s = timeout_s
        self._step_timeout_s = step_timeout_s
        self._stream: EpisodeStream | None = None
        self.episode_id = ""
        self.task: Task | None = None
        self.messages: list[Message] = []  # the whole conversation so far
        self.tools: list[dict[str, Any]] = []
        self.max_turns = 0
        self.last: StepResult | None = None

    @property
    def done(self) -> bool:
        return self.last is not None and self.last.done

    async def __aenter__(self) -> EpisodeSession:
        self._stream = EpisodeStream(self._stub, timeout_s=self._timeout_s, step_timeout_s=self._step_timeout_s)
        try:
            started = await self._stream.start(self._start)
        except BaseException:
            self._stream.end()
            self._stream = None
            raise
        self.episode_id = started.episode_id
        self.task = convert.task_from_pb(started.task)
        self.messages = convert.messages_from_pb(started.messages)
        self.tools = [convert.tool_spec_from_pb(t) for t in started.tools]
        self.max_turns = started.max_turns
        return self

    async def step(self, action: Message | str) -> StepResult:
        if self._stream is None:
            raise FailedPreconditionError("the episode session is closed; open a new one with client.episode()")
        message = {"role": "assistant", "content": action} if isinstance(action, str) else action
        result = convert.step_from_pb(await self._stream.act(convert.message_to_pb(message)))
        self.messages.append({**message, "role": "assistant"})
        self.messages.extend(result.messages)
        self.last = result
        return result

    async def close(self) -> None:
        if self._stream is None:
            return
        stream, self._stream = self._stream, None
        if self.done:
            await stream.finish(wait=True)  # the server's OK: its resources are freed when we return
        else:
            stream.end()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def resolve(name: str, nats_url: str) -> str:
    """Address of a live replica of environment `name`, from the registry."""
    return await registry.resolve(nats_url, bus_pb.SERVICE_KIND_ENVIRONMENT, name, f"server for environment {name!r}")


__all__ = ["EnvClient", "EpisodeSession", "RollmeshError", "error_from_rpc", "resolve"]
